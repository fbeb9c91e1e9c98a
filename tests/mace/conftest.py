"""Fixtures for the MACE adapter tests: a tiny acac subset, tiny MACE models, configs.

Import order matters: MACE first (it makes e3nn 0.4.4 importable on new torch), then e3nn.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

import mace  # noqa: F401  (before e3nn)
import numpy as np
import torch

ACAC = Path(os.environ.get("GAUNT_ACAC_DIR", Path(__file__).resolve().parents[3] / "shared" / "data" / "acac"))
if not ACAC.exists():  # the checkout may live elsewhere than /work/main
    ACAC = Path("/work/shared/data/acac")

# reference energies of the isolated atoms (isolated_atoms.xyz), as MACE's E0s option takes them
E0S = {1: -13.568422178253735, 6: -1026.8538996116154, 8: -2037.796869412825}
Z = [1, 6, 8]


def acac_frames(name: str = "train_300K.xyz"):
    """The extended-xyz frames of an acac file as lists of lines (15 atoms + 2 header lines)."""
    path = ACAC / name
    if not path.exists():
        pytest.skip(f"acac dataset not found at {path}")
    lines = path.read_text().splitlines()
    return [lines[i:i + 17] for i in range(0, len(lines), 17)]


def write_frames(path: Path, frames, rekey: bool = True) -> Path:
    """Write frames with MACE's default keys (``energy`` -> ``REF_energy``, ``forces`` -> ``REF_forces``),
    or with the dataset's own keys (``rekey=False``)."""
    out = []
    for fr in frames:
        header = fr[1].replace(" energy=", " REF_energy=").replace(":forces:R:3", ":REF_forces:R:3") if rekey else fr[1]
        out += [fr[0], header] + fr[2:]
    path.write_text("\n".join(out) + "\n")
    return path


@pytest.fixture(scope="session")
def acac_subset(tmp_path_factory):
    """``train.xyz`` (24 configs), ``valid.xyz`` (6), ``test.xyz`` (6) from acac train_300K/test_MD_300K."""
    d = tmp_path_factory.mktemp("acac")
    frames = acac_frames()
    write_frames(d / "train.xyz", frames[:24])
    write_frames(d / "valid.xyz", frames[24:30])
    write_frames(d / "test.xyz", acac_frames("test_MD_300K.xyz")[:6])
    return d


def tiny_config(data_dir: Path, name: str, **overrides) -> str:
    """A ``mace_run_train`` YAML for a tiny model trained 2 epochs on :func:`acac_subset` (an override
    of ``None`` leaves the key out)."""
    cfg = {
        "name": name,
        "model": "MACE",
        "num_channels": 8,
        "max_L": 1,
        "max_ell": 2,
        "correlation": 2,
        "r_max": 4.0,
        "num_interactions": 2,
        "radial_MLP": "[16, 16]",
        "MLP_irreps": "8x0e",
        "train_file": str(data_dir / "train.xyz"),
        "valid_file": str(data_dir / "valid.xyz"),
        "energy_key": "REF_energy",
        "forces_key": "REF_forces",
        "E0s": "{" + ", ".join(f"{z}: {e!r}" for z, e in E0S.items()) + "}",
        "batch_size": 4,
        "valid_batch_size": 6,
        "max_num_epochs": 2,
        "eval_interval": 1,
        "device": "cpu",
        "default_dtype": "float64",
        "seed": 1,
        "lr": 0.01,
    }
    cfg.update(overrides)
    lines = []
    for key, value in cfg.items():
        if value is None:
            continue
        if isinstance(value, (list, tuple)):
            lines.append(f"{key}: [{', '.join(map(str, value))}]")
        elif isinstance(value, str) and any(c in value for c in ":{}[]#"):
            lines.append(f"{key}: \"{value}\"")
        else:
            lines.append(f"{key}: {value}")
    return "\n".join(lines) + "\n"


_STOCK_MODELS = {}


def tiny_model(hidden="8x0e+8x1o", max_ell=2, correlation=3, residual_first=True, num_interactions=2):
    """A stock ``ScaleShiftMACE`` small enough for unit tests, in the default dtype.

    Built once per set of arguments and dtype (MACE's symmetric contraction takes seconds to set
    up) and handed out as a deep copy.
    """
    from gaunt_plugins.adapters.mace_blocks import _copy_model

    key = (hidden, max_ell, correlation, residual_first, num_interactions, torch.get_default_dtype())
    if key not in _STOCK_MODELS:
        _STOCK_MODELS[key] = _build_tiny_model(hidden, max_ell, correlation, residual_first, num_interactions)
    return _copy_model(_STOCK_MODELS[key])


def _build_tiny_model(hidden, max_ell, correlation, residual_first, num_interactions):
    from e3nn import o3
    from mace import modules

    first = "RealAgnosticResidualInteractionBlock" if residual_first else "RealAgnosticInteractionBlock"
    return modules.ScaleShiftMACE(
        r_max=4.0, num_bessel=6, num_polynomial_cutoff=5, max_ell=max_ell,
        interaction_cls=modules.interaction_classes["RealAgnosticResidualInteractionBlock"],
        interaction_cls_first=modules.interaction_classes[first],
        num_interactions=num_interactions, num_elements=3, hidden_irreps=o3.Irreps(hidden),
        MLP_irreps=o3.Irreps("8x0e"), atomic_energies=np.array([E0S[z] for z in Z]),
        avg_num_neighbors=8.0, atomic_numbers=Z, correlation=correlation,
        gate=torch.nn.functional.silu, atomic_inter_scale=1.0, atomic_inter_shift=0.0,
        radial_MLP=[16, 16],
    )


def acac_batch(n: int = 3, rotation=None, name: str = "train_300K.xyz", zs=None):
    """A MACE batch dict of ``n`` acac configurations, optionally rotated by ``rotation [3, 3]``; one-hot
    over the elements ``zs`` (default H, C, O)."""
    import ase.io
    from mace import data, tools
    from mace.tools import torch_geometric

    atoms = ase.io.read(ACAC / name, index=f":{n}")
    if rotation is not None:
        rot = np.asarray(rotation, dtype=np.float64)
        for a in atoms:
            a.positions = a.positions @ rot.T
    table = tools.AtomicNumberTable(Z if zs is None else list(zs))
    ds = [data.AtomicData.from_config(data.config_from_atoms(a), z_table=table, cutoff=4.0) for a in atoms]
    loader = torch_geometric.dataloader.DataLoader(ds, batch_size=len(ds), shuffle=False)
    batch = next(iter(loader)).to_dict()
    dtype = torch.get_default_dtype()
    return {k: (v.to(dtype) if torch.is_tensor(v) and v.is_floating_point() else v) for k, v in batch.items()}


@pytest.fixture
def mace_patched():
    """The MACE patch applied for one test, reverted afterwards (unless it was already applied)."""
    from gaunt_plugins.patch import patched

    with patched("mace") as p:
        yield p


def parse_train_args(argv):
    """``mace_run_train``'s parser (the patched one under ``mace_patched``) on ``argv`` with a run name."""
    import mace.tools

    return mace.tools.build_default_arg_parser().parse_args(["--name", "t"] + list(argv))


def venv_bin(name: str) -> str:
    """The path of a console script installed next to this interpreter."""
    path = Path(sys.executable).parent / name
    if not path.exists():
        pytest.skip(f"{name} is not installed next to {sys.executable}")
    return str(path)
