"""The route every Gaunt product takes (``gaunt_plugins.backends.registry``): under ``auto`` on CPU the
``torch.ops.gaunt`` operators run, and equal the PyTorch reference (the forced ``torch`` backend) on every layer:
values, first and second derivatives (inputs and parameters), float64 and float32. What the operators cannot
serve runs the reference, and a forced ``torch`` backend never reaches a C kernel."""
from __future__ import annotations

import contextlib

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from gaunt_plugins import GauntConvolution, GauntManyBody, GauntTensorProduct, gaunt_product
from gaunt_plugins.backends import last_executor, registry
from gaunt_plugins.backends.cpu import ops_available, ops_unavailable_reason

TOLERANCE = {torch.float64: 1e-10, torch.float32: 2e-4}
needs_ops = pytest.mark.skipif(not ops_available(), reason=f"no CPU operators: {ops_unavailable_reason()}")


class GauntOpsSeen(TorchDispatchMode):
    """Records the ``torch.ops.gaunt`` operators dispatched inside the block."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace == "gaunt":
            self.seen.append(func.name())
        return func(*args, **(kwargs or {}))


def _r(gen, dtype, *shape):
    return torch.randn(*shape, dtype=torch.float64, generator=gen).to(dtype)


def _product(gen, dtype):
    layer = GauntTensorProduct("2x0e+2x1o+2x2e", "2x0e+2x1o", "2x0e+2x1o+2x2e").to(dtype)
    return "weighted_product", layer, (_r(gen, dtype, 5, layer.dim_in1), _r(gen, dtype, 5, layer.dim_in2)), ()


def _conv(irreps1, irreps2, irreps_out, products=1, message=False):
    def make(gen, dtype):
        layer = GauntConvolution(irreps1, irreps2, irreps_out, products=products).to(dtype)
        nodes, edges = (4, 7) if message else (6, 6)
        inputs = (_r(gen, dtype, nodes, layer.dim_in1), _r(gen, dtype, edges, layer.dim_in2),
                  _r(gen, dtype, edges, layer.weight_numel))
        if not message:
            return "conv_product", layer, inputs, ()
        return "conv_message", layer, inputs, (torch.randint(0, nodes, (2, edges), generator=gen),)
    return make


def _many_body(irreps_in, irreps_out, correlation, chains=1):
    def make(gen, dtype):
        layer = GauntManyBody(irreps_in, irreps_out, correlation, 2, chains=chains).to(dtype)
        with torch.no_grad():  # weights away from their initial values, which zero some paths
            for p in layer.parameters():
                p.copy_(_r(gen, dtype, *p.shape) * 0.5)
        attrs = torch.eye(2, dtype=dtype)[[0, 1, 1, 0]]
        return "many_body_product", layer, (_r(gen, dtype, 4, layer.channels, layer.compact_in),), (attrs,)
    return make


def _functional(gen, dtype):
    inputs = (_r(gen, dtype, 3, 1, 9), _r(gen, dtype, 1, 2, 4))
    return "gaunt_product", (lambda a, b: gaunt_product(a, b, 2)), inputs, ()


CASES = {
    "product": _product,
    "conv": _conv("3x0e+3x1o", "1x0e+1x1o+1x2e", "3x0e+3x1o+3x2e"),
    "conv, 3 products, missing degrees": _conv("2x1o+2x2e", "1x0e+1x2e", "2x1o+2x3o", products=3),
    "conv, 9 channels (a SIMD tile + 1), twisted": _conv("9x0o+9x1e", "1x0e+1x1o", "9x0o+9x1e"),
    "message, 2 products": _conv("2x0e+2x1o", "1x0e+1x1o+1x2e", "2x0e+2x1o+2x2e", products=2, message=True),
    "conv, scalar nodes": _conv("3x0e", "1x0e+1x1o+1x2e+1x3o", "3x0e+3x1o+3x2e+3x3o", products=2),
    "message, scalar nodes": _conv("3x0e", "1x0e+1x2e", "3x0e+3x2e", message=True),
    "many_body": _many_body("2x0e+2x1o+2x2e", "2x0e+2x1o", 3),
    "many_body, twisted, missing degree": _many_body("2x1e+2x2o", "2x1e", 2),
    "many_body, 9 channels": _many_body("9x0e+9x1o", "9x0e+9x1o", 3),
    "many_body, 3 chains": _many_body("2x0e+2x1o+2x2e", "2x0e+2x1o", 3, chains=3),
    "many_body, degree 6, correlation 6": _many_body("1x0e+1x1o+1x2e+1x3o+1x4e+1x5o+1x6e", "1x0e+1x1o+1x2e", 6),
    "conv, degree 6": _conv("1x0e+1x1o+1x2e+1x3o+1x4e+1x5o+1x6e", "1x0e+1x1o+1x2e+1x3o+1x4e+1x5o+1x6e",
                            "1x0e+1x1o+1x2e+1x3o+1x4e+1x5o+1x6e"),
    "functional": _functional,
}


def _derivatives(fn, inputs, fixed, params, gen):
    """Value, gradients (inputs and parameters) at a random cotangent, and the gradients of <input gradients,
    random v> (second order: what force training differentiates)."""
    inputs = [t.clone().requires_grad_() for t in inputs]
    out = fn(*inputs, *fixed)
    g = torch.randn(out.shape, dtype=torch.float64, generator=gen).to(out.dtype)
    wrt = inputs + params
    first = torch.autograd.grad(out, wrt, g, create_graph=True, allow_unused=True)
    first = [torch.zeros_like(t) if f is None else f for t, f in zip(wrt, first)]
    vs = [torch.randn(t.shape, dtype=torch.float64, generator=gen).to(t.dtype) for t in first[:len(inputs)]]
    second = torch.autograd.grad(sum((a * v).sum() for a, v in zip(first, vs)), wrt, allow_unused=True)
    second = [torch.zeros_like(t) if s is None else s for t, s in zip(wrt, second)]
    return [out.detach()] + [t.detach() for t in first] + [t.detach() for t in second]


@needs_ops
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("case", list(CASES))
def test_the_kernel_route_equals_the_reference_values_first_and_second_derivatives(case, dtype, monkeypatch):
    monkeypatch.delenv("GAUNT_BACKEND", raising=False)
    op, fn, inputs, fixed = CASES[case](torch.Generator().manual_seed(7), dtype)
    params = list(fn.parameters()) if isinstance(fn, torch.nn.Module) else []
    with GauntOpsSeen() as mode:
        got = _derivatives(fn, inputs, fixed, params, torch.Generator().manual_seed(1))
    ran = last_executor(op)
    if "scalar nodes" in case:
        assert ran == "torch-scalar-nodes" and not mode.seen
    else:
        assert ran == "cpu-kernels" and mode.seen, (ran, mode.seen)
    with registry.use_backend("torch"):
        want = _derivatives(fn, inputs, fixed, params, torch.Generator().manual_seed(1))
        assert last_executor(op) == "torch-reference"
    for i, (a, b) in enumerate(zip(got, want)):
        scale = b.abs().max().clamp_min(1e-30)
        assert ((a - b).abs().max() / scale) < TOLERANCE[dtype], f"{case}: output {i} of the derivatives"


def test_the_reference_serves_what_the_kernels_refuse(monkeypatch):
    """Correlation 7 is past the many-body kernel's limits: the layer runs the reference."""
    monkeypatch.delenv("GAUNT_BACKEND", raising=False)
    layer = GauntManyBody("2x0e+2x1o", "2x0e", 7, 1).double()
    with GauntOpsSeen() as mode:
        layer(torch.randn(3, 2, 4, dtype=torch.float64), torch.ones(3, 1, dtype=torch.float64))
    assert last_executor("many_body_product") == "torch-reference" and not mode.seen


