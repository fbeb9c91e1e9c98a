"""TorchScript and torch.compile reach the CPU kernels: the ``torch.ops.gaunt`` operators (``ops.cpp``) give the
eager layers' values and first derivatives (float64, 1e-12), the profiler sees the operators run, second
derivatives through them equal eager's, and without the operators a layer scripts to the PyTorch reference."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gaunt_plugins.backends.cpu import library
from gaunt_plugins.layers import GauntConvolution, GauntManyBody, GauntTensorProduct


@pytest.fixture(scope="module")
def ops():
    """The operators, built once (then cached on disk for every later test process)."""
    if not library.load_ops():
        pytest.skip(f"the CPU operators are unavailable: {library.ops_unavailable_reason()}")


def _operators_run(fn) -> set:
    """Names of the ``gaunt::`` operators that ran during ``fn()``."""
    with torch.profiler.profile() as prof:
        fn()
    return {e.name for e in prof.events() if e.name.startswith("gaunt::")}


def _cases():
    """``(operator, layer, inputs needing grad, extra inputs)`` for each operator, and the convolution of scalar
    node features, which runs coefficient-wise (no operator) in eager, scripted and compiled alike."""
    torch.manual_seed(0)
    n, e = 7, 23
    conv = GauntConvolution("8x0e+8x1o", "1x0e+1x1o+1x2e", "8x0e+8x1o", products=2)
    x = torch.randn(n, conv.dim_in1)
    sh = torch.randn(e, conv.dim_in2)
    w = torch.randn(e, conv.weight_numel)
    edges = torch.randint(0, n, (2, e))
    many_body = GauntManyBody("8x0e+8x1o", "8x0e+8x1o", correlation=3, num_elements=3, chains=2)
    attrs = torch.nn.functional.one_hot(torch.randint(0, 3, (n,)), 3).to(torch.get_default_dtype())
    product = GauntTensorProduct("8x0e+8x1o", "8x0e+8x1o+8x2e")
    scalar = GauntConvolution("8x0e", "1x0e+1x1o+1x2e", "8x0e+8x1o+8x2e")  # coefficient-wise, no operator
    return [("conv", conv, [torch.randn(e, conv.dim_in1), sh, w], []),
            ("message", conv, [x, sh, w], [edges]),
            ("scalar nodes", scalar, [torch.randn(n, 8), sh, torch.randn(e, scalar.weight_numel)], [edges]),
            ("many_body", many_body, [torch.randn(n, 8, 4)], [attrs]),
            ("grid_product", product, [torch.randn(n, 32), torch.randn(n, 72)], [])]


def _values_and_grads(layer, inputs, extra, create_graph=False):
    inputs = [t.detach().clone().requires_grad_(True) for t in inputs]
    out = layer(*inputs, *extra)
    params = [p for p in layer.parameters()]
    grads = torch.autograd.grad(out.square().sum(), inputs + params, create_graph=create_graph)
    return out, grads, inputs


def _assert_operators_give_eager_values(name, layer, wrapped, inputs, extra):
    """``wrapped`` (scripted or compiled ``layer``) runs the operators (none for scalar nodes, which run
    coefficient-wise) and gives eager's values and gradients to 1e-12."""
    out, grads, _ = _values_and_grads(layer, inputs, extra)
    ran = _operators_run(lambda: _values_and_grads(wrapped, inputs, extra))
    expected = set() if name == "scalar nodes" else {f"gaunt::{name}", f"gaunt::{name}_backward"}
    assert ran == expected, (name, ran)
    out_w, grads_w, _ = _values_and_grads(wrapped, inputs, extra)
    assert torch.allclose(out_w, out, rtol=0, atol=1e-12), name
    for g_w, g in zip(grads_w, grads):
        assert torch.allclose(g_w, g, rtol=0, atol=1e-12), name


def test_scripted_layers_run_the_operators_with_eager_values_and_gradients(ops, float64):
    for name, layer, inputs, extra in _cases():
        _assert_operators_give_eager_values(name, layer, torch.jit.script(layer), inputs, extra)


