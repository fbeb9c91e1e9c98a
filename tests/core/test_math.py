"""The float64 math layer: harmonics, grids, Fourier tables, Gaunt coefficients."""
import numpy as np
import pytest
import torch

from gaunt_plugins._e3nn import o3
from gaunt_plugins.math import (
    gaunt_coefficients, gaunt_path_allowed, gaunt_paths, grid_shape, real_sph_harm, s2_product_grid,
    sh_to_fourier_dense, sh_to_fourier_sparse,
)
from gaunt_plugins.math.fourier import fourier_to_sh_dense
from gaunt_plugins.math.spherical_harmonics import polar_angles


def test_real_sph_harm_matches_e3nn_integral_normalisation_up_to_l10():
    pts = np.random.default_rng(0).normal(size=(200, 3))
    ref = o3.spherical_harmonics(list(range(11)), torch.from_numpy(pts), True, normalization="integral")
    assert np.abs(real_sph_harm(10, pts) - ref.numpy()).max() < 1e-12


@pytest.mark.parametrize("degree", [0, 1, 2, 5, 12, 24])
def test_product_grid_integrates_every_polynomial_up_to_its_degree(degree):
    xyz, w = s2_product_grid(degree)
    assert len(w) == np.prod(grid_shape(degree))
    half = degree // 2
    y = real_sph_harm(degree - half, xyz)
    z = real_sph_harm(half, xyz)
    gram = (z * w[:, None]).T @ y[:, : z.shape[1]]  # products of total degree <= degree
    assert np.abs(gram - np.eye(z.shape[1])).max() < 1e-12


def test_grid_one_degree_too_small_is_not_exact():
    xyz, w = s2_product_grid(5)  # exact to 5, not to 6
    y = real_sph_harm(3, xyz)
    gram = (y * w[:, None]).T @ y
    assert np.abs(gram - np.eye(16)).max() > 1e-6


def test_fourier_series_reproduces_the_harmonics():
    lmax = 6
    pts = np.random.default_rng(1).normal(size=(40, 3))
    th, ph = polar_angles(pts)
    u = np.arange(-lmax, lmax + 1)
    waves = np.exp(1j * (u[None, :, None] * th[:, None, None] + u[None, None, :] * ph[:, None, None]))
    vals = np.einsum("kuv,nuv->nk", sh_to_fourier_dense(lmax), waves)
    assert np.abs(vals.imag).max() < 1e-12
    assert np.abs(vals.real - real_sph_harm(lmax, pts)).max() < 1e-12


def test_fourier_table_is_sparse_in_v_equal_plus_minus_m():
    lmax = 4
    dense = sh_to_fourier_dense(lmax)
    for l in range(lmax + 1):
        for m in range(-l, l + 1):
            nonzero_v = {v - lmax for v in np.nonzero(np.abs(dense[l * l + l + m]).max(axis=0) > 1e-14)[0]}
            assert nonzero_v <= {m, -m}
    assert sh_to_fourier_sparse(lmax).shape == (lmax + 1, 2 * lmax + 1, 2 * lmax + 1, 2)


def test_fourier_projection_inverts_the_expansion():
    lmax = 5
    back = np.einsum("kuv,uvj->kj", sh_to_fourier_dense(lmax), fourier_to_sh_dense(lmax, lmax)).real
    assert np.abs(back - np.eye((lmax + 1) ** 2)).max() < 1e-12


def test_gaunt_coefficients_vanish_off_the_even_triangle_and_are_symmetric():
    g = gaunt_coefficients(3, 3, 4)
    for l1 in range(4):
        for l2 in range(4):
            for l3 in range(5):
                block = g[l1 * l1:(l1 + 1) ** 2, l2 * l2:(l2 + 1) ** 2, l3 * l3:(l3 + 1) ** 2]
                assert (np.abs(block).max() > 1e-10) == gaunt_path_allowed(l1, l2, l3)
    assert np.abs(g[:, :, :16] - g.transpose(1, 0, 2)[:, :, :16]).max() < 1e-14


def test_gaunt_is_clebsch_gordan_times_a_path_constant():
    for l1, l2, l3 in [(1, 1, 2), (2, 1, 1), (2, 2, 2), (3, 2, 1), (3, 3, 4)]:
        g = gaunt_coefficients(l1, l2, l3)[l1 * l1:, l2 * l2:(l2 + 1) ** 2, l3 * l3:]
        cg = o3.wigner_3j(l1, l2, l3, dtype=torch.float64).numpy()
        c = (g * cg).sum() / (cg * cg).sum()
        assert np.abs(g - c * cg).max() < 1e-12 and abs(c) > 1e-3


@pytest.mark.parametrize("lmax, kept, total", [(2, 14, 19), (4, 55, 85), (6, 140, 231)])
def test_gaunt_path_counts_match_the_paper(lmax, kept, total):
    """Ordered (l1, l2) <= L with every l3 their product reaches (GAUNT.md's counting)."""
    assert len(gaunt_paths(lmax, lmax, 2 * lmax)) == kept
    triangle = [(a, b, c) for a in range(lmax + 1) for b in range(lmax + 1) for c in range(2 * lmax + 1)
                if abs(a - b) <= c <= a + b]
    assert len(triangle) == total


def test_tables_are_copies_the_cache_cannot_be_corrupted():
    xyz, w = s2_product_grid(4)
    w[:] = 0.0
    assert s2_product_grid(4)[1].sum() == pytest.approx(4 * np.pi)


def test_degree_without_a_table_is_rejected():
    with pytest.raises(ValueError, match="exceeds the largest supported degree"):
        grid_shape(1000)
    with pytest.raises(ValueError, match="no 2D Fourier table"):
        sh_to_fourier_dense(100)


def test_fourier_projection_serves_every_product_of_tabulated_degrees_and_nothing_past_them():
    """Products of two degree-32 features reach frequency 64: served; past that: refused."""
    assert fourier_to_sh_dense(40, 2).shape == (81, 5, 9)
    with pytest.raises(ValueError, match="supported 0..64"):
        fourier_to_sh_dense(65, 2)
