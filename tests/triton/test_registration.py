"""torch.library registration: opcheck (schema, autograd registration, fake tensors, AOT dispatch),
torch.compile without graph breaks, and the dispatching functions under torch.compile on CPU."""
import pytest
import torch

from gaunt_plugins import backends
from gaunt_plugins.backends import torch_ops
from triton_cases import degrees, power_tables, product_tables, rel_err

OPCHECK_TESTS = ("test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")


def _conv_args(device, e=4, c=3, dtype=torch.float32, grad=True):
    y1, y2, f = product_tables(1, 1, 2, dtype, device)
    d1, d2, d3 = degrees(1).to(device), degrees(1).to(device), degrees(2).to(device)
    x1 = torch.randn(e, c, 4, dtype=dtype, device=device, requires_grad=grad)
    sh = torch.randn(e, 4, dtype=dtype, device=device, requires_grad=grad)
    w = torch.randn(e, 7, c, dtype=dtype, device=device, requires_grad=grad)
    return (x1, sh, w, 2, 2, d1, d2, d3, y1, y2, f)


def test_opcheck_grid_product(tk, device):
    y1, y2, f = product_tables(1, 1, 1, torch.float32, device)
    d = degrees(1).to(device)
    x1 = torch.randn(3, 4, 4, device=device, requires_grad=True)
    x2 = torch.randn(3, 1, 4, device=device, requires_grad=True)  # broadcast over channels
    w1 = torch.randn(1, 2, 4, device=device, requires_grad=True)  # shared
    w3 = torch.randn(3, 2, 4, device=device, requires_grad=True)  # per row
    torch.library.opcheck(torch.ops.gaunt_triton.grid_product.default,
                          (x1, x2, w1, None, w3, d, None, d, y1, y2, f), test_utils=OPCHECK_TESTS)


def test_opcheck_conv_product(tk, device):
    torch.library.opcheck(torch.ops.gaunt_triton.conv_product.default, _conv_args(device),
                          test_utils=OPCHECK_TESTS)


def test_opcheck_many_body(tk, device):
    y, fs = power_tables(1, 2, 1, torch.float32, device)
    d = degrees(1).to(device)
    args = (torch.randn(3, 2, 4, device=device, requires_grad=True),
            torch.randn(3, 2, 2, 2, device=device, requires_grad=True),
            torch.randn(3, 2, 2, 2, device=device, requires_grad=True), d, d, y, fs)
    torch.library.opcheck(torch.ops.gaunt_triton.many_body_product.default, args, test_utils=OPCHECK_TESTS)


@pytest.mark.parametrize("deterministic", [False, True])
def test_opcheck_conv_message(tk, device, deterministic):
    x1, sh, w, k1, k2, d1, d2, d3, y1, y2, f = _conv_args(device, e=5)
    nodes = torch.randn(3, 3, 4, device=device, requires_grad=True)
    ei = torch.tensor([[0, 1, 2, 2, 0], [1, 1, 0, 2, 0]], device=device)
    torch.library.opcheck(torch.ops.gaunt_triton.conv_message.default,
                          (nodes, sh, w, ei, 3, k1, k2, d1, d2, d3, y1, y2, f, deterministic),
                          test_utils=OPCHECK_TESTS)


def test_opcheck_backward_ops(tk, device):
    """The backward ops are ops too (double backward goes through their autograd)."""
    x1, sh, w, k1, k2, d1, d2, d3, y1, y2, f = _conv_args(device)
    g = torch.randn(4, 3, 9, device=device)
    torch.library.opcheck(torch.ops.gaunt_triton.conv_product_backward.default,
                          (g, x1, sh, w, k1, k2, d1, d2, d3, y1, y2, f, True, True, True),
                          test_utils=("test_schema", "test_faketensor"))


def test_compile_fullgraph_triton_ops(tk, device):
    """The ops trace into one graph (fullgraph=True: a graph break would raise), forward and backward."""
    x1, sh, w, k1, k2, d1, d2, d3, y1, y2, f = _conv_args(device)

    def fn(x1, sh, w):
        out = tk.conv_product(x1, sh, w, k1, k2, d1, d2, d3, y1, y2, f)
        return (out * out).sum(dim=-1)

    compiled = torch.compile(fn, backend="aot_eager", fullgraph=True)
    ref = fn(x1, sh, w)
    got = compiled(x1, sh, w)
    assert rel_err(got, ref) < 1e-6
    g_ref = torch.autograd.grad(ref.sum(), (x1, sh, w))
    g_got = torch.autograd.grad(got.sum(), (x1, sh, w))
    for a, b in zip(g_got, g_ref):
        assert rel_err(a, b) < 1e-6


def test_compile_fullgraph_dispatch_forced_triton(tk, device):
    """The dispatch function itself (backend selection included) compiles without graph breaks."""
    x1, sh, w, k1, k2, d1, d2, d3, y1, y2, f = _conv_args(device, grad=False)

    def fn(x1, sh, w):
        return backends.conv_product(x1, sh, w, k1, k2, d1, d2, d3, y1, y2, f, backend="triton")

    got = torch.compile(fn, backend="aot_eager", fullgraph=True)(x1, sh, w)
    assert rel_err(got, torch_ops.conv_product(x1, sh, w, k1, k2, d1, d2, d3, y1, y2, f)) < 1e-5


def test_compile_inductor_dispatch_cpu():
    """torch.compile (inductor) of a function using the dispatching ops on CPU tensors (-> PyTorch path)
    gives the eager output."""
    y1, y2, f = product_tables(2, 2, 2)
    d = degrees(2)
    x1, sh, w = torch.randn(6, 4, 9), torch.randn(6, 9), torch.randn(6, 9, 4)
    y, fs = power_tables(2, 3, 1)
    wi, wo = torch.randn(6, 3, 3, 4), torch.randn(6, 3, 2, 4)
    d1 = degrees(1)

    def fn(x1, sh, w, wi, wo):
        a = backends.conv_product(x1, sh, w, 3, 3, d, d, d, y1, y2, f)
        b = backends.many_body_product(a, wi, wo, d, d1, y, fs)
        return b + backends.weighted_product(a, a, w[0, :3], w[0, 3:6], w[0, 6:8], d, d, d1, y1, y2,
                                             f[:, :4])

    eager = fn(x1, sh, w, wi, wo)
    compiled = torch.compile(fn, fullgraph=True)(x1, sh, w, wi, wo)
    assert backends.last_backend("conv_product") == "torch"
    assert rel_err(compiled, eager) < 1e-5
