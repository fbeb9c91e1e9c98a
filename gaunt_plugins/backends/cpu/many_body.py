"""Fused CPU many-body product (``many_body.c``), with its autograd, as an executor.

``KernelManyBody(plan, dtype, composed)`` runs a :class:`~gaunt_plugins.plans.ManyBodyPlan` on float32/float64
CPU tensors: MACE's compact ``x [N, C, Ic]`` and the per-node weights ``w_in [N, nu, K, chains C]``, ``w_out
[N, nu, Ko, chains C]`` -> the flat ``[N, Do]`` output (the chains of a channel summed). First-order backward: one fused kernel. ``create_graph=True``:
``composed`` (the reference executor of the same plan) is differentiated instead (exact at every order).
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from ..executors import Executor
from ._autograd import KernelCall, run_split
from ._autograd import kernel_suffix as _suffix
from .build import load_library
from .limits import limit_refusal

__all__ = ["KernelManyBody", "many_body_refusal"]

_MIN_NODES_PER_THREAD = 16


def many_body_refusal(plan) -> Optional[str]:
    """Why ``many_body.c`` cannot serve ``plan`` (its stack limits), or ``None``."""
    points = plan.tensors.get(torch.float64, torch.device("cpu"))["to_grid"].shape[1]
    return limit_refusal("many_body.c", "many-body", {"MAXP": points, "MAXI": max(plan.widths),
                                                      "MAXNU": plan.correlation},
                         {"MAXP": "{} grid points", "MAXI": "{} coefficients", "MAXNU": "correlation {}"})


class KernelManyBody(Executor):
    """The C many-body kernel for one plan and dtype (see the module docstring)."""

    backend = "torch"
    name = "cpu-kernels"

    def __init__(self, plan, dtype: torch.dtype, composed: Callable):
        t = plan.tensors.get(dtype, torch.device("cpu"))
        self.plan, self.composed, self.t = plan, composed, t
        y, pj = t["to_grid"], t["from_grids"]
        self.tables = (y.t().contiguous(), pj.transpose(1, 2).contiguous(), y, pj)
        i, io = plan.widths
        self.sizes = (plan.lanes, plan.compact_width, i, y.shape[1], io, plan.feat.num_degrees,
                      plan.out.num_degrees, plan.correlation, plan.out.dim)

    def run(self, fn, x, w_in, w_out, *tensors):
        t = self.t
        ptr = lambda v: None if v is None else v.data_ptr()
        run_split(fn, x.shape[0], _MIN_NODES_PER_THREAD, "many-body", *self.sizes, x.data_ptr(), w_in.data_ptr(),
                  w_out.data_ptr(), t["offsets_in"].data_ptr(), t["offsets_out"].data_ptr(), t["deg_in"].data_ptr(),
                  t["deg_out"].data_ptr(), *(ptr(v) for v in tensors))

    def _lanes(self, x):
        """``x [N, C, Ic]`` -> ``[N, chains C, Ic]``: every chain reads its channel's coefficients."""
        return x if self.plan.chains == 1 else x.repeat(1, self.plan.chains, 1)

    def forward(self, x, w_in, w_out):
        out = x.new_zeros(x.shape[0], self.plan.out.dim)
        self.run(getattr(load_library(), f"mb_forward_{_suffix(x.dtype)}"), self._lanes(x), w_in, w_out,
                 *self.tables[:2], out)
        return out

    def backward(self, x, w_in, w_out, g, need):
        xl = self._lanes(x)
        dx = torch.zeros_like(xl) if need[0] else None
        dwi = torch.empty_like(w_in) if need[1] else None
        dwo = torch.empty_like(w_out) if need[2] else None
        self.run(getattr(load_library(), f"mb_backward_{_suffix(x.dtype)}"), xl, w_in, w_out, *self.tables, g, dx,
                 dwi, dwo)
        if dx is not None and self.plan.chains > 1:
            dx = dx.view(x.shape[0], self.plan.chains, *x.shape[1:]).sum(1)
        return dx, dwi, dwo

    def __call__(self, x, w_in, w_out):
        return KernelCall.apply(self, x.contiguous(), w_in.contiguous(), w_out.contiguous())
