"""Run the two variants one after the other, evaluate them, and write the report.

The variants run sequentially (never side by side: they would compete for the same cores and
memory bandwidth and the timings would mean nothing), each in its own process, so a crash of one is
reported as such and the other's results are kept. The report is rewritten after every variant,
so it exists even if ``gaunt-compare`` itself is stopped.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import shlex
import sys
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

from .process import Interrupts, ProcessResult, error_summary, run_job, tail
from .report import write_report

__all__ = ["run_comparison", "host_info"]


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


def host_info(framework_dist: str, device: Optional[str]) -> Dict[str, Any]:
    info: Dict[str, Any] = {
        "cpus": os.cpu_count(),
        "cpu": _cpu_name(),
        "threads": os.environ.get("OMP_NUM_THREADS", "torch default"),
        "python": platform.python_version(),
        "torch": _version("torch"),
        "e3nn": _version("e3nn"),
        "framework_version": _version(framework_dist),
        "gaunt_plugins": _version("gaunt-plugins"),
        "platform": platform.platform(),
    }
    if device and device.startswith("cuda"):
        try:
            import torch

            info["device"] = f"{torch.cuda.get_device_name(0)} (CUDA)"
        except Exception:  # pragma: no cover - no GPU here
            info["device"] = device
    else:
        info["device"] = f"CPU ({info['cpu']})"
    return info


def _load() -> Optional[float]:
    """The machine's 1-minute load average (other jobs slow both variants unevenly: it is reported)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def _previous_report(out_dir: Path) -> Optional[Dict[str, Any]]:
    import json

    try:
        return json.loads((out_dir / "report.json").read_text())
    except (OSError, ValueError):
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


def run_comparison(framework, out_dir: Path, variants: Sequence[str] = ("upstream", "gaunt"),
                   command: Optional[List[str]] = None, say: Callable[[str], None] = print,
                   grace_s: float = 120.0) -> Dict[str, Any]:
    """Train, evaluate and report every variant; returns the report dict (also in ``report.json``)."""
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg0 = framework.variant_config("upstream", out_dir / "upstream")
    report: Dict[str, Any] = {
        "framework": framework.name,
        "config": str(framework.config_path),
        "config_name": framework.config_path.name,
        "command": " ".join(shlex.quote(c) for c in (command or sys.argv)),
        "budget": framework.budget(),
        "seed": framework.seed_of(cfg0) if hasattr(framework, "seed_of") else cfg0.get("seed"),
        "labels": dict(framework.labels),
        "tests": dict(getattr(framework, "tests", {})),
        "config_differences": framework.config_differences(),
        "host": host_info(framework.distribution if hasattr(framework, "distribution") else framework.name,
                          framework.device_of(cfg0) if hasattr(framework, "device_of") else cfg0.get("device")),
        "started": _dt.datetime.now().isoformat(timespec="seconds"),
        "variants": {v: {"status": "not run"} for v in variants},
    }
    previous = _previous_report(out_dir)
    for name, entry in (previous or {}).get("variants", {}).items():
        if name not in variants and entry.get("status") != "not run":  # e.g. `--only gaunt` after a full run
            report["variants"][name] = dict(entry, kept_from=previous.get("started"))
            say(f"[gaunt-compare] {name}: kept from the run of {previous.get('started')} in {out_dir}")
    with Interrupts() as interrupts:
        for variant in variants:
            vdir = out_dir / variant
            if interrupts.count:
                say(f"[gaunt-compare] {variant}: not run (interrupted)")
                continue
            job = framework.prepare(variant, vdir)
            say(f"[gaunt-compare] {variant}: training ({framework.labels.get(variant, variant)}); "
                f"output in {vdir}/stdout.log")

            def poll(elapsed, variant=variant, vdir=vdir):
                for line in framework.progress(variant, vdir, elapsed):
                    say(f"[gaunt-compare] {variant}: {line}")

            load_start = _load()
            result = run_job(job, interrupts, on_poll=poll, grace_s=grace_s)
            entry: Dict[str, Any] = {"status": _status(result), "returncode": result.returncode,
                                     "wall_s": result.wall_s, "peak_rss_mib": result.peak_rss_mib,
                                     "cpu_user_s": result.user_cpu_s, "cpu_system_s": result.system_cpu_s,
                                     "load_avg_start": load_start, "load_avg_end": _load()}
            if result.notes:
                entry["notes"] = list(result.notes)
            if result.returncode != 0 and not (result.interrupted or result.timed_out):
                entry["error"] = error_summary(job.log)
                entry["error_tail"] = tail(job.log, 15)
            elif result.returncode != 0:
                entry["error"] = "; ".join(result.notes) or ("killed" if result.killed else "stopped")
            say(f"[gaunt-compare] {variant}: {entry['status']} after {result.wall_s / 60:.1f} min"
                + (f": {entry['error']}" if entry.get("error") else ""))
            stopped = result.killed or result.interrupted or result.timed_out
            eval_job = None if stopped else framework.eval_job(variant, vdir)
            if eval_job is not None:
                say(f"[gaunt-compare] {variant}: evaluating the saved model on {len(framework.tests)} test set(s)")
                ev = run_job(eval_job, interrupts, grace_s=10.0)
                if not ev.ok:
                    entry["eval_status"] = _status(ev)
                    entry["eval_error"] = error_summary(eval_job.log)
                    say(f"[gaunt-compare] {variant}: evaluation {entry['eval_status']}: {entry['eval_error']}")
            try:
                entry.update(framework.collect(variant, vdir))
            except Exception as exc:  # a report with a hole beats no report
                entry["collect_error"] = repr(exc)
            if entry.get("eval_error") and not entry.get("eval_status"):
                say(f"[gaunt-compare] {variant}: evaluation failed: {entry['eval_error']}")
            report["variants"][variant] = entry
            write_report(report, out_dir)
    report["finished"] = _dt.datetime.now().isoformat(timespec="seconds")
    if interrupts.count:
        report["interrupted"] = True
    paths = write_report(report, out_dir)
    say(f"[gaunt-compare] report: {paths['md']} ({paths['json'].name}, {paths['png'].name})")
    return report
