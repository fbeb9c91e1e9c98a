"""The fused CPU kernels equal the PyTorch reference, values and derivatives of every order."""
import subprocess
import sys

import pytest
import torch

from gaunt_plugins.backends import cpu, torch_ops
from gaunt_plugins.backends.cpu import cpu_kernels_available, grid_product_fused
from gaunt_plugins.math import grid_tables

pytestmark = pytest.mark.skipif(not cpu_kernels_available(), reason="no C compiler: the CPU kernels cannot be built")


def _tables(l1, l2, lo, dtype):
    return [torch.from_numpy(t).to(dtype) for t in grid_tables(l1, l2, lo)]


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-13), (torch.float32, 1e-5)])
@pytest.mark.parametrize("rows", [0, 1, 7, 8, 9, 31, 4099])
def test_fused_grid_product_equals_the_matmul_chain_for_ragged_row_counts(rows, dtype, tol):
    for l1, l2, lo in [(1, 1, 2), (2, 3, 2), (3, 1, 4)]:
        y1, y2, proj = _tables(l1, l2, lo, dtype)
        u, v = torch.randn(rows, y1.shape[0], dtype=dtype), torch.randn(rows, y2.shape[0], dtype=dtype)
        ref = torch.matmul(torch.matmul(u, y1) * torch.matmul(v, y2), proj)
        out = grid_product_fused(u, v, y1, y2, proj)
        assert out.shape == ref.shape
        if rows:
            assert ((out - ref).abs().max() / ref.abs().max()) < tol


def test_fused_grid_product_gradcheck_and_gradgradcheck():
    y1, y2, proj = _tables(2, 1, 2, torch.float64)
    u = torch.randn(11, 9, dtype=torch.float64, requires_grad=True)
    v = torch.randn(11, 4, dtype=torch.float64, requires_grad=True)
    fn = lambda a, b: grid_product_fused(a, b, y1, y2, proj)
    assert torch.autograd.gradcheck(fn, (u, v))
    assert torch.autograd.gradgradcheck(fn, (u[:5].detach().requires_grad_(), v[:5].detach().requires_grad_()))


def test_fused_backward_uses_several_threads_consistently():
    y1, y2, proj = _tables(2, 2, 2, torch.float32)
    u = torch.randn(20000, 9, requires_grad=True)
    v = torch.randn(20000, 9, requires_grad=True)
    g = torch.randn(20000, 9)
    du, dv = torch.autograd.grad(grid_product_fused(u, v, y1, y2, proj), (u, v), g)
    ru, rv = torch.autograd.grad(torch.matmul(torch.matmul(u, y1) * torch.matmul(v, y2), proj), (u, v), g)
    assert torch.allclose(du, ru, atol=1e-4) and torch.allclose(dv, rv, atol=1e-4)


def _conv_args(dtype):
    from gaunt_plugins import GauntConvolution
    conv = GauntConvolution("4x0e+4x1o+4x2e", "0e+1o+2e+3o", "4x0e+4x1o+4x2e+4x3o").to(dtype)
    e = 13
    return (torch.randn(e, 4, 9, dtype=dtype), torch.randn(e, 16, dtype=dtype),
            torch.randn(e, conv.k1 + conv.k2 + conv.k3, 4, dtype=dtype), conv.k1, conv.deg1, conv.deg_mask2,
            conv.deg3, conv.to_grid1, conv.to_grid2, conv.from_grid)


def test_cpu_conv_product_equals_the_reference_including_second_derivatives():
    args = list(_conv_args(torch.float64))
    assert (cpu.conv_product(*args) - torch_ops.conv_product(*args)).abs().max() < 1e-13
    x, sh, w = (a[:4].clone().requires_grad_() for a in args[:3])
    fn = lambda a, b, c: cpu.conv_product(a, b, c, *args[3:])
    assert torch.autograd.gradgradcheck(fn, (x, sh, w))


def test_cpu_weighted_and_many_body_products_equal_the_reference():
    from gaunt_plugins import GauntManyBody, GauntTensorProduct
    tp = GauntTensorProduct("3x0e+3x1o+3x2e", "3x0e+3x1o+3x2e").double()
    n = 10
    a, b = torch.randn(n, 3, 9, dtype=torch.float64), torch.randn(n, 3, 9, dtype=torch.float64)
    w = [torch.randn(n, 3, 3, dtype=torch.float64) for _ in range(3)]
    args = (a, b, *w, tp.deg1, tp.deg2, tp.deg3, tp.to_grid1, tp.to_grid2, tp.from_grid)
    assert (cpu.weighted_product(*args) - torch_ops.weighted_product(*args)).abs().max() < 1e-13
    mb = GauntManyBody("3x0e+3x1o+3x2e", "3x0e+3x1o", 3, 2).double()
    x = torch.randn(n, 3, 9, dtype=torch.float64, requires_grad=True)
    wi, wo = torch.randn(n, 3, 3, 3, dtype=torch.float64), torch.randn(n, 3, 2, 3, dtype=torch.float64)
    margs = (wi, wo, mb.deg_in, mb.deg_out, mb.to_grid, mb.from_grids)
    assert (cpu.many_body_product(x, *margs) - torch_ops.many_body_product(x, *margs)).abs().max() < 1e-13
    small = (wi[:3], wo[:3], *margs[2:])
    assert torch.autograd.gradgradcheck(lambda t: cpu.many_body_product(t, *small), (x[:3].detach().requires_grad_(),))


