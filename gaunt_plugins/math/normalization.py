"""Per-output-degree normalisation of Gaunt products, so outputs start at about unit variance.

For inputs whose coefficients are independent with unit variance on the degrees they carry, a
product's output coefficient ``out_lm = sum_p W[p, lm] f_1(p) ... f_nu(p)`` has variance
``sum_{p,q} W[p, lm] W[q, lm] prod_k K_k(p, q)`` with the kernel ``K_k(p, q) = sum_{l in D_k, m} Y_lm(p) Y_lm(q)``
(exact for independent factors). For the ``nu``-th power of one Gaussian function
(``identical=True``: the many-body product, whose factors coincide at initialisation) Isserlis'
theorem gives ``E[f(p)^nu f(q)^nu] = sum_k C(nu,k)^2 k! ((nu-k-1)!!)^2 (K_pp K_qq)^((nu-k)/2) K_pq^k``
over ``k = nu mod 2, ..., nu``. The normalisation of degree ``lo`` is ``1 / sqrt(mean over m of that variance)``; it
is folded into the projection table, so it costs nothing at run time.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from .s2_grid import s2_product_grid
from .spherical_harmonics import real_sph_harm

__all__ = ["product_normalization"]


def _double_factorial(n: int) -> int:
    return 1 if n <= 0 else n * _double_factorial(n - 2)


def _gaussian_power_moment(kpp: np.ndarray, kqq: np.ndarray, kpq: np.ndarray, nu: int) -> np.ndarray:
    out = np.zeros_like(kpq)
    for k in range(nu % 2, nu + 1, 2):
        coef = math.comb(nu, k) ** 2 * math.factorial(k) * _double_factorial(nu - k - 1) ** 2
        out = out + coef * np.sqrt(np.outer(kpp, kqq)) ** (nu - k) * kpq**k
    return out


def product_normalization(input_degrees: Sequence[Sequence[int]], out_degrees: Sequence[int],
                          identical: bool = False) -> np.ndarray:
    """``[max(out_degrees)+1]`` factors (0 where a degree is not reachable) for the product of
    ``len(input_degrees)`` unit-variance functions carrying the given degrees: independent ones, or
    (``identical=True``) one function raised to the power ``len(input_degrees)``."""
    lo = max(out_degrees)
    degree = sum(max(d) for d in input_degrees) + lo
    xyz, w = s2_product_grid(degree)
    lmax = max(lo, max(max(d) for d in input_degrees))
    ys = real_sph_harm(lmax, xyz)  # [P, (lmax+1)^2]
    kernel = np.ones((len(w), len(w)))
    if identical:
        cols = [i for l in input_degrees[0] for i in range(l * l, (l + 1) ** 2)]
        k = ys[:, cols] @ ys[:, cols].T
        kernel = _gaussian_power_moment(np.diag(k), np.diag(k), k, len(input_degrees))
    else:
        for degs in input_degrees:
            cols = [i for l in degs for i in range(l * l, (l + 1) ** 2)]
            kernel = kernel * (ys[:, cols] @ ys[:, cols].T)
    proj = ys[:, : (lo + 1) ** 2] * w[:, None]
    var = np.einsum("pi,pq,qi->i", proj, kernel, proj)
    out = np.zeros(lo + 1)
    for l in out_degrees:
        v = var[l * l:(l + 1) ** 2].mean()
        out[l] = 1.0 / np.sqrt(v) if v > 1e-12 else 0.0
    return out
