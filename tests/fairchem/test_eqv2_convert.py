"""Checkpoint conversion, stock EquiformerV2 -> Gaunt EquiformerV2 with a zero self-mix."""
from __future__ import annotations

import copy

import pytest
import torch

pytest.importorskip("fairchem.core")

from eqv2_testing import (  # noqa: E402
    GAUNT_BACKBONE_PATH,
    GAUNT_FLAT_PATH,
    backbone_config,
    batch_from_atoms,
    build_model,
    emt_structures,
    energy_forces,
    hydra_model_config,
)
from gaunt_plugins.adapters.equiformer_v2_config import GauntConfigError  # noqa: E402
from gaunt_plugins.adapters.equiformer_v2_convert import convert_checkpoint, main  # noqa: E402
from gaunt_plugins.patches.fairchem import FairchemPatch  # noqa: E402


def _perturb(model, seed=0):
    """Make every stock parameter non-trivial (as after training)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model


def _fake_checkpoint(model_config, model, with_ema=True, prefix="module."):
    from fairchem.core.modules.exponential_moving_average import ExponentialMovingAverage

    ckpt = {
        "config": {"model": copy.deepcopy(model_config), "optim": {"batch_size": 2}},
        "state_dict": {prefix + k: v.clone() for k, v in model.state_dict().items()},
        "normalizers": {},
        "elementrefs": {},
        "amp": None,
        "epoch": 3.0,
        "step": 12,
        "optimizer": {"state": {}, "param_groups": []},
        "scheduler": None,
        "best_val_metric": 0.1,
        "primary_metric": "forces_mae",
    }
    if with_ema:
        ema = ExponentialMovingAverage(model.parameters(), decay=0.9)
        with torch.no_grad():
            ema.shadow_params = [p.detach().clone() + 1.0 for p in ema.shadow_params]  # distinguishable
        ckpt["ema"] = ema.state_dict()
    return ckpt


@pytest.fixture(scope="module")
def batch():
    return batch_from_atoms(emt_structures(2, seed=5))


def _predict(model, batch):
    model.eval()
    with torch.no_grad():
        torch.manual_seed(0)
        return energy_forces(model, batch)


def test_converted_hydra_checkpoint_predicts_identically(batch):
    config = hydra_model_config("equiformer_v2_backbone")
    stock = _perturb(build_model(config), seed=1)
    ckpt = _fake_checkpoint(config, stock)
    new, report = convert_checkpoint(ckpt, method="grid")

    backbone = new["config"]["model"]["backbone"]
    assert backbone["model"] == GAUNT_BACKBONE_PATH
    assert backbone["tensor_product"] == "gaunt" and backbone["gaunt_method"] == "grid"
    for key in ("optimizer", "scheduler", "epoch", "step", "best_val_metric"):
        assert key not in new
    assert sorted(report["dropped"]) == sorted(["optimizer", "scheduler", "epoch", "step", "best_val_metric", "primary_metric"])
    assert all(k.startswith("module.") for k in new["state_dict"])
    assert report["new_parameters"] and all(".gaunt_mix." in k for k in report["new_parameters"])

    gaunt = build_model(new["config"]["model"])  # dotted path: no patch needed
    gaunt.load_state_dict({k[len("module."):]: v for k, v in new["state_dict"].items()}, strict=True)
    e0, f0 = _predict(stock, batch)
    e1, f1 = _predict(gaunt, batch)
    assert (e0 - e1).abs().max() <= 1e-6
    assert (f0 - f1).abs().max() <= 1e-6
    # the branch exists and is trainable: nudging its linear changes the prediction
    with torch.no_grad():
        gaunt.backbone.blocks[0].gaunt_mix.weight.normal_(0, 0.5)
    e2, _ = _predict(gaunt, batch)
    assert (e2 - e0).abs().max() > 1e-6


def test_ema_is_relisted_in_gaunt_parameter_order():
    config = hydra_model_config("equiformer_v2_backbone")
    stock = build_model(config)
    ckpt = _fake_checkpoint(config, stock)
    new, _ = convert_checkpoint(ckpt)
    gaunt = build_model(new["config"]["model"])
    names = [n for n, p in gaunt.named_parameters() if p.requires_grad]
    shadow = new["ema"]["shadow_params"]
    assert len(shadow) == len(names)
    stock_params = dict(stock.named_parameters())
    for name, value in zip(names, shadow):
        if name in stock_params:
            assert torch.equal(value, stock_params[name].detach() + 1.0), name
        else:
            assert ".gaunt_mix." in name
            assert torch.equal(value, dict(gaunt.named_parameters())[name].detach())
    assert new["ema"]["decay"] == ckpt["ema"]["decay"]


def test_flat_model_and_keep_name(batch):
    cfg = backbone_config()
    cfg["name"] = "equiformer_v2"
    stock = _perturb(build_model(cfg), seed=2)
    ckpt = _fake_checkpoint(cfg, stock, with_ema=False, prefix="")
    new, _ = convert_checkpoint(ckpt, keep_name=True)
    assert new["config"]["model"]["name"] == "equiformer_v2"
    assert new["config"]["model"]["tensor_product"] == "gaunt"
    patch = FairchemPatch()
    was = patch.applied
    if not was:
        patch.apply()
    try:
        gaunt = build_model(new["config"]["model"])  # stock name + key: needs the patch
    finally:
        if not was:
            patch.revert()
    assert type(gaunt).__name__ == "GauntEquiformerV2"
    gaunt.load_state_dict(new["state_dict"], strict=True)
    e0, f0 = _predict(stock, batch)
    e1, f1 = _predict(gaunt, batch)
    assert (e0 - e1).abs().max() <= 1e-6 and (f0 - f1).abs().max() <= 1e-6
    plain, _ = convert_checkpoint(ckpt)
    assert plain["config"]["model"]["name"] == GAUNT_FLAT_PATH


def test_conversion_errors():
    config = hydra_model_config("equiformer_v2_backbone")
    stock = build_model(config)
    ckpt = _fake_checkpoint(config, stock, with_ema=False)
    new, _ = convert_checkpoint(ckpt)
    with pytest.raises(GauntConfigError, match="already holds a Gaunt"):
        convert_checkpoint(new)
    other = copy.deepcopy(ckpt)
    other["config"]["model"]["backbone"]["model"] = "escn_backbone"
    with pytest.raises(GauntConfigError, match="no stock EquiformerV2"):
        convert_checkpoint(other)
    with pytest.raises(GauntConfigError, match="method"):
        convert_checkpoint(ckpt, method="cg")
    broken = copy.deepcopy(ckpt)
    broken["state_dict"].pop(next(iter(broken["state_dict"])))
    with pytest.raises(RuntimeError):
        convert_checkpoint(broken)


def test_cli_writes_and_verifies(tmp_path, capsys):
    config = hydra_model_config("equiformer_v2_backbone")
    stock = _perturb(build_model(config), seed=3)
    src = tmp_path / "stock.pt"
    dst = tmp_path / "gaunt.pt"
    torch.save(_fake_checkpoint(config, stock), src)
    assert main([str(src), str(dst), "--verify"]) == 0
    out = capsys.readouterr().out
    assert "wrote" in out and "verify" in out
    assert dst.exists()
    assert main([str(src), str(dst)]) == 2  # exists, no --force
    assert "exists" in capsys.readouterr().err
    assert main([str(dst), str(tmp_path / "again.pt")]) == 2  # already Gaunt


def test_cli_never_writes_over_the_input_and_writes_through_a_temporary_file(tmp_path, capsys, monkeypatch):
    config = hydra_model_config("equiformer_v2_backbone")
    src = tmp_path / "stock.pt"
    torch.save(_fake_checkpoint(config, build_model(config), with_ema=False), src)
    original = src.read_bytes()
    assert main([str(src), str(src)]) == 2
    assert "is the input" in capsys.readouterr().err and src.read_bytes() == original
    # --force replaces an existing output by renaming a complete temporary file beside it: when the
    # rename fails, the earlier file is still there and the temporary file is removed
    import gaunt_plugins.adapters._files as files

    dst = tmp_path / "gaunt.pt"
    dst.write_bytes(b"earlier conversion")
    renames = []

    def failing_rename(tmp, target):
        renames.append((str(tmp), str(target), torch.load(tmp, weights_only=False)["gaunt_conversion"]))
        raise OSError("rename failed")

    monkeypatch.setattr(files.os, "replace", failing_rename)
    capsys.readouterr()
    assert main([str(src), str(dst), "--force"]) == 2
    monkeypatch.undo()
    err = capsys.readouterr().err
    assert str(dst) in err and "rename failed" in err and len(err.splitlines()) == 1, err
    ((tmp, target, record),) = renames
    assert target == str(dst) and tmp != target and tmp.startswith(str(tmp_path)) and record
    assert dst.read_bytes() == b"earlier conversion"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gaunt.pt", "stock.pt"]
    assert main([str(src), str(dst), "--force"]) == 0
    assert torch.load(dst, weights_only=False)["gaunt_conversion"]


def _one_line_error(capsys, path, *needles):
    """The CLI's stderr: one line naming ``path`` and each of ``needles``, no traceback."""
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("gaunt-convert-equiformer-v2: error: ") and str(path) in err, err
    for needle in needles:
        assert needle in err, err
    return err


