"""The GPU run in one command: carried wheels installed, the Triton and layer tests compiled on the GPU,
the op and training-step benchmarks, every result as JSON in one folder.

    python3 benchmarks/gpu_suite.py --out "$OUT" --wheels .whl    # on the CUDA machine: about 8 minutes
    python3 benchmarks/gpu_suite.py --dry-run --out /tmp/suite      # anywhere: what would run, checked
    python3 benchmarks/gpu_suite.py --rehearse --out /tmp/suite     # CPU: every stage at toy size
    python3 benchmarks/gpu_suite.py --out "$OUT" --stages tests-triton gpu-ops   # rerun some stages

Stages, in order (each a child process in its own process group, with its own time budget; a budget
left unused passes to the next stage; a stage that fails or runs out of time is recorded and the next
one runs; --total-budget caps the whole run):

  setup            the wheels in --wheels installed into <work>/site (pip --no-index --no-deps --target),
                   this source tree importable as ``gaunt_plugins`` (<work>/src: links into the tree and
                   a generated dist-info), then versions and missing optional peers
  mace-build       in the background from here on, on the CPU: upstream MACE at correlation 4, 5, 6
                   (max_ell 3) built in limited child processes and saved (model_step.py --build-only)
  tests-triton     pytest tests/triton with TRITON_INTERPRET unset: the kernels compiled for the GPU on
                   CUDA tensors (float32, float64, bfloat16/float16); GAUNT_BACKEND is left alone, since
                   these tests choose backends themselves and some check the automatic choice
  tests-layers     pytest tests/core/test_layers.py with every tensor on the GPU
                   (benchmarks/pytest_cuda_device.py) and GAUNT_BACKEND=triton, float32 and float64
                   (less the one test of the automatic fall-back, which a forced backend refuses)
  gpu-ops          benchmarks/gpu_ops.py: convolution (and the fused message), many-body, channel-wise
                   product, L = 1..6, triton vs e3nn / MACE / cuEquivariance, fwd and fwd+bwd, peak memory
  mace-step        benchmarks/model_step.py --models mace: e3nn vs Gaunt for every target set and K
                   (triton), the unfused torch reference, cuEquivariance where its ops package imports
  mace-correlation the correlation 4..6 rows: the upstream models mace-build saved vs Gaunt built directly
  eqv2-step        EquiformerV2 with and without the Gaunt self-mix (needs fairchem-core; torch_scatter
                   is replaced by benchmarks/shims/torch_scatter where it does not import, and said so)

Why tests run compiled: tests/conftest.py and tests/triton/conftest.py switch Triton's interpreter on
(``TRITON_INTERPRET=1``, with setdefault) only when ``torch.cuda.is_available()`` is False, and
tests/triton's ``device`` fixture follows that switch; the suite removes ``TRITON_INTERPRET`` from the
stages' environment, so on a CUDA machine the same tests launch compiled kernels on CUDA tensors.
pytest runs with ``python -P`` so that the checkout's ``gaunt_plugins/`` folder (which lacks the
``patches`` and ``triton_kernels`` subpackages that an install maps into it) does not shadow <work>/src.

Output (--out; the GPU machine returns at most 8 files): suite.json (machine, versions, missing
peers, every stage's command, status, seconds and summary, test counts and failures), suite.log (every
stage's output, the end of each when long), tables.md (benchmarks/result_tables.py on this folder),
gpu_ops.json, model_step_mace.json, model_step_mace_correlation.json, model_step_eqv2.json. suite.json
and tables.md are rewritten after every stage, so a run stopped from outside keeps what it finished.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import _supervisor as supervisor

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
SHIMS = BENCH / "shims"
DEVICE_LIMIT_MIB = 64  # what one call to the GPU machine carries: the tree plus the wheels
OUT_FILES = ("suite.json", "suite.log", "tables.md", "gpu_ops.json", "model_step_mace.json",
             "model_step_mace_correlation.json", "model_step_eqv2.json")
LOG_TAIL_BYTES = 200_000

# import name -> (distribution, what needs it); "required" peers stop the stages that need them
PEERS = {
    "torch": ("torch", "everything"),
    "triton": ("triton", "the fused kernels"),
    "e3nn": ("e3nn", "the layers' irreps, the e3nn baselines"),
    "pytest": ("pytest", "the test stages"),
    "xdist": ("pytest-xdist", "parallel test workers (optional)"),
    "mace": ("mace-torch", "the MACE training steps, the MACE symmetric-contraction baseline"),
    "ase": ("ase", "MACE data"),
    "matscipy": ("matscipy", "MACE neighbour lists"),
    "fairchem.core": ("fairchem-core", "the EquiformerV2 training step"),
    "torch_geometric": ("torch-geometric", "fairchem's data"),
    "torch_scatter": ("torch-scatter", "fairchem's import of torch_scatter.scatter"),
    "cuequivariance": ("cuequivariance", "the cuEquivariance baselines"),
    "cuequivariance_torch": ("cuequivariance-torch", "the cuEquivariance baselines"),
    "cuequivariance_ops_torch": ("cuequivariance-ops-torch-cu13", "cuEquivariance's CUDA kernels (without "
                                                                   "them it falls back to a slow path: not timed)"),
    "gaunt_plugins": ("gaunt-plugins", "this package"),
    "gaunt_plugins.triton_kernels": ("gaunt-plugins", "the Triton ops"),
}

PROBE = r"""
import importlib, json, os, sys, warnings
warnings.simplefilter("ignore")
out = {"modules": {}, "python": sys.version.split()[0], "executable": sys.executable}
for name in json.loads(sys.argv[1]):
    try:
        mod = importlib.import_module(name)
        out["modules"][name] = {"ok": True, "version": str(getattr(mod, "__version__", "")),
                                "file": str(getattr(mod, "__file__", ""))}
    except BaseException as exc:
        out["modules"][name] = {"ok": False, "error": (type(exc).__name__ + ": " + str(exc)).splitlines()[0][:300]}
