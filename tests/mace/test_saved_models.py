"""Gaunt MACE models saved by earlier versions of gaunt-plugins load and predict exactly what they did.

``data/gaunt_mace_model_v0.pt.xz``: a small Gaunt MACE model (conv and product, float64) pickled by the
version that computed one plain product ``w1 w2 w_out`` per channel, with its energies and forces on
three acac configurations.
"""
from __future__ import annotations

import copy
import io
import lzma
from pathlib import Path

import mace  # noqa: F401
import torch

from conftest import acac_batch

DATA = Path(__file__).resolve().parent / "data"


def _load(name: str):
    return torch.load(io.BytesIO(lzma.decompress((DATA / name).read_bytes())), weights_only=False)


def _predict(model):
    out = model(acac_batch(3), training=False, compute_force=True)
    return out["energy"].detach(), out["forces"].detach()


def test_a_model_saved_before_conv_products_predicts_what_it_did(float64):
    saved = _load("gaunt_mace_model_v0.pt.xz")
    model = saved["model"]
    convs = [block.conv_tp for block in model.interactions]
    assert all(c.products == 1 and c.weight_offset == 0.0 for c in convs)
    energy, forces = _predict(model)
    assert torch.allclose(energy, saved["energy"], rtol=0, atol=1e-10)
    assert torch.allclose(forces, saved["forces"], rtol=0, atol=1e-10)
    # the comparison sees the parameterisation: today's default offset changes the prediction
    shifted = copy.deepcopy(model)
    for block in shifted.interactions:
        block.conv_tp.weight_offset = 1.0
    assert not torch.allclose(_predict(shifted)[0], saved["energy"], rtol=0, atol=1e-6)