def test_kernels_can_be_disabled_and_the_layers_then_use_the_reference():
    code = ("import torch; from gaunt_plugins.backends.cpu import cpu_kernels_available, "
            "cpu_kernels_unavailable_reason as r; assert not cpu_kernels_available(); print(r())")
    out = subprocess.run([sys.executable, "-c", code], env={**__import__("os").environ, "GAUNT_CPU_KERNELS": "0"},
                         capture_output=True, text=True, check=True)
    assert "GAUNT_CPU_KERNELS=0" in out.stdout


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-13), (torch.float32, 2e-6)])
@pytest.mark.parametrize("irreps", [
    ("5x0e+5x1o+5x2e", "0e+1o+2e+3o", "5x0e+5x1o+5x2e+5x3o"),  # MACE-like, channel tail (5 < 8 lanes)
    ("9x1o+9x2e", "0e+2e", "9x1o+9x3o"),  # missing degrees on every side, 9 = one tile + 1
    ("3x0o+3x1e", "0e+1o", "3x0o+3x1e"),  # twisted features
])
@pytest.mark.parametrize("products", [1, 3])
def test_fused_convolution_equals_the_pure_pytorch_reference(irreps, dtype, tol, products):
    from gaunt_plugins import GauntConvolution
    from gaunt_plugins.layers._layout import dense_to_flat, flat_to_dense

    conv = GauntConvolution(*irreps, products=products, weight_offset=0.0).to(dtype)
    e = 17
    x = torch.randn(e, conv.dim_in1, dtype=dtype, requires_grad=True)
    sh = torch.randn(e, conv.dim_in2, dtype=dtype, requires_grad=True)
    w = torch.randn(e, conv.weight_numel, dtype=dtype, requires_grad=True)
    out = conv(x, sh, w)
    lanes = products * conv.channels
    a = flat_to_dense(x, conv.index_in1, lanes, conv.width1)
    shd = flat_to_dense(sh, conv.index_in2, 1, conv.width2).view(e, -1)
    ref = dense_to_flat(torch_ops.conv_product(a, shd, w.view(e, -1, lanes), conv.k1, conv.deg1,
                                               conv.deg_mask2, conv.deg3, conv.to_grid1, conv.to_grid2,
                                               conv.from_grid), conv.index_out)
    assert ((out - ref).abs().max() / ref.abs().max()) < tol
    g = torch.randn_like(out)
    for got, want in zip(torch.autograd.grad(out, (x, sh, w), g), torch.autograd.grad(ref, (x, sh, w), g)):
        assert ((got - want).abs().max() / want.abs().max()) < tol


def test_fused_convolution_second_derivatives_for_force_training():
    from gaunt_plugins import GauntConvolution

    conv = GauntConvolution("3x0e+3x1o+3x2e", "0e+1o+2e", "3x0e+3x1o+3x2e").double()
    args = [torch.randn(4, d, dtype=torch.float64, requires_grad=True)
            for d in (conv.dim_in1, conv.dim_in2, conv.weight_numel)]
    assert torch.autograd.gradcheck(conv, args)
    assert torch.autograd.gradgradcheck(conv, args)


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-13), (torch.float32, 3e-6)])
@pytest.mark.parametrize("irreps_in, irreps_out, nu", [
    ("5x0e+5x1o+5x2e", "5x0e+5x1o", 3),  # MACE-like, channel tail
    ("9x1o+9x2e", "9x0e+9x1o+9x2e", 2),  # a missing input degree, 9 = one tile + 1
    ("3x0o+3x1e", "3x0o+3x1e", 3),  # twisted: the nu = 2 term is dropped
])
def test_fused_many_body_equals_the_pure_pytorch_reference(irreps_in, irreps_out, nu, dtype, tol):
    from gaunt_plugins import GauntManyBody
    from gaunt_plugins.layers._layout import dense_to_flat

    mb = GauntManyBody(irreps_in, irreps_out, nu, 3).to(dtype)
    with torch.no_grad():
        mb.weights_in.normal_()
    n = 11
    x = torch.randn(n, mb.channels, mb.compact_in, dtype=dtype, requires_grad=True)
    attrs = torch.nn.functional.one_hot(torch.arange(n) % 3, 3).to(dtype)
    out = mb(x, attrs)
    w_in = (attrs @ mb.weights_in.reshape(3, -1)).view(n, nu, mb.k_in, mb.channels)
    w_out = (attrs @ mb.weights_out.reshape(3, -1)).view(n, nu, mb.k_out, mb.channels)
    xd = torch.cat([x, x.new_zeros(n, mb.channels, 1)], 2).index_select(2, mb.index_in)
    ref = dense_to_flat(torch_ops.many_body_product(xd, w_in, w_out, mb.deg_in, mb.deg_out, mb.to_grid,
                                                    mb.from_grids), mb.index_out)
    assert ((out - ref).abs().max() / ref.abs().max()) < tol
    g = torch.randn_like(out)
    params = (x, mb.weights_in, mb.weights_out)
    for got, want in zip(torch.autograd.grad(out, params, g), torch.autograd.grad(ref, params, g)):
        assert ((got - want).abs().max() / want.abs().max()) < tol


def test_fused_many_body_second_derivatives_for_force_training():
    from gaunt_plugins import GauntManyBody

    mb = GauntManyBody("2x0e+2x1o", "2x0e+2x1o", 3, 2).double()
    x = torch.randn(3, 2, 4, dtype=torch.float64, requires_grad=True)
    attrs = torch.eye(2, dtype=torch.float64)[[0, 1, 1]]
    assert torch.autograd.gradcheck(lambda t: mb(t, attrs), (x,))
    assert torch.autograd.gradgradcheck(lambda t: mb(t, attrs), (x,))