def test_cli_names_the_file_and_what_was_expected_for_unreadable_inputs(tmp_path, capsys):
    """Inputs that are not a fairchem checkpoint -- a whole pickled model (as MACE saves one), a
    truncated checkpoint, a text file, an empty file, a folder, a missing file -- each give exit status
    2 and one line naming the file and saying a fairchem checkpoint was expected; nothing is written."""
    config = hydra_model_config("equiformer_v2_backbone")
    good = tmp_path / "stock.pt"
    torch.save(_fake_checkpoint(config, build_model(config), with_ema=False), good)
    model = tmp_path / "model.model"
    torch.save(torch.nn.Linear(2, 2), model)  # a whole module, not a checkpoint dict
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    text = tmp_path / "structures.xyz"
    text.write_text("2\nLattice=\"5 0 0 0 5 0 0 0 5\"\nCu 0 0 0\nO 0 0 1.8\n")
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    folder = tmp_path / "folder"
    folder.mkdir()
    cases = {
        model: ("not a fairchem checkpoint", "torch.nn.modules.linear.Linear", "'config' and 'state_dict'"),
        truncated: ("cannot be read as a PyTorch checkpoint", "expected a fairchem checkpoint"),
        text: ("cannot be read as a PyTorch checkpoint", "expected a fairchem checkpoint"),
        empty: ("cannot be read as a PyTorch checkpoint", "expected a fairchem checkpoint"),
        folder: ("is a folder", "expected a fairchem checkpoint"),
        tmp_path / "missing.pt": ("no such file", "expected a fairchem checkpoint"),
    }
    for src, needles in cases.items():
        dst = tmp_path / f"out-{src.name}"
        capsys.readouterr()
        assert main([str(src), str(dst)]) == 2, src
        _one_line_error(capsys, src, *needles)
        assert not dst.exists()
    # a checkpoint dict without the two entries says which entries it has
    torch.save({"model": {}, "optimizer": {}}, tmp_path / "other.pt")
    assert main([str(tmp_path / "other.pt"), str(tmp_path / "out.pt")]) == 2
    _one_line_error(capsys, tmp_path / "other.pt", "'config' and 'state_dict'", "['model', 'optimizer']")


def test_a_mace_model_is_pointed_to_the_mace_converter():
    """A MACE model object (what ``torch.load`` gives for a ``.model`` file) is named as such and
    pointed to gaunt-convert-mace, instead of failing inside the checkpoint's entries."""
    mace_like = type("ScaleShiftMACE", (torch.nn.Module,), {"__module__": "mace.modules.models"})()
    with pytest.raises(GauntConfigError, match=r"mace\.modules\.models\.ScaleShiftMACE.*gaunt-convert-mace"):
        convert_checkpoint(mace_like)


def test_cli_refuses_a_folder_as_output(tmp_path, capsys):
    config = hydra_model_config("equiformer_v2_backbone")
    src = tmp_path / "stock.pt"
    torch.save(_fake_checkpoint(config, build_model(config), with_ema=False), src)
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main([str(src), str(out), "--force"]) == 2
    _one_line_error(capsys, out, "is a folder")
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
