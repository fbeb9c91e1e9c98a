"""Fused CPU Gaunt convolution on flat e3nn features and the whole MACE message step (``conv.c``), with their
autograd, as executors.

``KernelConv(plan, dtype, composed)`` runs a :class:`~gaunt_plugins.plans.ConvPlan` on float32/float64 CPU
tensors: ``(x1 [E, D1], sh [E, D2], weight [E, (K1+K2+K3) P C]) -> [E, Do]``, the flat rows read and written
through the plan's offsets. ``KernelMessage(plan, dtype, composed)``: ``(x [N, D1], sh [E, D2], weight,
edge_index [2, E], num_nodes) -> [num_nodes, Do]``, each receiver's incoming messages summed inside the kernel
(the ``[E, P C, (L+1)^2]`` messages are never written); threads own receivers in the forward and senders in
the backward, so no row is written by two of them. A first-order backward runs one fused kernel for every
gradient. Under ``create_graph=True`` (force training: the forces' graph is differentiated again) the
backward differentiates ``composed`` (the reference executor of the same plan) instead, so every order
stays exact.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from ..executors import Executor, flat_to_dense
from ._autograd import KernelCall, run_split
from ._autograd import kernel_suffix as _suffix
from .build import load_library
from .limits import limit_refusal

__all__ = ["KernelConv", "KernelMessage", "conv_refusal"]

_MIN_EDGES_PER_THREAD = 64
_MIN_NODES_PER_THREAD = 8


def conv_refusal(plan) -> Optional[str]:
    """Why ``conv.c`` cannot serve ``plan`` (its stack limits), or ``None``."""
    points = plan.tensors.get(torch.float64, torch.device("cpu"))["to_grid1"].shape[1]
    return limit_refusal("conv.c", "convolution", {"MAXP": points, "MAXI": max(plan.widths),
                                                   "MAXK2": plan.in2.num_degrees},
                         {"MAXP": "{} grid points", "MAXI": "{} coefficients", "MAXK2": "{} harmonic degrees"})


class KernelConv(Executor):
    """The C convolution kernel for one plan and dtype (see the module docstring)."""

    backend = "torch"
    name = "cpu-kernels"

    def __init__(self, plan, dtype: torch.dtype, composed: Callable):
        """``composed(x1, sh_dense [E, I2], weight)``: the twice-differentiable reference of the same plan."""
        t = plan.tensors.get(dtype, torch.device("cpu"))
        self.plan, self.composed = plan, composed
        self.t = t
        a, b, p = t["to_grid1"], t["to_grid2"], t["from_grid"]
        self.tables = (a.t().contiguous(), b.t().contiguous(), p.t().contiguous(), a, b, p)
        k1, k2, k3 = plan.num_degrees
        self.sizes = (plan.lanes, plan.widths[0], plan.widths[1], a.shape[1], plan.widths[2], k1, k2, k3,
                      plan.in1.dim, plan.out.dim)
        self.dim_out = plan.out.dim

    def run(self, fn, x1, sh, weight, *tensors):
        t = self.t
        ptr = lambda v: None if v is None else v.data_ptr()
        run_split(fn, x1.shape[0], _MIN_EDGES_PER_THREAD, "convolution", *self.sizes, x1.data_ptr(),
                  sh.data_ptr(), weight.data_ptr(), t["offsets_in1"].data_ptr(), t["offsets_out"].data_ptr(),
                  t["deg1"].data_ptr(), t["deg2"].data_ptr(), t["deg3"].data_ptr(), *(ptr(v) for v in tensors))

    def forward(self, x1, sh, weight):
        out = x1.new_zeros(x1.shape[0], self.dim_out)
        self.run(getattr(load_library(), f"conv_forward_{_suffix(x1.dtype)}"), x1, sh, weight, *self.tables[:3], out)
        return out

    def backward(self, x1, sh, weight, g, need):
        dx = torch.zeros_like(x1) if need[0] else None
        dsh = torch.empty_like(sh) if need[1] else None
        dw = torch.empty_like(weight) if need[2] else None
        self.run(getattr(load_library(), f"conv_backward_{_suffix(x1.dtype)}"), x1, sh, weight, *self.tables, g, dx,
                 dsh, dw)
        return dx, dsh, dw

    def __call__(self, x1, sh, weight):
        i2 = self.plan.widths[1]
        shd = flat_to_dense(sh, self.t["index_in2"], 1, i2).view(sh.shape[0], i2)
        return KernelCall.apply(self, x1.contiguous(), shd.contiguous(), weight.contiguous())


def _segments(index: torch.Tensor, count: int):
    """Edges grouped by ``index`` (receivers or senders): ``(seg [count + 1], perm [E])``, the edges of node
    ``v`` being ``perm[seg[v]:seg[v + 1]]`` in their original order."""
    perm = torch.argsort(index, stable=True)
    seg = torch.zeros(count + 1, dtype=torch.long)
    torch.cumsum(torch.bincount(index, minlength=count), 0, out=seg[1:])
    return seg, perm


class _MessageCall:
    """One message call: the kernel plus this call's edges (what :class:`KernelCall` runs)."""

    def __init__(self, kernel: "KernelMessage", edge_index: torch.Tensor, num_nodes: int):
        self.k, self.num_nodes = kernel, int(num_nodes)
        self.src, self.dst = edge_index[0].contiguous(), edge_index[1].contiguous()
        self.edge_index = edge_index

    def composed(self, x, sh, weight):
        return self.k.composed(x, sh, weight, self.edge_index, self.num_nodes)

    def forward(self, x, sh, weight):
        k = self.k
        out = x.new_zeros(self.num_nodes, k.dim_out)
        seg, perm = _segments(self.dst, self.num_nodes)
        run_split(getattr(load_library(), f"msg_forward_{_suffix(x.dtype)}"), self.num_nodes, _MIN_NODES_PER_THREAD,
                  "message", *k.sizes, *k.pointers(x, sh, weight), *(t.data_ptr() for t in k.tables[:3]),
                  seg.data_ptr(), perm.data_ptr(), self.src.data_ptr(), out.data_ptr())
        return out

    def backward(self, x, sh, weight, g, need):
        k = self.k
        dx = torch.zeros_like(x) if need[0] else None
        dsh = torch.empty_like(sh) if need[1] else None
        dw = torch.empty_like(weight) if need[2] else None
        seg, perm = _segments(self.src, x.shape[0])
        ptr = lambda v: None if v is None else v.data_ptr()
        t1t, t2t, t3t, t1, _, t3 = k.tables
        run_split(getattr(load_library(), f"msg_backward_{_suffix(x.dtype)}"), x.shape[0], _MIN_NODES_PER_THREAD,
                  "message", *k.sizes, *k.pointers(x, sh, weight), *(t.data_ptr() for t in (t1t, t2t, t3t, t1, t3)),
                  seg.data_ptr(), perm.data_ptr(), self.dst.data_ptr(), g.data_ptr(), ptr(dx), ptr(dsh), ptr(dw))
        return dx, dsh, dw


class KernelMessage(KernelConv):
    """The C message kernels for one plan and dtype (see the module docstring)."""

    def __init__(self, plan, dtype: torch.dtype, composed: Callable):
        """``composed(x, sh_dense [E, I2], weight, edge_index, num_nodes)``: the twice-differentiable
        reference of the same plan."""
        super().__init__(plan, dtype, composed)

    def pointers(self, x, sh, weight):
        t = self.t
        return (x.data_ptr(), sh.data_ptr(), weight.data_ptr(), t["offsets_in1"].data_ptr(),
                t["offsets_out"].data_ptr(), t["deg1"].data_ptr(), t["deg2"].data_ptr(), t["deg3"].data_ptr())

    def __call__(self, x, sh, weight, edge_index, num_nodes: int):
        i2 = self.plan.widths[1]
        shd = flat_to_dense(sh, self.t["index_in2"], 1, i2).view(sh.shape[0], i2)
        call = _MessageCall(self, edge_index.to(torch.long), num_nodes)
        return KernelCall.apply(call, x.contiguous(), shd.contiguous(), weight.contiguous())
