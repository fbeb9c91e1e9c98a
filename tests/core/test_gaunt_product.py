"""gaunt_product: exactness of both methods, broadcasting, dtypes, autograd, bad input."""
import itertools

import numpy as np
import pytest
import torch

from gaunt_plugins import gaunt_product
from gaunt_plugins._e3nn import o3
from gaunt_plugins.testing import random_rotation, wigner_d


def _fine_rotated_grid(lmax=6, n=24):
    """e3nn's own harmonics on a much finer, rotated Gauss-Legendre grid (exact to degree 2n-1)."""
    z, wz = np.polynomial.legendre.leggauss(n)
    phi = 2 * np.pi * (np.arange(2 * n) + 0.37) / (2 * n)
    rho = np.sqrt(1 - z**2)
    pts = np.stack([rho[:, None] * np.cos(phi), z[:, None] * np.ones_like(phi), rho[:, None] * np.sin(phi)], -1)
    angles = torch.tensor([0.3, 1.1, -0.7], dtype=torch.float64)
    pts = pts.reshape(-1, 3) @ o3.angles_to_matrix(*angles).numpy().T
    w = (wz[:, None] * np.full(2 * n, np.pi / n)).reshape(-1)
    y = o3.spherical_harmonics(list(range(lmax + 1)), torch.from_numpy(pts), True, normalization="integral")
    return torch.from_numpy(w), y


@pytest.mark.parametrize("method", ["grid", "fourier"])
def test_both_methods_match_an_independent_reference_for_all_degrees_up_to_6(method):
    """Reference: brute quadrature of f1 f2 Y_lo on a 24 x 48 rotated grid with e3nn's harmonics."""
    w, y = _fine_rotated_grid()
    rng = torch.Generator().manual_seed(0)
    worst = 0.0
    for l1, l2, lo in itertools.product(range(7), range(7), range(7)):
        x1 = torch.randn(3, (l1 + 1) ** 2, generator=rng, dtype=torch.float64)
        x2 = torch.randn(3, (l2 + 1) ** 2, generator=rng, dtype=torch.float64)
        f = (x1 @ y[:, : (l1 + 1) ** 2].T) * (x2 @ y[:, : (l2 + 1) ** 2].T)
        ref = (f * w) @ y[:, : (lo + 1) ** 2]
        worst = max(worst, (gaunt_product(x1, x2, lo, method=method) - ref).abs().max().item())
    assert worst < 1e-10


def test_fourier_equals_grid():
    x1 = torch.randn(4, 5, 49, dtype=torch.float64)
    x2 = torch.randn(4, 5, 25, dtype=torch.float64)
    for lo in (0, 3, 6, 10, 12):
        a, b = gaunt_product(x1, x2, lo, method="grid"), gaunt_product(x1, x2, lo, method="fourier")
        assert (a - b).abs().max() < 1e-12


def test_product_of_the_constant_one_is_the_identity():
    one = torch.zeros(1, dtype=torch.float64)
    one[0] = (4 * np.pi) ** 0.5  # f = 1
    y = torch.randn(7, 16, dtype=torch.float64)
    assert (gaunt_product(one, y, 3) - y).abs().max() < 1e-13


def test_outputs_above_l1_plus_l2_are_zero():
    out = gaunt_product(torch.randn(2, 4), torch.randn(2, 4), 4)
    assert out.shape == (2, 25) and out[:, 9:].abs().max() == 0


def test_leading_dimensions_broadcast_edge_harmonics_over_channels():
    node = torch.randn(6, 8, 9, dtype=torch.float64)  # [E, C, (L+1)^2]
    sh = torch.randn(6, 1, 16, dtype=torch.float64)  # [E, 1, ...]
    out = gaunt_product(node, sh, 3)
    assert out.shape == (6, 8, 16)
    assert (out[:, 5] - gaunt_product(node[:, 5], sh[:, 0], 3)).abs().max() < 1e-13


