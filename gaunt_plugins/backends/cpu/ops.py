"""The CPU path of the three operations: same signatures and results as :mod:`..torch_ops`.

``weighted_product`` and ``conv_product`` run the fused C kernel (:func:`.fused.grid_product_fused`)
on float32/float64 CPU tensors when it is available and the caller is neither TorchScript nor
``torch.compile`` (both see the plain PyTorch reference, which they can trace); everything else runs
the reference. ``many_body_product`` is a leaner PyTorch formulation of the reference: all factors go
to the grid in one matmul, the running products are one ``cumprod`` and the projections one batched
matmul.
"""
from __future__ import annotations

import torch

from .. import torch_ops
from .build import cpu_kernels_available
from .fused import grid_product_fused

__all__ = ["use_fused_kernels", "weighted_product", "conv_product", "many_body_product"]


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


def conv_product(x1, sh, weight, k1: int, deg1, deg_mask2, deg3, to_grid1, to_grid2, from_grid):
    """:func:`torch_ops.conv_product` (``x1 [E, C, I1]``, ``sh [E, I2]``, ``weight [E, K1+K2+K3, C]``)."""
    if not use_fused_kernels(x1, sh, to_grid1):
        return torch_ops.conv_product(x1, sh, weight, k1, deg1, deg_mask2, deg3, to_grid1, to_grid2, from_grid)
    e, c = x1.shape[0], x1.shape[1]
    k2 = deg_mask2.shape[0]
    w1, w2, w3 = weight[:, :k1], weight[:, k1:k1 + k2], weight[:, k1 + k2:]
    a = x1 * w1.transpose(1, 2).index_select(2, deg1)
    # the harmonic side per channel: sum_l2 w2[l2] sh_l2 (the mask spreads each degree's weight)
    b = sh.unsqueeze(1) * torch.matmul(w2.transpose(1, 2), deg_mask2)
    out = grid_product_fused(a.reshape(e * c, -1), b.reshape(e * c, -1), to_grid1, to_grid2, from_grid)
    return out.view(e, c, -1) * w3.transpose(1, 2).index_select(2, deg3)


def many_body_product(x, w_in, w_out, deg_in, deg_out, to_grid, from_grids):
    """:func:`torch_ops.many_body_product` (``x [N, C, I]``, ``w_in [N, nu, K, C]``, ``w_out [N, nu, Ko, C]``)."""
    nu, p, io = from_grids.shape
    n, c = x.shape[0], x.shape[1]
    xw = x.unsqueeze(0) * w_in.permute(1, 0, 3, 2).index_select(3, deg_in)  # [nu, N, C, I]
    f = torch.cumprod(torch.matmul(xw, to_grid), dim=0)  # [nu, N, C, P]: f1, f1 f2, f1 f2 f3, ...
    proj = torch.bmm(f.reshape(nu, n * c, p), from_grids).view(nu, n, c, io)
    return (proj * w_out.permute(1, 0, 3, 2).index_select(3, deg_out)).sum(0)
