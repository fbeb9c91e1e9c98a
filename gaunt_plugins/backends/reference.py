"""The PyTorch reference executors of every plan (any device and dtype, differentiable to any order)."""
from __future__ import annotations

import torch

from . import torch_ops
from .executors import DenseOps, Executor, dense_executor

__all__ = ["reference_executor", "REFERENCE_OPS"]

REFERENCE_OPS = DenseOps(torch_ops.weighted_product, torch_ops.conv_product, None, torch_ops.many_body_product,
                         None)


def reference_executor(kind: str, plan, device: torch.device, dtype: torch.dtype,
                       deterministic: bool = False) -> Executor:
    """The reference executor of ``kind`` (``product``, ``conv``, ``message``, ``many_body``, ``functional``)."""
    return dense_executor(kind, plan, plan.tensors.get(dtype, device), REFERENCE_OPS, "torch", "torch-reference",
                          deterministic)
