"""The per-path Gaunt convolution (``gaunt_conv_products: paths``) is MACE's convolution.

MACE's ``conv_tp`` keeps one ``C x l3`` block per path ``l1 x l2 -> l3`` and its ``linear`` mixes
``(path, channel) -> channel`` per degree; a convolution whose output sums paths (``K`` grid products per
channel) cannot express that. These tests check, on real acetylacetone edges, that the per-path Gaunt
convolution computes MACE's ``conv_tp`` (same layout, same weights, same values) and that Gaunt convolution
+ ``linear`` fits MACE's randomly initialised ``conv_tp`` + ``linear`` of the second interaction exactly.

Marked ``e3nn044``: the same tests run again under mace-torch's pinned e3nn 0.4.4.
"""
from __future__ import annotations

import argparse
from typing import Dict, Tuple

import pytest

import mace  # noqa: F401
import torch
from mace.modules.irreps_tools import tp_out_irreps_with_instructions

from conftest import _build_tiny_model, acac_batch

from gaunt_plugins._e3nn import o3
from gaunt_plugins.adapters.mace_blocks import _copy_model, gaunt_construction, gauntify_model
from gaunt_plugins.adapters.mace_config import GauntOptions, GauntSettingsError, add_arguments, options_from_args
from gaunt_plugins.layers import GauntPathConvolution

pytestmark = pytest.mark.e3nn044

PATHS = GauntOptions(targets=frozenset({"conv", "product"}), conv_products="paths")


def _natural(channels: int, lmax: int) -> str:
    return "+".join(f"{channels}x{l}{'e' if l % 2 == 0 else 'o'}" for l in range(lmax + 1))


def _second_interaction_inputs(max_L: int, seed: int = 0):
    """A randomly initialised upstream MACE (4 channels, max_ell 3) and, on 4 acac configurations, what its second
    interaction's ``conv_tp`` receives: ``(block, node_feats [N, dim], edge_attrs, tp_weights, edge_index)``."""
    torch.manual_seed(seed)
    model = _build_tiny_model(_natural(4, max_L), 3, 2, True, 2)
    batch = acac_batch(4)
    block = model.interactions[1]
    seen = {}
    block.linear_up.register_forward_hook(lambda m, args, out: seen.__setitem__("node_feats", out.detach()))
    block.conv_tp_weights.register_forward_hook(lambda m, args, out: seen.__setitem__("weights", out.detach()))
    model(batch, training=False, compute_force=False)
    return block, seen["node_feats"], batch["edge_index"], seen["weights"], model, batch


def _edge_attrs(model, batch) -> torch.Tensor:
    vectors = batch["positions"][batch["edge_index"][1]] - batch["positions"][batch["edge_index"][0]]
    return model.spherical_harmonics(vectors + batch["shifts"])


def _message(conv, node_feats, edge_attrs, weights, edge_index) -> torch.Tensor:
    mji = conv(node_feats[edge_index[0]], edge_attrs, weights)
    return mji.new_zeros(node_feats.shape[0], mji.shape[1]).index_add(0, edge_index[1], mji)


def _linear_fit_residual(features: torch.Tensor, irreps_mid, target: torch.Tensor, irreps_out) -> float:
    """The relative residual of the best ``linear``: per output degree, every block of ``features`` with that irrep,
    all channels, mixed into the target's channels (least squares over nodes and ``m``)."""
    irreps_mid, irreps_out = o3.Irreps(str(irreps_mid)), o3.Irreps(str(irreps_out))
    num = den = 0.0
    for (mul_o, ir_o), sl_o in zip(irreps_out, irreps_out.slices()):
        y = target[:, sl_o].reshape(-1, mul_o, ir_o.dim).transpose(1, 2).reshape(-1, mul_o)
        cols = [features[:, sl].reshape(-1, mul, ir.dim).transpose(1, 2).reshape(-1, mul)
                for (mul, ir), sl in zip(irreps_mid, irreps_mid.slices()) if ir == ir_o]
        x = torch.cat(cols, dim=1)
        solution = torch.linalg.lstsq(x, y, driver="gelsd").solution
        num += (x @ solution - y).square().sum().item()
        den += y.square().sum().item()
    return (num / den) ** 0.5


