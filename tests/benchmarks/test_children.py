"""The children of the benchmarks and of gaunt-compare never outlive them: each child dies when the
process that started it is killed (even with SIGKILL), and a child stopped at its time limit takes what
it started with it."""
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "benchmarks"
sys.path.insert(0, str(BENCH))

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal: Linux only")

# a child that writes its pid (atomically) to child.pid in ``folder``, then sleeps; with ``grandchild`` it
# first starts a sleeping grandchild (in the child's process group) and writes its pid to grandchild.pid
SLEEPER = textwrap.dedent("""
    import os, subprocess, sys, time
    folder = {folder!r}
    def note(name, pid):
        with open(os.path.join(folder, name + ".tmp"), "w") as fh:
            fh.write(str(pid))
        os.replace(os.path.join(folder, name + ".tmp"), os.path.join(folder, name))
    if {grandchild!r}:
        note("grandchild.pid", subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"]).pid)
    note("child.pid", os.getpid())
    time.sleep(600)
""")

# what the process runs until it is killed: its own way of starting a child, given the sleeper
PARENTS = {
    "gaunt-compare": ("import time, _supervisor\nprocess = _supervisor.process\n"
                      "process.JobProcess(process.Job(cmd=[sys.executable, str(sleeper)], cwd=folder,"
                      " env=process.child_env(), log=folder / 'stdout.log'))\ntime.sleep(600)"),
    "md_speed": "import md_speed\nmd_speed.run_child({'threads': 1, 'variants': []}, 600, sleeper)",
    "model_step": ("import model_step\nmodel_step.__file__ = str(sleeper)  # the build child runs this file\n"
                   "model_step.build_upstream_models([{'key': 'k'}], model_step.BuildLimits(600, 100),"
                   " folder / 'cache', jobs=1, log=print)"),
    "accuracy_mace": ("import accuracy_mace\nsys.executable = str(folder / 'bin' / 'python')  # gaunt-run beside it\n"
                      "accuracy_mace.train(folder / 'run', {'name': 'x'}, 'digest', dict(os.environ))"),
    "accuracy_equiformer_v2": ("import accuracy_equiformer_v2 as bench\n"
                               "sys.executable = str(folder / 'bin' / 'gaunt-run')  # runs the sleeper\n"
                               "bench.run_compare('emt', {}, folder / 'test.db', folder / 'work', [0], 1, 1, True)"),
    "gpu_suite": ("import gpu_suite\n"
                  "args = type('Args', (), {'out': folder / 'out', 'work': folder / 'work', 'python': sys.executable,"
                  " 'total_budget': 600.0, 'mode': 'rehearse', 'wheels': None, 'stages': None})()\n"
                  "stage = gpu_suite.Stage('sleep', 600, [sys.executable, str(sleeper)], 'x')\n"
                  "gpu_suite.Suite(args).run([stage], {})"),
}


def _alive(pid: int) -> bool:
    """Whether ``pid`` is a running process (a zombie awaiting its reaper counts as dead)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return False
    return fields[0] not in ("Z", "X")


def _wait_for(predicate, what: str, proc=None) -> None:
    for _ in range(1200):  # a loaded machine: up to two minutes (torch and MACE imports)
        if predicate():
            return
        assert proc is None or proc.poll() is None, f"the starting process ended before {what}"
        time.sleep(0.1)
    raise AssertionError(f"gave up waiting: {what}")


def _sleeper(folder: Path, grandchild: bool = False) -> Path:
    path = folder / "sleeper.py"
    path.write_text(SLEEPER.format(folder=str(folder), grandchild=grandchild))
    return path


def _pid(folder: Path, name: str) -> int:
    return int((folder / name).read_text())


@pytest.mark.parametrize("starter", sorted(PARENTS))
def test_a_child_dies_when_the_benchmark_or_gaunt_compare_running_it_is_killed(tmp_path, starter):
    """SIGKILL to the benchmark or to gaunt-compare (which it cannot handle) kills the child it is waiting
    for: nothing keeps running or writing into the results."""
    sleeper = _sleeper(tmp_path)
    (tmp_path / "bin").mkdir()
    gaunt_run = tmp_path / "bin" / "gaunt-run"  # accuracy_mace's trainer: ``gaunt-run`` beside the interpreter
    gaunt_run.write_text(f"#!{sys.executable}\n" + sleeper.read_text())
    gaunt_run.chmod(0o755)
    parent_code = ("import os, sys\nfrom pathlib import Path\nsys.path.insert(0, sys.argv[2])\n"
                   "folder = Path(sys.argv[1])\nsleeper = folder / 'sleeper.py'\n" + PARENTS[starter])
    parent = subprocess.Popen([sys.executable, "-c", parent_code, str(tmp_path), str(BENCH)], cwd=tmp_path)
    child = None
    try:
        _wait_for(lambda: (tmp_path / "child.pid").exists(), "its child started", parent)
        child = _pid(tmp_path, "child.pid")
        assert _alive(child)
        parent.kill()
        parent.wait()
        _wait_for(lambda: not _alive(child), "the child ended")  # the kernel signals it at once
    finally:
        parent.kill()
        if child is not None and _alive(child):
            os.kill(child, signal.SIGKILL)


def _stopped_with_grandchild(tmp_path, start) -> None:
    """``start(sleeper)`` runs a benchmark's child (which starts a grandchild) to its time limit: afterwards
    neither is running."""
    sleeper = _sleeper(tmp_path, grandchild=True)
    try:
        start(sleeper)
        grandchild = _pid(tmp_path, "grandchild.pid")
        _wait_for(lambda: not _alive(grandchild), "the grandchild ended")
    finally:
        for name in ("child.pid", "grandchild.pid"):
            if (tmp_path / name).exists() and _alive(_pid(tmp_path, name)):
                os.kill(_pid(tmp_path, name), signal.SIGKILL)


def test_an_md_speed_case_past_its_timeout_is_stopped_with_what_it_started(tmp_path):
    import md_speed

    def start(sleeper):
        rows = md_speed.run_child({"system": "molecule", "L": 1, "C": 8, "dtype": "float32", "threads": 1,
                                   "mode": "eager", "variants": ["upstream"]}, 8, sleeper)
        assert rows[0]["error"].startswith("skipped: the case ran past 8 s")

    _stopped_with_grandchild(tmp_path, start)


def test_an_upstream_build_past_its_limit_is_stopped_with_what_it_started(tmp_path, monkeypatch):
    import model_step

    def start(sleeper):
        monkeypatch.setattr(model_step, "__file__", str(sleeper))  # the build child runs this file
        got = model_step.build_upstream_models([{"key": "k"}], model_step.BuildLimits(8, 100), tmp_path / "cache",
                                               jobs=1, log=lambda m: None)
        assert got["k"]["status"] == "timeout"

    _stopped_with_grandchild(tmp_path, start)