try:
    import torch
    out["torch_cuda"] = torch.version.cuda
    out["cuda_available"] = torch.cuda.is_available()
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        out["device"] = torch.cuda.get_device_name(0)
        out["capability"] = "%d.%d" % (p.major, p.minor)
        out["memory_gib"] = round(p.total_memory / 2**30, 1)
        out["multiprocessors"] = p.multi_processor_count
except BaseException as exc:
    out["torch_error"] = repr(exc)
print("PROBE " + json.dumps(out))
"""


@dataclass
class Stage:
    """One step of the suite: a command with its environment additions, budget and outputs."""
    name: str
    budget_s: float
    argv: List[str]
    what: str
    env: Dict[str, str] = field(default_factory=dict)
    needs: List[str] = field(default_factory=list)
    output: Optional[str] = None  # the JSON file it writes into --out
    junit: Optional[Path] = None
    background: bool = False
    wait_for: Optional[str] = None
    budget_flag: Optional[str] = None  # the script's own time-budget option, set from the stage's timeout
    notes: List[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------------------ set-up
def wheel_files(folder: Optional[Path]) -> List[Path]:
    return sorted(folder.glob("*.whl")) if folder and folder.is_dir() else []


def tree_mib() -> Optional[float]:
    """Size of what the GPU machine receives from this checkout (tracked and untracked-not-ignored files)."""
    try:
        listed = supervisor.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                                capture_output=True, check=True, timeout=30).stdout.split(b"\0")
    except (OSError, subprocess.SubprocessError):
        return None
    total = sum((ROOT / os.fsdecode(p)).stat().st_size for p in listed if p and (ROOT / os.fsdecode(p)).is_file())
    return total / 2**20


def install_wheels(wheels: List[Path], site: Path, python: str, log) -> dict:
    """``pip install --no-index --no-deps --target site`` of every wheel (one pip call)."""
    if not wheels:
        return {"installed": [], "note": "no wheels given"}
    site.mkdir(parents=True, exist_ok=True)
    cmd = [python, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile", "--no-cache-dir",
           "--upgrade", "--target", str(site)] + [str(w) for w in wheels]
    log("$ " + " ".join(cmd[:12]) + f" ... ({len(wheels)} wheels)")
    proc = supervisor.run(cmd, capture_output=True, text=True, timeout=150)
    log(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise RuntimeError(f"pip install of the wheels failed (exit {proc.returncode}): "
                           f"{(proc.stderr.strip().splitlines() or [''])[-1][:300]}")
    return {"installed": [w.name for w in wheels]}


def source_overlay(dest: Path) -> Path:
    """``dest/gaunt_plugins``: links to this tree's package folders laid out as an install lays them out
    (pyproject's ``package-dir``: ``patches/`` -> ``gaunt_plugins/patches``, ``triton_kernels/`` ->
    ``gaunt_plugins/triton_kernels``), and a dist-info with the entry points, so ``import gaunt_plugins``
    from ``dest`` is this checkout without building or installing it."""
    try:
        import tomllib
    except ImportError:  # Python < 3.11
        tomllib = None
    pyproject = {}
    if tomllib is not None:
        pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    package_dir = pyproject.get("tool", {}).get("setuptools", {}).get("package-dir") or {
        "gaunt_plugins": "gaunt_plugins", "gaunt_plugins.patches": "patches",
        "gaunt_plugins.triton_kernels": "triton_kernels"}
    if dest.exists():
        shutil.rmtree(dest)
    pkg = dest / "gaunt_plugins"
    pkg.mkdir(parents=True)
    for entry in (ROOT / package_dir["gaunt_plugins"]).iterdir():
        if entry.name != "__pycache__":
            (pkg / entry.name).symlink_to(entry)
    for name, folder in package_dir.items():
        if name != "gaunt_plugins":
            (pkg / name.split(".", 1)[1]).symlink_to(ROOT / folder)
    project = pyproject.get("project", {})
    info = dest / f"gaunt_plugins-{project.get('version', '0')}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {project.get('name', 'gaunt-plugins')}\n"
                                   f"Version: {project.get('version', '0')}\n")
    groups = dict(project.get("entry-points", {}))
    if project.get("scripts"):
        groups["console_scripts"] = project["scripts"]
    (info / "entry_points.txt").write_text("".join(
        f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in eps.items()) + "\n" for group, eps in groups.items()))
    (info / "top_level.txt").write_text("gaunt_plugins\n")
    return dest


def probe(python: str, env: dict, modules: List[str], timeout: float = 120) -> dict:
    """Import each module in a child with ``env``: ``{"modules": {name: {ok, version|error}}, device...}``."""
    proc = supervisor.run([python, "-P", "-c", PROBE, json.dumps(modules)], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=str(ROOT))
    lines = [l for l in proc.stdout.splitlines() if l.startswith("PROBE ")]
    if not lines:
        raise RuntimeError(f"the import probe failed (exit {proc.returncode}): {proc.stderr.strip()[-500:]}")
    return json.loads(lines[-1][6:])


def nvidia_smi() -> Optional[str]:
    try:
        return supervisor.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem",
                               "--format=csv,noheader"], capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


# ------------------------------------------------------------------------------------------------ the plan
def plan(mode: str, work: Path, out: Path, python: str, modules: Dict[str, dict]) -> List[Stage]:
    """The stages after set-up. ``mode``: ``gpu`` (the real sizes) or ``rehearse`` (CPU, toy sizes, Triton's
    interpreter)."""
    gpu = mode == "gpu"
    ok = lambda name: modules.get(name, {}).get("ok", False)  # noqa: E731
    pytest = [python, "-P", "-m", "pytest", "-p", "no:cacheprovider", "-v", "-rfE", "--tb=short"]
    workers = lambda n: (["-n", str(n)] if ok("xdist") and gpu else [])  # noqa: E731
    backend = {"GAUNT_BACKEND": "triton"}
    # checks the automatic fall-back past the kernels' correlation limit, which a forced backend refuses by design
    auto_only = "tests/core/test_layers.py::test_many_body_past_the_kernels_correlation_runs_on_the_reference"
    # float64 at L = 8 is past the kernels' float64 width (shared memory), which a forced backend refuses by design
    wide_float64 = "tests/core/test_layers.py::test_every_layer_is_rotation_equivariant[dtype0-1e-10-8]"
    step = [python, str(BENCH / "model_step.py")]
    cache = str(work / "upstream")
    if gpu:
        corr = ["--correlations", "4", "5", "6", "--correlation-lmax", "2", "--correlation-channels", "64",
                "--upstream-build-timeout", "240", "--upstream-build-memory-gb", "24"]
    else:
        corr = ["--correlations", "2", "--correlation-lmax", "1", "--correlation-channels", "4",
                "--upstream-build-timeout", "120", "--upstream-build-memory-gb", "4"]
    sizes = (["--molecules", "64", "--warmup", "2", "--iters", "10"] if gpu else
             ["--molecules", "1", "--warmup", "0", "--iters", "1"])
    device = ["--device", "cuda" if gpu else "cpu"]
    stages = [
        Stage("mace-build", 360 if gpu else 240,
              step + ["--device", "cpu", "--models", "mace-correlation", "--build-only", "--upstream-build-jobs",
                      "3" if gpu else "1", "--upstream-cache", cache, "--out", str(work / "model_step_build.json")] + corr,
              "upstream MACE at high correlation built on the CPU in limited children, saved for mace-correlation",
              needs=["mace"], background=True),
        Stage("tests-triton", 120 if gpu else 240,
              pytest + ["tests/triton", "-m", "not slow", "--ignore=tests/triton/test_benchmark_script.py",
                        "--junitxml", str(work / "tests_triton.xml")] + workers(8)
              + ([] if gpu else ["-k", "test_dispatch_matches_reference_all_ops or test_layers_run_on_the_triton"]),
              "tests/triton, compiled kernels on CUDA tensors", needs=["pytest", "triton"],
              junit=work / "tests_triton.xml",
              notes=["GAUNT_BACKEND not forced: these tests pick their backends themselves, and some check the "
                     "automatic choice (CPU tensors -> torch) that a forced triton refuses"]),
        Stage("tests-layers", 60 if gpu else 240,
              pytest + ["tests/core/test_layers.py", "-p", "pytest_cuda_device", "--deselect", auto_only,
                        "--deselect", wide_float64,
                        "--junitxml", str(work / "tests_layers.xml")] + workers(6)
              + ([] if gpu else ["-k", "rotation_equivariant and (dtype0-1e-10-1] or dtype1-1e-05-1])"]),
              "the layer tests with every tensor on the GPU, GAUNT_BACKEND=triton",
              env=dict(backend, GAUNT_TEST_DEVICE="cuda" if gpu else "cpu", PYTHONPATH_PREPEND=str(BENCH)),
              needs=["pytest", "e3nn", "triton"], junit=work / "tests_layers.xml",
              notes=[f"deselected {auto_only.split('::')[1]}: it checks the automatic fall-back, which "
                     f"GAUNT_BACKEND=triton refuses by design",
                     f"deselected {wide_float64.split('::')[1]}: float64 at L = 8 is past the kernels' float64 "
                     f"width (shared memory), which GAUNT_BACKEND=triton refuses by design"]),
        Stage("gpu-ops", 100 if gpu else 240,
              [python, str(BENCH / "gpu_ops.py"), "--out", str(out / "gpu_ops.json")]
              + (["--warmup", "3", "--iters", "15", "--max-message-l", "4"] if gpu else
                 ["--cpu-smoke", "--ops", "conv", "--lmax", "1", "--max-e3nn-l", "0"]),
              "op benchmark: conv, message, many-body, self product vs e3nn / MACE / cuEquivariance",
              needs=["triton", "e3nn"], output="gpu_ops.json", budget_flag="--time-budget"),
        Stage("mace-step", 100 if gpu else 300,
              step + device + ["--models", "mace", "--out", str(out / "model_step_mace.json")] + sizes
              + (["--lmax", "2", "3", "1", "0", "--channels", "128", "--targets", "conv,product", "conv", "product",
                  "--conv-products", "1", "3"] if gpu else
                 ["--lmax", "1", "--channels", "4", "--targets", "conv,product", "--conv-products", "1"]),
              "MACE training step: e3nn vs Gaunt (every target set, K) vs cuEquivariance",
              needs=["mace", "ase", "matscipy"], output="model_step_mace.json", budget_flag="--time-budget"),
        Stage("mace-correlation", 40 if gpu else 240,
              step + device + ["--models", "mace-correlation", "--cached-only", "--upstream-cache", cache,
                               "--out", str(out / "model_step_mace_correlation.json")] + corr
              + (["--molecules", "64", "--warmup", "1", "--iters", "5"] if gpu else sizes),
              "MACE at correlation 4..6: upstream (if it built) vs Gaunt built directly",
              needs=["mace", "ase", "matscipy"], output="model_step_mace_correlation.json", wait_for="mace-build",
              budget_flag="--time-budget"),
    ]
    eqv2 = Stage("eqv2-step", 50 if gpu else 300,
                 step + device + ["--models", "eqv2", "--out", str(out / "model_step_eqv2.json")]
                 + (["--eqv2-lmax", "2", "4", "6", "--eqv2-layers", "4", "--eqv2-channels", "128",
                     "--eqv2-structures", "16", "--warmup", "2", "--iters", "10"] if gpu else
                    ["--eqv2-lmax", "2", "--eqv2-layers", "1", "--eqv2-channels", "8", "--eqv2-structures", "1",
                     "--warmup", "0", "--iters", "1"]),
                 "EquiformerV2 training step with and without the Gaunt self-mix",
                 needs=["fairchem.core", "torch_geometric", "ase"], output="model_step_eqv2.json",
                 budget_flag="--time-budget")
    if not ok("torch_scatter"):
        eqv2.env["PYTHONPATH_PREPEND"] = str(SHIMS)
        eqv2.notes.append("torch_scatter does not import here: fairchem imported with benchmarks/shims/torch_scatter "
                          "(torch's scatter_add_/scatter_reduce_; the EquiformerV2 step calls no torch_scatter "
                          "function)")
    stages.append(eqv2)
    return stages


# ------------------------------------------------------------------------------------------------ running
def stage_env(base: dict, stage: Stage) -> dict:
    env = dict(base)
    extra = dict(stage.env)
    prepend = extra.pop("PYTHONPATH_PREPEND", None)
    env.update(extra)
    if prepend:
        env["PYTHONPATH"] = prepend + os.pathsep + env.get("PYTHONPATH", "")
    return env


def junit_summary(path: Path) -> Optional[dict]:
    """Counts and failures from a pytest JUnit XML report."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return None
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    counts = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    failures = []
    for case in root.iter("testcase"):
        for tag in ("failure", "error"):
            node = case.find(tag)
            if node is not None:
                failures.append({"test": f"{case.get('classname', '')}::{case.get('name', '')}", "kind": tag,
                                 "message": (node.get("message") or node.text or "").strip()[:500]})
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    return dict(counts, failures=failures, source="junit")


