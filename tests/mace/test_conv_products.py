"""K Gaunt products per channel reproduce the per-path radial weights of MACE's ``uvu`` convolution.

MACE's interaction convolution gives every path ``(l1, l2 -> l3)`` and channel its own per-edge weight; a
Gaunt product ties them to ``w1[l1] w2[l2] w3[l3]``. A sum of ``K`` products is a rank-``K`` decomposition
of the path-weight tensor. Here a random set of ``uvu`` path weights is fitted (alternating least squares)
for MACE's second-interaction shape (node degrees 0..2, harmonics 0..3, outputs 0..3), the fit is put
into a ``GauntConvolution(products=K)`` and its output, summed over the copies of each degree, is
compared with MACE's, summed over the path copies of each degree.

Marked ``e3nn044``: the same tests run again under mace-torch's pinned e3nn 0.4.4.
"""
from __future__ import annotations

import itertools
from typing import Dict, List, Tuple

import numpy as np
import pytest

import mace  # noqa: F401
import torch
from mace.modules.irreps_tools import tp_out_irreps_with_instructions

from gaunt_plugins import GauntConvolution
from gaunt_plugins._e3nn import o3

pytestmark = pytest.mark.e3nn044

C, E = 3, 4
NODE, SH, TARGET = "3x0e+3x1o+3x2e", "1x0e+1x1o+1x2e+1x3o", "3x0e+3x1o+3x2e+3x3o"


def _mace_conv():
    """MACE's conv_tp for the second interaction (built under the float64 default: e3nn keeps its
    Clebsch-Gordan buffers in the default dtype)."""
    irreps_mid, instructions = tp_out_irreps_with_instructions(o3.Irreps(NODE), o3.Irreps(SH), o3.Irreps(TARGET))
    tp = o3.TensorProduct(NODE, SH, irreps_mid, instructions=instructions, shared_weights=False,
                          internal_weights=False)
    return tp.to(torch.float64)


def _paths(tp) -> List[Tuple[int, int, int]]:
    return [(tp.irreps_in1[i.i_in1].ir.l, tp.irreps_in2[i.i_in2].ir.l, tp.irreps_out[i.i_out].ir.l)
            for i in tp.instructions]


def _mace_by_degree(tp, out: torch.Tensor) -> Dict[int, torch.Tensor]:
    """MACE's conv output ``[E, irreps_mid.dim]`` summed over the path copies of each degree: ``{l: [E, C, 2l+1]}``."""
    sums: Dict[int, torch.Tensor] = {}
    for (mul, ir), sl in zip(tp.irreps_out, tp.irreps_out.slices()):
        block = out[:, sl].reshape(out.shape[0], mul, ir.dim)
        sums[ir.l] = sums.get(ir.l, 0) + block
    return sums


