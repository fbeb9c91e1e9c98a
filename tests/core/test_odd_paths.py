"""GauntOddPaths: the nested Poisson brackets that add the odd-intermediate-path couplings to the many-body
product (tables, equivariance, parity, the initial function, TorchScript, second derivatives, old layers)."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from gaunt_plugins._e3nn import o3
from gaunt_plugins.layers import GauntManyBody
from gaunt_plugins.math.s2_grid import bracket_grid_tables
from gaunt_plugins.math.spherical_harmonics import real_sph_harm_tangent_gradient, tangent_frame

IN, OUT = "4x0e+4x1o+4x2e+4x3o", "4x0e+4x1o+4x2e"


def _unit_points(n, seed=0):
    xyz = np.random.default_rng(seed).normal(size=(n, 3))
    return xyz / np.linalg.norm(xyz, axis=1, keepdims=True)


def test_tangent_gradients_of_the_harmonics_match_autograd_of_e3nn(float64):
    xyz = _unit_points(40)
    lmax = 6
    r = torch.tensor(xyz, requires_grad=True)
    y = o3.spherical_harmonics(list(range(lmax + 1)), r, normalize=True, normalization="integral")
    jac = torch.stack([torch.autograd.grad(y[:, k].sum(), r, retain_graph=True)[0] for k in range(y.shape[1])], 1)
    e_theta, e_phi = tangent_frame(xyz)
    ref = np.stack([np.einsum("pkd,pd->pk", jac.numpy(), e_theta), np.einsum("pkd,pd->pk", jac.numpy(), e_phi)], -1)
    assert np.abs(real_sph_harm_tangent_gradient(lmax, xyz) - ref).max() < 1e-12 * np.abs(ref).max()
    assert np.abs(np.cross(e_theta, e_phi) - xyz).max() < 1e-14  # e_theta x e_phi = r


def test_the_bracket_of_two_linear_functions_is_their_cross_product():
    """{a.r, b.r} = r . (a x b): the 1 x 1 -> 1 coupling (the cross product) no Gaunt path has."""
    grad_in, project_h, grad_h, _ = bracket_grid_tables(1, 1)
    points = grad_in.shape[-1]
    a, b = np.array([0.3, -1.2, 0.7]), np.array([1.1, 0.4, -0.5])
    # the l = 1 harmonics are sqrt(3 / 4 pi) (x, y, z) in e3nn's order: coefficients of a.r
    coeffs = lambda v: np.concatenate([[0.0], v / np.sqrt(3.0 / (4.0 * np.pi))])  # noqa: E731
    ga, gb = coeffs(a) @ grad_in.reshape(4, -1), coeffs(b) @ grad_in.reshape(4, -1)
    ga, gb = ga.reshape(2, points), gb.reshape(2, points)
    h = ga[0] * gb[1] - ga[1] * gb[0]
    # h projected to degree 1 is (a x b) . r
    assert np.allclose((h @ project_h)[:4], coeffs(np.cross(a, b)), atol=1e-12)


def _layer(odd_chains=1, seed=0, **kw):
    torch.manual_seed(seed)
    layer = GauntManyBody(IN, OUT, 3, 3, odd_chains=odd_chains, **kw)
    if layer.odd_paths is not None:
        with torch.no_grad():
            layer.odd_paths.weights_out.normal_()
    return layer


def _inputs(n=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, 16, generator=g)
    attrs = torch.nn.functional.one_hot(torch.randint(0, 3, (n,), generator=g), 3).to(x.dtype)
    return x, attrs


@pytest.mark.parametrize("odd_chains", [1, 2])
def test_odd_paths_are_equivariant_with_the_parity_of_the_product(float64, odd_chains):
    layer = _layer(odd_chains)
    x, attrs = _inputs()
    odd = layer.odd_paths(x, attrs, layer.weight_gain)
    assert odd.abs().max() > 1e-3  # the term is on
    rot = o3.rand_matrix()
    d_in, d_out = o3.Irreps("0e+1o+2e+3o").D_from_matrix(rot), o3.Irreps(OUT).D_from_matrix(rot)
    rotated = layer.odd_paths(x @ d_in.T, attrs, layer.weight_gain)
    assert (rotated - odd @ d_out.T).abs().max() < 1e-11 * odd.abs().max()
    p_in = torch.tensor([(-1.0) ** l for l in range(4) for _ in range(2 * l + 1)])
    p_out = torch.cat([torch.full((4 * (2 * l + 1),), (-1.0) ** l) for l in range(3)])
    inverted = layer.odd_paths(x * p_in, attrs, layer.weight_gain)
    assert (inverted - odd * p_out).abs().max() < 1e-11 * odd.abs().max()


def test_odd_paths_start_at_zero_weight_so_the_initial_function_is_the_products(float64):
    x, attrs = _inputs()
    torch.manual_seed(5)
    with_odd = GauntManyBody(IN, OUT, 3, 3, odd_chains=1)
    without = GauntManyBody(IN, OUT, 3, 3)
    state = {k: v for k, v in with_odd.state_dict().items() if not k.startswith("odd_paths.")}
    without.load_state_dict(state)
    assert torch.equal(with_odd(x, attrs), without(x, attrs))
    assert with_odd.odd_paths.weights_out.abs().max() == 0


def test_a_scripted_layer_with_odd_paths_gives_eager_outputs(float64):
    layer = _layer(1)
    x, attrs = _inputs()
    assert torch.allclose(torch.jit.script(layer)(x, attrs), layer(x, attrs), rtol=0, atol=1e-12)


def test_odd_paths_have_exact_first_and_second_derivatives(float64):
    """Forces train on the gradient of the energy: the term's second derivatives are checked numerically."""
    x, attrs = _inputs(n=2)
    x = x[:, :1].clone().requires_grad_(True)  # one channel
    small = GauntManyBody("1x0e+1x1o+1x2e+1x3o", "1x0e+1x1o+1x2e", 3, 3, odd_chains=1)
    with torch.no_grad():
        small.odd_paths.weights_out.normal_()
    fn = lambda v: small.odd_paths(v, attrs, small.weight_gain)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x,), eps=1e-6, atol=1e-6, rtol=1e-6)
    assert torch.autograd.gradgradcheck(fn, (x,), eps=1e-6, atol=1e-6, rtol=1e-6)