def test_product_is_symmetric():
    a, b = torch.randn(3, 9, dtype=torch.float64), torch.randn(3, 16, dtype=torch.float64)
    assert (gaunt_product(a, b, 4) - gaunt_product(b, a, 4)).abs().max() < 1e-13


@pytest.mark.parametrize("method", ["grid", "fourier"])
def test_float32_agrees_with_float64(method):
    a, b = torch.randn(10, 16, dtype=torch.float64), torch.randn(10, 16, dtype=torch.float64)
    ref = gaunt_product(a, b, 3, method=method)
    out = gaunt_product(a.float(), b.float(), 3, method=method)
    assert out.dtype == torch.float32
    assert ((out.double() - ref).abs().max() / ref.abs().max()) < 1e-5


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_inputs_are_accumulated_in_float32_and_returned_in_their_type(dtype):
    a, b = torch.randn(10, 16), torch.randn(10, 16)
    ah, bh = a.to(dtype), b.to(dtype)
    out = gaunt_product(ah, bh, 3)
    ref = gaunt_product(ah.float(), bh.float(), 3)
    assert out.dtype == dtype
    assert (out.float() - ref).abs().max() <= ref.abs().max() * 1e-2


@pytest.mark.parametrize("method", ["grid", "fourier"])
def test_gradcheck_float64(method):
    a = torch.randn(2, 9, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, y: gaunt_product(x, y, 2, method=method), (a, b))


@pytest.mark.parametrize("method", ["grid", "fourier"])
def test_rotation_equivariance(method):
    for l1, l2, lo in [(1, 1, 2), (2, 3, 4), (4, 4, 8)]:
        rot = random_rotation()
        d1, d2, do = (wigner_d(o3.Irreps([(1, (l, 1)) for l in range(n + 1)]), rot) for n in (l1, l2, lo))
        a, b = torch.randn(5, d1.shape[0], dtype=torch.float64), torch.randn(5, d2.shape[0], dtype=torch.float64)
        lhs = gaunt_product(a @ d1.T, b @ d2.T, lo, method=method)
        rhs = gaunt_product(a, b, lo, method=method) @ do.T
        assert (lhs - rhs).abs().max() < 1e-10


@pytest.mark.parametrize("bad, match", [
    (lambda: gaunt_product(torch.randn(5), torch.randn(4), 1), "last dimension 5 is not"),
    (lambda: gaunt_product(torch.randn(4), torch.randn(7), 1), "x2: last dimension 7"),
    (lambda: gaunt_product(torch.randn(3, 4), torch.randn(2, 4), 1), "do not broadcast"),
    (lambda: gaunt_product(torch.randn(4), torch.randn(4), -1), "lmax_out must be >= 0"),
    (lambda: gaunt_product(torch.randn(4), torch.randn(4), 1, method="fft"), "unknown method 'fft'"),
    (lambda: gaunt_product(torch.randn(4), torch.randn(4, device="meta"), 1), "put both on one device"),
    (lambda: gaunt_product(torch.randn(41 ** 2), torch.randn(4), 3, method="fourier"), "no 2D Fourier table"),
    (lambda: gaunt_product(torch.randn(40 ** 2), torch.randn(30 ** 2), 30), "has no grid table"),
    (lambda: gaunt_product(torch.ones(4, dtype=torch.long), torch.ones(4, dtype=torch.long), 1), "floating point"),
    (lambda: gaunt_product(torch.randn(4), torch.randn(4), 2.7), "lmax_out must be a whole number"),
    (lambda: gaunt_product(torch.randn(4), torch.randn(4), 100000), "lmax_out = 100000 is past the largest"),
])
def test_bad_input_raises_a_clear_error(bad, match):
    with pytest.raises(ValueError, match=match):
        bad()


@pytest.mark.parametrize("method", ["grid", "fourier"])
def test_no_rows_give_an_empty_result(method):
    out = gaunt_product(torch.randn(0, 9), torch.randn(0, 4), 2, method=method)
    assert out.shape == (0, 9)
    out = gaunt_product(torch.randn(3, 0, 9), torch.randn(1, 4), 3, method=method)
    assert out.shape == (3, 0, 16)
