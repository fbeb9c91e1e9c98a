"""The plan of the functional op :func:`gaunt_plugins.gaunt_product` (no channels, no weights)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..math import grid_tables
from ..math.fourier import fourier_to_sh_dense, sh_to_fourier_dense
from ._cache import cached_plan
from ._cast import CastCache

__all__ = ["FunctionalPlan", "functional_plan", "fourier_torus_size"]


@dataclass(frozen=True, eq=False)
class FunctionalPlan:
    """``proj_{<=Lo}(f1 f2)`` for coefficient vectors ``x1 [..., (L1+1)^2]``, ``x2 [..., (L2+1)^2]``.

    ``method="grid"``: ``tensors.get(dtype, device)`` holds ``to_grid1 [I1, P]``, ``to_grid2 [I2, P]``,
    ``from_grid [P, Io]``. ``method="fourier"``: ``to_fourier1 [I1, n (n//2+1)]``, ``to_fourier2``,
    ``from_fourier [n (n//2+1), Io]`` (complex, the half spectrum of a real function on the ``n x n`` torus,
    ``n = torus``). ``lmax_out`` is the largest degree the product reaches (``min(Lo, L1 + L2)``); ``pad`` the
    number of zero coefficients appended up to the requested ``Lo``.
    """

    lmax1: int
    lmax2: int
    lmax_out: int
    pad: int
    method: str
    torus: int
    tensors: CastCache

    @property
    def widths(self):
        return (self.lmax1 + 1) ** 2, (self.lmax2 + 1) ** 2, (self.lmax_out + 1) ** 2


def fourier_torus_size(l1: int, l2: int) -> int:
    """Torus size ``n = 2 (L1 + L2) + 1``: no frequency of the product wraps around."""
    return 2 * (l1 + l2) + 1


def _half_spectrum_to(lmax: int, n: int) -> np.ndarray:
    """SH -> half spectrum ``[I, n (n//2+1)]``: coefficients at ``(u mod n, v >= 0)``."""
    dense = sh_to_fourier_dense(lmax)  # [I, u+L, v+L]
    h = n // 2 + 1
    out = np.zeros((dense.shape[0], n, h), dtype=np.complex128)
    u = np.arange(-lmax, lmax + 1) % n
    for v in range(0, lmax + 1):
        out[:, u, v] = dense[:, :, lmax + v]
    return out.reshape(dense.shape[0], n * h)


def _half_spectrum_from(lu: int, lo: int, n: int) -> np.ndarray:
    """Half spectrum ``[n (n//2+1)]`` -> SH ``[Io]``; ``v > 0`` counts twice (Hermitian symmetry)."""
    dense = fourier_to_sh_dense(lu, lo)  # [u+lu, v+lo, Io]
    h = n // 2 + 1
    out = np.zeros((n, h, dense.shape[-1]), dtype=np.complex128)
    u = np.arange(-lu, lu + 1) % n
    for v in range(0, lo + 1):
        out[u, v] = dense[:, lo + v] * (2.0 if v > 0 else 1.0)
    return out.reshape(n * h, -1)


@cached_plan
def functional_plan(l1: int, l2: int, lo: int, method: str) -> FunctionalPlan:
    """``method`` is ``"grid"`` or ``"fourier"`` (validated by the caller, with the degrees)."""
    reach = min(lo, l1 + l2)  # the product has degree <= L1 + L2
    pad = (lo + 1) ** 2 - (reach + 1) ** 2
    if method == "grid":
        y1, y2, proj = (torch.from_numpy(t.copy()) for t in grid_tables(l1, l2, reach))
        return FunctionalPlan(l1, l2, reach, pad, method, 0,
                              CastCache(dict(to_grid1=y1, to_grid2=y2, from_grid=proj)))
    n = fourier_torus_size(l1, l2)
    masters = dict(to_fourier1=torch.from_numpy(_half_spectrum_to(l1, n)),
                   to_fourier2=torch.from_numpy(_half_spectrum_to(l2, n)),
                   from_fourier=torch.from_numpy(_half_spectrum_from(l1 + l2, reach, n)))
    return FunctionalPlan(l1, l2, reach, pad, method, n, CastCache(masters))
