"""Real spherical harmonics in e3nn's convention, evaluated in float64 with NumPy.

e3nn's real spherical harmonics are the textbook real harmonics (no Condon-Shortley phase)
with the *y* axis as the polar axis: ``Y^e3nn_lm(x, y, z) = Y^std_lm(X=z, Y=x, Z=y)``, where
``Y^std`` uses ``Z`` as the polar axis and ``m < 0`` for the ``sin(|m| phi)`` functions. The
layout is l-major with ``m = -l..l``: index ``l*l + l + m``.

All functions here use the orthonormal ("integral") normalisation:
``integral over S^2 of Y_lm Y_l'm' = delta``.
"""
from __future__ import annotations

import math

import numpy as np

__all__ = ["real_sph_harm", "sph_index", "e3nn_to_polar_frame", "polar_angles", "legendre_theta_factor"]


def sph_index(l: int, m: int) -> int:
    """Position of ``(l, m)`` in the flat ``[(L+1)^2]`` layout."""
    return l * l + l + m


def e3nn_to_polar_frame(xyz: np.ndarray) -> np.ndarray:
    """Map e3nn Cartesian points ``[..., 3]`` to the frame whose third axis is e3nn's polar y."""
    return np.stack([xyz[..., 2], xyz[..., 0], xyz[..., 1]], axis=-1)


def _unit_polar(xyz: np.ndarray) -> np.ndarray:
    """e3nn points ``[..., 3]`` on the unit sphere, in the frame whose third axis is e3nn's polar y."""
    p = e3nn_to_polar_frame(np.asarray(xyz, dtype=np.float64))
    return p / np.linalg.norm(p, axis=-1, keepdims=True)