@pytest.mark.parametrize("setting", ["GAUNT_BACKEND", "use_backend"])
def test_a_forced_torch_backend_runs_only_the_pytorch_reference(monkeypatch, setting):
    """``GAUNT_BACKEND=torch`` (or ``use_backend("torch")``) is the PyTorch reference for every layer, the message
    step, the dense ``weighted_product`` and ``gaunt_product``: no ``torch.ops.gaunt`` operator is dispatched,
    and the route records the reference; ``auto`` on CPU runs the operators."""
    tp = GauntTensorProduct("2x0e+2x1o+2x2e", "2x0e+2x1o+2x2e").double()
    conv = GauntConvolution("2x0e+2x1o", "1x0e+1x1o+1x2e", "2x0e+2x1o+2x2e").double()
    scalar = GauntConvolution("2x0e", "1x0e+1x1o", "2x0e+2x1o").double()
    mb = GauntManyBody("2x0e+2x1o", "2x0e+2x1o", 3, 2).double()
    r = lambda *shape: torch.randn(*shape, dtype=torch.float64)
    edges = torch.tensor([[0, 1, 2], [1, 2, 0]])
    x, w, d = r(3, 2, 9), [r(3, 3, 2), r(3, 3, 2), r(3, 2)], torch.tensor([0, 1, 1, 1, 2, 2, 2, 2, 2])
    tables = tp.plan.tensors.get(torch.float64, torch.device("cpu"))
    args = {
        "weighted_product": (tp, r(3, tp.dim_in1), r(3, tp.dim_in2)),
        "conv_product": (conv, r(3, conv.dim_in1), r(3, 9), r(3, conv.weight_numel)),
        "conv_message": (conv, r(3, conv.dim_in1), r(3, 9), r(3, conv.weight_numel), edges),
        "scalar nodes": (scalar, r(3, 2), r(3, 4), r(3, scalar.weight_numel)),
        "many_body_product": (mb, r(3, 2, 4), torch.eye(2, dtype=torch.float64)[[0, 1, 1]]),
        "gaunt_product": (gaunt_product, x, x, 2),
        "dense weighted_product": (registry.weighted_product, x, x, *w, d, d, d, tables["to_grid1"],
                                   tables["to_grid2"], tables["from_grid"]),
    }
    calls = {name: (lambda a=a: a[0](*a[1:])) for name, a in args.items()}
    monkeypatch.delenv("GAUNT_BACKEND", raising=False)
    under_auto = {name: fn() for name, fn in calls.items()}

    with monkeypatch.context() as forced:
        if setting == "GAUNT_BACKEND":
            forced.setenv("GAUNT_BACKEND", "torch")
            scope = contextlib.nullcontext()
        else:
            scope = registry.use_backend("torch")
        with scope, GauntOpsSeen() as mode:
            for name, fn in calls.items():
                out = fn()
                assert torch.allclose(out, under_auto[name], rtol=1e-10, atol=1e-12), name
                if name in ("weighted_product", "conv_product", "conv_message", "many_body_product", "gaunt_product"):
                    assert last_executor(name) == "torch-reference", name
        assert mode.seen == []

    if not ops_available():
        pytest.skip(f"the CPU operators are unavailable here: {ops_unavailable_reason()}")
    for name in ("weighted_product", "conv_product", "conv_message", "many_body_product", "gaunt_product"):
        with GauntOpsSeen() as mode:
            calls[name]()
        assert last_executor(name) == "cpu-kernels" and mode.seen, name


