"""Backend registry and dispatch: CPU -> torch, CUDA -> triton, forced settings, refusals with reasons."""
import warnings

import pytest
import torch

from gaunt_plugins import backends
from gaunt_plugins.backends import registry, torch_ops
from gaunt_plugins.backends.triton_backend import TritonBackend
from triton_cases import degrees, power_tables, product_tables, rel_err


@pytest.fixture(autouse=True)
def _clean_setting(monkeypatch):
    monkeypatch.delenv(backends.BACKEND_ENV, raising=False)
    backends.set_backend(None)
    yield
    backends.set_backend(None)


def _conv(device="cpu", dtype=torch.float32, c=3):
    y1, y2, f = product_tables(1, 1, 2, dtype, device)
    d1, d2, d3 = degrees(1).to(device), degrees(1).to(device), degrees(2).to(device)
    x1, sh, w = (torch.randn(4, c, 4, dtype=dtype, device=device), torch.randn(4, 4, dtype=dtype, device=device),
                 torch.randn(4, 7, c, dtype=dtype, device=device))
    return (x1, sh, w, 2, 2, d1, d2, d3, y1, y2, f)


def test_cpu_auto_is_torch():
    args = _conv()
    out = backends.conv_product(*args)
    assert backends.last_backend("conv_product") == "torch"
    assert backends.select_backend("conv_product", {"x1": args[0]}).name == "torch"
    assert rel_err(out, torch_ops.conv_product(*args)) < 1e-6


def test_setting_precedence(monkeypatch, tk, device):
    args = _conv(device)
    monkeypatch.setenv(backends.BACKEND_ENV, "triton")
    assert backends.backend_setting() == "triton"
    backends.conv_product(*args)  # forced to triton (on CPU: in the interpreter)
    assert backends.last_backend("conv_product") == "triton"
    backends.conv_product(*args, backend="torch")  # the argument beats the environment
    assert backends.last_backend("conv_product") == "torch"
    with backends.use_backend("torch"):  # set_backend beats the environment
        backends.conv_product(*args)
        assert backends.last_backend("conv_product") == "torch"
    assert backends.backend_setting() == "triton"


def test_unknown_names_refused(monkeypatch):
    with pytest.raises(ValueError, match="unknown Gaunt backend 'cuda'"):
        backends.conv_product(*_conv(), backend="cuda")
    monkeypatch.setenv(backends.BACKEND_ENV, "fast")
    with pytest.raises(ValueError, match="GAUNT_BACKEND"):
        backends.backend_setting()
    with pytest.raises(ValueError):
        backends.set_backend("nope")


def test_forced_triton_on_cpu_without_interpreter_says_why(monkeypatch):
    monkeypatch.setattr(TritonBackend, "interpret", staticmethod(lambda: False))
    with pytest.raises(ValueError, match="need CUDA tensors") as info:
        backends.conv_product(*_conv(), backend="triton")
    assert "backend='triton' forces it" in str(info.value)
    backends.set_backend("triton")
    with pytest.raises(ValueError, match=r"set_backend\(\) forces it"):
        backends.conv_product(*_conv())


def test_forced_triton_without_triton_installed(monkeypatch):
    monkeypatch.setattr(TritonBackend, "triton_installed", staticmethod(lambda: False))
    with pytest.raises(ValueError, match="Triton is not installed"):
        backends.weighted_product(*[torch.zeros(1)] * 11, backend="triton")
    assert "not installed" in backends.get_backend("triton").unavailable_reason()


@pytest.mark.parametrize("case,match", [
    ("int", "dtype torch.int32"),
    ("mixed", "mixed dtypes"),
    ("wide", "at most 128 coefficients"),
    ("wide64", "in float64 the kernels serve at most 64"),
    ("nu", "correlation 5"),
    ("edges", "edge_index must be"),
])
def test_validate_reasons(tk, device, case, match):
    b = backends.get_backend("triton")
    x = torch.zeros(2, 3, 4, device=device)
    with pytest.raises(ValueError, match=match):
        if case == "int":
            b.validate("op", {"x": x.int()})
        elif case == "mixed":
            b.validate("op", {"x1": x, "w1": x.double()})
        elif case == "wide":
            b.validate("op", {"x": x}, widths={"x": 13 * 13})
        elif case == "wide64":
            b.validate("op", {"x": x.double()}, widths={"x": 9 * 9})
        elif case == "nu":
            b.validate("op", {"x": x}, correlation=5)
        else:
            b.validate("op", {"x": x, "edge_index": torch.zeros(3, 2, dtype=torch.long, device=device)})


