"""Pieces shared by the CPU kernels' autograd functions: thread splitting and the exact higher-order path."""
from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from typing import Callable, Sequence

import torch

__all__ = ["run_split", "composed_grads", "kernel_suffix", "KernelCall"]


@lru_cache(maxsize=8)
def _pool(n: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=n, thread_name_prefix="gaunt-cpu")


def run_split(fn, count: int, min_per_thread: int, what: str, *args) -> None:
    """Call ``fn(start, stop, *args)`` over ``[0, count)`` split across torch's intra-op thread count
    (at least ``min_per_thread`` items each); ctypes releases the GIL during each call. A non-zero
    return code (a size past the kernel's stack limits) raises ``RuntimeError`` naming ``what``."""
    threads = max(1, min(torch.get_num_threads(), math.ceil(count / min_per_thread)))
    if threads == 1:
        codes = [fn(0, count, *args)]
    else:
        bounds = [count * k // threads for k in range(threads + 1)]
        codes = [f.result() for f in [_pool(threads).submit(fn, bounds[k], bounds[k + 1], *args)
                                        for k in range(threads)]]
    if any(c != 0 for c in codes):
        raise RuntimeError(f"gaunt_plugins CPU {what} kernel: sizes past the kernel's limits")


def composed_grads(composed: Callable, tensors: Sequence[torch.Tensor], need: Sequence[bool],
                   g: torch.Tensor) -> list:
    """Gradients of ``composed(*tensors)`` (the twice-differentiable tensor-op path) with ``create_graph``:
    what a fused kernel's backward returns when its own gradient will be differentiated again."""
    inputs = [t for t, n in zip(tensors, need) if n]
    with torch.enable_grad():
        out = composed(*tensors)
    grads = iter(torch.autograd.grad(out, inputs, g, create_graph=True, allow_unused=True))
    result = []
    for t, n in zip(tensors, need):
        r = next(grads) if n else None
        result.append(torch.zeros_like(t) if n and r is None else r)
    return result


def kernel_suffix(dtype: torch.dtype) -> str:
    if dtype == torch.float32:
        return "f32"
    if dtype == torch.float64:
        return "f64"
    raise TypeError(f"gaunt_plugins CPU kernels take float32 or float64, got {dtype}")


class KernelCall(torch.autograd.Function):
    """``KernelCall.apply(kernel, *inputs)``: ``kernel.forward(*inputs)`` with the first-order backward
    ``kernel.backward(*inputs, grad, needs)`` (one fused pass); under ``create_graph`` the backward
    differentiates ``kernel.composed(*inputs)`` (the twice-differentiable reference) instead."""

    @staticmethod
    def forward(ctx, kernel, *inputs):
        ctx.save_for_backward(*inputs)
        ctx.kernel = kernel
        return kernel.forward(*inputs)

    @staticmethod
    def backward(ctx, g):
        inputs = ctx.saved_tensors
        kernel = ctx.kernel
        need = ctx.needs_input_grad[1:]
        if torch.is_grad_enabled():  # create_graph: differentiate the composed path instead
            return (None, *composed_grads(kernel.composed, inputs, need, g))
        return (None, *kernel.backward(*inputs, g.contiguous(), need))
