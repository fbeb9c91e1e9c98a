"""pytest plugin: run tests written for CPU tensors on a GPU.

    PYTHONPATH=benchmarks python -P -m pytest tests/core/test_layers.py -p pytest_cuda_device

``GAUNT_TEST_DEVICE`` (default ``cuda``) becomes torch's default device, so every tensor a test or a
layer creates lands there, and ``torch.from_numpy`` (the float64 tables the layers and the test helpers
build in NumPy) returns its tensor on that device too. ``GAUNT_TEST_DEVICE=cpu`` changes nothing (used to
check the plugin and the command on a machine without a GPU). Loaded in every xdist worker too.
"""
from __future__ import annotations

import functools
import os

import pytest
import torch

DEVICE_ENV = "GAUNT_TEST_DEVICE"
_ORIGINAL_FROM_NUMPY = torch.from_numpy


def _device() -> str:
    return os.environ.get(DEVICE_ENV, "cuda")


def pytest_configure(config):
    device = _device()
    if device == "cpu":
        return
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise pytest.UsageError(f"{DEVICE_ENV}={device}, but torch.cuda.is_available() is False on this machine")
    torch.set_default_device(device)

    @functools.wraps(_ORIGINAL_FROM_NUMPY)
    def from_numpy(array):
        return _ORIGINAL_FROM_NUMPY(array).to(device)

    torch.from_numpy = from_numpy


def pytest_unconfigure(config):
    torch.from_numpy = _ORIGINAL_FROM_NUMPY
    if _device() != "cpu":
        torch.set_default_device(None)


def pytest_report_header(config):
    return f"pytest_cuda_device: tensors created on {_device()}"
