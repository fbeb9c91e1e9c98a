"""Gaunt blocks start at the scale of the upstream blocks they replace (per-degree RMS on real acac edges).

A Gaunt model whose convolution starts 10-100x smaller than MACE's trains on a plateau for its first
hundred steps; these checks compare, degree by degree, the RMS of each replaced block's output in a
freshly initialised Gaunt model with the same quantity in the upstream model, averaged over three
initialisations, on a batch of real acetylacetone configurations.

Marked ``e3nn044``: the same tests run again under mace-torch's pinned e3nn 0.4.4.
"""
from __future__ import annotations

from typing import Dict, List

import pytest

import mace  # noqa: F401
import torch

from conftest import _build_tiny_model, acac_batch

from gaunt_plugins._e3nn import o3
from gaunt_plugins.adapters.mace_blocks import _copy_model, gauntify_model
from gaunt_plugins.adapters.mace_config import GauntOptions

pytestmark = pytest.mark.e3nn044

SEEDS = (0, 1, 2, 3)


def _natural(channels: int, lmax: int) -> str:
    return "+".join(f"{channels}x{l}{'e' if l % 2 == 0 else 'o'}" for l in range(lmax + 1))


def _square_sums(t: torch.Tensor, irreps) -> Dict[int, List[float]]:
    """``{l: [sum of squares, count]}`` over every copy of degree ``l`` in a flat ``mul_ir`` tensor."""
    irreps = o3.Irreps(str(irreps))
    flat = t.detach().reshape(t.shape[0], -1)
    out: Dict[int, List[float]] = {}
    for (_, ir), sl in zip(irreps, irreps.slices()):
        acc = out.setdefault(ir.l, [0.0, 0.0])
        acc[0] += flat[:, sl].pow(2).sum().item()
        acc[1] += flat[:, sl].numel()
    return out


def _record(model: torch.nn.Module, batch: dict, sums: Dict[str, Dict[int, List[float]]], inputs: dict = None):
    """Add the per-degree square sums of every conv_tp output, message and product output of one forward
    pass to ``sums``; with ``inputs`` given, also keep the inputs of each symmetric contraction."""
    hooks = []

    def add(key):
        def hook(module, args, out):
            for l, (s, n) in _square_sums(out, module.irreps_out).items():
                acc = sums.setdefault(key, {}).setdefault(l, [0.0, 0.0])
                acc[0] += s
                acc[1] += n
        return hook

    for i, block in enumerate(model.interactions):
        hooks.append(block.conv_tp.register_forward_hook(add(f"interaction {i} conv_tp")))
        hooks.append(block.linear.register_forward_hook(add(f"interaction {i} message")))
    for i, product in enumerate(model.products):
        sc = product.symmetric_contractions
        hooks.append(sc.register_forward_hook(add(f"product {i}")))
        if inputs is not None:
            hooks.append(sc.register_forward_pre_hook(lambda m, args, i=i: inputs.__setitem__(i, args)))
    try:
        model(batch, training=True, compute_force=True)
    finally:
        for h in hooks:
            h.remove()


def _ratios(gaunt: dict, upstream: dict) -> Dict[str, float]:
    out = {}
    for key, degrees in upstream.items():
        for l, (s, n) in degrees.items():
            g = gaunt[key][l]
            out[f"{key} l={l}"] = ((g[0] / g[1]) / (s / n)) ** 0.5
    return out


@pytest.mark.parametrize("max_L", [0, 1, 2, 3])
def test_gaunt_blocks_start_at_the_upstream_scale(float64, max_L):
    batch = acac_batch(6)
    upstream, gaunt, product_same_input, product_upstream = {}, {}, {}, {}
    for seed in SEEDS:
        torch.manual_seed(seed)
        model = _build_tiny_model(_natural(16, max_L), 3, 2, True, 2)
        torch.manual_seed(100 + seed)
        converted, _ = gauntify_model(_copy_model(model), GauntOptions(targets=frozenset({"conv", "product"})))
        for block in converted.interactions:  # per-edge conv outputs, as upstream's (the fused message is
            del block.conv_fusion             # equal to their scatter-sum: test_mace_models.py)
        inputs = {}
        _record(model, batch, upstream, inputs)
        _record(converted, batch, gaunt)
        # the many-body products on exactly the upstream product's input
        for i, args in inputs.items():
            for key, module, store in (("product", converted.products[i].symmetric_contractions, product_same_input),
                                       ("product", model.products[i].symmetric_contractions, product_upstream)):
                for l, (s, n) in _square_sums(module(*args), module.irreps_out).items():
                    acc = store.setdefault(f"{key} {i} (same input)", {}).setdefault(l, [0.0, 0.0])
                    acc[0] += s
                    acc[1] += n
    ratios = _ratios(gaunt, upstream)
    ratios.update(_ratios(product_same_input, product_upstream))
    assert any("conv_tp" in k for k in ratios) and any("same input" in k for k in ratios)
    off = {k: round(r, 3) for k, r in ratios.items() if not 0.5 <= r <= 2.0}

    assert not off, f"Gaunt / upstream per-degree RMS outside [0.5, 2]: {off} (all: {ratios})"
