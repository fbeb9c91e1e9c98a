"""Product quadrature grids on the sphere, sized exactly for a product degree.

A grid of ``n_theta`` Gauss-Legendre nodes in ``cos(theta)`` times ``n_phi`` uniform nodes in
``phi`` integrates every spherical polynomial of total degree ``<= D`` exactly when
``n_theta >= (D + 1) / 2`` (Gauss-Legendre is exact to degree ``2 n_theta - 1`` in cos(theta)) and
``n_phi >= D + 1`` (the uniform rule is exact for ``exp(i k phi)``, ``|k| <= n_phi - 1``).
For a Gaunt product of degrees ``L1``, ``L2`` projected onto degree ``<= Lo`` the integrand
``Y_l1 Y_l2 Y_lo`` has degree ``D = L1 + L2 + Lo``; a pointwise power of ``nu`` degree-``L``
functions projected to ``Lo`` needs ``D = nu L + Lo``.

The polar axis is e3nn's ``y``; points are returned as e3nn Cartesian ``xyz``.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from .spherical_harmonics import real_sph_harm, real_sph_harm_tangent_gradient

__all__ = ["grid_shape", "s2_product_grid", "grid_tables", "power_grid_tables", "bracket_grid_tables", "MAX_DEGREE"]

MAX_DEGREE = 64
"""Largest quadrature degree D served: past it the float64 Legendre recurrence loses accuracy."""


def grid_shape(degree: int) -> tuple[int, int]:
    """``(n_theta, n_phi)`` of the smallest product grid exact for total degree ``degree``."""
    if degree < 0:
        raise ValueError(f"quadrature degree must be >= 0, got {degree}")
    if degree > MAX_DEGREE:
        raise ValueError(f"quadrature degree {degree} exceeds the largest supported degree {MAX_DEGREE}")
    return degree // 2 + 1, degree + 1


@lru_cache(maxsize=None)
def _s2_product_grid(degree: int) -> tuple[np.ndarray, np.ndarray]:
    n_theta, n_phi = grid_shape(degree)
    z, w_theta = np.polynomial.legendre.leggauss(n_theta)
    phi = 2.0 * np.pi * np.arange(n_phi) / n_phi
    rho = np.sqrt(1.0 - z**2)
    # polar frame (X, Y, Z) with Z polar; e3nn's (x, y, z) = (Y, Z, X)
    X = rho[:, None] * np.cos(phi)[None, :]
    Y = rho[:, None] * np.sin(phi)[None, :]
    Z = np.broadcast_to(z[:, None], X.shape)
    xyz = np.stack([Y, Z, X], axis=-1).reshape(-1, 3)
    weights = (w_theta[:, None] * np.full(n_phi, 2.0 * np.pi / n_phi)[None, :]).reshape(-1)
    xyz.setflags(write=False)
    weights.setflags(write=False)
    return xyz, weights


def s2_product_grid(degree: int) -> tuple[np.ndarray, np.ndarray]:
    """Points ``[P, 3]`` (e3nn xyz, unit) and weights ``[P]`` (sum ``4 pi``) exact to ``degree``.

    Returns copies of the cached float64 arrays.
    """
    xyz, w = _s2_product_grid(int(degree))
    return xyz.copy(), w.copy()


@lru_cache(maxsize=None)
def _grid_tables(l1: int, l2: int, lo: int):
    xyz, w = _s2_product_grid(l1 + l2 + lo)
    ys = real_sph_harm(max(l1, l2, lo), xyz)  # [P, (Lmax+1)^2]
    y1 = np.ascontiguousarray(ys[:, : (l1 + 1) ** 2].T)
    y2 = np.ascontiguousarray(ys[:, : (l2 + 1) ** 2].T)
    proj = np.ascontiguousarray(ys[:, : (lo + 1) ** 2] * w[:, None])
    for a in (y1, y2, proj):
        a.setflags(write=False)
    return y1, y2, proj


def grid_tables(l1: int, l2: int, lo: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tables of the exact grid Gaunt product ``proj_lo(f1 * f2)``, float64 copies.

    Returns ``to_grid1 [(l1+1)^2, P]``, ``to_grid2 [(l2+1)^2, P]`` (harmonics at the nodes) and
    ``from_grid [P, (lo+1)^2]`` (harmonics times quadrature weights), with ``P`` the size of the
    grid exact for degree ``l1 + l2 + lo``, so that
    ``out = ((x1 @ to_grid1) * (x2 @ to_grid2)) @ from_grid``.
    """
    return tuple(a.copy() for a in _grid_tables(int(l1), int(l2), int(lo)))


