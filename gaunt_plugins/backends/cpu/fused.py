"""Autograd wrapper of the fused CPU grid product, differentiable to any order.

``grid_product_fused(u, v, t1, t2, t3)`` equals ``((u @ t1) * (v @ t2)) @ t3`` for ``u [R, I1]``,
``v [R, I2]`` (float32 or float64, CPU). Its vector-Jacobian products are grid products again:
``du = ((g @ t3^T) * (v @ t2)) @ t1^T`` and ``dv = ((g @ t3^T) * (u @ t1)) @ t2^T``. A plain backward
runs one fused kernel for both; under ``create_graph=True`` (force training) the backward calls the
same autograd function with transposed tables, so double backward stays fused and exact.
Tables are constants (no gradient).
"""
from __future__ import annotations

import torch

from ._autograd import kernel_suffix as _suffix
from ._autograd import run_split
from .build import load_library

__all__ = ["grid_product_fused"]

_MIN_ROWS_PER_THREAD = 2048


def _ptr(t: torch.Tensor) -> int:
    return t.data_ptr()


def _run_rows(fn, rows: int, *args) -> None:
    run_split(fn, rows, _MIN_ROWS_PER_THREAD, "grid product", *args)


def _forward(u, v, tabs):
    at, bt, ct = tabs[0], tabs[1], tabs[2]
    lib = load_library()
    rows, i1 = u.shape
    i2, p, io = v.shape[1], at.shape[0], ct.shape[0]
    out = u.new_empty(rows, io)
    _run_rows(getattr(lib, f"gp_forward_{_suffix(u.dtype)}"), rows, i1, i2, p, io, _ptr(u), i1, _ptr(v), i2,
              _ptr(at), _ptr(bt), _ptr(ct), _ptr(out))
    return out


def _backward(u, v, g, tabs, need_u: bool, need_v: bool):
    at, bt, _, a, b, c = tabs
    lib = load_library()
    rows, i1 = u.shape
    i2, p, io = v.shape[1], at.shape[0], c.shape[1]
    du = u.new_empty(rows, i1) if need_u else None
    dv = v.new_empty(rows, i2) if need_v else None
    _run_rows(getattr(lib, f"gp_backward_{_suffix(u.dtype)}"), rows, i1, i2, p, io, _ptr(u), i1, _ptr(v), i2,
              _ptr(g), _ptr(at), _ptr(bt), _ptr(c), _ptr(a), _ptr(b), None if du is None else _ptr(du),
              None if dv is None else _ptr(dv))
    return du, dv


class _GridProduct(torch.autograd.Function):
    """``((u @ A) * (v @ B)) @ C`` with the six tables ``(A^T, B^T, C^T, A, B, C)``, all contiguous.

    ``A [Iu, P]``, ``B [Iv, P]`` go to the grid, ``C [P, Io]`` projects. The kernels read the
    transposes; the backward reads ``A``, ``B``, ``C`` themselves.
    """

    @staticmethod
    def forward(ctx, u, v, at, bt, ct, a, b, c):
        ctx.save_for_backward(u, v, at, bt, ct, a, b, c)
        return _forward(u, v, (at, bt, ct))

    @staticmethod
    def backward(ctx, g):
        u, v, at, bt, ct, a, b, c = ctx.saved_tensors
        need_u, need_v = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        g = g.contiguous()
        if torch.is_grad_enabled():  # create_graph: stay differentiable (double backward for forces)
            # du = ((g @ C^T) * (v @ B)) @ A^T: tables A' = C^T, B' = B, C' = A^T, i.e. the six
            # (A'^T, B'^T, C'^T, A', B', C') = (C, B^T, A, C^T, B, A^T); dv likewise with u and A.
            du = _GridProduct.apply(g, v, c, bt, a, ct, b, at) if need_u else None
            dv = _GridProduct.apply(g, u, c, at, b, ct, a, bt) if need_v else None
        else:
            du, dv = _backward(u, v, g, (at, bt, ct, a, b, c), need_u, need_v)
        return du, dv, None, None, None, None, None, None


def grid_product_fused(u: torch.Tensor, v: torch.Tensor, t1: torch.Tensor, t2: torch.Tensor,
                       t3: torch.Tensor) -> torch.Tensor:
    """``((u @ t1) * (v @ t2)) @ t3`` fused: ``u [R, I1]``, ``v [R, I2]`` -> ``[R, Io]`` (same dtype, CPU)."""
    if u.dim() != 2 or v.dim() != 2 or u.shape[0] != v.shape[0]:
        raise ValueError(f"grid_product_fused: u [R, I1] and v [R, I2] expected, got {list(u.shape)}, {list(v.shape)}")
    if u.device.type != "cpu" or v.device.type != "cpu":
        raise ValueError("grid_product_fused: the fused kernels run on CPU tensors")
    dtype = u.dtype
    a, b, c = (t.to(dtype).contiguous() for t in (t1, t2, t3))
    return _GridProduct.apply(u.contiguous(), v.to(dtype).contiguous(), a.t().contiguous(), b.t().contiguous(),
                              c.t().contiguous(), a, b, c)
