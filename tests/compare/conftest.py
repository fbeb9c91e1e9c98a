"""Fixtures for the gaunt-compare tests: a tiny acac subset and a tiny mace_run_train YAML."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ACAC = Path(os.environ.get("GAUNT_ACAC_DIR", Path(__file__).resolve().parents[3] / "shared" / "data" / "acac"))
if not ACAC.exists():  # the checkout may live elsewhere than /work/main
    ACAC = Path("/work/shared/data/acac")

E0S = "{1: -13.568422178253735, 6: -1026.8538996116154, 8: -2037.796869412825}"


def frames(name: str):
    """The extended-xyz frames of an acac file as lists of lines (15 atoms + 2 header lines)."""
    path = ACAC / name
    if not path.exists():
        pytest.skip(f"acac dataset not found at {path}")
    lines = path.read_text().splitlines()
    return [lines[i:i + 17] for i in range(0, len(lines), 17)]


def write(path: Path, selected) -> Path:
    path.write_text("\n".join(line for fr in selected for line in fr) + "\n")
    return path


@pytest.fixture(scope="session")
def acac_tiny(tmp_path_factory):
    """``train.xyz`` (20 configs), ``test.xyz`` (10, 300 K MD), ``hot.xyz`` (5, 600 K MD), raw acac keys
    (``energy=`` / ``forces``), exactly as the shared files have them."""
    d = tmp_path_factory.mktemp("acac_tiny")
    write(d / "train.xyz", frames("train_300K.xyz")[:20])
    write(d / "test.xyz", frames("test_MD_300K.xyz")[:10])
    write(d / "hot.xyz", frames("test_MD_600K.xyz")[:5])
    return d


def tiny_yaml(name: str = "tiny", **extra) -> str:
    """A tiny ``mace_run_train`` YAML (relative data paths: the tests run gaunt-compare in the data folder)."""
    cfg = {
        "name": name,
        "model": "MACE",
        "num_channels": 8,
        "max_L": 1,
        "max_ell": 2,
        "correlation": 2,
        "r_max": 4.0,
        "num_interactions": 2,
        "radial_MLP": '"[16, 16]"',
        "MLP_irreps": "8x0e",
        "train_file": "train.xyz",
        "valid_fraction": 0.2,
        "test_file": "test.xyz",
        "energy_key": "energy",
        "forces_key": "forces",
        "E0s": f'"{E0S}"',
        "batch_size": 4,
        "valid_batch_size": 5,
        "max_num_epochs": 50,
        "eval_interval": 1,
        "device": "cpu",
        "default_dtype": "float64",
        "seed": 3,
        "lr": 0.01,
    }
    cfg.update(extra)
    return "".join(f"{k}: {v}\n" for k, v in cfg.items() if v is not None)


def console_script(name: str) -> str:
    path = Path(sys.executable).parent / name
    if not path.exists():
        pytest.skip(f"{name} is not installed next to {sys.executable}")
    return str(path)


def child_env():
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"
    env.pop("GAUNT_PLUGINS_AUTOPATCH", None)
    return env
