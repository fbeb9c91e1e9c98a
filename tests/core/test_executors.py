"""Every executor that can run here equals the PyTorch reference on every plan: values, first and second
derivatives, float64 and float32. Executors that cannot serve a case say why (the test is skipped with that
reason)."""
from __future__ import annotations

import pytest
import torch

from gaunt_plugins.backends.cpu.executors import cpu_executor, cpu_refusal
from gaunt_plugins.backends.dispatch import scalar_node_executor
from gaunt_plugins.backends.reference import reference_executor
from gaunt_plugins.backends.registry import get_backend
from gaunt_plugins.plans import conv_plan, functional_plan, many_body_plan, product_plan

CPU = torch.device("cpu")
TOLERANCE = {torch.float64: 1e-10, torch.float32: 2e-4}

CASES = {
    "product": ("product", lambda: product_plan("2x0e+2x1o+2x2e", "2x0e+2x1o", "2x0e+2x1o+2x2e")),
    "conv": ("conv", lambda: conv_plan("3x0e+3x1o", "1x0e+1x1o+1x2e", "3x0e+3x1o+3x2e")),
    "conv, 3 products, missing degrees": ("conv", lambda: conv_plan("2x1o+2x2e", "1x0e+1x2e", "2x1o+2x3o", 3)),
    "conv, 9 channels (a SIMD tile + 1), twisted": ("conv", lambda: conv_plan("9x0o+9x1e", "1x0e+1x1o", "9x0o+9x1e")),
    "message, 2 products": ("message", lambda: conv_plan("2x0e+2x1o", "1x0e+1x1o+1x2e", "2x0e+2x1o+2x2e", 2)),
    "conv, scalar nodes": ("conv", lambda: conv_plan("3x0e", "1x0e+1x1o+1x2e+1x3o", "3x0e+3x1o+3x2e+3x3o", 2)),
    "message, scalar nodes": ("message", lambda: conv_plan("3x0e", "1x0e+1x2e", "3x0e+3x2e")),
    "many_body": ("many_body", lambda: many_body_plan("2x0e+2x1o+2x2e", "2x0e+2x1o", 3)),
    "many_body, twisted, missing degree": ("many_body", lambda: many_body_plan("2x1e+2x2o", "2x1e", 2)),
    "many_body, 9 channels": ("many_body", lambda: many_body_plan("9x0e+9x1o", "9x0e+9x1o", 3)),
    "many_body, 3 chains": ("many_body", lambda: many_body_plan("2x0e+2x1o+2x2e", "2x0e+2x1o", 3, chains=3)),
    "many_body, correlation 7": ("many_body", lambda: many_body_plan("2x0e+2x1o", "2x0e", 7)),
    "many_body, degree 6, correlation 6": ("many_body", lambda: many_body_plan(
        "1x0e+1x1o+1x2e+1x3o+1x4e+1x5o+1x6e", "1x0e+1x1o+1x2e", 6)),
    "conv, degree 6": ("conv", lambda: conv_plan("1x0e+1x1o+1x2e+1x3o+1x4e+1x5o+1x6e",
                                                 "1x0e+1x1o+1x2e+1x3o+1x4e+1x5o+1x6e",
                                                 "1x0e+1x1o+1x2e+1x3o+1x4e+1x5o+1x6e")),
    "functional": ("functional", lambda: functional_plan(2, 1, 2, "grid")),
}


def _inputs(kind: str, plan, gen: torch.Generator, dtype: torch.dtype):
    """The differentiable inputs of one call, then the fixed ones."""
    r = lambda *shape: torch.randn(*shape, dtype=torch.float64, generator=gen).to(dtype)
    if kind == "product":
        n, c = 5, plan.channels
        k1, k2, k3 = plan.num_degrees
        return (r(n, plan.in1.dim), r(n, plan.in2.dim), r(n, k1, c), r(n, k2, c), r(k3, c)), ()
    if kind == "conv":
        e = 6
        return (r(e, plan.in1.dim), r(e, plan.in2.dim), r(e, plan.weight_numel)), ()
    if kind == "message":
        nodes, e = 4, 7
        edge_index = torch.randint(0, nodes, (2, e), generator=gen)
        return (r(nodes, plan.in1.dim), r(e, plan.in2.dim), r(e, plan.weight_numel)), (edge_index, nodes)
    if kind == "many_body":
        n, c, nu = 4, plan.channels, plan.correlation
        return (r(n, c, plan.compact_width), r(n, nu, plan.feat.num_degrees, plan.lanes) * 0.7,
                r(n, nu, plan.out.num_degrees, plan.lanes)), ()
    i1, i2, _ = plan.widths
    return (r(3, 1, i1), r(1, 2, i2)), ()


def _executor(name: str, kind: str, plan, dtype: torch.dtype):
    if name == "torch-scalar-nodes":
        executor = scalar_node_executor(kind, plan, CPU, dtype)
        if executor is None:
            pytest.skip("only convolutions of scalar node features")
        return executor
    if name == "cpu-kernels":
        reason = cpu_refusal(kind, plan, CPU, dtype)
        if reason is not None:
            pytest.skip(reason)
        return cpu_executor(kind, plan, dtype, reference_executor(kind, plan, CPU, dtype))
    triton = get_backend("triton")
    reason = triton.plan_refusal(kind, plan, CPU, dtype)
    if reason is not None:
        pytest.skip(reason)
    return triton.plan_executor(kind, plan, CPU, dtype)


