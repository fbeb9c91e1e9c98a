"""Run every (variant, seed) of a comparison, evaluate the trained models, and write the report.

Each run trains in its own process, so a crash of one is reported as such and the others' results
are kept. Runs go one after the other (``jobs=1``), or ``jobs`` at a time, each starting when
another ends, in the order upstream, gaunt of the first seed, then of the next (so with ``jobs=2``
every run trains while one other shares the machine). Each run writes into its own folder of the report
(``<variant>/``, or ``<variant>/seed-<S>/`` for several seeds), which is new for this run (see
:mod:`.outdir`; the report files and each ended run's folder are added to the folder's list of
the files gaunt-compare wrote). The report is rewritten after every run, so it exists even if
``gaunt-compare`` itself is stopped. ``report.json`` records both variants' settings (see
:mod:`.settings`); ``--only`` keeps the other variant's results only if they were trained with
the settings it would be trained with now.
"""

from __future__ import annotations

import collections
import datetime as _dt
import os
import platform
import shlex
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

from .aggregate import aggregate
from .framework import Framework
from .outdir import Manifest, prepare_out_dir
from .._process import Interrupts, JobProcess, ProcessResult, error_summary, tail
from .report import write_report
from .settings import check_kept

__all__ = ["run_comparison", "host_info", "plan_runs", "RunSpec", "VARIANTS"]

VARIANTS = ("upstream", "gaunt")


def _version(dist: str) -> Optional[str]:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def host_info(framework_dist: str, device: str, threads: str) -> Dict[str, Any]:
    info: Dict[str, Any] = {
        "cpus": os.cpu_count(),
        "cpu": _cpu_name(),
        "threads": threads,
        "python": platform.python_version(),
        "torch": _version("torch"),
        "e3nn": _version("e3nn"),
        "framework_version": _version(framework_dist),
        "gaunt_plugins": _version("gaunt-plugins"),
        "platform": platform.platform(),
    }
    if device.startswith("cuda"):
        try:
            import torch

            info["device"] = f"{torch.cuda.get_device_name(0)} (CUDA)"
        except Exception:  # pragma: no cover - no GPU here
            info["device"] = device
    else:
        info["device"] = f"CPU ({info['cpu']})"
    return info


def _load() -> Optional[float]:
    """The machine's 1-minute load average (other jobs slow the runs unevenly: it is reported)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def _status(result: ProcessResult) -> str:
    if result.timed_out:
        return "interrupted (timeout)"
    if result.interrupted:
        return "interrupted"
    if result.returncode == 0:
        return "ok"
    if result.signal is not None:
        return f"failed (killed by signal {result.signal})"
    return f"failed (exit code {result.returncode})"


@dataclass(frozen=True)
class RunSpec:
    """One training run: a variant, a seed, and the folder it writes into."""

    variant: str
    seed: int
    folder: Path
    label: str  # how progress lines name it


def plan_runs(out_dir: Path, variants: Sequence[str], seeds: Sequence[int]) -> List[RunSpec]:
    """Every (variant, seed), the variants of one seed next to each other."""
    several = len(seeds) > 1
    return [RunSpec(v, int(s), out_dir / v / f"seed-{s}" if several else out_dir / v,
                    f"{v} seed {s}" if several else v) for s in seeds for v in variants]


class _Run:
    """One run from start to report entry: training, an evaluation if the training process did
    not evaluate its model, then reading back what the run logged."""

    def __init__(self, framework: Framework, spec: RunSpec, threads: Optional[int], grace_s: float,
                 say: Callable[[str], None]):
        self.framework, self.spec, self.say, self.threads = framework, spec, say, threads
        job = framework.job(spec.variant, spec.folder, spec.seed)
        if threads is not None:
            job.env = dict(job.env, OMP_NUM_THREADS=str(threads))
        self.load_start = _load()
        self.process = JobProcess(job, grace_s=grace_s)
        self.training = True
        self.entry: Dict[str, Any] = {}

    def elapsed(self) -> float:
        return self.process.elapsed()

    def interrupt(self, times: int) -> None:
        self.process.interrupt(times)

    def step(self) -> bool:
        """Advance; ``True`` once :attr:`entry` is complete."""
        if not self.process.poll():
            return False
        result, spec = self.process.result, self.spec
        if self.training:
            self.training = False
            job = self.process.job
            self.entry = {"status": _status(result), "seed": spec.seed, "folder": str(spec.folder),
                          "returncode": result.returncode, "wall_s": result.wall_s, "peak_rss_mib": result.peak_rss_mib,
                          "cpu_user_s": result.user_cpu_s, "cpu_system_s": result.system_cpu_s,
                          "threads": self.threads, "load_avg_start": self.load_start, "load_avg_end": _load()}
            if result.notes:
                self.entry["notes"] = list(result.notes)
            if result.returncode != 0 and not (result.interrupted or result.timed_out):
                self.entry["error"] = error_summary(job.log)
                self.entry["error_tail"] = tail(job.log, 15)
            elif result.returncode != 0:
                self.entry["error"] = "; ".join(result.notes) or ("killed" if result.killed else "stopped")
            self.say(f"[gaunt-compare] {spec.label}: {self.entry['status']} after {result.wall_s / 60:.1f} min"
                     + (f": {self.entry['error']}" if self.entry.get("error") else ""))
            stopped = result.killed or result.interrupted or result.timed_out
            eval_job = None if stopped else self.framework.eval_job(spec.variant, spec.folder)
            if eval_job is not None:
                self.say(f"[gaunt-compare] {spec.label}: evaluating the saved model on "
                         f"{len(self.framework.tests)} test set(s)")
                self.process = JobProcess(eval_job, grace_s=10.0)
                return False
        elif not result.ok:
            self.entry["eval_status"] = _status(result)
            self.entry["eval_error"] = error_summary(self.process.job.log)
        try:
            self.entry.update(self.framework.collect(spec.folder))
        except Exception as exc:  # a report with a hole beats no report
            self.entry["collect_error"] = repr(exc)
        if self.entry.get("eval_error"):
            self.say(f"[gaunt-compare] {spec.label}: evaluation failed: {self.entry['eval_error']}")
        return True


def _progress(framework: Framework, run: _Run, say: Callable[[str], None]) -> None:
    try:
        for line in framework.progress(run.spec.folder, run.elapsed()):
            say(f"[gaunt-compare] {run.spec.label}: {line}")
    except Exception as exc:  # progress must never break the run
        say(f"[gaunt-compare] progress reader failed: {exc!r}")


def _kept(entry: Dict[str, Any], previous: Dict[str, Any]) -> Dict[str, Any]:
    """A variant's entry of the earlier report, marked with the run it comes from."""
    if "runs" not in entry:  # a report with one seed per variant, from before seeds were counted
        entry = aggregate({str(previous.get("seed")): entry})
    origin = {k: previous.get(k) for k in ("started", "command", "budget", "seeds")}
    return dict(entry, kept_from=origin)


