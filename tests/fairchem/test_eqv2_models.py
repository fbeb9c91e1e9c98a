"""Gaunt EquiformerV2 models: equivariance, stock unchanged, routing by key, clear errors."""
from __future__ import annotations

import copy

import pytest
import torch

pytest.importorskip("fairchem.core")

from eqv2_testing import (  # noqa: E402
    GAUNT_BACKBONE_PATH,
    backbone_config,
    batch_from_atoms,
    build_model,
    emt_structures,
    energy_forces,
    flat_model_config,
    hydra_model_config,
    predict,
    random_rotation,
    rotated_atoms,
    zero_selfmix,
)
from gaunt_plugins.adapters.equiformer_v2 import (  # noqa: E402
    GauntEquiformerV2,
    GauntEquiformerV2Backbone,
    GauntTransBlockV2,
)
from gaunt_plugins.adapters.equiformer_v2_config import GauntConfigError  # noqa: E402
from gaunt_plugins.patches.fairchem import FairchemPatch  # noqa: E402


@pytest.fixture(scope="module")
def structures():
    return emt_structures(2, seed=3)


def _check_rotation(model, structures, rot_seed=0, e_tol=2e-4, f_tol=2e-4):
    model.eval()
    rot = random_rotation(rot_seed)
    with torch.no_grad():
        e0, f0 = energy_forces(model, batch_from_atoms(structures))
        e1, f1 = energy_forces(model, batch_from_atoms([rotated_atoms(a, rot) for a in structures]))
    r = torch.as_tensor(rot, dtype=f0.dtype)
    scale_e = e0.abs().max().clamp_min(1e-3)
    scale_f = f0.abs().max().clamp_min(1e-3)
    assert (e1 - e0).abs().max() < e_tol * scale_e, (e0, e1)
    assert (f1 - f0 @ r.T).abs().max() < f_tol * scale_f
    # and the forces are not trivially invariant (the check above can fail)
    assert (f1 - f0).abs().max() > 10 * f_tol * scale_f
    return e0, f0


def test_gaunt_backbone_energy_invariant_forces_equivariant(structures):
    torch.manual_seed(1)
    model = build_model(hydra_model_config(GAUNT_BACKBONE_PATH))
    assert isinstance(model.backbone, GauntEquiformerV2Backbone)
    assert all(isinstance(b, GauntTransBlockV2) for b in model.backbone.blocks)
    e0, f0 = _check_rotation(model, structures)
    # the self-mix really contributes (so the test exercises it)
    zeroed = copy.deepcopy(model)
    zero_selfmix(zeroed)
    with torch.no_grad():
        e_z, f_z = energy_forces(zeroed, batch_from_atoms(structures))
    assert (e_z - e0).abs().max() > 1e-4 * e0.abs().max()


def test_flat_gaunt_model_rotation(structures):
    torch.manual_seed(2)
    model = build_model(flat_model_config(lmax_list=[2], mmax_list=[1]))
    assert isinstance(model, GauntEquiformerV2)
    _check_rotation(model, structures, rot_seed=5)


def test_gaunt_fourier_method_matches_grid(structures):
    torch.manual_seed(4)
    a = build_model(hydra_model_config(GAUNT_BACKBONE_PATH, gaunt_method="grid")).eval()
    b = build_model(hydra_model_config(GAUNT_BACKBONE_PATH, gaunt_method="fourier")).eval()
    b.load_state_dict(a.state_dict())
    batch = batch_from_atoms(structures)
    with torch.no_grad():
        ea, fa = energy_forces(a, batch)
        eb, fb = energy_forces(b, batch)
    assert torch.allclose(ea, eb, rtol=1e-4, atol=1e-5)
    assert torch.allclose(fa, fb, rtol=1e-4, atol=1e-5)


def test_stock_model_without_key_is_unchanged(structures, unpatched):
    """Same seed, stock names, no key: the patched registry builds the very same model."""
    config = hydra_model_config("equiformer_v2_backbone")
    torch.manual_seed(7)
    stock = build_model(config).eval()
    FairchemPatch().apply()
    try:
        torch.manual_seed(7)
        again = build_model(config).eval()
    finally:
        FairchemPatch().revert()
    from fairchem.core.models.equiformer_v2.equiformer_v2 import EquiformerV2Backbone

    assert type(again.backbone) is EquiformerV2Backbone
    sa, sb = stock.state_dict(), again.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    batch = batch_from_atoms(structures)
    e0, f0 = predict(stock, batch)  # the forward draws a random roll per edge: same seed, same draws
    e1, f1 = predict(again, batch)
    assert torch.equal(e0, e1) and torch.equal(f0, f1)


