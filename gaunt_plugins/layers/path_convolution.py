"""GauntPathConvolution: MACE's ``uvu`` convolution with one output block per path, from Gaunt coefficients.

MACE's ``conv_tp`` couples node degree ``l1`` with harmonic degree ``l2`` into ``l3`` for every allowed path and
keeps each path's ``C x l3`` block separate (``irreps_mid``); the interaction's ``linear`` then mixes
``(path, channel) -> channel`` per output degree. With node features and harmonics of natural parity every such
path has ``l1 + l2 + l3`` even, where the Gaunt coefficient ``G(l1 m1, l2 m2, l3 m3)`` and the Clebsch-Gordan
coefficient span the same one-dimensional space of invariant tensors. This layer computes each path from the
Gaunt coefficients, normalised per path as e3nn normalises its Clebsch-Gordan paths, so that it is MACE's
convolution: the same ``irreps_out`` (MACE's ``irreps_mid``), the same ``weight_numel`` and weight layout, the
same values (to rounding), and a MACE model's ``conv_tp_weights`` and ``linear`` carry over unchanged.

How it computes, per edge ``e`` (sender ``s``, receiver ``r``), channel ``c`` and path ``p = (l1, l2, l3)``:

    A[e] = sum_m2 coupling[m2] Y_m2(r_e)                 # [(L1+1)^2, columns]: every path's block, once per edge
    out[r, c, :] += (x1[s, c, :] @ A[e]) * w[e, c, path(:)]

(``columns``: the ``2 l3 + 1`` output coefficients of every path; ``A[e]`` is zero outside each path's
``(l1, l3)`` block.) The harmonics are contracted with the coefficients once per edge (no channel dimension),
then one batched matmul per edge serves every path and channel, against one Clebsch-Gordan contraction per
path and channel in e3nn. Plain PyTorch operations: autograd gives every derivative, TorchScript and
``torch.compile`` run the same code on any device.
"""
from __future__ import annotations

import math
from functools import lru_cache
from typing import List, Optional, Tuple

import numpy as np
import torch

from .._e3nn import compile_mode, o3
from ..math.gaunt import gaunt_coefficients
from ._planned import check_floating

__all__ = ["GauntPathConvolution", "mace_paths"]

Path = Tuple[int, int, int, int]  # (index in irreps_in1, index in irreps_in2, output block, output degree)


def mace_paths(irreps_in1: o3.Irreps, irreps_in2: o3.Irreps, target_irreps: o3.Irreps) -> Tuple[o3.Irreps, List[Path]]:
    """MACE's ``tp_out_irreps_with_instructions``: every ``ir1 x ir2 -> ir3`` with ``ir3`` in ``target_irreps``,
    one ``mul1 x ir3`` block each, blocks sorted by irrep (stably). Returns ``(irreps_mid, paths)``, the paths in
    the order of their blocks (the order of the weights)."""
    blocks, found = [], []
    for i, (mul, ir_in) in enumerate(irreps_in1):
        for j, (_, ir_edge) in enumerate(irreps_in2):
            for ir_out in ir_in * ir_edge:
                if ir_out in target_irreps:
                    found.append((i, j, len(blocks), ir_out.l))
                    blocks.append((mul, ir_out))
    irreps_mid, permutation, _ = o3.Irreps(blocks).sort()
    paths = sorted(((i, j, permutation[k], l3) for i, j, k, l3 in found), key=lambda path: path[2])
    return irreps_mid, paths


@lru_cache(maxsize=None)
def _path_coupling(l1: int, l2: int, l3: int) -> np.ndarray:
    """``[2 l1 + 1, 2 l2 + 1, 2 l3 + 1]`` float64: the Gaunt coefficients of one path scaled to e3nn's ``uvu``
    path (``sqrt(2 l3 + 1)`` times the unit-norm invariant, with e3nn's sign)."""
    g = gaunt_coefficients(l1, l2, l3)[l1 * l1:(l1 + 1) ** 2, l2 * l2:(l2 + 1) ** 2, l3 * l3:(l3 + 1) ** 2]
    norm = float(np.sqrt((g * g).sum()))
    if norm == 0.0:
        raise ValueError(f"GauntPathConvolution: the path {l1} x {l2} -> {l3} has no Gaunt coupling "
                         f"(l1 + l2 + l3 must be even)")
    w3j = o3.wigner_3j(l1, l2, l3, dtype=torch.float64).numpy()
    sign = 1.0 if float((w3j * g).sum()) > 0 else -1.0
    out = g * (sign * math.sqrt(2 * l3 + 1) / norm)
    out.setflags(write=False)
    return out


