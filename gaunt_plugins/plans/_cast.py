"""Copies of a plan's float64 master tables in a compute dtype on a device, made once per (dtype, device)."""
from __future__ import annotations

from typing import Dict, Tuple

import torch

__all__ = ["CastCache"]


class CastCache:
    """``get(dtype, device)`` -> ``{name: tensor}``: the masters (float64 or complex128 tables, long indices)
    converted once per ``(dtype, device)``: real tables take the real ``dtype``, complex ones the matching
    complex dtype, indices keep theirs. Read-only by contract (callers never write into them)."""

    def __init__(self, masters: Dict[str, torch.Tensor]):
        self._masters = masters
        self._copies: Dict[Tuple[torch.dtype, torch.device], Dict[str, torch.Tensor]] = {}

    def get(self, dtype: torch.dtype, device: torch.device) -> Dict[str, torch.Tensor]:
        key = (dtype, torch.device(device))
        hit = self._copies.get(key)
        if hit is None:  # two threads may both convert; the dictionary keeps one (the copies are equal)
            hit = self._copies.setdefault(key, {name: _cast(t, dtype, key[1]) for name, t in self._masters.items()})
        return hit


def _cast(t: torch.Tensor, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    if t.is_complex():
        t = t.to(device=device, dtype=torch.complex128 if dtype == torch.float64 else torch.complex64)
    elif t.is_floating_point():
        t = t.to(device=device, dtype=dtype)
    else:
        t = t.to(device)
    return t.contiguous()