def test_flat_stock_model_without_key_is_unchanged(patched):
    from fairchem.core.models.equiformer_v2.equiformer_v2_deprecated import EquiformerV2

    torch.manual_seed(3)
    model = build_model(flat_model_config(name="equiformer_v2"))
    assert type(model) is EquiformerV2
    assert not any("gaunt" in k for k in model.state_dict())


def test_key_on_stock_names_selects_gaunt(patched):
    model = build_model(hydra_model_config("equiformer_v2_backbone", tensor_product="gaunt", gaunt_method="grid"))
    assert type(model.backbone) is GauntEquiformerV2Backbone
    assert model.backbone.gaunt_options.method == "grid"
    flat = build_model(flat_model_config(name="equiformer_v2", tensor_product="gaunt"))
    assert type(flat) is GauntEquiformerV2
    by_name = build_model(hydra_model_config("equiformer_v2_gaunt_backbone"))
    assert type(by_name.backbone) is GauntEquiformerV2Backbone
    by_flat_name = build_model(flat_model_config(name="equiformer_v2_gaunt"))
    assert type(by_flat_name) is GauntEquiformerV2


def test_zero_init_gaunt_equals_stock_with_same_seed(structures):
    """Stock parameters are built first with the stock random draws; a zero self-mix adds nothing."""
    torch.manual_seed(11)
    stock = build_model(hydra_model_config("equiformer_v2_backbone")).eval()
    torch.manual_seed(11)
    gaunt = build_model(hydra_model_config(GAUNT_BACKBONE_PATH, gaunt_zero_init=True)).eval()
    sg = gaunt.state_dict()
    for k, v in stock.state_dict().items():
        assert torch.equal(sg[k], v), k
    new = sorted(set(sg) - set(stock.state_dict()))
    assert new and all(".gaunt_mix." in k for k in new)
    batch = batch_from_atoms(structures)
    e0, f0 = predict(stock, batch)
    e1, f1 = predict(gaunt, batch)
    assert (e0 - e1).abs().max() <= 1e-6 and (f0 - f1).abs().max() <= 1e-6


def test_unpatched_stock_class_rejects_the_key(unpatched):
    """Without the patch fairchem is untouched: its own class refuses the unknown key."""
    with pytest.raises(TypeError, match="tensor_product"):
        build_model(hydra_model_config("equiformer_v2_backbone", tensor_product="gaunt"))


def test_no_weight_decay_lists_selfmix_biases_and_norms():
    model = GauntEquiformerV2Backbone(**backbone_config())
    nwd = model.no_weight_decay()
    assert "blocks.0.gaunt_mix.bias" in nwd
    assert "blocks.1.gaunt_mix.input_weight1" in nwd
    assert "blocks.0.gaunt_mix.weight" not in nwd
    assert any(k.startswith("blocks.0.gaunt_mix.norm.") for k in nwd)


@pytest.mark.parametrize(
    "overrides, match",
    [
        (dict(lmax_list=[2, 3], mmax_list=[2, 2]), "one resolution"),
        (dict(lmax_list=[3], mmax_list=[4]), "mmax"),
        (dict(gaunt_methd="grid"), "unknown Gaunt option"),
        (dict(gaunt_method="cg"), "gaunt_method"),
        (dict(tensor_product="cueq"), "only accepts"),
        (dict(gaunt_zero_init="yes"), "gaunt_zero_init"),
    ],
)
def test_unsupported_options_raise_clear_errors(overrides, match):
    with pytest.raises(GauntConfigError, match=match):
        GauntEquiformerV2Backbone(**backbone_config(**overrides))


def test_positional_arguments_are_refused():
    with pytest.raises(TypeError, match="keyword"):
        GauntEquiformerV2Backbone(True)


def test_selector_errors(patched):
    with pytest.raises(GauntConfigError, match="without `tensor_product: gaunt`"):
        build_model(hydra_model_config("equiformer_v2_backbone", gaunt_method="grid"))
    with pytest.raises(GauntConfigError, match="not supported"):
        build_model(hydra_model_config("equiformer_v2_backbone", tensor_product="e3nn"))


def test_degree_beyond_the_product_tables_is_refused():
    from gaunt_plugins.adapters.equiformer_v2_selfmix import GauntSelfMix

    with pytest.raises(ValueError, match="Gaunt self-mix"):
        GauntSelfMix(40, 2)  # a degree-120 quadrature: beyond the grid tables
