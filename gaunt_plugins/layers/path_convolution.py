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

    A[e, p] = sum_m2 coupling_p[:, m2, :] Y_l2m2(r_e)          # [2 l1 + 1, 2 l3 + 1], once per edge
    out[r, p, c] += w[e, p, c] * x1[s, c, l1] @ A[e, p]        # one batched matmul per node degree

The harmonics are contracted with the coefficients once per edge (no channel dimension); per channel the cost
is ``sum_p (2 l1 + 1)(2 l3 + 1)``, against ``sum_p (2 l1 + 1)(2 l2 + 1)(2 l3 + 1)`` for a Clebsch-Gordan path
contracted per channel. Plain PyTorch operations: autograd gives every derivative, TorchScript and
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

    __constants__ = ["channels", "num_paths", "dim_in1", "dim_in2", "dim_out", "num_columns"]

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
        coupling, segments, column_path, order = _layout(irreps_in1, irreps_in2, paths)
        self.num_columns = len(column_path)
        self.segments: List[List[int]] = segments
        self.__dict__["_coupling64"] = coupling
        self.register_buffer("coupling", coupling.to(torch.get_default_dtype()), persistent=False)
        self.register_buffer("column_path", torch.tensor(column_path, dtype=torch.long), persistent=False)
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
        if edge_index is not None:
            x1 = x1.index_select(0, edge_index[0])
        dtype = x1.dtype
        c = self.channels
        a = torch.mm(x2.to(dtype), self.coupling.to(dtype))  # [E, sum over segments of d1 * n]
        blocks: List[torch.Tensor] = []
        for segment in self.segments:
            start1, d1, start_a, n = segment[0], segment[1], segment[2], segment[3]
            xs = x1.narrow(1, start1, c * d1).reshape(edges, c, d1)
            blocks.append(torch.bmm(xs, a.narrow(1, start_a, d1 * n).reshape(edges, d1, n)))
        y = torch.cat(blocks, dim=2) if len(blocks) > 1 else blocks[0]  # [E, C, columns]
        w = weight.to(dtype).reshape(edges, self.num_paths, c).transpose(1, 2).index_select(2, self.column_path)
        y = y * w
        if edge_index is not None:
            y = y.new_zeros(nodes, c, self.num_columns).index_add_(0, edge_index[1], y)
        return y.reshape(y.shape[0], c * self.num_columns).index_select(1, self.output_order)


def _layout(irreps_in1: o3.Irreps, irreps_in2: o3.Irreps, paths: List[Path]):
    """The coupling table and index maps of :class:`GauntPathConvolution`.

    Columns: the output coefficients of every path, grouped by node-degree block ``i`` (a segment), paths in
    weight order within a segment. Returns ``coupling [irreps_in2.dim, sum_i d1_i n_i]`` float64 (segment ``i``
    holds ``[m2, m1 * n_i + column]``), ``segments`` (``[x1 offset, d1, coupling offset, n]`` per segment),
    ``column_path`` (the path, i.e. weight block, of each column) and the first column of each path."""
    offsets1 = [s.start for s in irreps_in1.slices()]
    offsets2 = [s.start for s in irreps_in2.slices()]
    parts, segments, column_path = [], [], []
    first_column = [0] * len(paths)
    start_a = 0
    for i, (_, ir1) in enumerate(irreps_in1):
        mine = [(k, path) for k, path in enumerate(paths) if path[0] == i]
        if not mine:
            continue
        d1 = ir1.dim
        n = sum(2 * path[3] + 1 for _, path in mine)
        block = np.zeros((irreps_in2.dim, d1, n))
        column = 0
        for k, (_, j, _, l3) in mine:
            l2 = irreps_in2[j].ir.l
            rows = slice(offsets2[j], offsets2[j] + 2 * l2 + 1)
            block[rows, :, column:column + 2 * l3 + 1] = _path_coupling(ir1.l, l2, l3).transpose(1, 0, 2)
            first_column[k] = len(column_path) + column
            column += 2 * l3 + 1
        column_path += [k for k, (_, _, _, l3) in mine for _ in range(2 * l3 + 1)]
        segments.append([offsets1[i], d1, start_a, n])
        parts.append(block.reshape(irreps_in2.dim, d1 * n))
        start_a += d1 * n
    coupling = torch.from_numpy(np.concatenate(parts, axis=1))
    return coupling, segments, column_path, [(first_column[k], 2 * path[3] + 1) for k, path in enumerate(paths)]


def _output_order(order: List[Tuple[int, int]], channels: int, columns: int) -> torch.Tensor:
    """``[channels * columns]`` long: for each coefficient of ``irreps_out`` (block-major, then channel, then
    ``m``), its position in the ``[C, columns]`` rows the convolution computes."""
    index = [c * columns + first + m for first, width in order for c in range(channels) for m in range(width)]
    return torch.tensor(index, dtype=torch.long)
