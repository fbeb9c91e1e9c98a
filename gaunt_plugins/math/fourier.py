"""Spherical harmonics <-> 2D Fourier series on the torus (the paper's "FFT path").

With ``theta`` measured from e3nn's polar axis (y) and ``phi`` around it, every real harmonic is
a finite 2D Fourier series ``Y_lm(theta, phi) = sum_{|u|<=l} sum_{v=+m,-m} y[l,m,u,v] e^{i(u theta + v phi)}``:
the theta part ``N_lm P_l^|m|(cos theta)`` is a trigonometric polynomial of degree ``l``, and
``cos(m phi)``/``sin(|m| phi)`` only hold the frequencies ``v = +-m``. So the table is sparse; it is
stored like the official code, complex ``[L+1 (l), 2L+1 (m+L), 2L+1 (u+L), 2 (v=+m, v=-m)]``.

The way back uses ``I[u, v, l, m] = integral_0^pi integral_0^2pi e^{i(u theta + v phi)} Y_lm sin(theta)``,
exact in closed form: the phi integral keeps ``v = -+m``, the theta integral is a finite sum of
``integral_0^pi e^{i k theta} sin(theta)``.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from .spherical_harmonics import _norm, legendre_theta_factor

__all__ = ["sh_to_fourier_sparse", "sh_to_fourier_dense", "fourier_to_sh_dense", "MAX_FOURIER_DEGREE"]

MAX_FOURIER_DEGREE = 32
"""Largest harmonic degree with a Fourier table."""


def _check_degree(l: int) -> int:
    if not 0 <= l <= MAX_FOURIER_DEGREE:
        raise ValueError(f"no 2D Fourier table for degree {l}: supported 0..{MAX_FOURIER_DEGREE}")
    return int(l)


def _theta_fourier(lmax: int) -> np.ndarray:
    """Fourier coefficients in theta of ``N_lm P_l^m(cos theta)``: ``[L+1 (l), L+1 (m>=0), 2L+1 (u+L)]``.

    Sampled at ``2L+1`` equispaced angles on the whole circle and transformed: exact for a
    trigonometric polynomial of degree ``<= L``.
    """
    n = 2 * lmax + 1
    th = 2.0 * np.pi * np.arange(n) / n
    q = legendre_theta_factor(lmax, np.cos(th))  # [n, L+1, L+1]
    sin_th = np.sin(th)
    vals = np.zeros((lmax + 1, lmax + 1, n))
    for l in range(lmax + 1):
        for m in range(l + 1):
            vals[l, m] = _norm(l, m) / (np.sqrt(2.0) if m else 1.0) * q[:, l, m] * sin_th**m
    coef = np.fft.fft(vals, axis=-1) / n  # coefficient of e^{i k theta} at index k mod n
    u = np.arange(-lmax, lmax + 1)
    return coef[..., u % n]


@lru_cache(maxsize=None)
def _sparse(lmax: int) -> np.ndarray:
    th = _theta_fourier(lmax)  # [l, |m|, u]
    out = np.zeros((lmax + 1, 2 * lmax + 1, 2 * lmax + 1, 2), dtype=np.complex128)
    for l in range(lmax + 1):
        out[l, lmax, :, 0] = th[l, 0]  # m = 0: only v = 0 (stored once, in the v=+m slot)
        for m in range(1, l + 1):
            a = np.sqrt(2.0) * th[l, m]
            out[l, lmax + m, :, 0] = a / 2  # cos(m phi) = (e^{im phi} + e^{-im phi}) / 2
            out[l, lmax + m, :, 1] = a / 2
            out[l, lmax - m, :, 0] = a / 2j  # sin(m phi) = (e^{im phi} - e^{-im phi}) / 2i
            out[l, lmax - m, :, 1] = -a / 2j
    out.setflags(write=False)
    return out


def sh_to_fourier_sparse(lmax: int) -> np.ndarray:
    """Sparse SH -> Fourier table, complex ``[L+1, 2L+1 (m+L), 2L+1 (u+L), 2 (v=+m, v=-m)]``.

    For ``m = 0`` the whole ``v = 0`` coefficient sits in the ``v=+m`` slot. A copy.
    """
    return _sparse(_check_degree(lmax)).copy()


@lru_cache(maxsize=None)
def _dense_to(lmax: int) -> np.ndarray:
    sp = _sparse(lmax)
    n = 2 * lmax + 1
    out = np.zeros(((lmax + 1) ** 2, n, n), dtype=np.complex128)  # [lm, u+L, v+L]
    for l in range(lmax + 1):
        for m in range(-l, l + 1):
            i = l * l + l + m
            out[i, :, lmax + abs(m)] += sp[l, lmax + m, :, 0]
            if m != 0:
                out[i, :, lmax - abs(m)] += sp[l, lmax + m, :, 1]
    out.setflags(write=False)
    return out


def sh_to_fourier_dense(lmax: int) -> np.ndarray:
    """Dense SH -> Fourier map, complex ``[(L+1)^2, 2L+1 (u+L), 2L+1 (v+L)]`` (a copy)."""
    return _dense_to(_check_degree(lmax)).copy()


def _sin_moment(k: np.ndarray) -> np.ndarray:
    """``integral_0^pi e^{i k theta} sin(theta) dtheta`` for integer ``k``."""
    k = np.asarray(k)
    out = np.zeros(k.shape, dtype=np.complex128)
    one = np.abs(k) == 1
    out[one] = 1j * np.pi / 2 * np.sign(k[one])
    even = (k % 2) == 0
    out[even] = 2.0 / (1.0 - k[even].astype(np.float64) ** 2)
    return out


@lru_cache(maxsize=None)
def _dense_from(lu: int, lo: int) -> np.ndarray:
    th = _theta_fourier(lo)  # [l, |m|, w+lo]
    u = np.arange(-lu, lu + 1)
    w = np.arange(-lo, lo + 1)
    mom = _sin_moment(u[:, None] + w[None, :])  # [u, w]
    # T[u, l, |m|] = integral_0^pi e^{iu theta} Theta_l|m|(theta) sin(theta)
    t = np.einsum("lmw,uw->ulm", th, mom)
    nv = 2 * lo + 1
    out = np.zeros((2 * lu + 1, nv, (lo + 1) ** 2), dtype=np.complex128)  # [u+lu, v+lo, lm]
    for l in range(lo + 1):
        out[:, lo, l * l + l] = 2 * np.pi * t[:, l, 0]
        for m in range(1, l + 1):
            a = np.sqrt(2.0) * t[:, l, m]
            # integral e^{iv phi} cos(m phi) = pi [v = -+m];  e^{iv phi} sin(m phi) = -+i pi at v = +-m
            out[:, lo + m, l * l + l + m] = np.pi * a
            out[:, lo - m, l * l + l + m] = np.pi * a
            out[:, lo + m, l * l + l - m] = 1j * np.pi * a
            out[:, lo - m, l * l + l - m] = -1j * np.pi * a
    out.setflags(write=False)
    return out


def fourier_to_sh_dense(lu: int, lo: int) -> np.ndarray:
    """Fourier -> SH projection, complex ``[2lu+1 (u+lu), 2lo+1 (v+lo), (lo+1)^2]`` (a copy).

    ``out[lm] = Re sum_{u,v} F[u, v] I[u, v, lm]`` for a real function with coefficients ``F``
    (frequencies ``|u| <= lu``; only ``|v| <= lo`` can reach degree ``<= lo``).
    """
    if not 0 <= lu <= 2 * MAX_FOURIER_DEGREE:  # the product of two tabulated degrees
        raise ValueError(f"no 2D Fourier projection for frequencies up to {lu}: supported 0..{2 * MAX_FOURIER_DEGREE}")
    return _dense_from(int(lu), _check_degree(lo)).copy()
