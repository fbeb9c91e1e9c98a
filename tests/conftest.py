"""Shared test settings: seeds, and the optional e3nn version check for the e3nn 0.4.4 pass."""
import os

import pytest
import torch


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