def _derivatives(fn, inputs, fixed, gen):
    """Value, gradients at a random cotangent, and the gradients of <gradients, random v> (second order)."""
    inputs = [t.clone().requires_grad_() for t in inputs]
    out = fn(*inputs, *fixed)
    g = torch.randn(out.shape, dtype=torch.float64, generator=gen).to(out.dtype)
    first = torch.autograd.grad(out, inputs, g, create_graph=True)
    vs = [torch.randn(t.shape, dtype=torch.float64, generator=gen).to(t.dtype) for t in first]
    second = torch.autograd.grad(sum((a * v).sum() for a, v in zip(first, vs)), inputs, allow_unused=True)
    second = [torch.zeros_like(t) if s is None else s for t, s in zip(inputs, second)]
    return [out.detach()] + [t.detach() for t in first] + [t.detach() for t in second]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("name", ["cpu-kernels", "triton", "torch-scalar-nodes"])
def test_executor_equals_the_reference_values_first_and_second_derivatives(name, case, dtype):
    kind, make = CASES[case]
    plan = make()
    executor = _executor(name, kind, plan, dtype)
    assert executor.name == name
    reference = reference_executor(kind, plan, CPU, dtype)
    gen = torch.Generator().manual_seed(7)
    inputs, fixed = _inputs(kind, plan, gen, dtype)
    got = _derivatives(executor, inputs, fixed, torch.Generator().manual_seed(1))
    want = _derivatives(reference, inputs, fixed, torch.Generator().manual_seed(1))
    labels = ["value"] + [f"d/d input {i}" for i in range(len(inputs))] + [f"d2/d input {i}" for i in range(len(inputs))]
    for label, a, b in zip(labels, got, want):
        scale = b.abs().max().clamp_min(1e-30)
        assert ((a - b).abs().max() / scale) < TOLERANCE[dtype], f"{name} {case}: {label}"


def test_the_reference_serves_what_the_kernels_refuse():
    """Correlation 7 is past both kernels' limits: the dispatch names why and runs the reference."""
    from gaunt_plugins.backends.dispatch import executor_for, refusals

    plan = many_body_plan("2x0e+2x1o", "2x0e", 7)
    reasons = refusals("many_body", plan, CPU, torch.float64)
    assert "correlation 6" in reasons["cpu-kernels"] and reasons["torch-reference"] is None
    assert executor_for("many_body", plan, CPU, torch.float64).name == "torch-reference"


@pytest.mark.parametrize("setting", ["GAUNT_BACKEND", "use_backend"])
def test_a_forced_torch_backend_runs_only_the_pytorch_reference(monkeypatch, setting):
    """``GAUNT_BACKEND=torch`` (or ``use_backend("torch")``) is the PyTorch reference for every layer, the message
    step, the dense ``weighted_product`` and ``gaunt_product``: no C kernel is reached, and the dispatch records
    the reference; ``auto`` on CPU still chooses the C kernels."""
    import contextlib

    from gaunt_plugins import GauntConvolution, GauntManyBody, GauntTensorProduct, gaunt_product
    from gaunt_plugins.backends import dispatch, last_executor, registry
    from gaunt_plugins.backends.cpu import ops as cpu_ops
    from gaunt_plugins.backends.cpu.build import cpu_kernels_unavailable_reason

    tp = GauntTensorProduct("2x0e+2x1o+2x2e", "2x0e+2x1o+2x2e").double()
    conv = GauntConvolution("2x0e+2x1o", "1x0e+1x1o+1x2e", "2x0e+2x1o+2x2e").double()
    scalar = GauntConvolution("2x0e", "1x0e+1x1o", "2x0e+2x1o").double()
    mb = GauntManyBody("2x0e+2x1o", "2x0e+2x1o", 3, 2).double()
    r = lambda *shape: torch.randn(*shape, dtype=torch.float64)
    edges = torch.tensor([[0, 1, 2], [1, 2, 0]])
    x, w, d = r(3, 2, 9), [r(3, 3, 2), r(3, 3, 2), r(3, 2)], torch.tensor([0, 1, 1, 1, 2, 2, 2, 2, 2])
    tables = tp.plan.tensors.get(torch.float64, CPU)
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
    under_auto = {name: fn() for name, fn in calls.items()}

    def refuse(*args, **kwargs):
        raise AssertionError("a C kernel ran under a forced torch backend")

    with monkeypatch.context() as forced:
        forced.setattr(dispatch, "cpu_executor", refuse)
        forced.setattr(cpu_ops, "grid_product_fused", refuse)
        if setting == "GAUNT_BACKEND":
            forced.setenv("GAUNT_BACKEND", "torch")
            scope = contextlib.nullcontext()
        else:
            forced.delenv("GAUNT_BACKEND", raising=False)
            scope = registry.use_backend("torch")
        with scope:
            for name, fn in calls.items():
                out = fn()
                assert torch.allclose(out, under_auto[name], rtol=1e-10, atol=1e-12), name
                if name in ("weighted_product", "conv_product", "conv_message", "many_body_product", "gaunt_product"):
                    assert last_executor(name) == "torch-reference", name

    monkeypatch.delenv("GAUNT_BACKEND", raising=False)
    if cpu_kernels_unavailable_reason() is not None:
        pytest.skip(f"the C kernels are unavailable here: {cpu_kernels_unavailable_reason()}")
    for name in ("weighted_product", "conv_product", "conv_message", "many_body_product"):
        calls[name]()
        assert last_executor(name) == "cpu-kernels", name
