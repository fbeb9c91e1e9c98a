"""The CPU kernels as executors of plans: which plans they serve (and why not), and the executors."""
from __future__ import annotations

from typing import Optional

import torch

from ..executors import Executor, FunctionalGrid, ProductExecutor
from .build import cpu_kernels_unavailable_reason
from .conv import KernelConv, KernelMessage, conv_refusal
from .fused import grid_product_fused
from .limits import limit_refusal
from .many_body import KernelManyBody, many_body_refusal
from .ops import weighted_product

__all__ = ["cpu_refusal", "cpu_executor"]


def _grid_refusal(plan) -> Optional[str]:
    points = plan.tensors.get(torch.float64, torch.device("cpu"))["to_grid1"].shape[1]
    return limit_refusal("grid_product.c", "grid-product", {"MAXP": points, "MAXI": max(plan.widths)},
                         {"MAXP": "{} grid points", "MAXI": "{} coefficients"})


def cpu_refusal(kind: str, plan, device: torch.device, dtype: torch.dtype) -> Optional[str]:
    """Why the CPU kernels cannot run ``kind`` of ``plan`` on ``device``/``dtype``, or ``None``."""
    if device.type != "cpu":
        return f"the CPU kernels run on CPU tensors, not {device}"
    if dtype not in (torch.float32, torch.float64):
        return f"the CPU kernels compute in float32 or float64, not {dtype}"
    if torch.compiler.is_compiling():
        return "torch.compile traces the PyTorch reference (the kernels are called through ctypes)"
    reason = cpu_kernels_unavailable_reason()
    if reason is not None:
        return f"the CPU kernels are unavailable: {reason}"
    if kind in ("conv", "message"):
        return conv_refusal(plan)
    if kind == "many_body":
        return many_body_refusal(plan)
    if kind == "functional" and plan.method != "grid":
        return "the 2D Fourier method has no CPU kernel"
    return _grid_refusal(plan)


def cpu_executor(kind: str, plan, dtype: torch.dtype, reference: Executor) -> Executor:
    """The CPU-kernel executor of ``kind``; ``reference`` (the reference executor of the same plan and
    dtype) is what second derivatives differentiate."""
    t = plan.tensors.get(dtype, torch.device("cpu"))
    if kind == "product":
        return ProductExecutor(plan, t, weighted_product, "torch", "cpu-kernels")
    if kind == "conv":
        return KernelConv(plan, dtype, reference.with_dense_harmonics)
    if kind == "message":
        return KernelMessage(plan, dtype, reference.with_dense_harmonics)
    if kind == "many_body":
        return KernelManyBody(plan, dtype, reference)
    if kind == "functional":
        return FunctionalGrid(plan, t, rows=grid_product_fused, name="cpu-kernels")
    raise ValueError(f"unknown Gaunt executor kind {kind!r}")