def _cos_sin_powers(lmax: int, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Re/Im of ``(x + i y)^m`` for ``m = 0..lmax``, ``[..., lmax+1]`` each: ``rho^m cos(m phi)``, ``rho^m
    sin(m phi)`` as polynomials (no division by ``rho``)."""
    c = np.zeros(x.shape + (lmax + 1,))
    s = np.zeros(x.shape + (lmax + 1,))
    c[..., 0] = 1.0
    for m in range(1, lmax + 1):
        c[..., m] = c[..., m - 1] * x - s[..., m - 1] * y
        s[..., m] = s[..., m - 1] * x + c[..., m - 1] * y
    return c, s


def polar_angles(xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(theta, phi)`` of e3nn points: theta from e3nn's polar axis (y), phi around it."""
    p = _unit_polar(xyz)
    return np.arccos(np.clip(p[..., 2], -1.0, 1.0)), np.arctan2(p[..., 1], p[..., 0])


def _norm(l: int, m: int) -> float:
    """``sqrt((2l+1)/(4 pi) (l-m)!/(l+m)!)``, times sqrt(2) for m != 0."""
    n = math.sqrt((2 * l + 1) / (4 * math.pi) * math.exp(math.lgamma(l - m + 1) - math.lgamma(l + m + 1)))
    return n * (math.sqrt(2.0) if m != 0 else 1.0)


def legendre_theta_factor(lmax: int, z: np.ndarray) -> np.ndarray:
    """``Q[l, m](z) = P_l^m(z) / (1 - z^2)^(m/2)`` (no Condon-Shortley phase), ``[..., L+1, L+1]``.

    A polynomial in ``z``; multiplying by ``rho^m cos/sin(m phi)`` (with ``rho = sin theta``) gives
    the associated Legendre part of the harmonic without dividing by ``sin theta``.
    """
    z = np.asarray(z, dtype=np.float64)
    q = np.zeros(z.shape + (lmax + 1, lmax + 1))
    for m in range(lmax + 1):
        q_mm = float(np.prod(np.arange(1, 2 * m, 2))) if m > 0 else 1.0  # (2m-1)!!
        q[..., m, m] = q_mm
        if m + 1 <= lmax:
            q[..., m + 1, m] = (2 * m + 1) * z * q_mm
        for l in range(m + 2, lmax + 1):
            q[..., l, m] = ((2 * l - 1) * z * q[..., l - 1, m] - (l + m - 1) * q[..., l - 2, m]) / (l - m)
    return q


def real_sph_harm(lmax: int, xyz: np.ndarray) -> np.ndarray:
    """Orthonormal real spherical harmonics of e3nn, ``[..., (lmax+1)^2]`` at points ``xyz [..., 3]``.

    Points are normalised to the unit sphere first. Matches
    ``e3nn.o3.spherical_harmonics(range(lmax+1), xyz, True, normalization="integral")``.
    """
    p = _unit_polar(xyz)
    x, y, z = p[..., 0], p[..., 1], p[..., 2]
    q = legendre_theta_factor(lmax, z)
    c, s = _cos_sin_powers(lmax, x, y)
    out = np.zeros(z.shape + ((lmax + 1) ** 2,))
    for l in range(lmax + 1):
        out[..., sph_index(l, 0)] = _norm(l, 0) * q[..., l, 0]
        for m in range(1, l + 1):
            out[..., sph_index(l, m)] = _norm(l, m) * q[..., l, m] * c[..., m]
            out[..., sph_index(l, -m)] = _norm(l, m) * q[..., l, m] * s[..., m]
    return out


def tangent_frame(xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unit tangent vectors ``(e_theta, e_phi)`` ``[..., 3]`` (e3nn xyz) at unit points off the poles, with
    ``e_theta x e_phi = r``."""
    p = _unit_polar(xyz)
    rho = np.sqrt(p[..., 0] ** 2 + p[..., 1] ** 2)
    if np.any(rho < 1e-12):
        raise ValueError("tangent_frame: a point lies on the polar axis, where e_phi is undefined")
    cos_phi, sin_phi = p[..., 0] / rho, p[..., 1] / rho
    e_theta = np.stack([p[..., 2] * cos_phi, p[..., 2] * sin_phi, -rho], axis=-1)
    e_phi = np.stack([-sin_phi, cos_phi, np.zeros_like(rho)], axis=-1)
    to_e3nn = [1, 2, 0]  # polar frame (X, Y, Z) -> e3nn (x, y, z) = (Y, Z, X): a cyclic, orientation-keeping map
    return e_theta[..., to_e3nn], e_phi[..., to_e3nn]


def real_sph_harm_tangent_gradient(lmax: int, xyz: np.ndarray) -> np.ndarray:
    """Surface gradients of :func:`real_sph_harm` in the frame of :func:`tangent_frame`,
    ``[..., (lmax+1)^2, 2]`` (components along ``e_theta``, ``e_phi``) at unit points ``xyz [..., 3]``.

    The harmonic is ``N q_lm(Z) C_m(X, Y)`` (polar frame); the tangent part of the Cartesian gradient of
    any extension off the sphere is the surface gradient, so this differentiates that polynomial.
    """
    p = _unit_polar(xyz)
    x, y, z = p[..., 0], p[..., 1], p[..., 2]
    q = legendre_theta_factor(lmax, z)
    dq = np.zeros_like(q)  # d q / d z by differentiating the recurrence
    for m in range(lmax + 1):
        q_mm = q[..., m, m]
        if m + 1 <= lmax:
            dq[..., m + 1, m] = (2 * m + 1) * q_mm
        for l in range(m + 2, lmax + 1):
            dq[..., l, m] = ((2 * l - 1) * (q[..., l - 1, m] + z * dq[..., l - 1, m])
                             - (l + m - 1) * dq[..., l - 2, m]) / (l - m)
    c, s = _cos_sin_powers(lmax, x, y)
    # d/dx (x + i y)^m = m (x + i y)^(m-1), d/dy = i m (x + i y)^(m-1)
    grad = np.zeros(z.shape + ((lmax + 1) ** 2, 3))
    for l in range(lmax + 1):
        for m in range(0, l + 1):
            n = _norm(l, m)
            cm1 = c[..., m - 1] if m > 0 else np.zeros_like(z)
            sm1 = s[..., m - 1] if m > 0 else np.zeros_like(z)
            grad_c = np.stack([m * q[..., l, m] * cm1, -m * q[..., l, m] * sm1, dq[..., l, m] * c[..., m]], -1)
            grad[..., sph_index(l, m), :] = n * grad_c
            if m > 0:
                grad_s = np.stack([m * q[..., l, m] * sm1, m * q[..., l, m] * cm1, dq[..., l, m] * s[..., m]], -1)
                grad[..., sph_index(l, -m), :] = n * grad_s
    e_theta, e_phi = tangent_frame(xyz)
    to_polar = [2, 0, 1]  # e3nn (x, y, z) -> polar (X, Y, Z)
    e_theta, e_phi = e_theta[..., to_polar], e_phi[..., to_polar]
    return np.stack([np.einsum("...kd,...d->...k", grad, e_theta), np.einsum("...kd,...d->...k", grad, e_phi)], -1)
