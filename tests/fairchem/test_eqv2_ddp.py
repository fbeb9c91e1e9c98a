"""DDP through fairchem's own distributed launch: `gaunt-run fairchem --num-gpus 2 --cpu` (elastic
launch, 2 spawned worker processes, gloo) with `tensor_product: gaunt` on the stock backbone name
trains to the same weights as one plain `fairchem` process running the dotted-path Gaunt class on the
same global batch (fairchem's DDPLoss takes global means; the sampler splits each global batch). So
DDP matches a single process, the patch reaches the spawned workers, and both routes build the
same model."""
from __future__ import annotations

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


def _initial(state):
    """The self-mix input weights start at one: a reference to see that training moved them."""
    return {k: torch.ones_like(v) for k, v in state.items() if k.endswith("gaunt_mix.input_weight1")}


def test_two_process_ddp_matches_single_process(tmp_path):
    pytest.importorskip("gaunt_plugins.patches.launcher")
    train_db = write_ase_db(tmp_path / "train.db", emt_structures(8, seed=0))
    val_db = write_ase_db(tmp_path / "val.db", emt_structures(2, seed=1))

    single_cfg = train_config(train_db, val_db, max_epochs=2, batch_size=4)  # dotted path
    keyed = hydra_model_config("equiformer_v2_backbone", tensor_product="gaunt")
    ddp_cfg = train_config(train_db, val_db, model=keyed, max_epochs=2, batch_size=2)  # 2 ranks x 2 = 4

    single_dir = tmp_path / "single"
    ddp_dir = tmp_path / "ddp"
    single_dir.mkdir()
    ddp_dir.mkdir()
    single_ckpt, _ = run_fairchem(single_dir, single_cfg, "single")
    ddp_ckpt, log = run_fairchem(ddp_dir, ddp_cfg, "ddp", "--num-gpus", "2", launcher="gaunt-run",
                                 finished=lambda path: load_checkpoint(path)["step"] == 4)
    assert "Running in local mode with 2 ranks" in log, log[-3000:]  # fairchem's elastic launch

    single = load_checkpoint(single_ckpt)
    ddp = load_checkpoint(ddp_ckpt)
    assert single["step"] == ddp["step"] == 4  # 8 structures / global batch 4 x 2 epochs

    def strip(sd):
        return {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}

    a, b = strip(single["state_dict"]), strip(ddp["state_dict"])
    assert a.keys() == b.keys()
    assert any(".gaunt_mix." in k for k in a)
    worst = max((a[k] - b[k]).abs().max().item() for k in a if a[k].is_floating_point())
    moved = max((a[k] - b0).abs().max().item() for k, b0 in _initial(a).items())
    print(f"DDP vs single-process: largest weight difference {worst:.3g}; training moved weights by up to {moved:.3g}")
    assert worst < 1e-4, f"DDP and single-process weights differ by {worst}"
    # and training did move the weights (the comparison is not between two untouched inits)
    assert moved > 100 * max(worst, 1e-7)
