"""Fused CPU many-body product (see ``many_body.c``), with its autograd.

:class:`ManyBodyPlan` holds what one :class:`~gaunt_plugins.layers.GauntManyBody` needs in kernel
form. ``many_body_fused(plan, x, w_in, w_out)`` takes MACE's compact ``x [N, C, Ic]`` and the per-node
weights ``w_in [N, nu, K, C]``, ``w_out [N, nu, Ko, C]`` and returns the flat ``[N, Do]`` output of the
layer. First-order backward: one fused kernel. ``create_graph=True``: recompute through the composed
path and differentiate it (exact at every order).
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import torch

from ._autograd import composed_grads, run_split
from ._autograd import kernel_suffix as _suffix
from .build import load_library

__all__ = ["ManyBodyPlan", "many_body_fused"]

_MIN_NODES_PER_THREAD = 16


class ManyBodyPlan(NamedTuple):
    channels: int
    width_in: int  # I (dense)
    k_in: int
    k_out: int
    nu: int
    dim_out: int
    idx_in: torch.Tensor  # [I] offsets into a channel's compact row, -1 absent
    idxo: torch.Tensor  # [C, Io] offsets into an output row, -1 not emitted
    deg_in: torch.Tensor
    deg_out: torch.Tensor
    tables: tuple  # (tt [P, I], pjt [nu, Io, P], t [I, P], pj [nu, P, Io])
    composed: Callable  # (x, w_in, w_out) -> out, twice differentiable


def _run_nodes(fn, nodes: int, *args) -> None:
    run_split(fn, nodes, _MIN_NODES_PER_THREAD, "many-body", *args)


def _sizes(plan: ManyBodyPlan, x: torch.Tensor):
    tt, pjt = plan.tables[:2]
    return (plan.channels, x.shape[2], plan.width_in, tt.shape[0], pjt.shape[1], plan.k_in, plan.k_out, plan.nu,
            plan.dim_out)


class _FusedManyBody(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w_in, w_out, plan: ManyBodyPlan):
        lib = load_library()
        out = x.new_empty(x.shape[0], plan.dim_out)
        tt, pjt = plan.tables[:2]
        _run_nodes(getattr(lib, f"mb_forward_{_suffix(x.dtype)}"), x.shape[0], *_sizes(plan, x), x.data_ptr(),
                   w_in.data_ptr(), w_out.data_ptr(), plan.idx_in.data_ptr(), plan.idxo.data_ptr(),
                   plan.deg_in.data_ptr(), plan.deg_out.data_ptr(), tt.data_ptr(), pjt.data_ptr(), out.data_ptr())
        ctx.save_for_backward(x, w_in, w_out)
        ctx.plan = plan
        return out

    @staticmethod
    def backward(ctx, g):
        x, w_in, w_out = ctx.saved_tensors
        plan: ManyBodyPlan = ctx.plan
        need = ctx.needs_input_grad[:3]
        if torch.is_grad_enabled():  # create_graph: differentiate the composed path instead
            return (*composed_grads(plan.composed, (x, w_in, w_out), need, g), None)
        lib = load_library()
        g = g.contiguous()
        dx = torch.zeros_like(x) if need[0] else None
        dwi = torch.empty_like(w_in) if need[1] else None
        dwo = torch.empty_like(w_out) if need[2] else None
        ptr = lambda t: None if t is None else t.data_ptr()
        _run_nodes(getattr(lib, f"mb_backward_{_suffix(x.dtype)}"), x.shape[0], *_sizes(plan, x), x.data_ptr(),
                   w_in.data_ptr(), w_out.data_ptr(), plan.idx_in.data_ptr(), plan.idxo.data_ptr(),
                   plan.deg_in.data_ptr(), plan.deg_out.data_ptr(), *(t.data_ptr() for t in plan.tables),
                   g.data_ptr(), ptr(dx), ptr(dwi), ptr(dwo))
        return dx, dwi, dwo, None


def many_body_fused(plan: ManyBodyPlan, x: torch.Tensor, w_in: torch.Tensor, w_out: torch.Tensor) -> torch.Tensor:
    """``x [N, C, Ic]``, ``w_in [N, nu, K, C]``, ``w_out [N, nu, Ko, C]`` -> flat ``[N, Do]``."""
    return _FusedManyBody.apply(x.contiguous(), w_in.contiguous(), w_out.contiguous(), plan)