def test_second_derivatives_through_the_operators_are_eager_ones(ops, float64):
    """Force training differentiates the gradients again: the operators' backwards differentiate the composed
    reference, as the eager kernels do."""
    for name, layer, inputs, extra in _cases():
        scripted = torch.jit.script(layer)
        second = []
        for module in (layer, scripted):
            _, grads, leaves = _values_and_grads(module, inputs, extra, create_graph=True)
            penalty = sum(g.square().sum() for g in grads[:len(leaves)])
            second.append(torch.autograd.grad(penalty, leaves + list(module.parameters()), allow_unused=True))
        for g_s, g in zip(second[1], second[0]):
            assert (g_s is None) == (g is None), name
            # float64 rounding of sums of many products: relative to the largest entry
            assert g is None or torch.allclose(g_s, g, rtol=0, atol=1e-12 * float(g.abs().max())), name


def test_compiled_layers_run_the_operators_with_eager_values_and_gradients(ops, float64):
    """``fullgraph=True``: the operators' shapes (register_fake) let Dynamo trace them without a graph break."""
    torch._dynamo.reset()
    for name, layer, inputs, extra in _cases():
        compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
        _assert_operators_give_eager_values(name, layer, compiled, inputs, extra)
    torch._dynamo.reset()


def test_the_operators_pass_opcheck(ops, float64):
    """Schemas, autograd registration, shapes (register_fake) and AOT dispatch agree (``torch.library.opcheck``)."""
    torch.manual_seed(0)
    _, conv, (x, sh, w), (edges,) = _cases()[1]
    t = conv.plan.tensors.get(torch.float64, torch.device("cpu"))
    shd = sh[:, :conv.width2]  # a dense [E, I2] row (its values do not matter here)
    conv_tables = (t["offsets_in1"], t["offsets_out"], t["deg1"], t["deg2"], t["deg3"], t["to_grid1"], t["to_grid2"],
                   t["from_grid"], conv.k1, conv.k2, conv.dim_out)
    _, many_body, (xm,), (attrs,) = _cases()[3]
    m = many_body.plan.tensors.get(torch.float64, torch.device("cpu"))
    n, lanes = xm.shape[0], 2 * 8
    w_in, w_out = torch.randn(n, 3, 2, lanes), torch.randn(n, 3, 2, lanes)
    mb_tables = (m["offsets_in"], m["offsets_out"], m["deg_in"], m["deg_out"], m["to_grid"], m["from_grids"],
                 many_body.dim_out)
    u, v = torch.randn(6, 4), torch.randn(6, 9)
    cases = {
        "grid_product": (u, v, torch.randn(4, 20), torch.randn(9, 20), torch.randn(20, 9)),
        "conv": (x[edges[0]], shd, w, *conv_tables),
        "message": (x, shd, w, edges, x.shape[0], *conv_tables),
        "many_body": (xm.repeat(1, 2, 1), w_in, w_out, *mb_tables),
    }
    for name, args in cases.items():
        args = tuple(a.requires_grad_(True) if torch.is_tensor(a) and a.is_floating_point() and i < 3 else a
                     for i, a in enumerate(args))
        result = torch.library.opcheck(getattr(torch.ops.gaunt, name).default, args)
        assert set(result.values()) == {"SUCCESS"}, (name, result)


def test_scripting_without_the_operators_runs_the_reference(ops, float64, monkeypatch):
    monkeypatch.setattr(library, "_load", lambda: (None, "no C/C++ compiler found"))
    monkeypatch.setattr(library, "_WARNED", [])
    for name, layer, inputs, extra in _cases():
        with pytest.warns(RuntimeWarning, match="run the PyTorch reference: no C/C"):
            scripted = torch.jit.script(layer)
        assert "torch.ops.gaunt" not in scripted.code
        ran = _operators_run(lambda: _values_and_grads(scripted, inputs, extra))
        assert not ran, (name, ran)
        out, grads, _ = _values_and_grads(layer, inputs, extra)
        out_s, grads_s, _ = _values_and_grads(scripted, inputs, extra)
        assert torch.allclose(out_s, out, rtol=0, atol=1e-10), name
        for g_s, g in zip(grads_s, grads):
            assert torch.allclose(g_s, g, rtol=0, atol=1e-10), name
        monkeypatch.setattr(library, "_WARNED", [])


def test_the_library_command_prints_the_cached_library(ops):
    proc = subprocess.run([sys.executable, "-m", "gaunt_plugins.backends.cpu.library"], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    path = Path(proc.stdout.strip())
    assert path == library.library_path() and path.is_file() and path.name.startswith("gaunt_ops_")
