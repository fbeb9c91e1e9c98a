"""The Gaunt self-mix sub-layer on its own (no fairchem needed): exactness, equivariance, init."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from eqv2_testing import brute_force_product, random_rotation, wigner_d
from gaunt_plugins.adapters.equiformer_v2_selfmix import INIT_BRANCH_RMS, SQRT_4PI, GauntSelfMix, product_rms
from gaunt_plugins.ops import gaunt_product


def _randomise(mix: GauntSelfMix, seed: int = 0) -> GauntSelfMix:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in mix.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype))
    return mix


def _reference(mix: GauntSelfMix, x: torch.Tensor) -> np.ndarray:
    """The self-mix written out in NumPy with a brute-force product (norm is the identity here)."""
    lmax = mix.lmax
    deg = np.array([l for l in range(lmax + 1) for _ in range(2 * l + 1)])
    xn = x.detach().numpy()  # [N, K, C]
    w1 = mix.input_weight1.detach().numpy()[deg]  # [K, C]
    w2 = mix.input_weight2.detach().numpy()[deg]
    a = np.moveaxis(xn * w1, 1, 2)  # [N, C, K]
    b = np.moveaxis(xn * w2, 1, 2)
    prod = brute_force_product(a, b, lmax) * math.sqrt(4 * math.pi)  # [N, C, K]
    prod = prod * mix.product_scale.detach().numpy()[deg]  # 1 / p_l (normalised, the default) or 1
    w = mix.weight.detach().numpy()[deg]  # [K, Cout, Cin]
    out = np.einsum("nim,moi->nmo", prod, w)
    out[:, 0, :] += mix.bias.detach().numpy()
    return out


@pytest.mark.parametrize("lmax", [1, 2, 3, 4, 6])
@pytest.mark.parametrize("method", ["grid", "fourier"])
def test_selfmix_matches_brute_force_reference(lmax, method):
    mix = _randomise(GauntSelfMix(lmax, 3, method=method).double(), seed=lmax)
    x = torch.randn(4, (lmax + 1) ** 2, 3, dtype=torch.float64)
    got = mix(x).detach().numpy()
    want = _reference(mix, x)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10 * np.abs(want).max())


@pytest.mark.parametrize("lmax", [1, 2, 3, 5, 8])
def test_selfmix_is_equivariant_at_every_degree(lmax):
    """No aliasing: an exact product commutes with rotations to float64 precision at every L."""
    mix = _randomise(GauntSelfMix(lmax, 4).double(), seed=10 + lmax)
    d = torch.from_numpy(wigner_d(lmax, random_rotation(lmax)))
    x = torch.randn(5, (lmax + 1) ** 2, 4, dtype=torch.float64)
    rotated_in = mix(torch.einsum("ij,njc->nic", d, x))
    rotated_out = torch.einsum("ij,njc->nic", d, mix(x))
    scale = rotated_out.abs().max()
    assert scale > 1e-3
    assert (rotated_in - rotated_out).abs().max() < 1e-11 * scale


def test_sampled_grid_of_degree_2l_would_alias():
    """Sanity check of the test itself: squaring on a grid exact only for degree 2L (as the
    projection of a degree-2L product onto degree L would need 3L) breaks equivariance."""
    from gaunt_plugins.math import real_sph_harm, s2_product_grid

    lmax = 4
    xyz, w = s2_product_grid(2 * lmax)  # too small: exact only for degree 2L
    y = real_sph_harm(lmax, xyz)
    d = wigner_d(lmax, random_rotation(3))
    x = np.random.default_rng(0).standard_normal((3, (lmax + 1) ** 2))

    def aliased(v):
        f = v @ y.T
        return (f * f * w) @ y

    err = np.abs(aliased(x @ d.T) - aliased(x) @ d.T).max()
    assert err > 1e-6


def test_scalars_multiply_as_scalars():
    mix = GauntSelfMix(2, 1, normalize=False)  # normalised, the product is divided by p_0 as well
    with torch.no_grad():
        mix.weight.zero_()
        mix.weight[0, 0, 0] = 1.0
    x = torch.zeros(1, 9, 1)
    x[0, 0, 0] = 3.0
    out = mix(x)
    assert torch.allclose(out[0, 0, 0], torch.tensor(9.0))
    assert out[0, 1:].abs().max() < 1e-6
    assert SQRT_4PI == pytest.approx(math.sqrt(4 * math.pi))


def test_zero_init_branch_is_exactly_zero_and_trainable():
    mix = GauntSelfMix(3, 4, zero_init=True)
    x = torch.randn(6, 16, 4)
    out = mix(x)
    assert torch.equal(out, torch.zeros_like(out))
    out.pow(2).sum().backward()  # zero loss gradient everywhere at a zero branch...
    loss = (mix(x) * torch.randn_like(out)).sum()  # ...but a generic loss reaches the linear
    mix.zero_grad()
    loss.backward()
    assert mix.weight.grad.abs().max() > 0


def test_output_keeps_every_order_m():
    """mmax does not apply node-wise: every (l, m) of the output can be non-zero."""
    mix = _randomise(GauntSelfMix(3, 2).double(), seed=3)
    out = mix(torch.randn(3, 16, 2, dtype=torch.float64))
    assert (out.abs().amax(dim=(0, 2)) > 1e-8).all()


def test_parameter_shapes_and_the_one_persistent_buffer():
    """The state dict holds the parameters and ``product_scale`` (how the saved weights read the product)."""
    mix = GauntSelfMix(3, 5)
    shapes = {k: tuple(v.shape) for k, v in mix.state_dict().items()}
    assert shapes == {
        "input_weight1": (4, 5),
        "input_weight2": (4, 5),
        "weight": (4, 5, 5),
        "bias": (5,),
        "product_scale": (4,),
    }
    assert mix.irreps == "5x0e+5x1o+5x2e+5x3o"


def test_float32_close_to_float64():
    mix = _randomise(GauntSelfMix(4, 3).double(), seed=7)
    x = torch.randn(4, 25, 3, dtype=torch.float64)
    ref = mix(x)
    got = mix.float()(x.float()).double()
    assert (got - ref).abs().max() < 1e-4 * ref.abs().max()


def test_bad_options_raise_clear_errors():
    with pytest.raises(ValueError, match="method"):
        GauntSelfMix(2, 3, method="cg")
    with pytest.raises(ValueError, match="weight_init"):
        GauntSelfMix(2, 3, weight_init="xavier")
    with pytest.raises(ValueError, match="lmax"):
        GauntSelfMix(-1, 3)


def test_product_rms_matches_sampled_gaussian_inputs():
    """The exact per-degree RMS of the scaled square of a unit-Gaussian input, against samples
    (64000 per coefficient: a few percent of sampling error, 10% allowed)."""
    lmax = 4
    g = torch.Generator().manual_seed(0)
    y = torch.randn(4000, 16, (lmax + 1) ** 2, generator=g, dtype=torch.float64)
    prod = gaunt_product(y, y, lmax) * SQRT_4PI
    sampled = torch.stack([prod[..., l * l:(l + 1) ** 2].pow(2).mean().sqrt() for l in range(lmax + 1)])
    exact = product_rms(lmax)
    assert exact[0] == pytest.approx(math.sqrt((lmax + 1) ** 4 + 2 * (lmax + 1) ** 2))
    assert torch.allclose(sampled, exact, rtol=0.1), (sampled, exact)


@pytest.mark.parametrize("weight_init", ["normal", "uniform"])
@pytest.mark.parametrize("lmax", [2, 4])
def test_fresh_branch_starts_at_init_branch_rms_at_every_degree(lmax, weight_init):
    """On unit-Gaussian input a fresh branch has RMS INIT_BRANCH_RMS per degree (within the sampling
    error of 100 nodes and 4 random output linears of 32 x 32 channels: a few percent, 25% allowed), not the
    product's 5-26."""
    x = torch.randn(100, (lmax + 1) ** 2, 32, generator=torch.Generator().manual_seed(1))
    square_sums = torch.zeros(lmax + 1)
    torch.manual_seed(0)
    mix = GauntSelfMix(lmax, 32, weight_init=weight_init)
    for _ in range(4):
        mix.reset_parameters(weight_init=weight_init)
        with torch.no_grad():
            out = mix(x)
        square_sums += torch.stack([out[:, l * l:(l + 1) ** 2].pow(2).mean() for l in range(lmax + 1)])
    rms = (square_sums / 4).sqrt()
    assert torch.allclose(rms, torch.full_like(rms, INIT_BRANCH_RMS), rtol=0.25), rms


