"""The PyTorch reference executors of every plan (any device and dtype, differentiable to any order)."""
from __future__ import annotations

import torch

from . import torch_ops
from .executors import (ConvExecutor, Executor, FunctionalFourier, FunctionalGrid, GatherScatterMessage,
                        ManyBodyExecutor, ProductExecutor)

__all__ = ["reference_executor"]


def reference_executor(kind: str, plan, device: torch.device, dtype: torch.dtype,
                       deterministic: bool = False) -> Executor:
    """The reference executor of ``kind`` (``product``, ``conv``, ``message``, ``many_body``, ``functional``)."""
    t = plan.tensors.get(dtype, device)
    if kind == "product":
        return ProductExecutor(plan, t, torch_ops.weighted_product, "torch", "torch-reference")
    if kind == "conv":
        return ConvExecutor(plan, t, torch_ops.conv_product, "torch", "torch-reference")
    if kind == "message":
        return GatherScatterMessage(reference_executor("conv", plan, device, dtype), "torch", "torch-reference",
                                    deterministic)
    if kind == "many_body":
        return ManyBodyExecutor(plan, t, torch_ops.many_body_product, "torch", "torch-reference")
    if kind == "functional":
        return FunctionalGrid(plan, t) if plan.method == "grid" else FunctionalFourier(plan, t)
    raise ValueError(f"unknown Gaunt executor kind {kind!r}")