_FORWARD_OPS = ("grid_product", "conv", "message", "many_body")
_BACKWARD_ARGS = {"grid_product": 2, "conv": 3, "message": 3, "many_body": 3}


def _on_dispatch_key(monkeypatch, key: str) -> list:
    """Route every ``torch.ops.gaunt`` forward operator the code calls to its kernel for dispatch key ``key``
    (``AutogradCUDA``: the CUDA implementation, here on CPU tensors); returns ``(operator, autograd node of its
    output)`` for every operator run."""
    keyset = torch._C.DispatchKeySet(getattr(torch._C.DispatchKey, key))
    ran = []
    for name in _FORWARD_OPS:
        overload = getattr(torch.ops.gaunt, name).default

        def redispatched(*args, _overload=overload, _name=name):
            out = _overload.redispatch(keyset, *args)
            ran.append((_name, type(out.grad_fn).__name__))
            return out
        monkeypatch.setattr(torch.ops.gaunt, name, redispatched)
    return ran


@needs_ops
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("case", [c for c in CASES if "scalar nodes" not in c])
def test_the_cuda_implementation_equals_the_reference_values_first_and_second_derivatives(case, dtype,
                                                                                          monkeypatch):
    """The operators' CUDA implementation (the composed reference, registered for AutogradCUDA; run here on CPU
    tensors through the dispatcher's redispatch) gives every layer the reference's values and first and second
    derivatives."""
    monkeypatch.delenv("GAUNT_BACKEND", raising=False)
    op, fn, inputs, fixed = CASES[case](torch.Generator().manual_seed(7), dtype)
    params = list(fn.parameters()) if isinstance(fn, torch.nn.Module) else []
    with registry.use_backend("torch"):
        want = _derivatives(fn, inputs, fixed, params, torch.Generator().manual_seed(1))
    with monkeypatch.context() as patch:
        ran = _on_dispatch_key(patch, "AutogradCUDA")
        got = _derivatives(fn, inputs, fixed, params, torch.Generator().manual_seed(1))
    # autograd recorded ATen operations (the composed reference), not the CPU operators' C++ autograd function
    assert ran and all(node != "CppFunction" for _, node in ran), ran
    for i, (a, b) in enumerate(zip(got, want)):
        scale = b.abs().max().clamp_min(1e-30)
        assert ((a - b).abs().max() / scale) < TOLERANCE[dtype], f"{case}: output {i} of the derivatives"


