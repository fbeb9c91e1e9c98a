"""Torch copies of the float64 math tables, cached per (degrees, dtype, device).

The math layer (NumPy, float64) is the single source; this module only converts. Cached tensors
are internal: callers that keep a table (layers) register a copy as a buffer.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from .math import grid_tables
from .math.fourier import fourier_to_sh_dense, sh_to_fourier_dense

__all__ = ["torch_grid_tables", "torch_fourier_tables", "fourier_torus_size"]


def _to(a: np.ndarray, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a)).to(dtype=dtype, device=device)


@lru_cache(maxsize=256)
def torch_grid_tables(l1: int, l2: int, lo: int, dtype: torch.dtype, device: torch.device):
    """``(to_grid1 [I1, P], to_grid2 [I2, P], from_grid [P, Io])`` as torch tensors."""
    return tuple(_to(a, dtype, device) for a in grid_tables(l1, l2, lo))


def fourier_torus_size(l1: int, l2: int) -> int:
    """Torus size ``n = 2 (L1 + L2) + 1``: no frequency of the product wraps around."""
    return 2 * (l1 + l2) + 1


def _half_spectrum_to(lmax: int, n: int) -> np.ndarray:
    """SH -> half spectrum ``[I, n * (n//2+1)]``: coefficients at ``(u mod n, v >= 0)``."""
    dense = sh_to_fourier_dense(lmax)  # [I, u+L, v+L]
    h = n // 2 + 1
    out = np.zeros((dense.shape[0], n, h), dtype=np.complex128)
    u = np.arange(-lmax, lmax + 1) % n
    for v in range(0, lmax + 1):
        out[:, u, v] = dense[:, :, lmax + v]
    return out.reshape(dense.shape[0], n * h)


def _half_spectrum_from(lu: int, lo: int, n: int) -> np.ndarray:
    """Half spectrum ``[n * (n//2+1)]`` -> SH ``[Io]``; ``v > 0`` counts twice (Hermitian symmetry)."""
    dense = fourier_to_sh_dense(lu, lo)  # [u+lu, v+lo, Io]
    h = n // 2 + 1
    out = np.zeros((n, h, dense.shape[-1]), dtype=np.complex128)
    u = np.arange(-lu, lu + 1) % n
    for v in range(0, lo + 1):
        out[u, v] = dense[:, lo + v] * (2.0 if v > 0 else 1.0)
    return out.reshape(n * h, -1)


@lru_cache(maxsize=256)
def torch_fourier_tables(l1: int, l2: int, lo: int, dtype: torch.dtype, device: torch.device):
    """``(to_fourier1, to_fourier2, from_fourier, n)`` for :func:`backends.torch_ops.fourier_product`,
    complex tensors of the complex dtype matching the real ``dtype``."""
    n = fourier_torus_size(l1, l2)
    cdtype = torch.complex128 if dtype == torch.float64 else torch.complex64
    return (
        _to(_half_spectrum_to(l1, n), cdtype, device),
        _to(_half_spectrum_to(l2, n), cdtype, device),
        _to(_half_spectrum_from(l1 + l2, lo, n), cdtype, device),
        n,
    )
