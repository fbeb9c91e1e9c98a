"""Tests that need a CUDA device (skipped without one): compiled kernels at model-sized shapes,
bit-reproducibility of the deterministic message op, inductor compilation through triton_op, and
the layers dispatching CUDA tensors to the operators and, forced, to the Triton kernels."""
import pytest
import torch

from gaunt_plugins import backends
from gaunt_plugins.backends import torch_ops
from triton_cases import degrees, power_tables, product_tables, rel_err, value_and_grads

pytestmark = pytest.mark.gpu


def _tol(tk):
    return 1e-5 if tk.constants.FP32_DOT_PRECISION in ("ieee", "tf32x3") else 5e-3


def test_gpu_conv_model_shape(tk):
    l, c, e = 3, 128, 4096
    y1, y2, f = product_tables(l, l, l, device="cuda")
    d = degrees(l).cuda()
    inputs = [torch.randn(e, c, 16, device="cuda"), torch.randn(e, 16, device="cuda"),
              torch.randn(e, 12, c, device="cuda")]
    ref = value_and_grads(lambda x, s, w: torch_ops.conv_product(x, s, w, 4, l + 1, d, d, d, y1, y2, f), inputs)
    out = value_and_grads(lambda x, s, w: tk.conv_product(x, s, w, 4, l + 1, d, d, d, y1, y2, f), inputs)
    for a, b in zip(out, ref):
        assert rel_err(a, b) < _tol(tk)


def test_gpu_many_body_and_self_model_shapes(tk):
    y, fs = power_tables(3, 3, 1, device="cuda")
    di, do = degrees(3).cuda(), degrees(1).cuda()
    inputs = [torch.randn(2048, 128, 16, device="cuda"), torch.randn(2048, 3, 4, 128, device="cuda"),
              torch.randn(2048, 3, 2, 128, device="cuda")]
    ref = value_and_grads(lambda x, a, b: torch_ops.many_body_product(x, a, b, di, do, y, fs), inputs)
    out = value_and_grads(lambda x, a, b: tk.many_body_product(x, a, b, di, do, y, fs), inputs)
    for a, b in zip(out, ref):
        assert rel_err(a, b) < _tol(tk)
    y1, y2, f = product_tables(4, 4, 4, device="cuda")
    d = degrees(4).cuda()
    inputs = [torch.randn(1024, 64, 25, device="cuda"), torch.randn(1024, 64, 25, device="cuda"),
              torch.randn(5, 64, device="cuda"), torch.randn(5, 64, device="cuda"), torch.randn(5, 64, device="cuda")]
    ref = value_and_grads(lambda *a: torch_ops.weighted_product(*a, d, d, d, y1, y2, f), inputs)
    out = value_and_grads(lambda *a: tk.weighted_product(*a, d, d, d, y1, y2, f), inputs)
    for a, b in zip(out, ref):
        assert rel_err(a, b) < _tol(tk)


def test_gpu_bfloat16_and_float64(tk):
    y1, y2, f = product_tables(2, 2, 2, device="cuda")
    d = degrees(2).cuda()
    x, sh, w = torch.randn(512, 64, 9, device="cuda"), torch.randn(512, 9, device="cuda"), torch.randn(512, 9, 64, device="cuda")
    ref = torch_ops.conv_product(x, sh, w, 3, 3, d, d, d, y1, y2, f)
    out = tk.conv_product(x.bfloat16(), sh.bfloat16(), w.bfloat16(), 3, 3, d, d, d, y1, y2, f)
    assert out.dtype == torch.bfloat16 and rel_err(out, ref) < 3e-2
    y1d, y2d, fd = product_tables(2, 2, 2, torch.float64, "cuda")
    ref = torch_ops.conv_product(x.double(), sh.double(), w.double(), 3, 3, d, d, d, y1d, y2d, fd)
    out = tk.conv_product(x.double(), sh.double(), w.double(), 3, 3, d, d, d, y1d, y2d, fd)
    assert rel_err(out, ref) < 1e-12


def test_gpu_message_deterministic_bitwise(tk):
    l, c, e, n = 2, 64, 8192, 512
    y1, y2, f = product_tables(l, l, l, device="cuda")
    d = degrees(l).cuda()
    inputs = [torch.randn(n, c, 9, device="cuda"), torch.randn(e, 9, device="cuda"), torch.randn(e, 9, c, device="cuda")]
    ei = torch.randint(0, n, (2, e), device="cuda")
    runs = [value_and_grads(lambda x, s, w: tk.conv_message(x, s, w, ei, n, 3, l + 1, d, d, d, y1, y2, f,
                                                            deterministic=True), inputs) for _ in range(3)]
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            assert torch.equal(a, b)
    atomic = value_and_grads(lambda x, s, w: tk.conv_message(x, s, w, ei, n, 3, l + 1, d, d, d, y1, y2, f), inputs)
    for a, b in zip(atomic, runs[0]):
        assert rel_err(a, b) < _tol(tk)


