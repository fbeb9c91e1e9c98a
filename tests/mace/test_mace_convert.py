"""``gaunt-convert-mace``: every transferable weight bit-identical, the rest reported."""
from __future__ import annotations

import pytest

import mace  # noqa: F401
import torch

from conftest import acac_batch, tiny_model

from gaunt_plugins.adapters.mace_blocks import GauntProductBasisBlock, GauntRealAgnosticResidualInteractionBlock
from gaunt_plugins.adapters.mace_convert import main

pytestmark = pytest.mark.e3nn044


def test_convert_keeps_every_transferable_weight_bit_identical(tmp_path, float64, capsys):
    model = tiny_model(residual_first=False)
    for p in model.parameters():  # make every weight distinguishable from a fresh initialisation
        p.data.add_(torch.randn_like(p) * 0.1)
    torch.save(model, tmp_path / "in.model")
    assert main([str(tmp_path / "in.model"), str(tmp_path / "out.model")]) == 0
    printed = capsys.readouterr().out
    gaunt = torch.load(tmp_path / "out.model", weights_only=False)

    assert isinstance(gaunt.interactions[1], GauntRealAgnosticResidualInteractionBlock)
    assert all(isinstance(p, GauntProductBasisBlock) for p in gaunt.products)
    old, new = model.state_dict(), gaunt.state_dict()
    copied, fresh = [], []
    for name, tensor in new.items():
        if name in old and old[name].shape == tensor.shape:
            assert torch.equal(tensor, old[name]), name  # bit for bit
            copied.append(name)
        else:
            fresh.append(name)
    # everything MACE users carry over is there
    for prefix in ("node_embedding.", "radial_embedding.", "atomic_energies_fn.", "scale_shift.", "readouts.",
                   "interactions.0.linear_up.", "interactions.1.skip_tp.", "interactions.1.conv_tp_weights.layer0.",
                   "products.0.linear.", "products.1.linear."):
        assert any(n.startswith(prefix) for n in copied), prefix
    # each copied tensor is printed, and so is each fresh parameter
    for name in copied:
        assert f"  {name}\n" in printed, name
    fresh_parameters = {n for n, _ in gaunt.named_parameters()} - set(copied)
    assert fresh_parameters and all(f"  {n}\n" in printed for n in fresh_parameters)
    assert {n for n in fresh_parameters} <= set(fresh)
    assert all(".conv_tp." in n or "symmetric_contractions" in n or "conv_tp_weights.layer" in n
               or ".linear.weight" in n for n in fresh_parameters), fresh_parameters
    assert torch.equal(gaunt.atomic_energies_fn.atomic_energies, model.atomic_energies_fn.atomic_energies)

    # the converted model is a working, symmetric model
    energy = gaunt(acac_batch(2), training=False, compute_force=True)["energy"]
    assert torch.isfinite(energy).all()


def test_convert_targets_and_errors(tmp_path, float64, capsys):
    model = tiny_model()
    torch.save(model, tmp_path / "in.model")
    assert main([str(tmp_path / "in.model"), str(tmp_path / "conv.model"), "--targets", "conv", "-q"]) == 0
    conv = torch.load(tmp_path / "conv.model", weights_only=False)
    # products untouched: all their tensors bit-identical
    for name, tensor in model.products.state_dict().items():
        assert torch.equal(conv.products.state_dict()[name], tensor)
    assert main([str(tmp_path / "in.model"), str(tmp_path / "x.model"), "--targets", "edges"]) == 2
    assert "unknown target" in capsys.readouterr().err
    torch.save(torch.nn.Linear(2, 2), tmp_path / "not_mace.model")
    assert main([str(tmp_path / "not_mace.model"), str(tmp_path / "x.model")]) == 2
