"""The CPU grid-product operator (``torch.ops.gaunt.grid_product``, the C kernel) equals the PyTorch reference,
values and derivatives of every order."""
import subprocess
import sys

import pytest
import torch

from gaunt_plugins.backends.cpu import ops_available
from gaunt_plugins.math import grid_tables

pytestmark = pytest.mark.skipif(not ops_available(), reason="no C/C++ compiler: the CPU operators cannot be built")


def _tables(l1, l2, lo, dtype):
    return [torch.from_numpy(t).to(dtype) for t in grid_tables(l1, l2, lo)]


def grid_product(u, v, y1, y2, proj):
    return torch.ops.gaunt.grid_product(u, v, y1, y2, proj)


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-13), (torch.float32, 1e-5)])
@pytest.mark.parametrize("rows", [0, 1, 7, 8, 9, 31, 4099])
def test_fused_grid_product_equals_the_matmul_chain_for_ragged_row_counts(rows, dtype, tol):
    for l1, l2, lo in [(1, 1, 2), (2, 3, 2), (3, 1, 4)]:
        y1, y2, proj = _tables(l1, l2, lo, dtype)
        u, v = torch.randn(rows, y1.shape[0], dtype=dtype), torch.randn(rows, y2.shape[0], dtype=dtype)
        ref = torch.matmul(torch.matmul(u, y1) * torch.matmul(v, y2), proj)
        out = grid_product(u, v, y1, y2, proj)
        assert out.shape == ref.shape
        if rows:
            assert ((out - ref).abs().max() / ref.abs().max()) < tol


def test_fused_grid_product_gradcheck_and_gradgradcheck():
    y1, y2, proj = _tables(2, 1, 2, torch.float64)
    u = torch.randn(11, 9, dtype=torch.float64, requires_grad=True)
    v = torch.randn(11, 4, dtype=torch.float64, requires_grad=True)
    fn = lambda a, b: grid_product(a, b, y1, y2, proj)
    assert torch.autograd.gradcheck(fn, (u, v))
    assert torch.autograd.gradgradcheck(fn, (u[:5].detach().requires_grad_(), v[:5].detach().requires_grad_()))


def test_fused_backward_uses_several_threads_consistently():
    y1, y2, proj = _tables(2, 2, 2, torch.float32)
    u = torch.randn(20000, 9, requires_grad=True)
    v = torch.randn(20000, 9, requires_grad=True)
    g = torch.randn(20000, 9)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        du, dv = torch.autograd.grad(grid_product(u, v, y1, y2, proj), (u, v), g)
    finally:
        torch.set_num_threads(threads)
    ru, rv = torch.autograd.grad(torch.matmul(torch.matmul(u, y1) * torch.matmul(v, y2), proj), (u, v), g)
    assert torch.allclose(du, ru, atol=1e-4) and torch.allclose(dv, rv, atol=1e-4)


def test_kernels_can_be_disabled_and_the_layers_then_use_the_reference():
    code = ("import torch; from gaunt_plugins import GauntManyBody; from gaunt_plugins.backends import last_executor; "
            "from gaunt_plugins.backends.cpu import ops_available, ops_unavailable_reason as r; "
            "assert not ops_available(); "
            "layer = GauntManyBody('4x0e + 4x1o', '4x0e + 4x1o', correlation=2, num_elements=1); "
            "layer(torch.randn(3, 4, 4), torch.ones(3, 1)); "
            "print(r(), last_executor('many_body_product'))")
    out = subprocess.run([sys.executable, "-c", code], env={**__import__("os").environ, "GAUNT_CPU_KERNELS": "0"},
                         capture_output=True, text=True, check=True)
    assert "GAUNT_CPU_KERNELS=0" in out.stdout and "torch-reference" in out.stdout
