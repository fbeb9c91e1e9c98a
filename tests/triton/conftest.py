"""Triton kernel tests: on a machine without CUDA the kernels run in Triton's CPU interpreter.

``TRITON_INTERPRET=1`` must be set before any ``@triton.jit`` decorator runs, i.e. before
``gaunt_plugins.triton_kernels`` is imported: this conftest is imported by pytest before the test
modules of this directory, so it sets the variable at import time. With a CUDA device the same
tests run the compiled kernels on CUDA tensors instead (and the ``gpu``-marked ones run too).
"""
import os
import sys

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
DEVICE = "cpu" if INTERPRET else "cuda"


@pytest.fixture(scope="session")
def tk():
    """The kernels package, checked to be in the mode this session expects."""
    pytest.importorskip("triton")
    import gaunt_plugins.triton_kernels as kernels
    if kernels.INTERPRET != INTERPRET:
        pytest.skip("gaunt_plugins.triton_kernels was imported before tests/triton/conftest.py set "
                    "TRITON_INTERPRET; run tests/triton on its own")
    return kernels


@pytest.fixture(scope="session")
def device():
    return DEVICE


# The AOT compile check (test_gpu_compile.py) is CPU-heavy but independent of everything else: start it
# in a subprocess as soon as collection is done, so it overlaps with the interpreter tests, and let the
# test collect its result.
_AOT = {}


def pytest_collection_finish(session):
    import subprocess

    if not any(item.nodeid.endswith("test_all_kernels_compile_for_sm90_without_spills") for item in session.items):
        return
    try:
        import triton  # noqa: F401
    except ImportError:
        return
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "triton_aot.py")
    _AOT["proc"] = subprocess.Popen([sys.executable, script, "--arch", "90", "--jobs", "1"], stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True, env=env)


def pytest_sessionfinish(session, exitstatus):
    proc = _AOT.pop("proc", None)
    if proc is not None and proc.poll() is None:
        proc.kill()


@pytest.fixture(scope="session")
def aot_results():
    """``(stdout, stderr)`` of the AOT compile subprocess (started at collection, or now)."""
    import subprocess

    proc = _AOT.get("proc")
    if proc is None:
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "triton_aot.py")
        proc = subprocess.Popen([sys.executable, script, "--arch", "90", "--jobs", "2"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=env)
        _AOT["proc"] = proc
    out, err = proc.communicate(timeout=900)
    return out, err
