"""Whole models pickled by an earlier version of the adapter (``torch.save(model)``) still load and
predict what they predicted when they were saved.

``data/gaunt_eqv2_models.pt.xz``: an xz-compressed ``torch.save`` of ``{"models", "structures",
"energy", "forces"}``: a tiny hydra model with a ``GauntEquiformerV2Backbone`` and a tiny flat
``GauntEquiformerV2`` (one block, lmax 2, random self-mix), pickled as built; two EMT Cu(111) slabs
with an adsorbate (numbers, positions, cell, pbc, tags); the energies ``[2]`` and forces
``[atoms, 3]`` each model gave on them (eval, no grad, ``torch.manual_seed(0)`` before the forward).
A pickle names every class by its import path, so this fails if a class is renamed or moved, or if
the forward reads an attribute that old pickles do not carry.
"""
from __future__ import annotations

import copy
import io
import lzma
from pathlib import Path

import pytest
import torch

pytest.importorskip("fairchem.core")

from eqv2_testing import batch_from_atoms, predict, zero_selfmix  # noqa: E402
from gaunt_plugins.adapters.equiformer_v2 import (  # noqa: E402
    GauntEquiformerV2,
    GauntEquiformerV2Backbone,
    GauntTransBlockV2,
)

DATA = Path(__file__).resolve().parent / "data" / "gaunt_eqv2_models.pt.xz"


@pytest.fixture(scope="module")
def pickled():
    return torch.load(io.BytesIO(lzma.decompress(DATA.read_bytes())), map_location="cpu", weights_only=False)


@pytest.fixture(scope="module")
def batch(pickled):
    from ase import Atoms

    atoms = [Atoms(numbers=s["numbers"], positions=s["positions"], cell=s["cell"], pbc=s["pbc"], tags=s["tags"])
             for s in pickled["structures"]]
    return batch_from_atoms(atoms)


@pytest.mark.parametrize("name, cls", [("hydra", GauntEquiformerV2Backbone), ("flat", GauntEquiformerV2)])
def test_pickled_model_loads_and_predicts_as_when_saved(pickled, batch, name, cls):
    model = copy.deepcopy(pickled["models"][name])
    gaunt = model.backbone if name == "hydra" else model
    assert type(gaunt) is cls
    assert all(isinstance(block, GauntTransBlockV2) for block in gaunt.blocks)
    assert any(".gaunt_mix." in key for key in gaunt.no_weight_decay())
    energy, forces = predict(model, batch)
    want_e, want_f = pickled["energy"][name], pickled["forces"][name]
    torch.testing.assert_close(energy, want_e, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(forces, want_f, rtol=1e-4, atol=1e-6)

    # the self-mix is part of what is compared: without it the model predicts something else
    zero_selfmix(model)
    energy_without, _ = predict(model, batch)
    assert (energy_without - want_e).abs().max() > 100 * (1e-6 + 1e-4 * want_e.abs().max())
