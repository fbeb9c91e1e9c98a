"""The CPU grid-product kernel behind the dense :func:`weighted_product` (same signature and result as
:func:`..torch_ops.weighted_product`): float32/float64 CPU tensors in eager mode with the kernels built run the
fused chain, everything else the reference (other devices; under TorchScript and ``torch.compile`` the layers call
the operators of :mod:`.library` instead of this function).
"""
from __future__ import annotations

import torch

from .. import torch_ops
from .build import cpu_kernels_available
from .fused import grid_product_fused

__all__ = ["use_fused_kernels", "weighted_product"]


def use_fused_kernels(*tensors: torch.Tensor) -> bool:
    """Whether the fused C kernels serve these tensors (CPU, float32/float64, eager, kernels built)."""
    if torch.compiler.is_compiling():
        return False
    dtype = tensors[0].dtype
    if dtype not in (torch.float32, torch.float64):
        return False
    if any(t.device.type != "cpu" or t.dtype != dtype for t in tensors):
        return False
    return cpu_kernels_available()


def weighted_product(x1, x2, w1, w2, w3, deg1, deg2, deg3, to_grid1, to_grid2, from_grid):
    """:func:`torch_ops.weighted_product` (``x1 [N, C, I1]``, ``x2 [N, C, I2]``, weights ``[*, K, C]``)."""
    if not use_fused_kernels(x1, x2, to_grid1):
        return torch_ops.weighted_product(x1, x2, w1, w2, w3, deg1, deg2, deg3, to_grid1, to_grid2, from_grid)
    n, c = x1.shape[0], x1.shape[1]
    a = x1 * w1.transpose(-1, -2).index_select(-1, deg1)
    b = x2 * w2.transpose(-1, -2).index_select(-1, deg2)
    out = grid_product_fused(a.reshape(n * c, -1), b.reshape(n * c, -1), to_grid1, to_grid2, from_grid)
    return out.view(n, c, -1) * w3.transpose(-1, -2).index_select(-1, deg3)