def test_auto_runs_the_pytorch_reference_on_the_meta_device(monkeypatch):
    """Under auto, a layer's tensors on the meta device (shape inference) run the PyTorch reference, with no
    warning."""
    from gaunt_plugins.layers import GauntConvolution

    monkeypatch.delenv("GAUNT_BACKEND", raising=False)
    conv = GauntConvolution("3x0e+3x1o", "1x0e+1x1o", "3x0e+3x1o").to("meta")
    args = (torch.empty(4, conv.dim_in1, device="meta"), torch.empty(4, conv.dim_in2, device="meta"),
            torch.empty(4, conv.weight_numel, device="meta"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert conv(*args).shape == (4, conv.dim_out)
        assert backends.last_executor("conv_product") == "torch-reference"
        assert backends.select_backend("conv_product", {"x1": torch.zeros(1, device="meta")}).name == "torch"


def test_dispatch_matches_reference_all_ops(tk, device):
    """Every dispatching op with backend='triton' equals the torch backend."""
    args = _conv(device)
    assert rel_err(backends.conv_product(*args, backend="triton"), backends.conv_product(*args, backend="torch")) < 1e-5
    y1, y2, f = product_tables(1, 1, 1, device=device)
    d = degrees(1).to(device)
    x = torch.randn(3, 4, 4, device=device)
    w = torch.randn(2, 4, device=device)
    wp = (x, x.flip(0), w, w * 2, w * 3, d, d, d, y1, y2, f)
    assert rel_err(backends.weighted_product(*wp, backend="triton"), backends.weighted_product(*wp, backend="torch")) < 1e-5
    # per-sample weights as slices of one packed tensor (the layer's layout): strided views
    wpk = torch.randn(3, 2 + 2 + 2, 4, device=device)
    wp2 = (x, x.flip(0), wpk[:, :2], wpk[:, 2:4], wpk[:, 4:], d, d, d, y1, y2, f)
    assert rel_err(backends.weighted_product(*wp2, backend="triton"), backends.weighted_product(*wp2, backend="torch")) < 1e-5
    y, fs = power_tables(1, 3, 1, device=device)
    mb = (x, torch.randn(3, 3, 2, 4, device=device), torch.randn(3, 3, 2, 4, device=device), d, d, y, fs)
    ref_mb = backends.many_body_product(*mb, backend="torch")
    assert rel_err(backends.many_body_product(*mb, backend="triton"), ref_mb) < 1e-5
    assert rel_err(backends.many_body_product(*mb[:6], list(fs), backend="triton"), ref_mb) < 1e-5
    x1, sh, w, k1, k2, d1, d2, d3, y1, y2, f = args
    ei = torch.tensor([[0, 1, 2, 3], [1, 1, 0, 3]], device=device)
    nodes = torch.randn(4, 3, 4, device=device)
    ref = backends.conv_message(nodes, sh, w, ei, 4, k1, k2, d1, d2, d3, y1, y2, f, backend="torch")
    assert backends.last_backend("conv_message") == "torch"
    # also non-contiguous features (a transposed view): the kernels make the coefficient dim contiguous
    xt = torch.randn(3, 4, 4, device=device).transpose(1, 2)
    ws = torch.randn(2, 4, device=device)
    yy1, yy2, ff = product_tables(1, 1, 1, device=device)
    assert rel_err(backends.weighted_product(xt, xt, ws, ws, ws, d, d, d, yy1, yy2, ff, backend="triton"),
                   backends.weighted_product(xt, xt, ws, ws, ws, d, d, d, yy1, yy2, ff, backend="torch")) < 1e-5
    for det in (False, True):
        got = backends.conv_message(nodes, sh, w, ei, 4, k1, k2, d1, d2, d3, y1, y2, f, deterministic=det,
                                    backend="triton")
        assert rel_err(got, ref) < 1e-5
    assert backends.last_backend("conv_message") == "triton"


def test_torch_backend_message_deterministic_segment_path():
    """The torch backend's deterministic message path (segment sums, used on CUDA) equals index_add."""
    x1, sh, w, k1, k2, d1, d2, d3, y1, y2, f = _conv()
    ei = torch.tensor([[0, 1, 2, 3], [1, 1, 0, 3]])
    nodes = torch.randn(5, 3, 4)
    tb = backends.get_backend("torch")
    msg = torch_ops.conv_product(nodes[ei[0]], sh, w, k1, k2, d1, d2, d3, y1, y2, f)
    perm = torch.argsort(ei[1], stable=True)
    seg = torch.segment_reduce(msg[perm], "sum", lengths=torch.bincount(ei[1], minlength=5), axis=0, unsafe=True)
    assert rel_err(seg, tb.conv_message(nodes, sh, w, ei, 5, k1, k2, d1, d2, d3, y1, y2, f)) < 1e-6


def test_layers_run_on_the_triton_backend(tk, device):
    """The layers dispatch through the registry: forced to triton they give the torch results
    (forward and gradients), and the registry records which backend ran."""
    from gaunt_plugins import GauntConvolution, GauntManyBody, GauntTensorProduct

    conv = GauntConvolution("3x0e+3x1o", "1x0e+1x1o+1x2e", "3x0e+3x1o+3x2e").to(device)
    tp = GauntTensorProduct("3x0e+3x1o+3x2e", "3x0e+3x1o+3x2e").to(device)
    mb = GauntManyBody("3x0e+3x1o", "3x0e+3x1o", correlation=3, num_elements=2).to(device)
    x = torch.randn(5, conv.dim_in1, device=device, requires_grad=True)
    sh = torch.randn(5, conv.dim_in2, device=device)
    w = torch.randn(5, conv.weight_numel, device=device, requires_grad=True)
    f = torch.randn(4, tp.dim_in1, device=device, requires_grad=True)
    xm = torch.randn(4, 3, 4, device=device, requires_grad=True)
    attrs = torch.nn.functional.one_hot(torch.tensor([0, 1, 1, 0], device=device), 2).float()
    calls = {
        "conv_product": (lambda: conv(x, sh, w), [x, w]),
        "weighted_product": (lambda: tp(f, f), [f]),
        "many_body_product": (lambda: mb(xm, attrs), [xm]),
    }
    for op, (call, wrt) in calls.items():
        results = {}
        for name in ("torch", "triton"):
            with backends.use_backend(name):
                out = call()
                if name == "triton":  # (on CPU the layers may serve "torch" with their own fused C kernels)
                    assert backends.last_backend(op) == "triton"
                results[name] = [out] + list(torch.autograd.grad(out.square().sum(), wrt))
        for a, b in zip(results["triton"], results["torch"]):
            assert rel_err(a, b) < 1e-5, op