@pytest.mark.parametrize("max_L", [1, 2, 3])
def test_path_convolution_computes_mace_conv_tp(float64, max_L):
    block, node_feats, edge_index, weights, model, batch = _second_interaction_inputs(max_L)
    sh = _edge_attrs(model, batch)
    conv = GauntPathConvolution(block.edge_irreps, block.edge_attrs_irreps, block.target_irreps)
    irreps_mid, _ = tp_out_irreps_with_instructions(o3.Irreps(str(block.edge_irreps)),
                                                     o3.Irreps(str(block.edge_attrs_irreps)),
                                                     o3.Irreps(str(block.target_irreps)))
    assert conv.irreps_out == irreps_mid and conv.weight_numel == block.conv_tp.weight_numel
    x = node_feats[edge_index[0]]
    expected = block.conv_tp(x, sh, weights)
    scale = expected.abs().max().item()
    assert (conv(x, sh, weights) - expected).abs().max().item() <= 1e-12 * scale
    fused = conv(node_feats, sh, weights, edge_index)
    assert (fused - _message(block.conv_tp, node_feats, sh, weights, edge_index)).abs().max().item() <= 1e-11 * scale


@pytest.mark.parametrize("max_L", [1, 2, 3])
def test_path_convolution_and_linear_fit_mace_conv_tp_and_linear_on_acac_edges(float64, max_L):
    """The function class: MACE's second-interaction ``linear(conv_tp(...))`` on real edges is reached by the per-path
    Gaunt convolution (same radial weights) followed by a ``linear`` fitted by least squares. (What the factorised
    convolution leaves: benchmarks/conv_function_class.py.)"""
    block, node_feats, edge_index, weights, model, batch = _second_interaction_inputs(max_L, seed=max_L)
    sh = _edge_attrs(model, batch)
    target = block.linear(_message(block.conv_tp, node_feats, sh, weights, edge_index))
    conv = GauntPathConvolution(block.edge_irreps, block.edge_attrs_irreps, block.target_irreps)
    features = conv(node_feats, sh, weights, edge_index)
    assert _linear_fit_residual(features, conv.irreps_out, target, block.irreps_out) < 1e-6


def test_an_upstream_model_converts_to_path_convolutions_exactly(float64):
    torch.manual_seed(3)
    model = _build_tiny_model(_natural(8, 2), 3, 3, True, 2)
    batch = acac_batch(3)
    converted, report = gauntify_model(_copy_model(model), GauntOptions(targets=frozenset({"conv"}),
                                                                        conv_products="paths"))
    assert not report.fresh, report.fresh
    assert all(isinstance(b.conv_tp, GauntPathConvolution) for b in converted.interactions)
    a = model(dict(batch), training=True, compute_force=True)
    b = converted(dict(batch), training=True, compute_force=True)
    assert (a["energy"] - b["energy"]).abs().max().item() <= 1e-10 * a["energy"].abs().max().item()
    assert (a["forces"] - b["forces"]).abs().max().item() <= 1e-10 * a["forces"].abs().max().item()


def test_a_scripted_model_with_path_convolutions_gives_eager_energies_and_forces(float64):
    from e3nn.util import jit

    torch.manual_seed(4)
    with gaunt_construction(PATHS):
        model = _build_tiny_model(_natural(8, 2), 3, 3, True, 2)
    assert all(isinstance(b.conv_tp, GauntPathConvolution) for b in model.interactions)
    batch = acac_batch(3)
    scripted = jit.compile(model)
    a = model(dict(batch), training=False, compute_force=True)
    b = scripted(dict(batch), training=False, compute_force=True)
    for key in ("energy", "forces"):
        assert (a[key] - b[key]).abs().max().item() <= 1e-10 * a[key].abs().max().item()