def test_normalize_divides_the_product_by_its_rms_and_keeps_the_initial_branch(float64):
    """``normalize=True``: the same initial branch (same seed), the product divided by ``p_l`` so the linear's
    gradient is ``1 / p_l`` of the plain layer's; a state dict saved without ``product_scale`` loads as plain."""
    from gaunt_plugins.adapters.equiformer_v2_selfmix import GauntSelfMix, product_rms

    torch.manual_seed(0)
    x = torch.randn(5, 16, 4, dtype=torch.float64)
    branches, grads = [], []
    for normalize in (False, True):
        torch.manual_seed(1)
        mix = GauntSelfMix(3, 4, normalize=normalize)
        out = mix(x)
        out.square().sum().backward()
        branches.append(out.detach())
        grads.append(mix.weight.grad.detach())
    assert torch.allclose(branches[0], branches[1], rtol=1e-12, atol=1e-15)
    p = product_rms(3).to(torch.float64)
    # the plain layer's weights are the normalised layer's divided by p_l: same function, the gradient
    # of the plain one is p_l times larger per unit of output change
    assert torch.allclose(grads[0], grads[1] * p.view(-1, 1, 1), rtol=1e-10, atol=0)
    old_state = {k: v for k, v in mix.state_dict().items() if k != "product_scale"}
    loaded = GauntSelfMix(3, 4, normalize=True)
    loaded.load_state_dict(old_state)
    assert not loaded.normalized and torch.equal(loaded.product_scale, torch.ones(4, dtype=torch.float64))


def test_gaunt_normalize_reaches_every_block_and_bad_values_are_refused():
    from gaunt_plugins.adapters.equiformer_v2_config import GauntConfigError, GauntOptions, split_gaunt_kwargs

    _, opts = split_gaunt_kwargs({"tensor_product": "gaunt", "gaunt_normalize": False})
    assert opts.normalize is False
    assert split_gaunt_kwargs({"tensor_product": "gaunt"})[1].normalize is True  # the default
    assert GauntSelfMix(2, 3).normalized and not GauntSelfMix(2, 3, normalize=False).normalized
    with pytest.raises(GauntConfigError, match="gaunt_normalize must be true or false"):
        GauntOptions(normalize="yes")
