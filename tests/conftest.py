"""Shared test settings: Triton's interpreter without CUDA, seeds, the e3nn version check of the 0.4.4 pass."""
import os

import torch

# Without CUDA the Triton kernels run in Triton's CPU interpreter, which must be switched on before any
# @triton.jit decorator runs: here, in the root conftest, before any test module (of any directory)
# imports gaunt_plugins.triton_kernels.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def expected_e3nn():
    """The e3nn version this pass must run under (set by scripts/test.sh for the 0.4.4 pass)."""
    return os.environ.get("GAUNT_EXPECT_E3NN")
