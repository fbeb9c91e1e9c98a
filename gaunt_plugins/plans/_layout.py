"""Index maps between e3nn's flat ``mul_ir`` rows and the dense channel-wise ``[C, (L+1)^2]`` layout."""
from __future__ import annotations

import torch

from ..irreps import ChannelIrreps, dense_to_flat_index, flat_to_dense_index

__all__ = ["dense_gather", "flat_gather", "offsets_from_gather", "offsets_from_scatter", "compact_gather"]


def dense_gather(feat: ChannelIrreps, repeat: int = 1) -> torch.Tensor:
    """``[repeat * C * (L+1)^2]``: gathers the dense layout from a flat row extended by one zero (index
    ``dim``); ``repeat`` copies of the channels, copy-major (lane ``k C + c`` reads channel ``c``)."""
    index = flat_to_dense_index(feat).view(feat.mul, -1)
    return index.repeat(repeat, 1).reshape(-1)


def flat_gather(feat: ChannelIrreps) -> torch.Tensor:
    """``[dim]``: gathers a flat ``mul_ir`` row from the dense ``[C * (L+1)^2]`` layout."""
    return dense_to_flat_index(feat)


def offsets_from_gather(gather: torch.Tensor, absent: int, lanes: int) -> torch.Tensor:
    """``[lanes, width]`` offsets into a flat row (-1 where the dense coefficient is absent): the form the
    CPU kernels read their inputs through."""
    offsets = gather.clone()
    offsets[offsets == absent] = -1
    return offsets.view(lanes, -1).contiguous()


def offsets_from_scatter(gather_out: torch.Tensor, lanes: int, width: int) -> torch.Tensor:
    """The inverse of a :func:`flat_gather`: ``[lanes, width]`` offsets into a flat output row (-1 where a dense
    coefficient is not emitted); the form the CPU kernels write their outputs through."""
    offsets = torch.full((lanes * width,), -1, dtype=torch.long)
    offsets[gather_out] = torch.arange(gather_out.numel())
    return offsets.view(lanes, width).contiguous()


def compact_gather(feat: ChannelIrreps) -> torch.Tensor:
    """``[(L+1)^2]``: gathers a channel's dense coefficients from MACE's compact ``[sum_l (2l+1)]`` row (degrees
    present only) extended by one zero (index ``sum_l (2l+1)``)."""
    width = sum(2 * l + 1 for l in feat.degrees)
    index = torch.full(((feat.lmax + 1) ** 2,), width, dtype=torch.long)
    offset = 0
    for l in feat.degrees:
        index[l * l:(l + 1) ** 2] = torch.arange(offset, offset + 2 * l + 1)
        offset += 2 * l + 1
    return index
