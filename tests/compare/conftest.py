"""Fixtures for the gaunt-compare tests: a tiny acac subset and a tiny mace_run_train YAML, built with
the MACE tests' helpers (tests/mace/conftest.py)."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest


def _mace_test_helpers():
    """tests/mace/conftest.py as a module of its own (both directories' conftests are named ``conftest``)."""
    path = Path(__file__).resolve().parents[1] / "mace" / "conftest.py"
    spec = importlib.util.spec_from_file_location("_gaunt_mace_test_helpers", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_mace = _mace_test_helpers()
ACAC, acac_frames, write_frames, console_script = _mace.ACAC, _mace.acac_frames, _mace.write_frames, _mace.venv_bin


@pytest.fixture(scope="session")
def acac_tiny(tmp_path_factory):
    """``train.xyz`` (20 configs), ``test.xyz`` (10, 300 K MD), ``hot.xyz`` (5, 600 K MD), raw acac keys
    (``energy=`` / ``forces``), exactly as the shared files have them."""
    d = tmp_path_factory.mktemp("acac_tiny")
    write_frames(d / "train.xyz", acac_frames("train_300K.xyz")[:20], rekey=False)
    write_frames(d / "test.xyz", acac_frames("test_MD_300K.xyz")[:10], rekey=False)
    write_frames(d / "hot.xyz", acac_frames("test_MD_600K.xyz")[:5], rekey=False)
    return d


def tiny_yaml(name: str = "tiny", **extra) -> str:
    """A tiny ``mace_run_train`` YAML (relative data paths: the tests run gaunt-compare in the data folder)."""
    settings = dict(train_file="train.xyz", valid_file=None, valid_fraction=0.2, test_file="test.xyz",
                    energy_key="energy", forces_key="forces", valid_batch_size=5, max_num_epochs=50, seed=3)
    settings.update(extra)
    return _mace.tiny_config(Path("."), name, **settings)


def child_env():
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"
    env.pop("GAUNT_PLUGINS_AUTOPATCH", None)
    return env