def log_summary(text: str) -> dict:
    """Counts from ``pytest -v`` output (used when the run was stopped before its JUnit report)."""
    outcomes = re.findall(r"\b(PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)\b", text)
    failed = re.findall(r"^(?:FAILED|ERROR) (\S+)(?: - (.*))?$", text, flags=re.M)
    return {"passed": outcomes.count("PASSED"), "failures": [{"test": t, "kind": "failure", "message": m or ""}
                                                              for t, m in failed],
            "skipped": outcomes.count("SKIPPED"), "failed_count": outcomes.count("FAILED"),
            "errors": outcomes.count("ERROR"), "source": "log (no JUnit report: stopped before the end?)"}


def summarize(stage: Stage, record: dict, out: Path, log_text: str) -> str:
    if stage.junit is not None:
        tests = junit_summary(stage.junit) or log_summary(log_text)
        record["tests"] = tests
        failed = tests.get("failed_count", len([f for f in tests["failures"] if f["kind"] == "failure"]))
        return (f"{tests['passed']} passed, {failed} failed, {tests['errors']} errors, {tests['skipped']} skipped"
                + ("" if tests["source"] == "junit" else " (counted from the log)"))
    if stage.output:
        try:
            data = json.loads((out / stage.output).read_text())
        except (OSError, ValueError):
            return f"no {stage.output}"
        rows = data.get("results", [])
        errors = [r for r in rows if "error" in r]
        timed = len(rows) - len(errors)
        first = f"; first error: {errors[0]['impl']}: {errors[0]['error'][:100]}" if errors else ""
        return f"{timed} rows measured, {len(errors)} with an error or skipped{first}"
    if stage.name == "mace-build":
        try:
            rows = json.loads((Path(stage.argv[stage.argv.index("--out") + 1])).read_text())["results"]
        except (OSError, ValueError, KeyError):
            return "no build report"
        return "; ".join(f"correlation {r['correlation']}: {r.get('build_status')}"
                         + (f" in {r['build_s']:.0f} s" if r.get("build_s") else "") for r in rows)
    return ""