@compile_mode("script")
class GauntPathConvolution(torch.nn.Module):
    """Per-path Gaunt convolution, a drop-in for MACE's ``conv_tp`` (``TensorProduct`` with ``uvu`` paths).

    ``irreps_in1``: node features ``C x (l1 ...)``; ``irreps_in2``: the edge harmonics ``1x0e + 1x1o + ...``;
    ``target_irreps``: the degrees kept (MACE's ``target_irreps``). ``irreps_out`` is MACE's ``irreps_mid``: one
    ``C x l3`` block per path, sorted by irrep; ``weight_numel = paths x C`` (path-major).

    ``forward(x1 [E, irreps_in1.dim], x2 [E, irreps_in2.dim], weight [E, weight_numel]) -> [E, irreps_out.dim]``;
    ``forward(node_feats [N, irreps_in1.dim], x2, weight, edge_index [2, E]) -> [N, irreps_out.dim]`` is the
    message (gather by ``edge_index[0]``, convolution, sum over ``edge_index[1]``), as MACE calls it on blocks
    with ``conv_fusion``.

    Every path must have ``l1 + l2 + l3`` even (natural or uniformly twisted parities, as MACE's hidden irreps
    and harmonics have); paths a Gaunt product cannot form are refused.
    """

    __constants__ = ["channels", "num_paths", "dim_in1", "dim_in2", "dim_out", "num_columns", "node_width"]

    def __init__(self, irreps_in1, irreps_in2, target_irreps):
        super().__init__()
        irreps_in1, irreps_in2 = o3.Irreps(str(irreps_in1)), o3.Irreps(str(irreps_in2))
        target_irreps = o3.Irreps(str(target_irreps))
        muls = {mul for mul, _ in irreps_in1}
        if len(muls) != 1:
            raise ValueError(f"GauntPathConvolution: irreps_in1 must have one multiplicity for every irrep "
                             f"(C x (l1 ...)), got {irreps_in1}")
        if any(mul != 1 for mul, _ in irreps_in2):
            raise ValueError(f"GauntPathConvolution: irreps_in2 (the edge harmonics) must have multiplicity 1, "
                             f"got {irreps_in2}")
        irreps_mid, paths = mace_paths(irreps_in1, irreps_in2, target_irreps)
        if not paths:
            raise ValueError(f"GauntPathConvolution: no path of {irreps_in1} x {irreps_in2} reaches "
                             f"{target_irreps}")
        for i, j, k, l3 in paths:
            l1, l2 = irreps_in1[i].ir.l, irreps_in2[j].ir.l
            if (l1 + l2 + l3) % 2:
                raise ValueError(f"GauntPathConvolution: the path {irreps_in1[i].ir} x {irreps_in2[j].ir} -> "
                                 f"{irreps_mid[k].ir} has l1 + l2 + l3 odd, which a Gaunt product cannot form; "
                                 f"use irreps of one parity rule (0e, 1o, 2e, ... or 0o, 1e, 2o, ...)")
        self.irreps_in1, self.irreps_in2, self.irreps_out = irreps_in1, irreps_in2, irreps_mid
        self.target_irreps = target_irreps
        self.channels = next(iter(muls))
        self.num_paths = len(paths)
        self.dim_in1, self.dim_in2, self.dim_out = irreps_in1.dim, irreps_in2.dim, irreps_mid.dim
        self.weight_numel = self.num_paths * self.channels
        self.paths = [(irreps_in1[i].ir.l, irreps_in2[j].ir.l, l3) for i, j, _, l3 in paths]
        coupling, node_order, column_path, order = _layout(irreps_in1, irreps_in2, paths)
        self.num_columns = len(column_path)
        self.node_width = coupling.shape[1] // self.num_columns
        self.__dict__["_coupling64"] = coupling
        dtype = torch.get_default_dtype()
        self.register_buffer("coupling", coupling.to(dtype), persistent=False)
        self.register_buffer("node_order", torch.tensor([s + c * d + m for c in range(self.channels)
                                                         for s, d in node_order for m in range(d)]),
                             persistent=False)
        spread = torch.zeros(self.num_paths, self.num_columns, dtype=dtype)
        spread[torch.tensor(column_path), torch.arange(self.num_columns)] = 1.0
        self.register_buffer("path_columns", spread, persistent=False)
        self.register_buffer("output_order", _output_order(order, self.channels, self.num_columns),
                             persistent=False)

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}({self.irreps_in1} x {self.irreps_in2} -> {self.irreps_out} | "
                f"{self.num_paths} paths, {self.weight_numel} weights per edge)")

    def _apply(self, fn, recurse: bool = True):
        module = super()._apply(fn, recurse)
        buf = self._buffers["coupling"]
        if buf is not None and buf.device.type != "meta":
            self._buffers["coupling"] = self.__dict__["_coupling64"].to(device=buf.device, dtype=buf.dtype)
        return module

    def forward(self, x1: torch.Tensor, x2: torch.Tensor, weight: torch.Tensor,
                edge_index: Optional[torch.Tensor] = None) -> torch.Tensor:
        edges = x2.shape[0]
        if x1.dim() != 2 or x1.shape[1] != self.dim_in1 or (edge_index is None and x1.shape[0] != edges):
            raise ValueError(f"GauntPathConvolution: x1 must be [{'N' if edge_index is not None else 'E'}, "
                             f"{self.dim_in1}], got {list(x1.shape)}")
        if x2.dim() != 2 or x2.shape[1] != self.dim_in2:
            raise ValueError(f"GauntPathConvolution: x2 must be [E, {self.dim_in2}], got {list(x2.shape)}")
        if weight.dim() != 2 or weight.shape[1] != self.weight_numel or weight.shape[0] != edges:
            raise ValueError(f"GauntPathConvolution: weight must be [E={edges}, {self.weight_numel}], "
                             f"got {list(weight.shape)}")
        check_floating("GauntPathConvolution", [x1, x2, weight])
        if edge_index is not None:
            if edge_index.dim() != 2 or edge_index.shape[0] != 2 or edge_index.shape[1] != edges \
                    or edge_index.is_floating_point():
                raise ValueError(f"GauntPathConvolution: edge_index must be an integer tensor [2, E={edges}], "
                                 f"got {edge_index.dtype} {list(edge_index.shape)}")
        nodes = x1.shape[0]
        dtype = x1.dtype
        c = self.channels
        a = torch.mm(x2.to(dtype), self.coupling.to(dtype)).view(edges, self.node_width, self.num_columns)
        x = x1.index_select(1, self.node_order).view(x1.shape[0], c, self.node_width)  # [., C, (l1 m1)]
        if edge_index is not None:
            x = x.index_select(0, edge_index[0])
        y = torch.bmm(x, a)  # [E, C, columns]
        w = weight.to(dtype).reshape(edges, self.num_paths, c).transpose(1, 2)
        y = y * torch.matmul(w, self.path_columns.to(dtype))
        if edge_index is not None:
            y = y.new_zeros(nodes, c, self.num_columns).index_add_(0, edge_index[1], y)
        return y.reshape(y.shape[0], c * self.num_columns).index_select(1, self.output_order)


