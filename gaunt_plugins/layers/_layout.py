"""Flat e3nn ``mul_ir`` <-> dense channel-wise ``[C, (L+1)^2]`` conversions (TorchScript-able)."""
from __future__ import annotations

import torch

__all__ = ["flat_to_dense", "dense_to_flat", "flat_offsets"]


def flat_to_dense(x: torch.Tensor, index: torch.Tensor, channels: int, width: int) -> torch.Tensor:
    """``x [B, dim]`` -> ``[B, C, width]`` with zeros where the feature lacks a degree.

    ``index [C * width]`` gathers from ``x`` extended by one trailing zero column.
    """
    padded = torch.cat([x, x.new_zeros(x.shape[0], 1)], dim=1)
    return padded.index_select(1, index).view(x.shape[0], channels, width)


def dense_to_flat(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``x [B, C, width]`` -> flat ``[B, dim]`` through the gather ``index [dim]``."""
    return x.reshape(x.shape[0], -1).index_select(1, index)


def flat_offsets(index_out: torch.Tensor, channels: int, width: int) -> torch.Tensor:
    """The inverse of a :func:`dense_to_flat` gather: ``[C, width]`` offsets into a flat row (-1 where a
    dense coefficient is not emitted); the form the fused CPU kernels scatter their outputs through."""
    offsets = torch.full((channels * width,), -1, dtype=torch.long)
    offsets[index_out] = torch.arange(index_out.numel())
    return offsets.view(channels, width).contiguous()
