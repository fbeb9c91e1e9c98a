"""Helpers for the EquiformerV2 adapter tests: exact Wigner matrices, EMT data, tiny configs, tiny
models' predictions, fairchem's entry point. Fixtures are in this directory's conftest.py."""
from __future__ import annotations

import copy
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import torch
import yaml

from gaunt_plugins import testing
from gaunt_plugins.adapters.equiformer_v2_config import GAUNT_BACKBONE_PATH, GAUNT_FLAT_PATH  # noqa: F401
from gaunt_plugins.adapters.equiformer_v2_data import batch_from_atoms  # noqa: F401
from gaunt_plugins.math import real_sph_harm


def random_rotation(seed: int = 0) -> np.ndarray:
    """A random proper rotation (float64) from a QR decomposition."""
    rng = np.random.default_rng(seed)
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def wigner_d(lmax: int, rot: np.ndarray) -> np.ndarray:
    """``D [(lmax+1)^2, (lmax+1)^2]`` (float64) with ``Y(R r) = D Y(r)`` for every degree up to ``lmax``:
    :func:`gaunt_plugins.testing.wigner_d` (exact to ~1e-15, unlike e3nn's ``D_from_matrix``)."""
    one_of_each = "+".join(f"1x{l}e" for l in range(lmax + 1))
    return testing.wigner_d(one_of_each, torch.from_numpy(np.asarray(rot, dtype=np.float64))).numpy()


def rotated_atoms(atoms, rot: np.ndarray):
    """A copy of ``atoms`` with its positions and cell rotated by ``rot [3, 3]`` (no calculator)."""
    out = atoms.copy()
    out.set_cell(atoms.get_cell()[:] @ rot.T, scale_atoms=False)
    out.set_positions(atoms.get_positions() @ rot.T, apply_constraint=False)
    return out


def brute_force_product(a: np.ndarray, b: np.ndarray, lmax_out: int, n: int = 48) -> np.ndarray:
    """``proj_{<=lmax_out}(f_a f_b)`` on a large Gauss-Legendre x uniform grid (float64 NumPy).

    ``a``, ``b``: ``[..., (L+1)^2]``. A grid of ``n`` x ``2n`` nodes, far larger than any degree used
    in the tests, so it shares nothing with the library's own grid sizing.
    """
    la = int(round(np.sqrt(a.shape[-1]))) - 1
    lb = int(round(np.sqrt(b.shape[-1]))) - 1
    z, wz = np.polynomial.legendre.leggauss(n)
    phi = 2 * np.pi * np.arange(2 * n) / (2 * n)
    rho = np.sqrt(1 - z**2)
    pts = np.stack(
        [rho[:, None] * np.cos(phi)[None], rho[:, None] * np.sin(phi)[None], np.broadcast_to(z[:, None], (n, 2 * n))],
        axis=-1,
    ).reshape(-1, 3)
    w = (wz[:, None] * np.full(2 * n, 2 * np.pi / (2 * n))[None]).reshape(-1)
    lmax = max(la, lb, lmax_out)
    y = real_sph_harm(lmax, pts)  # [P, K]
    fa = a @ y[:, : a.shape[-1]].T
    fb = b @ y[:, : b.shape[-1]].T
    return (fa * fb * w) @ y[:, : (lmax_out + 1) ** 2]


