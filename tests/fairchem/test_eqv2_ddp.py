"""DDP through fairchem's own distributed launch: `gaunt-run fairchem --num-gpus 2 --cpu` (elastic
launch, 2 spawned worker processes, gloo) with `tensor_product: gaunt` on the stock backbone name
trains to the same weights as one plain `fairchem` process running the dotted-path Gaunt class on the
same global batch (fairchem's DDPLoss takes global means; the sampler splits each global batch). So
DDP matches a single process, the patch reaches the spawned workers, and both routes build the
same model.

The runs use plain SGD (no momentum, no gradient clipping): each weight then moves by exactly
``-lr * sum_t g_t``, so float32 noise from summing a batch's gradient in another order (two ranks'
partial sums instead of one) stays at its relative size in the weights, while a gradient that is
weighted or scaled wrongly shows in full. (Adam divides each step by the gradient's own size, so it
turns rounding noise in near-zero gradients into steps of size lr, and it and clipping normalise a
wrong overall scale away.)"""
from __future__ import annotations

import re
from typing import Dict, List

import pytest
import torch

pytest.importorskip("fairchem.core")

from eqv2_testing import (  # noqa: E402
    emt_structures,
    hydra_model_config,
    load_checkpoint,
    run_fairchem,
    train_config,
    write_ase_db,
)

pytestmark = pytest.mark.slow

EPOCHS = 2
STEPS = 4  # 8 structures / global batch 4 x 2 epochs
LR = 1e-3
SGD = dict(optimizer="SGD", optimizer_params={"weight_decay": 0.0}, clip_grad_norm=None)
# Bound on |single - ddp| / |single - initial| (2-norms over a group of weights). A float32 sum of n
# terms taken in another order differs by up to ~n * eps relative to its terms; the largest sums
# here run over the edges of a 4-structure batch (~10^3), and SGD adds one such error per step.
# Measured: ~5e-6. A DDP fault is far above it: per-rank loss means instead of the global mean
# give ~2.5e-2, a loss not scaled by the world size ~0.5.
SUMMED_TERMS = 2**10
RTOL = STEPS * SUMMED_TERMS * torch.finfo(torch.float32).eps  # 4.9e-4


def _weights(ckpt) -> Dict[str, torch.Tensor]:
    """The checkpoint's floating-point weights in float64, without DDP's ``module.`` prefix."""
    sd = load_checkpoint(ckpt)["state_dict"]
    return {k[len("module."):] if k.startswith("module.") else k: v.double()
            for k, v in sd.items() if v.is_floating_point()}


def _norm(a: Dict[str, torch.Tensor], b: Dict[str, torch.Tensor], keys: List[str]) -> float:
    return sum(((a[k] - b[k]) ** 2).sum() for k in keys).sqrt().item()


def _first_step_metrics(log: str) -> str:
    """The metrics fairchem logs after the first training step (energy and force errors, loss)."""
    found = re.search(r"\(INFO\): (energy_mae: [^\n]*?), lr: [^\n]*?step: 1\.00e\+00", log)
    assert found, log[-3000:]
    return found.group(1)


def _finished(path) -> bool:
    """Training ran its last epoch (whatever its step count: the test checks that afterwards)."""
    return load_checkpoint(path)["epoch"] >= EPOCHS


def test_two_process_ddp_matches_single_process(tmp_path):
    pytest.importorskip("gaunt_plugins.patches.launcher")
    train_db = write_ase_db(tmp_path / "train.db", emt_structures(8, seed=0))
    val_db = write_ase_db(tmp_path / "val.db", emt_structures(2, seed=1))

    # the initial weights: the single-process run with lr 0 (SGD leaves them exactly as built)
    initial_cfg = train_config(train_db, val_db, max_epochs=1, batch_size=4, lr_initial=0.0, **SGD)
    single_cfg = train_config(train_db, val_db, max_epochs=EPOCHS, batch_size=4, lr_initial=LR, **SGD)  # dotted path
    keyed = hydra_model_config("equiformer_v2_backbone", tensor_product="gaunt")
    ddp_cfg = train_config(train_db, val_db, model=keyed, max_epochs=EPOCHS, batch_size=2, lr_initial=LR,
                           **SGD)  # 2 ranks x 2 = 4

    runs = {}
    for ident, cfg, extra in (("initial", initial_cfg, ()), ("single", single_cfg, ()),
                              ("ddp", ddp_cfg, ("--num-gpus", "2"))):
        (tmp_path / ident).mkdir()
        runs[ident] = run_fairchem(tmp_path / ident, cfg, ident, *extra, launcher="gaunt-run",
                                   finished=_finished if extra else None)
    assert "Running in local mode with 2 ranks" in runs["ddp"][1], runs["ddp"][1][-3000:]  # fairchem's elastic launch

    for ident in ("single", "ddp"):
        ckpt = load_checkpoint(runs[ident][0])
        assert (ckpt["step"], ckpt["epoch"]) == (STEPS, EPOCHS), (ident, ckpt["step"], ckpt["epoch"])
    # the lr-0 run starts from the single run's weights: same errors and loss on the first batch
    first = {ident: _first_step_metrics(runs[ident][1]) for ident in ("initial", "single")}
    assert first["initial"] == first["single"], f"the runs did not start from the same weights: {first}"
    w0, a, b = (_weights(runs[ident][0]) for ident in ("initial", "single", "ddp"))
    assert a.keys() == b.keys() == w0.keys()
    mix = [k for k in a if ".gaunt_mix." in k]
    assert mix, "no Gaunt self-mix weights: the model built is not the Gaunt EquiformerV2"

    for group, keys in (("all weights", list(a)), ("Gaunt self-mix", mix)):
        diff, moved = _norm(a, b, keys), _norm(a, w0, keys)
        print(f"DDP vs single process, {group}: |difference| {diff:.3g}, |moved| {moved:.3g}, "
              f"ratio {diff / moved:.3g} (bound {RTOL:.3g})")
        # training moved them (at least one step of size lr), so the bound is not met by two inits
        assert moved > LR, f"{group}: training moved the weights by only {moved}"
        assert diff <= RTOL * moved, (
            f"{group}: DDP and single-process weights differ by {diff} = {diff / moved:.3g} x the distance "
            f"training moved them ({moved}); float32 summation order explains at most {RTOL:.3g} x")