def _layout(irreps_in1: o3.Irreps, irreps_in2: o3.Irreps, paths: List[Path]):
    """The coupling table and index maps of :class:`GauntPathConvolution`.

    Rows of a channel: its node coefficients ``(l1, m1)`` in the order of ``irreps_in1``. Columns: the output
    coefficients of every path, in weight order. Returns ``coupling [irreps_in2.dim, rows * columns]`` float64
    (``[m2, row * columns + column]``, zero outside each path's ``(l1, l3)`` block), ``node_order`` (``(offset,
    2 l1 + 1)`` of each node irrep in a flat feature: channel ``c`` of irrep ``i`` starts at ``offset + c (2 l1
    + 1)``), ``column_path`` (the path of each column) and ``(first column, width)`` of each path."""
    offsets1 = [s.start for s in irreps_in1.slices()]
    offsets2 = [s.start for s in irreps_in2.slices()]
    rows = [0]
    for _, ir in irreps_in1:
        rows.append(rows[-1] + ir.dim)
    columns = sum(2 * path[3] + 1 for path in paths)
    table = np.zeros((irreps_in2.dim, rows[-1], columns))
    column_path, order = [], []
    for k, (i, j, _, l3) in enumerate(paths):
        l1, l2 = irreps_in1[i].ir.l, irreps_in2[j].ir.l
        first = len(column_path)
        table[offsets2[j]:offsets2[j] + 2 * l2 + 1, rows[i]:rows[i + 1], first:first + 2 * l3 + 1] = \
            _path_coupling(l1, l2, l3).transpose(1, 0, 2)
        column_path += [k] * (2 * l3 + 1)
        order.append((first, 2 * l3 + 1))
    coupling = torch.from_numpy(table.reshape(irreps_in2.dim, rows[-1] * columns))
    node_order = [(offsets1[i], ir.dim) for i, (_, ir) in enumerate(irreps_in1)]
    return coupling, node_order, column_path, order


def _output_order(order: List[Tuple[int, int]], channels: int, columns: int) -> torch.Tensor:
    """``[channels * columns]`` long: for each coefficient of ``irreps_out`` (block-major, then channel, then
    ``m``), its position in the ``[C, columns]`` rows the convolution computes."""
    index = [c * columns + first + m for first, width in order for c in range(channels) for m in range(width)]
    return torch.tensor(index, dtype=torch.long)
