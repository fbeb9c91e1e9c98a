"""Gaunt coefficients ``G(l1 m1, l2 m2, l3 m3) = integral Y_l1m1 Y_l2m2 Y_l3m3`` (e3nn real SH).

Computed by exact quadrature on the product grid sized for degree ``l1 + l2 + l3``; float64.
``G`` is zero unless ``|l1 - l2| <= l3 <= l1 + l2`` and ``l1 + l2 + l3`` is even.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from .s2_grid import _grid_tables

__all__ = ["gaunt_coefficients", "gaunt_path_allowed", "gaunt_paths"]


def gaunt_path_allowed(l1: int, l2: int, l3: int) -> bool:
    """Whether the Gaunt product couples degrees ``l1 x l2 -> l3`` (triangle and even sum)."""
    return abs(l1 - l2) <= l3 <= l1 + l2 and (l1 + l2 + l3) % 2 == 0


def gaunt_paths(l1max: int, l2max: int, l3max: int) -> list[tuple[int, int, int]]:
    """All ``(l1, l2, l3)`` paths that a Gaunt product of the given degrees serves."""
    return [
        (a, b, c)
        for a in range(l1max + 1)
        for b in range(l2max + 1)
        for c in range(l3max + 1)
        if gaunt_path_allowed(a, b, c)
    ]


@lru_cache(maxsize=None)
def _gaunt(l1: int, l2: int, l3: int) -> np.ndarray:
    y1, y2, proj = _grid_tables(l1, l2, l3)
    g = np.einsum("ip,jp,pk->ijk", y1, y2, proj)
    g[np.abs(g) < 1e-14] = 0.0
    g.setflags(write=False)
    return g


def gaunt_coefficients(l1max: int, l2max: int, l3max: int) -> np.ndarray:
    """Dense ``G [(l1max+1)^2, (l2max+1)^2, (l3max+1)^2]`` in e3nn's flat layout (a copy)."""
    return _gaunt(int(l1max), int(l2max), int(l3max)).copy()