def _gaunt_by_degree(conv: GauntConvolution, out: torch.Tensor, products: int) -> Dict[int, torch.Tensor]:
    """A Gaunt conv output summed over its ``products`` copies of each degree: ``{l: [E, C, 2l+1]}``."""
    sums = {}
    for (mul, ir), sl in zip(conv.irreps_out, conv.irreps_out.slices()):
        sums[ir.l] = out[:, sl].reshape(out.shape[0], products, mul // products, ir.dim).sum(1)
    return sums


def _weights(conv: GauntConvolution, w1, w2, w3) -> torch.Tensor:
    """Per-degree weights ``w* [E, K, C, degrees]`` -> the layer's ``[E, (K1+K2+K3) K C]`` layout."""
    stacked = torch.cat([w1, w2, w3], dim=3)  # [E, K, C, K1+K2+K3]
    return stacked.permute(0, 3, 1, 2).reshape(stacked.shape[0], -1)


def _inputs(gen):
    x = torch.randn(E, o3.Irreps(NODE).dim, dtype=torch.float64, generator=gen)
    sh = o3.spherical_harmonics(SH, torch.randn(E, 3, dtype=torch.float64, generator=gen), True,
                                normalization="component")
    return x, sh


def _path_ratios(tp, x, sh) -> Dict[Tuple[int, int, int], float]:
    """Gaunt path / MACE path, one scalar per path (both are proportional to the Clebsch-Gordan coupling)."""
    conv = GauntConvolution(NODE, SH, TARGET, weight_offset=0.0).to(torch.float64)
    ratios = {}
    for p, (l1, l2, l3) in enumerate(_paths(tp)):
        w = torch.zeros(E, tp.weight_numel, dtype=torch.float64)
        w[:, p * C:(p + 1) * C] = 1.0
        mace_out = _mace_by_degree(tp, tp(x, sh, w))[l3]
        one_hot = lambda n, i: torch.nn.functional.one_hot(torch.tensor(i), n).to(torch.float64).expand(E, 1, C, n)
        gw = _weights(conv, one_hot(3, l1), one_hot(4, l2), one_hot(4, l3))
        gaunt_out = _gaunt_by_degree(conv, conv(x, sh, gw), 1)[l3]
        ratio = (gaunt_out * mace_out).sum() / mace_out.square().sum()
        assert torch.allclose(gaunt_out, ratio * mace_out, atol=1e-12), f"path {(l1, l2, l3)} is not proportional"
        ratios[(l1, l2, l3)] = ratio.item()
    return ratios


def _cp_fit(target: np.ndarray, mask: np.ndarray, rank: int, rng, restarts: int = 8, iters: int = 500):
    """Rank-``rank`` CP factors ``(A [I, R], B [J, R], C [L, R])`` fitting ``target`` on ``mask`` (ALS)."""
    best = (np.inf, None)
    shape = target.shape
    entries = [np.argwhere(mask[i] if axis == 0 else (mask[:, i] if axis == 1 else mask[:, :, i]))
               for axis in range(3) for i in range(shape[axis])]
    for _ in range(restarts):
        f = [rng.normal(size=(n, rank)) for n in shape]
        for _ in range(iters):
            k = 0
            for axis in range(3):
                others = [a for a in range(3) if a != axis]
                for i in range(shape[axis]):
                    idx = entries[k]
                    k += 1
                    design = f[others[0]][idx[:, 0]] * f[others[1]][idx[:, 1]]
                    full = [None, None, None]
                    full[axis] = np.full(len(idx), i)
                    full[others[0]], full[others[1]] = idx[:, 0], idx[:, 1]
                    f[axis][i] = np.linalg.lstsq(design, target[tuple(full)], rcond=None)[0]
            residual = np.linalg.norm((np.einsum("ir,jr,lr->ijl", *f) - target) * mask) / np.linalg.norm(target)
            if residual < 1e-12:
                break
        if residual < best[0]:
            best = (residual, f)
        if best[0] < 1e-12:
            break
    return best[1]


def _fit_residual(products: int) -> float:
    gen = torch.Generator().manual_seed(3)
    rng = np.random.default_rng(5)
    tp = _mace_conv()
    x, sh = _inputs(gen)
    ratios = _path_ratios(tp, x, sh)
    paths = _paths(tp)
    w_mace = torch.randn(E, tp.weight_numel, dtype=torch.float64, generator=gen)  # arbitrary uvu path weights
    mask = np.zeros((3, 4, 4))
    for l1, l2, l3 in paths:
        mask[l1, l2, l3] = 1.0
    w1, w2, w3 = (torch.zeros(E, products, C, n, dtype=torch.float64) for n in (3, 4, 4))
    for e, c in itertools.product(range(E), range(C)):
        target = np.zeros((3, 4, 4))
        for p, (l1, l2, l3) in enumerate(paths):
            target[l1, l2, l3] = w_mace[e, p * C + c].item() / ratios[(l1, l2, l3)]
        a, b, d = _cp_fit(target, mask, products, rng)
        w1[e, :, c], w2[e, :, c], w3[e, :, c] = (torch.from_numpy(t.T) for t in (a, b, d))
    conv = GauntConvolution(NODE, SH, TARGET, products=products, weight_offset=0.0).to(torch.float64)
    gaunt = _gaunt_by_degree(conv, conv(x, sh, _weights(conv, w1, w2, w3)), products)
    mace_out = _mace_by_degree(tp, tp(x, sh, w_mace))
    num = sum((gaunt[l] - mace_out[l]).square().sum() for l in mace_out)
    return (num / sum(m.square().sum() for m in mace_out.values())).sqrt().item()


def test_three_products_reproduce_arbitrary_uvu_path_weights(float64):
    assert _fit_residual(3) < 1e-6


def test_one_product_cannot_reproduce_uvu_path_weights(float64):
    assert _fit_residual(1) > 0.1