def test_a_layer_pickled_before_the_odd_paths_loads_without_them(float64):
    layer = _layer(0)
    x, attrs = _inputs()
    state = layer.__getstate__()
    state["_modules"] = {k: v for k, v in state["_modules"].items() if k != "odd_paths"}
    old = GauntManyBody.__new__(GauntManyBody)
    old.__setstate__(pickle.loads(pickle.dumps(state)))
    assert old.odd_paths is None and old.odd_chains == 0
    assert torch.equal(old(x, attrs), layer(x, attrs))


@pytest.mark.parametrize("value, match", [(-1, "odd_chains must be a whole number >= 0"),
                                          (1.5, "odd_chains must be a whole number >= 0"),
                                          (True, "odd_chains must be a whole number >= 0")])
def test_a_bad_odd_chain_count_is_refused(value, match):
    with pytest.raises(ValueError, match=match):
        GauntManyBody(IN, OUT, 3, 3, odd_chains=value)


def test_odd_paths_need_correlation_three():
    with pytest.raises(ValueError, match="odd_chains needs correlation >= 3"):
        GauntManyBody(IN, OUT, 2, 3, odd_chains=1)


def test_the_scalar_part_of_a_bracket_vanishes_so_scalar_outputs_get_no_odd_paths(float64):
    """``{h, f}`` is a divergence: its degree-0 part is 0 (to rounding, before the layer zeroes it). A layer with
    scalar outputs alone (MACE's last) builds no brackets; a mixed one has exactly-zero ``0e`` columns."""
    from gaunt_plugins.layers.odd_paths import _raw_brackets

    grad_in, project_h, grad_h, project_out = bracket_grid_tables(3, 2)
    raw = _raw_brackets(np.random.default_rng(1).standard_normal((3, 20, 16)), grad_in, project_h, grad_h,
                        project_out)
    assert np.abs(raw[:, 0]).max() < 1e-13 * np.abs(raw[:, 1:]).max()
    scalar_only = GauntManyBody(IN, "4x0e", 3, 3, odd_chains=1)
    assert scalar_only.odd_paths is None and scalar_only.odd_chains == 1
    layer = _layer(1)
    x, attrs = _inputs()
    assert torch.equal(layer.odd_paths(x, attrs, layer.weight_gain)[:, :4], torch.zeros(x.shape[0], 4))


def test_odd_paths_do_not_amplify_rounding(float64):
    """A relative change of 1e-15 in the input changes the output by no more than 1e-12 relative (the tables'
    normalisation never divides by a vanishing part)."""
    layer = _layer(1)
    x, attrs = _inputs()
    out = layer.odd_paths(x, attrs, layer.weight_gain)
    nudged = layer.odd_paths(x * (1 + 1e-15 * torch.randn_like(x)), attrs, layer.weight_gain)
    assert (nudged - out).abs().max() < 1e-12 * out.abs().max()