@lru_cache(maxsize=None)
def _power_grid_tables(l_in: int, nu: int, lo: int):
    xyz, w = _s2_product_grid(nu * l_in + lo)
    ys = real_sph_harm(max(l_in, lo), xyz)
    to_grid = np.ascontiguousarray(ys[:, : (l_in + 1) ** 2].T)
    proj = np.ascontiguousarray(ys[:, : (lo + 1) ** 2] * w[:, None])
    to_grid.setflags(write=False)
    proj.setflags(write=False)
    return to_grid, proj


def power_grid_tables(l_in: int, nu: int, lo: int) -> tuple[np.ndarray, np.ndarray]:
    """Tables for ``proj_lo(f_1 * ... * f_nu)`` of degree-``l_in`` functions, float64 copies.

    ``to_grid [(l_in+1)^2, P]`` and ``from_grid [P, (lo+1)^2]`` on the grid exact for degree
    ``nu * l_in + lo``.
    """
    return tuple(a.copy() for a in _power_grid_tables(int(l_in), int(nu), int(lo)))


def bracket_degree(l_in: int) -> int:
    """Largest degree of the bracket ``{f, g}`` of two degree-``l_in`` functions (``2 l_in - 1``; 0 for constants)."""
    return max(2 * l_in - 1, 0)


@lru_cache(maxsize=None)
def _bracket_grid_tables(l_in: int, lo: int):
    lh = bracket_degree(l_in)
    xyz, w = _s2_product_grid(max(2 * lh, lh + l_in - 1 + lo, 0))
    lmax = max(l_in, lh, lo)
    ys = real_sph_harm(lmax, xyz)  # [P, K]
    grads = real_sph_harm_tangent_gradient(lmax, xyz)  # [P, K, 2]
    grad_in = np.ascontiguousarray(grads[:, : (l_in + 1) ** 2].transpose(1, 2, 0))  # [K_in, 2, P]
    project_h = np.ascontiguousarray(ys[:, : (lh + 1) ** 2] * w[:, None])
    grad_h = np.ascontiguousarray(grads[:, : (lh + 1) ** 2].transpose(1, 2, 0))
    project_out = np.ascontiguousarray(ys[:, : (lo + 1) ** 2] * w[:, None])
    tables = (grad_in, project_h, grad_h, project_out)
    for a in tables:
        a.setflags(write=False)
    return tables


def bracket_grid_tables(l_in: int, lo: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Tables of the nested Poisson bracket ``proj_lo({{f1, f2}, f3})`` of degree-``l_in`` functions, float64
    copies. ``{f, g}(r) = r . (grad f x grad g) = df/de_theta dg/de_phi - df/de_phi dg/de_theta`` (surface
    gradients); it forms the couplings ``l1 x l2 -> l3`` with ``l1 + l2 + l3`` odd that a pointwise product
    cannot, and flips parity, so two of them keep it.

    Returns ``grad_in [(l_in+1)^2, 2, P]`` (tangent gradients of the harmonics at the nodes), ``project_h
    [P, (Lh+1)^2]`` and ``grad_h [(Lh+1)^2, 2, P]`` (``Lh = 2 l_in - 1``, the inner bracket's degree: its
    coefficients and their gradients), ``project_out [P, (lo+1)^2]``, on the grid exact for every projection
    involved (degree ``max(2 Lh, Lh + l_in - 1 + lo)``).
    """
    return tuple(a.copy() for a in _bracket_grid_tables(int(l_in), int(lo)))