def _op_inputs(name, layer_case):
    """The arguments one layer passes to ``torch.ops.gaunt.<name>`` (captured from its CPU call)."""
    captured = {}
    original = getattr(torch.ops.gaunt, name)

    def capture(*args):
        captured["args"] = args
        return original(*args)
    _, fn, inputs, fixed = CASES[layer_case](torch.Generator().manual_seed(3), torch.float64)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.ops.gaunt, name, capture)
        fn(*inputs, *fixed)
    return captured["args"]


@needs_ops
@pytest.mark.parametrize("name, layer_case", [("grid_product", "product"),
                                              ("conv", "conv, 3 products, missing degrees"),
                                              ("message", "message, 2 products"), ("many_body", "many_body")])
def test_the_cuda_implementation_of_each_operator_and_its_backward_equals_the_cpu_kernels(name, layer_case):
    """Below autograd (the CUDA dispatch key: inference mode) the forward operators' CUDA kernels equal the C
    kernels; the backward operators' AutogradCUDA kernels equal theirs and are differentiable (equal second
    derivatives)."""
    args = _op_inputs(name, layer_case)
    forward = getattr(torch.ops.gaunt, name).default
    backward = getattr(torch.ops.gaunt, name + "_backward").default
    with torch.inference_mode():
        cpu = forward(*args)
        cuda = forward.redispatch(torch._C.DispatchKeySet(torch._C.DispatchKey.CUDA), *args)
    assert torch.allclose(cuda, cpu, rtol=1e-12, atol=1e-12)

    n = _BACKWARD_ARGS[name]
    gen = torch.Generator().manual_seed(5)
    grad = torch.randn(cpu.shape, dtype=torch.float64, generator=gen).requires_grad_()
    inputs = [a.detach().clone().requires_grad_() for a in args[:n]]
    vs = [torch.randn(a.shape, dtype=torch.float64, generator=gen) for a in inputs]
    keyset = torch._C.DispatchKeySet(torch._C.DispatchKey.AutogradCUDA)
    results = []
    for call in (backward, lambda *a: backward.redispatch(keyset, *a)):
        first = call(grad, *inputs, *args[n:])
        second = torch.autograd.grad(sum((f * v).sum() for f, v in zip(first, vs)), [grad] + inputs)
        results.append([t.detach() for t in first] + list(second))
    for a, b in zip(*results):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-10), name


@needs_ops
def test_the_operators_have_cuda_kernels_for_every_dispatch_a_model_reaches():
    """CUDA tensors reach the operators with and without autograd (a C++ host runs a scripted model on either)."""
    for name in _FORWARD_OPS:
        for key in ("CUDA", "AutogradCUDA"):
            assert torch._C._dispatch_has_kernel_for_dispatch_key(f"gaunt::{name}", key), (name, key)
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"gaunt::{name}_backward", "AutogradCUDA"), name


@needs_ops
@pytest.mark.parametrize("name, layer_case", [("grid_product", "product"),
                                              ("conv", "conv, 3 products, missing degrees")])
def test_the_cuda_implementation_runs_on_fake_cuda_tensors(name, layer_case):
    """What ``torch.compile`` does on a GPU before it runs anything: the CUDA implementation runs on fake CUDA
    tensors (no device needed) and gives the output's shape, dtype and device. (The message and many-body
    operators scatter with ``index_add``, which fake CUDA tensors support only where PyTorch is built with CUDA.)"""
    from torch._subclasses.fake_tensor import FakeTensorMode

    args = _op_inputs(name, layer_case)
    want = getattr(torch.ops.gaunt, name)(*args)
    with FakeTensorMode():
        fake = [torch.empty_strided(a.shape, a.stride(), dtype=a.dtype, device="cuda")
                if isinstance(a, torch.Tensor) else a for a in args]
        out = getattr(torch.ops.gaunt, name)(*fake)
    assert (out.shape, out.dtype, out.device.type) == (want.shape, want.dtype, "cuda")
