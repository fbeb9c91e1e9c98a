"""Fused CPU Gaunt convolution on flat e3nn features (see ``conv.c``), with its autograd.

:class:`ConvPlan` holds what one :class:`~gaunt_plugins.layers.GauntConvolution` needs in kernel form
(offset tables into the flat ``mul_ir`` rows, degree slots, the six table orientations).
``conv_fused(plan, x1, sh, weight)`` returns exactly ``GauntConvolution``'s reference output.
A first-order backward runs one fused kernel for ``dx1``, ``dsh`` and ``dweight``. Under
``create_graph=True`` (force training: the forces' graph is differentiated again) the backward
recomputes the convolution through the composed, twice-differentiable path and differentiates that,
so every order stays exact.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import torch

from ._autograd import composed_grads, run_split
from ._autograd import kernel_suffix as _suffix
from .build import load_library

__all__ = ["ConvPlan", "conv_fused"]

_MIN_EDGES_PER_THREAD = 64


class ConvPlan(NamedTuple):
    channels: int
    k1: int
    k2: int
    k3: int
    dim_out: int
    idx1: torch.Tensor  # [C, I1] offsets into an x1 row, -1 absent
    idxo: torch.Tensor  # [C, Io] offsets into an output row, -1 not emitted
    deg1: torch.Tensor
    deg2: torch.Tensor
    deg3: torch.Tensor
    tables: tuple  # (t1t, t2t, t3t, t1, t2, t3), contiguous, kernel dtype
    composed: Callable  # (x1, sh, weight) -> out, twice differentiable


def _run_edges(fn, edges: int, *args) -> None:
    run_split(fn, edges, _MIN_EDGES_PER_THREAD, "convolution", *args)


def _sizes(plan: ConvPlan, x1: torch.Tensor, sh: torch.Tensor):
    t1t, _, t3t = plan.tables[:3]
    return (plan.channels, plan.idx1.shape[1], sh.shape[1], t1t.shape[0], t3t.shape[0], plan.k1, plan.k2,
            plan.k3, x1.shape[1], plan.dim_out)


class _FusedConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x1, sh, weight, plan: ConvPlan):
        lib = load_library()
        out = x1.new_empty(x1.shape[0], plan.dim_out)
        t1t, t2t, t3t = plan.tables[:3]
        _run_edges(getattr(lib, f"conv_forward_{_suffix(x1.dtype)}"), x1.shape[0], *_sizes(plan, x1, sh),
                   x1.data_ptr(), sh.data_ptr(), weight.data_ptr(), plan.idx1.data_ptr(), plan.idxo.data_ptr(),
                   plan.deg1.data_ptr(), plan.deg2.data_ptr(), plan.deg3.data_ptr(), t1t.data_ptr(),
                   t2t.data_ptr(), t3t.data_ptr(), out.data_ptr())
        ctx.save_for_backward(x1, sh, weight)
        ctx.plan = plan
        return out

    @staticmethod
    def backward(ctx, g):
        x1, sh, weight = ctx.saved_tensors
        plan: ConvPlan = ctx.plan
        need = ctx.needs_input_grad[:3]
        if torch.is_grad_enabled():  # create_graph: differentiate the composed path instead
            return (*composed_grads(plan.composed, (x1, sh, weight), need, g), None)
        lib = load_library()
        g = g.contiguous()
        dx = torch.zeros_like(x1) if need[0] else None
        dsh = torch.empty_like(sh) if need[1] else None
        dw = torch.empty_like(weight) if need[2] else None
        ptr = lambda t: None if t is None else t.data_ptr()
        _run_edges(getattr(lib, f"conv_backward_{_suffix(x1.dtype)}"), x1.shape[0], *_sizes(plan, x1, sh),
                   x1.data_ptr(), sh.data_ptr(), weight.data_ptr(), plan.idx1.data_ptr(), plan.idxo.data_ptr(),
                   plan.deg1.data_ptr(), plan.deg2.data_ptr(), plan.deg3.data_ptr(),
                   *(t.data_ptr() for t in plan.tables), g.data_ptr(), ptr(dx), ptr(dsh), ptr(dw))
        return dx, dsh, dw, None


def conv_fused(plan: ConvPlan, x1: torch.Tensor, sh: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``x1 [E, D1]`` (flat), ``sh [E, I2]`` (dense harmonics), ``weight [E, (K1+K2+K3) C]`` -> ``[E, Do]``."""
    return _FusedConv.apply(x1.contiguous(), sh.contiguous(), weight.contiguous(), plan)
