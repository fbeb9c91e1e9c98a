"""Shared test settings: Triton's interpreter without CUDA, seeds, float64 as the default dtype for one test, the
e3nn version check of the 0.4.4 pass, a tiny MACE for the benchmark scripts' tests."""
import os
import sys
from pathlib import Path

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
def float64():
    """torch's default dtype is float64 for the test, then what it was."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield torch.float64
    torch.set_default_dtype(previous)


@pytest.fixture
def small_mace(float64):
    """``(batch, model)``: 3 acac configurations and a randomly initialised (seed 0) upstream ScaleShiftMACE
    small enough for a test, built by ``benchmarks/energy_gap_diagnostics.py``, in float64."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import energy_gap_diagnostics as egd

    settings = dict(channels=2, max_L=1, max_ell=2, correlation=2, num_interactions=2, r_max=5.0, num_bessel=4,
                    num_polynomial_cutoff=5, radial_MLP=[8], MLP_irreps="4x0e")
    batch = egd.acac_configs(3, settings["r_max"])
    return batch, egd.upstream_model(batch, 0, **settings)


@pytest.fixture
def expected_e3nn():
    """The e3nn version this pass must run under (set by scripts/test.sh for the 0.4.4 pass)."""
    return os.environ.get("GAUNT_EXPECT_E3NN")