class Suite:
    def __init__(self, args):
        self.args = args
        self.out: Path = args.out
        self.work: Path = args.work
        self.python = args.python
        self.started = time.monotonic()
        self.deadline = self.started + args.total_budget
        self.record = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "mode": args.mode, "command": " ".join(sys.argv),
                       "host": platform.platform(), "cpus": os.cpu_count(), "total_budget_s": args.total_budget,
                       "environment": {}, "notes": [], "stages": []}
        self.background: Dict[str, tuple] = {}
        self.banked = 0.0
        self.out.mkdir(parents=True, exist_ok=True)
        self.work.mkdir(parents=True, exist_ok=True)
        (self.out / "suite.log").write_text("")

    # -- output
    def log(self, text: str, echo_lines: Optional[int] = None) -> None:
        """Append to suite.log; print it too (only its last ``echo_lines`` lines, if given)."""
        lines = text.rstrip("\n").splitlines()
        print("\n".join(lines if echo_lines is None else lines[-echo_lines:]), flush=True)
        with open(self.out / "suite.log", "a") as fh:
            fh.write(text.rstrip("\n") + "\n")

    def save(self) -> None:
        self.record["seconds"] = round(time.monotonic() - self.started, 1)
        tmp = self.out / "suite.json.tmp"
        tmp.write_text(json.dumps(self.record, indent=1))
        tmp.replace(self.out / "suite.json")
        try:
            sys.path.insert(0, str(BENCH))
            from result_tables import suite_report
            (self.out / "tables.md").write_text(suite_report(self.out))
        except Exception as exc:  # noqa: BLE001  (a table bug must not lose the JSON)
            note = f"tables.md not written: {type(exc).__name__}: {exc}"
            if note not in self.record["notes"]:
                self.record["notes"].append(note)
                tmp.write_text(json.dumps(self.record, indent=1))
                tmp.replace(self.out / "suite.json")

    # -- set-up
    def base_env(self) -> dict:
        env = dict(os.environ)
        if self.args.mode == "gpu":
            env.pop("TRITON_INTERPRET", None)
        else:
            env["TRITON_INTERPRET"] = "1"
        paths = [str(self.work / "src")] + ([str(self.work / "site")] if wheel_files(self.args.wheels) else [])
        env["PYTHONPATH"] = os.pathsep.join(paths + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        env.update(PYTHONUNBUFFERED="1", PYTHONDONTWRITEBYTECODE="1", MPLBACKEND="Agg", WANDB_MODE="disabled",
                   TRITON_CACHE_DIR=str(self.work / "triton-cache"), GAUNT_PLUGINS_CACHE=str(self.work / "gaunt-cache"))
        return env

    def setup(self) -> Optional[dict]:
        t0 = time.monotonic()
        rec = {"name": "setup", "budget_s": 60, "what": "wheels, source overlay, import probe"}
        self.record["stages"].append(rec)
        try:
            wheels = wheel_files(self.args.wheels)
            size = sum(w.stat().st_size for w in wheels) / 2**20
            tree = tree_mib()
            rec["wheels"] = [w.name for w in wheels]
            rec["wheels_mib"] = round(size, 1)
            if tree is not None:
                rec["tree_mib"] = round(tree, 1)
                if tree + size > DEVICE_LIMIT_MIB:
                    self.record["notes"].append(f"the tree ({tree:.1f} MiB) and the wheels ({size:.1f} MiB) exceed the "
                                                f"{DEVICE_LIMIT_MIB} MiB one GPU-machine call carries")
            if self.args.mode != "dry-run":
                rec.update(install_wheels(wheels, self.work / "site", self.python, self.log))
            source_overlay(self.work / "src")
            env = self.base_env()
            found = probe(self.python, env, list(PEERS))
            modules = found["modules"]
            if not modules.get("torch_scatter", {}).get("ok") and modules.get("torch_geometric", {}).get("ok"):
                shim_env = dict(env, PYTHONPATH=str(SHIMS) + os.pathsep + env["PYTHONPATH"])
                modules["fairchem.core"] = probe(self.python, shim_env, ["fairchem.core"])["modules"]["fairchem.core"]
                modules["fairchem.core"]["with"] = "benchmarks/shims/torch_scatter"
            src = modules.get("gaunt_plugins", {}).get("file", "")
            if modules.get("gaunt_plugins", {}).get("ok") and not src.startswith(str(self.work / "src")):
                raise RuntimeError(f"gaunt_plugins imported from {src}, not from the source overlay")
            given = " ".join(rec["wheels"]).lower().replace("-", "_")
            missing = {}
            for name, info in modules.items():
                if not info.get("ok"):
                    dist, why = PEERS[name]
                    carried = "a wheel was given but it does not import" if dist.replace("-", "_") in given else \
                        "no wheel given"
                    missing[name] = f"{dist}, for {why}: {carried}; {info['error']}"
            self.record["environment"] = {
                "device": found.get("device", "no CUDA device"), "capability": found.get("capability"),
                "memory_gib": found.get("memory_gib"), "multiprocessors": found.get("multiprocessors"),
                "cuda_available": found.get("cuda_available"), "torch_cuda": found.get("torch_cuda"),
                "python": found.get("python"), "executable": found.get("executable"), "nvidia_smi": nvidia_smi(),
                "versions": {n: i["version"] for n, i in modules.items() if i.get("ok") and i.get("version")},
                "missing": missing, "modules": modules}
            if self.args.mode == "gpu" and not found.get("cuda_available"):
                raise RuntimeError("torch.cuda.is_available() is False: this is not a CUDA machine (use --dry-run "
                                   "or --rehearse)")
            rec["status"] = "ok"
            rec["summary"] = (f"{len(rec['wheels'])} wheels ({size:.1f} MiB); missing: "
                              + (", ".join(sorted(missing)) or "nothing"))
            return modules
        except Exception as exc:  # noqa: BLE001
            rec["status"] = "failed"
            rec["summary"] = f"{type(exc).__name__}: {exc}"
            return None
        finally:
            rec["seconds"] = round(time.monotonic() - t0, 1)
            self.log(f"[setup] {rec['status']}: {rec.get('summary')}")
            self.save()

    # -- stages
    def start(self, stage: Stage, env: dict, timeout: float):
        argv = list(stage.argv)
        if stage.budget_flag:
            argv += [stage.budget_flag, f"{max(5.0, timeout - 15):.0f}"]
        log_path = self.work / f"{stage.name}.log"
        fh = open(log_path, "w")
        self.log(f"\n[{stage.name}] {stage.what}\n$ {shlex.join(argv)}\n  (timeout {timeout:.0f} s)")
        proc = supervisor.spawn(argv, cwd=str(ROOT), env=stage_env(env, stage), stdout=fh, stderr=subprocess.STDOUT)
        return proc, fh, log_path, argv

    def finish(self, stage: Stage, rec: dict, proc, fh, log_path: Path, started: float, timeout: float) -> None:
        try:
            proc.wait(timeout=max(0.0, started + timeout - time.monotonic()))
            rec["status"] = "ok" if proc.returncode == 0 else f"failed (exit {proc.returncode})"
        except subprocess.TimeoutExpired:
            supervisor.stop(proc, grace_s=10)
            rec["status"] = f"stopped at its {timeout:.0f} s budget"
        except BaseException:  # Ctrl-C: the stage and what it started end with the suite
            supervisor.stop(proc, grace_s=0)
            raise
        fh.close()
        rec["exit_code"] = proc.returncode
        rec["seconds"] = round(time.monotonic() - started, 1)
        text = log_path.read_text(errors="replace")
        rec["summary"] = summarize(stage, rec, self.out, text)
        tail = text[-LOG_TAIL_BYTES:]
        self.log(("[... output cut: the last %d bytes follow]\n" % LOG_TAIL_BYTES if len(text) > len(tail) else "")
                 + tail, echo_lines=25)
        self.log(f"[{stage.name}] {rec['status']} in {rec['seconds']:.0f} s: {rec['summary']}")

    def run(self, stages: List[Stage], modules: Dict[str, dict]) -> None:
        env = self.base_env()
        selected = set(self.args.stages or [s.name for s in stages])
        for stage in stages:
            if stage.name not in selected:
                continue
            rec = {"name": stage.name, "what": stage.what, "budget_s": stage.budget_s, "notes": stage.notes}
            self.record["stages"].append(rec)
            missing = [m for m in stage.needs if not modules.get(m, {}).get("ok")]
            if stage.wait_for in self.background:
                self.join(stage.wait_for)
            remaining = self.deadline - time.monotonic()
            if missing or remaining < 5:
                rec["status"] = "skipped"
                rec["summary"] = (f"needs {', '.join(missing)} (does not import)" if missing else
                                  "no time left in the total budget")
                rec["argv"] = stage.argv
                self.log(f"[{stage.name}] skipped: {rec['summary']}")
                self.save()
                continue
            if stage.background:
                timeout = min(stage.budget_s, remaining)
                proc, fh, log_path, argv = self.start(stage, env, timeout)
                rec.update(argv=argv, status="running in the background")
                self.background[stage.name] = (stage, rec, proc, fh, log_path, time.monotonic(), timeout)
                self.save()
                continue
            timeout = min(stage.budget_s + self.banked, remaining)
            started = time.monotonic()
            proc, fh, log_path, argv = self.start(stage, env, timeout)
            rec["argv"] = argv
            self.finish(stage, rec, proc, fh, log_path, started, timeout)
            self.banked = max(0.0, timeout - rec["seconds"])  # what this stage left passes on
            self.save()
        for name in list(self.background):
            self.join(name)

    def join(self, name: str) -> None:
        stage, rec, proc, fh, log_path, started, timeout = self.background.pop(name)
        if proc.poll() is None:
            self.log(f"[{name}] waiting for the background stage (at most {started + timeout - time.monotonic():.0f} s)")
        self.finish(stage, rec, proc, fh, log_path, started, timeout)
        self.save()

    # -- dry run
    def dry_run(self, stages: List[Stage], modules: Dict[str, dict]) -> List[str]:
        """Print every stage's command and check them without running any; returns the problems found."""
        problems = []
        env = self.base_env()
        sys.path.insert(0, str(BENCH))
        for stage in stages:
            rec = {"name": stage.name, "what": stage.what, "budget_s": stage.budget_s, "argv": stage.argv,
                   "status": "planned", "notes": stage.notes,
                   "needs_missing": [m for m in stage.needs if not modules.get(m, {}).get("ok")]}
            self.record["stages"].append(rec)
            self.log(f"[{stage.name}] budget {stage.budget_s:.0f} s{' (background)' if stage.background else ''}: "
                     f"{stage.what}\n  $ {shlex.join(stage.argv)}"
                     + (f"\n  would be skipped: needs {', '.join(rec['needs_missing'])}" if rec["needs_missing"] else ""))
            script = Path(stage.argv[1]) if len(stage.argv) > 1 and stage.argv[1].endswith(".py") else None
            args = stage.argv[2:] + ([stage.budget_flag, "60"] if stage.budget_flag else [])
            try:
                if script is not None and script.name == "gpu_ops.py":
                    importlib.import_module("gpu_ops").parse(args)
                elif script is not None and script.name == "model_step.py":
                    importlib.import_module("model_step").parse_args(args)
                elif "pytest" in stage.argv:
                    problems += self.check_pytest(stage, env)
            except SystemExit as exc:
                problems.append(f"{stage.name}: the argument parser rejects {args} (exit {exc.code})")
        try:
            self.check_writers()
        except Exception as exc:  # noqa: BLE001
            problems.append(f"the JSON writers or the tables fail: {type(exc).__name__}: {exc}")
        return problems

    def check_writers(self) -> None:
        """gpu_ops.py's and model_step.py's JSON writers on made-up rows, read back and turned into tables."""
        import gpu_ops
        import model_step
        import result_tables

        folder = self.work / "writer-check"
        folder.mkdir(parents=True, exist_ok=True)
        ops = [{"op": "conv", "L": 2, "C": 8, "rows": 4, "impl": impl, "fwd_ms": t, "fwdbwd_ms": 2 * t,
                "fwd_peak_mib": 1.0, "fwdbwd_peak_mib": 2.0, "floor_fwd_ms": 0.1, "floor_fwdbwd_ms": 0.2}
               for impl, t in (("triton", 1.0), ("e3nn", 9.0))]
        gpu_ops.write_json(folder / "gpu_ops.json", {"device": "writer check"}, ops, gpu_ops.speedups(ops))
        steps = [{"model": "mace", "L": 2, "C": 128, "max_ell": 3, "correlation": 3, "molecules": 1, "impl": impl,
                  "median_ms": t, "parameters": 10, **extra}
                 for impl, t, extra in (("e3nn", 30.0, {}), ("gaunt-triton", 10.0, {"targets": "conv", "conv_products": 3}))]
        model_step.add_ratios(steps)
        model_step.write_result(folder / "model_step_mace.json", {"device": "writer check", "results": steps})
        (folder / "suite.json").write_text(json.dumps(self.record))
        report = result_tables.suite_report(folder)
        if "| conv | 2 | 8 |" not in report or "gaunt-triton [conv] K=3" not in report:
            raise RuntimeError("the rows written do not come back in the tables")
        self.log(f"  JSON writers and tables checked in {folder}")

    def check_pytest(self, stage: Stage, env: dict) -> List[str]:
        """The test paths exist, and pytest collects them with the stage's options and plugins."""
        problems = []
        args = stage.argv[stage.argv.index("pytest") + 1:]
        paths = [a.split("::")[0] for a in args if a.startswith("tests/")]
        problems += [f"{stage.name}: {p} does not exist" for p in paths if not (ROOT / p).exists()]
        ignored = [a.split("=", 1)[1] for a in args if a.startswith("--ignore=")]
        problems += [f"{stage.name}: --ignore {p} does not exist" for p in ignored if not (ROOT / p).exists()]
        collect = [a for a in stage.argv if a not in ("-v", "-rfE")] + ["--collect-only", "-q"]
        if "-n" in collect:  # collect without workers
            i = collect.index("-n")
            del collect[i:i + 2]
        check_env = stage_env(env, stage)
        check_env["GAUNT_TEST_DEVICE"] = "cpu"
        check_env["TRITON_INTERPRET"] = "1"
        proc = supervisor.run(collect, cwd=str(ROOT), env=check_env, capture_output=True, text=True, timeout=300)
        n = re.search(r"(\d+) tests? collected", proc.stdout) or re.search(r"^(\d+)/\d+ tests collected", proc.stdout, re.M)
        if proc.returncode != 0 or not n:
            problems.append(f"{stage.name}: pytest --collect-only failed (exit {proc.returncode}): "
                            f"{(proc.stdout + proc.stderr).strip()[-600:]}")
        else:
            self.log(f"  collects {n.group(1)} tests")
        return problems


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", action="store_true", help="list and check the stages, run none")
    mode.add_argument("--rehearse", action="store_true",
                      help="run every stage on the CPU at toy sizes (Triton's interpreter): checks the plumbing")
    ap.add_argument("--out", type=Path, required=True, help="the results folder (the GPU machine's $OUT)")
    ap.add_argument("--wheels", type=Path, default=ROOT / ".whl", help="folder of wheels to install (default .whl)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/gaunt-gpu-suite"),
                    help="scratch folder: site, source overlay, logs, caches (default /tmp/gaunt-gpu-suite)")
    ap.add_argument("--total-budget", type=float, default=480.0, help="seconds for the whole run (default 480)")
    ap.add_argument("--stages", nargs="*", default=None, help="run only these stages (set-up always runs)")
    ap.add_argument("--python", default=sys.executable, help="interpreter for the stages (default: this one)")
    ap.add_argument("--overwrite", action="store_true", help="replace the results of an earlier run in --out")
    args = ap.parse_args(argv)
    earlier = [name for name in OUT_FILES if (args.out / name).exists()]
    if earlier and not args.overwrite:
        ap.error(f"{args.out} already holds an earlier run's {', '.join(earlier)}: pick another --out or pass "
                 f"--overwrite")
    args.mode = "dry-run" if args.dry_run else ("rehearse" if args.rehearse else "gpu")
    suite = Suite(args)
    modules = suite.setup()
    if modules is None:
        suite.log("set-up failed: nothing else runs")
        return 1
    stages = plan("gpu" if args.mode == "dry-run" else args.mode, args.work, args.out, args.python, modules)
    known = {s.name for s in stages}
    unknown = set(args.stages or []) - known
    if unknown:
        suite.log(f"unknown stage(s) {sorted(unknown)}; the stages are {', '.join(s.name for s in stages)}")
        return 2
    if args.mode == "dry-run":
        problems = suite.dry_run(stages, modules)
        suite.record["problems"] = problems
        suite.save()
        for p in problems:
            suite.log(f"PROBLEM {p}")
        suite.log(f"dry run: {len(stages)} stages planned, {len(problems)} problem(s); wrote {args.out}")
        return 1 if problems else 0
    suite.run(stages, modules)
    suite.save()
    suite.log("\n" + (args.out / "tables.md").read_text() if (args.out / "tables.md").exists() else "")
    failed = [s["name"] for s in suite.record["stages"] if s.get("status") not in ("ok", "skipped")]
    suite.log(f"suite finished in {suite.record['seconds']:.0f} s; stages not ok: {', '.join(failed) or 'none'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