def test_path_convolution_built_in_float32_computes_from_float64_coefficients_after_double(float64):
    torch.set_default_dtype(torch.float32)
    try:
        conv = GauntPathConvolution(_natural(2, 2), "1x0e+1x1o+1x2e+1x3o", _natural(2, 3))
    finally:
        torch.set_default_dtype(torch.float64)
    assert conv.coupling.dtype == torch.float32
    exact = GauntPathConvolution(_natural(2, 2), "1x0e+1x1o+1x2e+1x3o", _natural(2, 3)).coupling
    assert torch.equal(conv.double().coupling, exact)


def test_path_convolution_refuses_paths_a_gaunt_product_cannot_form():
    with pytest.raises(ValueError, match=r"1e x 1o -> 1o.*l1 \+ l2 \+ l3 odd"):
        GauntPathConvolution("4x0e+4x1e", "1x0e+1x1o", "4x0e+4x1o+4x1e")


@pytest.mark.parametrize("value", ["paths", "PATHS"])
def test_gaunt_conv_products_paths_is_accepted_on_the_command_line(value):
    parser = add_arguments(argparse.ArgumentParser())
    args = parser.parse_args(["--tensor_product", "gaunt", "--gaunt_targets", "conv,product",
                              "--gaunt_conv_products", value])
    assert options_from_args(args).conv_products == "paths"


def test_an_unknown_gaunt_conv_products_value_names_what_is_allowed():
    with pytest.raises(GauntSettingsError, match=r"expected 'paths'.*or a whole number from 1 to 16.*'path'"):
        GauntOptions(conv_products="path")


def test_path_convolutions_start_at_the_upstream_scale(float64):
    """A freshly built per-path model (its own initialisation, not a copy) against upstream, per degree, on acac:
    the RMS of every interaction's message within [0.5, 2] of upstream's (averaged over 3 initialisations)."""
    batch = acac_batch(6)
    sums: Dict[Tuple[str, int, int], list] = {}

    def record(model, tag):
        hooks = []
        for i, block in enumerate(model.interactions):
            def hook(module, args, out, i=i):
                irreps = o3.Irreps(str(module.irreps_out))
                for (_, ir), sl in zip(irreps, irreps.slices()):
                    acc = sums.setdefault((tag, i, ir.l), [0.0, 0])
                    acc[0] += out[:, sl].square().sum().item()
                    acc[1] += out[:, sl].numel()
            hooks.append(block.linear.register_forward_hook(hook))
        model(dict(batch), training=True, compute_force=True)
        for h in hooks:
            h.remove()

    for seed in range(3):
        torch.manual_seed(seed)
        record(_build_tiny_model(_natural(16, 2), 3, 2, True, 2), "upstream")
        torch.manual_seed(100 + seed)
        with gaunt_construction(PATHS):
            record(_build_tiny_model(_natural(16, 2), 3, 2, True, 2), "paths")
    ratios = {(i, l): ((s / n) / (sums[("upstream", i, l)][0] / sums[("upstream", i, l)][1])) ** 0.5
              for (tag, i, l), (s, n) in sums.items() if tag == "paths"}
    assert len(ratios) == 8  # two interactions, degrees 0..3 (max_ell 3)
    off = {k: round(r, 3) for k, r in ratios.items() if not 0.5 <= r <= 2.0}
    assert not off, f"per-path / upstream per-degree message RMS outside [0.5, 2]: {off} (all: {ratios})"


def test_gaunt_convert_mace_turns_an_upstream_model_into_one_that_predicts_what_it_did(tmp_path, float64):
    from gaunt_plugins.adapters.mace_convert import main

    torch.manual_seed(5)
    model = _build_tiny_model(_natural(4, 1), 2, 2, True, 2)
    torch.save(model, tmp_path / "in.model")
    assert main([str(tmp_path / "in.model"), str(tmp_path / "out.model"), "--targets", "conv", "-q"]) == 0
    gaunt = torch.load(tmp_path / "out.model", weights_only=False)
    assert all(isinstance(b.conv_tp, GauntPathConvolution) for b in gaunt.interactions)
    batch = acac_batch(2)
    a = model(dict(batch), training=False, compute_force=True)
    b = gaunt(dict(batch), training=False, compute_force=True)
    assert (a["forces"] - b["forces"]).abs().max().item() <= 1e-10 * a["forces"].abs().max().item()