def run_comparison(framework: Framework, out_dir: Path, variants: Sequence[str] = VARIANTS,
                   seeds: Optional[Sequence[int]] = None, jobs: int = 1, command: Optional[List[str]] = None,
                   say: Callable[[str], None] = print, grace_s: float = 120.0, overwrite: bool = False,
                   poll_s: float = 0.5) -> Dict[str, Any]:
    """Train, evaluate and report every (variant, seed); returns the report (also in ``report.json``).

    ``variants`` other than all of :data:`VARIANTS` run only those again (``--only``) and keep the
    others' results from the report already in ``out_dir``; see :func:`.outdir.prepare_out_dir`.
    """
    out_dir = Path(out_dir).resolve()
    rerun_only = set(variants) != set(VARIANTS)
    seeds = list(seeds) if seeds else framework.seeds(1)
    settings = {v: framework.settings(v, seeds) for v in VARIANTS}
    previous = prepare_out_dir(out_dir, variants, VARIANTS, overwrite=overwrite, rerun_only=rerun_only,
                               check=lambda earlier: check_kept(earlier, settings, variants))
    manifest = Manifest.load(out_dir) or Manifest(out_dir)

    def write(report: Dict[str, Any]) -> Dict[str, Path]:
        paths = write_report(report, out_dir)
        for path in paths.values():
            if path.exists():
                manifest.add(path)
        manifest.save()
        return paths
    jobs = max(1, int(jobs))
    threads: Optional[int] = None
    if jobs > 1 and "OMP_NUM_THREADS" not in os.environ:
        threads = max(1, (os.cpu_count() or 1) // jobs)
    thread_text = str(threads) if threads is not None else os.environ.get("OMP_NUM_THREADS", "torch default")
    runs: Dict[str, Dict[str, Dict[str, Any]]] = {v: {str(s): {"status": "not run", "seed": s} for s in seeds}
                                                  for v in variants}
    report: Dict[str, Any] = {
        "framework": framework.name,
        "config": str(framework.config_path),
        "config_name": framework.config_path.name,
        "command": " ".join(shlex.quote(c) for c in (command or sys.argv)),
        "budget": framework.budget(),
        "seeds": seeds,
        "jobs": jobs,
        "labels": dict(framework.labels),
        "tests": dict(framework.tests),
        "config_differences": framework.config_differences(),
        "settings": settings,
        "host": host_info(framework.distribution, framework.device(), thread_text),
        "started": _dt.datetime.now().isoformat(timespec="seconds"),
        "variants": {v: aggregate(runs[v]) for v in variants},
    }
    for name, entry in (previous or {}).get("variants", {}).items():
        if name not in variants and entry.get("status") != "not run":
            report["variants"][name] = _kept(entry, previous)
            say(f"[gaunt-compare] {name}: kept from the run of {previous.get('started')} in {out_dir}"
                + ("" if entry.get("status") == "ok" else f" ({entry.get('status')}: marked in the report)"))
    write(report)  # the folder now holds this run's report (see .outdir)
    pending = collections.deque(plan_runs(out_dir, variants, seeds))
    active: List[_Run] = []
    with Interrupts() as interrupts:
        seen, last_progress = 0, time.time()
        while pending or active:
            if interrupts.count > seen:
                for run in active:
                    run.interrupt(interrupts.count - seen)
                seen = interrupts.count
            while pending and len(active) < jobs and not interrupts.count:
                spec = pending.popleft()
                say(f"[gaunt-compare] {spec.label}: training ({framework.labels.get(spec.variant, spec.variant)}); "
                    f"output in {spec.folder}/stdout.log")
                active.append(_Run(framework, spec, threads, grace_s, say))
            finished = [run for run in active if run.step()]
            polling = time.time() - last_progress >= 2.0
            for run in active if polling else finished:
                _progress(framework, run, say)
            if polling:
                last_progress = time.time()
            for run in finished:
                active.remove(run)
                runs[run.spec.variant][str(run.spec.seed)] = run.entry
                report["variants"][run.spec.variant] = aggregate(runs[run.spec.variant])
                manifest.add(run.spec.folder)
                write(report)
            if interrupts.count and not active:
                break
            if active:
                time.sleep(poll_s)
        for spec in pending:
            say(f"[gaunt-compare] {spec.label}: not run (interrupted)")
    report["finished"] = _dt.datetime.now().isoformat(timespec="seconds")
    if interrupts.count:
        report["interrupted"] = True
    paths = write(report)
    say(f"[gaunt-compare] report: {paths['md']} ({paths['json'].name}, {paths['png'].name})")
    return report