# ---------------------------------------------------------------------------------------- data
def emt_structures(n: int, seed: int = 0, metals=("Cu", "Pt"), adsorbates=("O", "H", "CO")) -> List[Any]:
    """``n`` small fcc(111) slabs (2x2x2) with one adsorbate, rattled, with EMT energy and forces.

    Everything is computed here, offline, by ASE's EMT calculator.
    """
    from ase.build import add_adsorbate, fcc111, molecule
    from ase.calculators.emt import EMT
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.constraints import FixAtoms

    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        metal = metals[i % len(metals)]
        ads = adsorbates[(i // len(metals)) % len(adsorbates)]
        slab = fcc111(metal, size=(2, 2, 2), vacuum=5.0)
        if ads == "CO":
            add_adsorbate(slab, molecule("CO"), 1.9, "ontop")
        else:
            add_adsorbate(slab, ads, 1.2 if ads == "H" else 1.5, ["fcc", "hcp", "ontop"][i % 3])
        slab.set_constraint(FixAtoms(indices=[a.index for a in slab if a.tag == 2]))
        slab.rattle(stdev=0.08, seed=int(rng.integers(1 << 30)))
        slab.calc = EMT()
        energy = slab.get_potential_energy()
        forces = slab.get_forces(apply_constraint=False)
        slab.calc = SinglePointCalculator(slab, energy=energy, forces=forces)
        out.append(slab)
    return out


def write_ase_db(path: Path, structures) -> Path:
    from ase.db import connect

    path = Path(path)
    if path.exists():
        path.unlink()
    with connect(str(path)) as db:
        for atoms in structures:
            db.write(atoms)
    return path


# -------------------------------------------------------------------------------------- configs
TINY_BACKBONE: Dict[str, Any] = dict(
    # the graph: periodic, built by the model, forces from the direct force head
    use_pbc=True, regress_forces=True, otf_graph=True, max_neighbors=200, max_radius=5.0, max_num_elements=90,
    # two blocks of 8 channels up to degree 3, orders up to 2 in the edge frames
    num_layers=2, sphere_channels=8, lmax_list=[3], mmax_list=[2], grid_resolution=16, num_sphere_samples=32,
    # attention and feed-forward sub-layers
    attn_hidden_channels=8, num_heads=2, attn_alpha_channels=4, attn_value_channels=4, ffn_hidden_channels=16,
    norm_type="layer_norm_sh", attn_activation="silu", use_s2_act_attn=False, ffn_activation="silu",
    use_gate_act=False, use_grid_mlp=True, use_sep_s2_act=True,
    # edge features
    edge_channels=16, use_atom_edge_embedding=True, distance_function="gaussian", num_distance_basis=16,
    # no dropout; initialisation and the normalisation constants
    alpha_drop=0.0, drop_path_rate=0.0, proj_drop=0.0, weight_init="uniform", avg_num_nodes=10.0, avg_degree=20.0,
)


def backbone_config(**overrides) -> Dict[str, Any]:
    """:data:`TINY_BACKBONE` with ``overrides``: the keyword arguments of an EquiformerV2 model."""
    cfg = copy.deepcopy(TINY_BACKBONE)
    cfg.update(overrides)
    return cfg


def flat_model_config(name: str = GAUNT_FLAT_PATH, **overrides) -> Dict[str, Any]:
    """A fairchem ``model:`` section for the flat (deprecated) EquiformerV2 model ``name``."""
    cfg = backbone_config(**overrides)
    cfg["name"] = name
    return cfg


def hydra_model_config(backbone_name: str = "equiformer_v2_backbone", **overrides) -> Dict[str, Any]:
    """A fairchem ``model:`` section: hydra with the EquiformerV2 energy and force heads."""
    backbone = backbone_config(**overrides)
    backbone["model"] = backbone_name
    return {
        "name": "hydra",
        "backbone": backbone,
        "heads": {
            "energy": {"module": "equiformerV2_scalar_head"},
            "forces": {"module": "equiformerV2_vector_head"},
        },
        "pass_through_head_outputs": True,
    }


def build_model(model_config: Dict[str, Any]):
    """Build a model from a fairchem ``model:`` section through fairchem's registry."""
    from gaunt_plugins.adapters.equiformer_v2_convert import build_model_from_config

    return build_model_from_config(model_config)


def energy_forces(model, batch):
    """``(energy [structures], forces [atoms, 3])`` of a hydra or flat model's output."""
    out = model(batch)
    energy = out["energy"]
    forces = out["forces"]
    if isinstance(energy, dict):
        energy = energy["energy"]
    if isinstance(forces, dict):
        forces = forces["forces"]
    return energy.reshape(-1), forces.reshape(-1, 3)


def predict(model, batch):
    """:func:`energy_forces` in eval mode without gradients, the random per-edge draws of the forward
    seeded alike (``torch.manual_seed(0)``), so two models with the same weights give the same output."""
    model.eval()
    with torch.no_grad():
        torch.manual_seed(0)
        return energy_forces(model, batch)


def zero_selfmix(model) -> None:
    """Zero every self-mix output linear and bias in place: each block's self-mix branch then adds zero."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("gaunt_mix.weight") or name.endswith("gaunt_mix.bias"):
                p.zero_()


# ------------------------------------------------------------------------ fairchem entry point
BIN = Path(sys.executable).parent


def console_script(name: str) -> str:
    path = BIN / name
    if not path.exists():
        found = shutil.which(name)
        if found is None:
            raise RuntimeError(f"console script {name!r} not installed next to {sys.executable}")
        return found
    return str(path)


def train_config(train_db, val_db, model=None, max_epochs=2, batch_size=2, **optim):
    a2g = {"r_energy": True, "r_forces": True}
    cfg = {
        "trainer": "ocp",
        "dataset": {
            "train": {"format": "ase_db", "src": str(train_db), "a2g_args": a2g},
            "val": {"format": "ase_db", "src": str(val_db), "a2g_args": a2g},
        },
        "logger": {"name": "tensorboard"},
        "outputs": {
            "energy": {"level": "system", "property": "energy"},
            "forces": {
                "level": "atom",
                "property": "forces",
                "train_on_free_atoms": True,
                "eval_on_free_atoms": True,
            },
        },
        "loss_functions": [
            {"energy": {"fn": "mae", "coefficient": 1}},
            {"forces": {"fn": "l2mae", "coefficient": 10}},
        ],
        "evaluation_metrics": {
            "primary_metric": "forces_mae",
            "metrics": {"energy": ["mae"], "forces": ["mae"]},
        },
        "optim": {
            "batch_size": batch_size,
            "eval_batch_size": 4,
            "num_workers": 0,
            "lr_initial": 1e-3,
            "optimizer": "AdamW",
            "optimizer_params": {"weight_decay": 0.0},
            "scheduler": "Null",
            "max_epochs": max_epochs,
            "clip_grad_norm": 20,
            **optim,
        },
        "model": model or hydra_model_config(GAUNT_BACKBONE_PATH),
    }
    return cfg


LOCAL_LAUNCH = Path(__file__).with_name("fairchem_local_launch.py")


def run_fairchem(tmp: Path, config: dict, ident: str, *extra: str, launcher="gaunt-run", timeout=900,
                 finished=None):
    """fairchem's own entry point, through ``gaunt-run`` by default: the fairchem patch also lets the
    trainer's ``setup_imports`` skip model files whose optional dependencies are not installed
    (``torch_sparse``), which the stock command cannot; without ``tensor_product`` the model built is
    fairchem's own class. ``launcher=None`` runs the stock command alone. With ``--num-gpus`` the
    command is fairchem's own ``main`` with its launch's rendezvous on a free port
    (:data:`LOCAL_LAUNCH`), so runs on one machine at the same time do not join each other.

    ``finished(checkpoint path) -> bool``: a run whose checkpoint says it is finished and that has not
    exited 60 s later is stopped and counted as done. On the CPU a rank of fairchem's multi-process launch
    sometimes never exits after training: its DDP reducer frees the gloo process group, whose destructor
    waits forever for a worker thread (torch 2.13)."""
    cfg_path = tmp / f"{ident}.yml"
    cfg_path.write_text(yaml.safe_dump(config))
    program = [console_script("fairchem")]
    if "--num-gpus" in extra:  # a multi-process launch: its rendezvous on a port of its own
        program = [str(LOCAL_LAUNCH)] if launcher is not None else [sys.executable, str(LOCAL_LAUNCH)]
    cmd = [
        *program,
        "--mode", "train",
        "--config-yml", str(cfg_path),
        "--cpu",
        "--run-dir", str(tmp),
        "--identifier", ident,
        "--timestamp-id", ident,
        "--seed", "0",
        "--print-every", "1",
        *extra,
    ]
    if launcher is not None:
        cmd = [console_script(launcher), *cmd]
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    ckpt = tmp / "checkpoints" / ident / "checkpoint.pt"
    log_path = tmp / f"{ident}.log"
    with open(log_path, "w") as out:
        proc = subprocess.Popen(cmd, cwd=tmp, stdout=out, stderr=subprocess.STDOUT, text=True, env=env,
                                start_new_session=True)
        start, done_at, stopped = time.monotonic(), None, False
        while proc.poll() is None:
            now = time.monotonic()
            if done_at is None and finished is not None and ckpt.exists() and _finished(finished, ckpt):
                done_at = now
            if done_at is not None and now - done_at > 60:
                _kill_group(proc)
                print(f"{ident}: finished training but did not exit within 60 s: stopped")
                stopped = True
                break
            if now - start > timeout:
                _kill_group(proc)
                raise AssertionError(f"{ident}: no result after {timeout} s: {log_path.read_text()[-3000:]}")
            time.sleep(2)
    log = log_path.read_text()
    assert stopped or proc.returncode == 0, log[-6000:]
    assert ckpt.exists(), log[-3000:]
    return ckpt, log


def _kill_group(proc: subprocess.Popen) -> None:
    """Kill the run and every process it started (the ranks hold its output file open)."""
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _finished(finished, ckpt: Path) -> bool:
    try:
        return bool(finished(ckpt))
    except Exception:  # a checkpoint being written
        return False


def load_checkpoint(ckpt: Path) -> dict:
    return torch.load(str(ckpt), map_location="cpu", weights_only=False)