def test_gpu_inductor_compiles_through_triton_op(tk):
    y1, y2, f = product_tables(2, 2, 2, device="cuda")
    d = degrees(2).cuda()
    x = torch.randn(256, 32, 9, device="cuda", requires_grad=True)
    sh = torch.randn(256, 9, device="cuda", requires_grad=True)
    w = torch.randn(256, 9, 32, device="cuda", requires_grad=True)

    def fn(x, sh, w):
        return torch.tanh(tk.conv_product(x, sh, w, 3, 3, d, d, d, y1, y2, f)).sum(-1)

    ref = fn(x, sh, w)
    got = torch.compile(fn, fullgraph=True)(x, sh, w)
    assert rel_err(got, ref) < 1e-5
    for a, b in zip(torch.autograd.grad(got.sum(), (x, sh, w)), torch.autograd.grad(ref.sum(), (x, sh, w))):
        assert rel_err(a, b) < 1e-5


def test_gpu_layers_run_the_operators_under_auto_the_reference_and_triton_when_forced(tk):
    """Under auto, CUDA tensors run the ``torch.ops.gaunt`` operators' CUDA implementation (the composed
    reference): the forced reference's values and first and second derivatives; forced triton agrees."""
    from gaunt_plugins import GauntConvolution
    from gaunt_plugins.backends.cpu import ops_available
    if not ops_available():
        pytest.skip("the gaunt operators cannot be built here")
    conv = GauntConvolution("8x0e+8x1o+8x2e", "1x0e+1x1o+1x2e", "8x0e+8x1o+8x2e").cuda().double()
    x = torch.randn(64, conv.dim_in1, device="cuda", dtype=torch.float64, requires_grad=True)
    sh = torch.randn(64, conv.dim_in2, device="cuda", dtype=torch.float64)
    w = torch.randn(64, conv.weight_numel, device="cuda", dtype=torch.float64)
    edges = torch.randint(0, 64, (2, 64), device="cuda")

    def derivatives():
        out = conv(x, sh, w, edges)
        (g,) = torch.autograd.grad(out.pow(2).sum(), x, create_graph=True)
        (gg,) = torch.autograd.grad(g.pow(2).sum(), x)
        return out.detach(), g.detach(), gg
    backends.set_backend(None)
    got = derivatives()
    assert backends.last_executor("conv_message") == "cuda-composed-reference"
    with backends.use_backend("torch"):
        want = derivatives()
    assert backends.last_executor("conv_message") == "torch-reference"
    for a, b in zip(got, want):
        assert rel_err(a, b) < 1e-10
    with backends.use_backend("triton"):
        out = conv(x.float().detach(), sh.float(), w.float(), edges)
    assert backends.last_backend("conv_message") == "triton"
    assert rel_err(out.double(), want[0]) < _tol(tk)


def test_gpu_a_scripted_layer_calls_the_operators_on_cuda(tk):
    """A scripted layer (what MACE's ``_compiled.model`` holds) calls ``torch.ops.gaunt`` on CUDA tensors too and
    gives eager's values and gradients."""
    from gaunt_plugins import GauntManyBody
    from gaunt_plugins.backends.cpu import ops_available
    if not ops_available():
        pytest.skip("the gaunt operators cannot be built here")
    backends.set_backend(None)
    layer = GauntManyBody("4x0e+4x1o+4x2e", "4x0e+4x1o", 3, 2).cuda().double()
    scripted = torch.jit.script(layer)
    x = torch.randn(16, 4, layer.compact_in, device="cuda", dtype=torch.float64, requires_grad=True)
    attrs = torch.eye(2, device="cuda", dtype=torch.float64)[torch.randint(0, 2, (16,), device="cuda")]
    results = []
    for fn in (layer, scripted):
        with torch.profiler.profile() as prof:
            out = fn(x, attrs)
        assert "gaunt::many_body" in {e.name for e in prof.events()}
        results.append((out.detach(), torch.autograd.grad(out.pow(2).sum(), x)[0]))
    for a, b in zip(*results):
        assert rel_err(a, b) < 1e-12
