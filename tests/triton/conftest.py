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
