"""The Gaunt layers: equivariance, parity rules, autograd, TorchScript, torch.compile, bad input."""
import copy

import pytest
import torch

from gaunt_plugins import GauntConvolution, GauntManyBody, GauntTensorProduct
from gaunt_plugins._e3nn import E3NN_VERSION, o3
from gaunt_plugins.backends.torch_ops import weighted_product
from gaunt_plugins.ops import gaunt_product
from gaunt_plugins.testing import equivariance_error, random_rotation

pytestmark = pytest.mark.e3nn044


def natural(mul, lmax):
    return o3.Irreps([(mul, (l, (-1) ** l)) for l in range(lmax + 1)])


def twisted(mul, lmax):
    return o3.Irreps([(mul, (l, -((-1) ** l))) for l in range(lmax + 1)])


def sh_irreps(lmax):
    return natural(1, lmax)


def test_runs_under_the_e3nn_version_this_pass_expects(expected_e3nn):
    if expected_e3nn:
        assert E3NN_VERSION == expected_e3nn


def _layers(c, lmax):
    lo = min(lmax, 4)
    yield "tp", GauntTensorProduct(natural(c, lmax), natural(c, lmax)), 2
    yield "conv", GauntConvolution(natural(c, lmax), sh_irreps(min(lmax, 3)), natural(c, lo)), 2
    yield "many_body", GauntManyBody(natural(c, lmax), natural(c, min(lmax, 2)), 3, 3), 1


def _inputs(name, layer, n, dtype):
    if name == "tp":
        args = (torch.randn(n, layer.irreps_in1.dim, dtype=dtype), torch.randn(n, layer.irreps_in2.dim, dtype=dtype))
        return args, [layer.irreps_in1, layer.irreps_in2]
    if name == "conv":
        vec = torch.randn(n, 3, dtype=dtype)
        sh = o3.spherical_harmonics(layer.irreps_in2, vec, True, normalization="component")
        args = (torch.randn(n, layer.irreps_in1.dim, dtype=dtype), sh, torch.randn(n, layer.weight_numel, dtype=dtype))
        return args, [layer.irreps_in1, layer.irreps_in2, None]
    x = torch.randn(n, layer.channels, layer.irreps_in.dim // layer.channels, dtype=dtype)
    attrs = torch.nn.functional.one_hot(torch.arange(n) % layer.num_elements, layer.num_elements).to(dtype)
    return (x, attrs), [None, None]


def _many_body_error(layer, x, attrs, rot):
    """x is [N, C, width]: rotate every channel's coefficients."""
    d = _exact_d(o3.Irreps([(1, ir) for _, ir in layer.irreps_in]), rot).to(x.dtype)
    out = layer(x, attrs)
    lhs = layer(x @ d.T, attrs)
    rhs = out @ _exact_d(layer.irreps_out, rot).to(out.dtype).T
    return ((lhs - rhs).abs().max() / out.abs().max()).item()


def _exact_d(irreps, rot):
    from gaunt_plugins.testing import wigner_d
    return wigner_d(irreps, rot)


@pytest.mark.parametrize("lmax", [1, 2, 3, 4, 6, 8])
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_every_layer_is_rotation_equivariant(lmax, dtype, tol):
    torch.set_default_dtype(dtype)
    try:
        rot = random_rotation(torch.float64)
        for name, layer, _ in _layers(4, lmax):
            args, irreps = _inputs(name, layer, 6, dtype)
            if name == "many_body":
                err = _many_body_error(layer, *args, rot)
            else:
                err = equivariance_error(layer, args, irreps, layer.irreps_out, rot)
            assert err < tol, (name, lmax, err)
    finally:
        torch.set_default_dtype(torch.float32)


def test_float32_equivariance_with_e3nns_own_wigner_d():
    from gaunt_plugins.testing import wigner_d
    rot = random_rotation(torch.float32)
    layer = GauntConvolution(natural(8, 3), sh_irreps(3), natural(8, 3))
    args, irreps = _inputs("conv", layer, 10, torch.float32)
    d = [None if ir is None else wigner_d(ir, rot, exact=False) for ir in irreps]
    rotated = [x if dd is None else x @ dd.T for x, dd in zip(args, d)]
    out = layer(*args)
    err = (layer(*rotated) - out @ wigner_d(layer.irreps_out, rot, exact=False).T).abs().max() / out.abs().max()
    assert err < 1e-5


def test_twisted_features_follow_the_parity_rule():
    tp = GauntTensorProduct(twisted(3, 2), natural(3, 2))
    assert all(ir.p == -((-1) ** ir.l) for _, ir in tp.irreps_out)
    tp2 = GauntTensorProduct(twisted(3, 2), twisted(3, 2))
    assert all(ir.p == (-1) ** ir.l for _, ir in tp2.irreps_out)
    # reflection: a twisted feature changes sign an extra time under inversion
    x1, x2 = torch.randn(5, tp.irreps_in1.dim), torch.randn(5, tp.irreps_in2.dim)
    inv = lambda irreps: torch.diag(torch.cat([torch.full((ir.dim,), float(ir.p)).repeat(m) for m, ir in irreps]))
    out = tp(x1 @ inv(tp.irreps_in1), x2 @ inv(tp.irreps_in2))
    assert torch.allclose(out, tp(x1, x2) @ inv(tp.irreps_out), atol=1e-6)


def test_many_body_of_twisted_input_keeps_only_terms_of_the_requested_parity():
    mb = GauntManyBody(twisted(2, 2), twisted(2, 1), 3, 1)
    assert mb.from_grids[1].abs().max() == 0  # nu = 2 is natural
    assert mb.from_grids[0].abs().max() > 0 and mb.from_grids[2].abs().max() > 0


@pytest.mark.parametrize("make, match", [
    (lambda: GauntTensorProduct("4x0e+4x1e", "4x0e"), "mixed parity"),
    (lambda: GauntTensorProduct("4x0e+4x1o", "4x0e+4x1o", "4x1e"), "only produces natural"),
    (lambda: GauntTensorProduct("4x1o", "4x1o", "4x3o"), "cannot be produced"),
    (lambda: GauntTensorProduct("4x0e+2x1o", "4x0e"), "same multiplicity"),
    (lambda: GauntTensorProduct("4x0e", "2x0e"), "expected multiplicity 4"),
    (lambda: GauntTensorProduct("4x0e+4x0e", "4x0e"), "each degree may appear once"),
    (lambda: GauntTensorProduct("4x1o+4x0e", "4x0e"), "increasing order"),
    (lambda: GauntTensorProduct("4x0e", "4x0e", method="fourierr"), "unknown method"),
    (lambda: GauntConvolution("4x0e+4x1o", "2x0e+2x1o"), "expected multiplicity 1"),
    (lambda: GauntConvolution("4x0e+4x1o", "0e+1o", "4x0o+4x1e"), "only produces natural"),
    (lambda: GauntManyBody("4x0e+4x1o", "4x0o+4x1e", 2, 3), "only produces natural"),
    (lambda: GauntManyBody("4x0e+4x1o", "4x0e", 0, 3), "correlation must be >= 1"),
    (lambda: GauntManyBody("4x0e+4x1o", "4x0e", 2.5, 3), "correlation must be a whole number, got 2.5"),
    (lambda: GauntManyBody("4x0e+4x1o", "4x0e", 2, 3, chains=0), "chains must be >= 1"),
    (lambda: GauntManyBody("4x0e+4x1o", "4x0e", 2, 3, weight_gain=0.0), "weight_gain must be a positive finite"),
    (lambda: GauntManyBody("4x0e+4x1o", "4x0e", 2, 3, weight_gain=float("inf")), "weight_gain must be a positive"),
    (lambda: GauntConvolution("4x0e+4x1o", "0e+1o", products=1.5), "products must be a whole number"),
    (lambda: GauntManyBody("4x0e+4x1o", "4x0e+4x1o+4x2e", 3, 3, method="x"), "unknown method"),
    (lambda: GauntTensorProduct("4x40e", "4x30e", "4x10e"), "no grid table"),
    (lambda: GauntTensorProduct("4x0e", "4x0e", "4xfoo"), "cannot parse irreps"),
])
def test_bad_irreps_raise_a_value_error_naming_them(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_bad_shapes_raise_clear_errors():
    conv = GauntConvolution(natural(4, 1), sh_irreps(1), natural(4, 1))
    x, sh, w = torch.randn(3, 16), torch.randn(3, 4), torch.randn(3, conv.weight_numel)
    with pytest.raises(ValueError, match="x1 must be"):
        conv(torch.randn(3, 15), sh, w)
    with pytest.raises(ValueError, match="weight must be"):
        conv(x, sh, w[:, 1:])
    with pytest.raises(ValueError, match="x2 must be"):
        conv(x, sh[:2], w)
    mb = GauntManyBody(natural(4, 1), natural(4, 1), 2, 3)
    with pytest.raises(ValueError, match="node_attrs must be"):
        mb(torch.randn(3, 4, 4), torch.randn(3, 2))
    tp = GauntTensorProduct(natural(4, 1), natural(4, 1))
    with pytest.raises(ValueError, match="same leading"):
        tp(torch.randn(3, 16), torch.randn(2, 16))


def test_tensor_product_with_unit_weights_is_the_channelwise_gaunt_product():
    tp = GauntTensorProduct(natural(3, 2), natural(3, 2), normalize=False)
    x1, x2 = torch.randn(4, tp.irreps_in1.dim), torch.randn(4, tp.irreps_in2.dim)
    to_dense = lambda x: torch.cat([x[:, :3, None], x[:, 3:12].view(4, 3, 3), x[:, 12:].view(4, 3, 5)], -1)
    ref = gaunt_product(to_dense(x1), to_dense(x2), 2)
    out = tp(x1, x2)
    assert torch.allclose(to_dense(out), ref, atol=1e-5)


def test_external_per_sample_weights_match_internal_ones():
    internal = GauntTensorProduct(natural(3, 2), natural(3, 2))
    with torch.no_grad():
        internal.weight.normal_()
    external = GauntTensorProduct(natural(3, 2), natural(3, 2), internal_weights=False, shared_weights=False)
    x1, x2 = torch.randn(5, internal.irreps_in1.dim), torch.randn(5, internal.irreps_in2.dim)
    w = internal.weight.detach().reshape(1, -1).expand(5, -1)
    assert torch.allclose(internal(x1, x2), external(x1, x2, w), atol=1e-6)
    with pytest.raises(ValueError, match="needs a weight"):
        external(x1, x2)


def test_many_body_weights_depend_on_the_element():
    mb = GauntManyBody(natural(3, 2), natural(3, 1), 2, 2)
    x = torch.randn(1, 3, 9).expand(2, -1, -1)
    out = mb(x, torch.eye(2))
    assert not torch.allclose(out[0], out[1])


def _many_body_and_inputs(gain, seed=0):
    torch.manual_seed(seed)
    mb = GauntManyBody(natural(3, 2), natural(3, 1), 3, 2, chains=2, weight_gain=gain)
    torch.manual_seed(1)
    x, attrs = torch.randn(5, 3, 9), torch.eye(2)[torch.tensor([0, 1, 1, 0, 1])]
    return mb, x, attrs


def test_many_body_weight_gain_leaves_the_initial_function_and_scales_adam_steps():
    """The gain divides the stored parameters and multiplies them back: same function at initialisation,
    and one Adam step (about lr per parameter) moves the effective weights gain times as far."""
    layers = {}
    for gain in (1.0, 4.0):
        mb, x, attrs = _many_body_and_inputs(gain)
        before = mb(x, attrs).detach()
        w0 = (mb.weights_in * mb.weight_gain).detach().clone()
        opt = torch.optim.Adam(mb.parameters(), lr=1e-3)
        mb(x, attrs).square().sum().backward()
        opt.step()
        layers[gain] = before, (mb.weights_in * mb.weight_gain).detach() - w0
    torch.testing.assert_close(layers[4.0][0], layers[1.0][0], rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(layers[4.0][1], 4.0 * layers[1.0][1], rtol=1e-4, atol=1e-9)
    assert layers[1.0][1].abs().max() > 1e-4


def test_many_body_state_dict_saved_without_a_gain_loads_as_its_own_weights():
    """A state dict (checkpoint) written before the gain existed holds the weights themselves: loaded into a
    layer built with the default gain it predicts what the saved layer did, and a pickled layer without the
    gain buffer does the same."""
    old, x, attrs = _many_body_and_inputs(1.0, seed=3)
    expected = old(x, attrs)
    state = {k: v for k, v in old.state_dict().items() if k != "weight_gain"}
    new, _, _ = _many_body_and_inputs(4.0, seed=4)
    new.load_state_dict(state)
    assert new.weight_gain.item() == 1.0
    torch.testing.assert_close(new(x, attrs), expected)
    import pickle
    del old._buffers["weight_gain"]
    restored = pickle.loads(pickle.dumps(old))
    assert restored.weight_gain.item() == 1.0
    torch.testing.assert_close(restored(x, attrs), expected)


def test_many_body_state_dict_round_trip_keeps_the_gain():
    mb, x, attrs = _many_body_and_inputs(4.0, seed=5)
    other, _, _ = _many_body_and_inputs(1.0, seed=6)
    other.load_state_dict(mb.state_dict())
    assert other.weight_gain.item() == 4.0
    torch.testing.assert_close(other(x, attrs), mb(x, attrs))


def test_outputs_start_near_unit_variance():
    conv = GauntConvolution(natural(16, 2), sh_irreps(3), natural(16, 3))
    n = 3000
    sh = o3.spherical_harmonics(conv.irreps_in2, torch.randn(n, 3), True, normalization="component")
    # unit path weights: input-side weights at zero (the offset makes them one), output weights one
    w = torch.zeros(n, conv.k1 + conv.k2 + conv.k3, conv.channels)
    w[:, conv.k1 + conv.k2:] = 1.0
    out = conv(torch.randn(n, conv.irreps_in1.dim), sh, w.view(n, -1))
    assert 0.7 < out.std().item() < 1.4


def test_gradcheck_every_layer_float64():
    torch.set_default_dtype(torch.float64)
    try:
        for name, layer, _ in _layers(2, 2):
            args, _ = _inputs(name, layer, 3, torch.float64)
            args = tuple(a.clone().requires_grad_(name != "many_body" or i == 0) for i, a in enumerate(args))
            assert torch.autograd.gradcheck(layer, args), name
    finally:
        torch.set_default_dtype(torch.float32)


def test_every_layer_scripts_and_matches_eager():
    for name, layer, _ in _layers(4, 3):
        args, _ = _inputs(name, layer, 5, torch.float32)
        scripted = torch.jit.script(layer)
        assert torch.allclose(scripted(*args), layer(*args), atol=1e-6), name


def test_every_layer_compiles_without_graph_breaks():
    torch._dynamo.reset()
    for name, layer, _ in _layers(4, 2):
        args, _ = _inputs(name, layer, 5, torch.float32)
        compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
        assert torch.allclose(compiled(*args), layer(*args), atol=1e-6), name


def test_convolution_compiles_with_inductor_and_backward_matches():
    torch._dynamo.reset()
    conv = GauntConvolution(natural(4, 2), sh_irreps(2), natural(4, 2))
    args, _ = _inputs("conv", conv, 7, torch.float32)
    args = [a.clone().requires_grad_() for a in args]
    compiled = torch.compile(conv, fullgraph=True)
    out_c = compiled(*args)
    grads_c = torch.autograd.grad(out_c.square().sum(), args)
    out_e = conv(*args)
    grads_e = torch.autograd.grad(out_e.square().sum(), args)
    assert torch.allclose(out_c, out_e, atol=1e-5)
    assert all(torch.allclose(a, b, atol=1e-4) for a, b in zip(grads_c, grads_e))


def test_layers_follow_the_model_dtype():
    conv = GauntConvolution(natural(4, 1), sh_irreps(1), natural(4, 1)).to(torch.float64)
    assert conv.to_grid1.dtype == torch.float64
    args, _ = _inputs("conv", conv, 3, torch.float64)
    assert conv(*args).dtype == torch.float64


def test_weighted_product_reference_matches_the_functional_op_per_channel():
    from gaunt_plugins.math import grid_tables
    y1, y2, proj = (torch.from_numpy(t) for t in grid_tables(2, 1, 2))
    x1, x2 = torch.randn(3, 2, 9, dtype=torch.float64), torch.randn(3, 2, 4, dtype=torch.float64)
    ones = lambda k: torch.ones(k, 2, dtype=torch.float64)
    deg = lambda l: torch.tensor([d for d in range(l + 1) for _ in range(2 * d + 1)])
    out = weighted_product(x1, x2, ones(3), ones(2), ones(3), deg(2), deg(1), deg(2), y1, y2, proj)
    assert torch.allclose(out, gaunt_product(x1, x2, 2), atol=1e-13)


def test_layers_that_ran_are_freed_when_dropped():
    """Nothing outside a layer (no global cache of plans or executors) keeps it alive."""
    import gc
    import weakref

    refs = []
    for _ in range(100):
        conv = GauntConvolution(natural(2, 1), sh_irreps(1), natural(2, 1))
        mb = GauntManyBody(natural(2, 1), natural(2, 1), 2, 2)
        conv(torch.randn(3, conv.dim_in1), torch.randn(3, conv.dim_in2), torch.randn(3, conv.weight_numel))
        mb(torch.randn(3, 2, 4), torch.eye(2)[[0, 1, 1]])
        refs += [weakref.ref(conv), weakref.ref(mb)]
        del conv, mb
    gc.collect()
    assert sum(r() is not None for r in refs) == 0


def test_a_float32_layer_moved_to_float64_computes_with_float64_tables():
    """Built under the float32 default, then ``.double()``: equivariant to float64 accuracy."""
    torch.set_default_dtype(torch.float32)
    layer = GauntTensorProduct(natural(3, 3), natural(3, 3)).double()
    x1, x2 = (torch.randn(4, layer.dim_in1, dtype=torch.float64) for _ in range(2))
    rot = random_rotation(torch.float64, generator=torch.Generator().manual_seed(3))
    err = equivariance_error(layer, (x1, x2), [layer.irreps_in1, layer.irreps_in2], layer.irreps_out, rot)
    assert err < 1e-12
    assert torch.equal(layer.to_grid1, layer.plan.tensors.get(torch.float64, layer.to_grid1.device)["to_grid1"])


@pytest.mark.parametrize("make, args", [
    (lambda: GauntConvolution(natural(2, 1), sh_irreps(1), natural(2, 1)),
     lambda l: (torch.ones(3, l.dim_in1, dtype=torch.int64), torch.ones(3, l.dim_in2), torch.ones(3, l.weight_numel))),
    (lambda: GauntTensorProduct(natural(2, 1), natural(2, 1)),
     lambda l: (torch.ones(3, l.dim_in1, dtype=torch.int32), torch.ones(3, l.dim_in2, dtype=torch.int32))),
    (lambda: GauntManyBody(natural(2, 1), natural(2, 1), 2, 2),
     lambda l: (torch.ones(3, 2, 4, dtype=torch.int64), torch.eye(2)[[0, 1, 1]])),
])
def test_integer_inputs_are_refused_like_gaunt_product(make, args):
    layer = make()
    with pytest.raises(ValueError, match="inputs must be floating point"):
        layer(*args(layer))
    with pytest.raises(ValueError, match="inputs must be floating point"):
        gaunt_product(torch.ones(2, 4, dtype=torch.int64), torch.ones(2, 4, dtype=torch.int64), 1)


def test_many_body_past_the_kernels_correlation_runs_on_the_reference(monkeypatch):
    """Correlation 7 is past the CPU kernel's limit: the layer runs (on the reference) instead of failing."""
    from gaunt_plugins.backends import last_executor

    monkeypatch.delenv("GAUNT_BACKEND", raising=False)  # the automatic choice

    mb = GauntManyBody(natural(2, 1), natural(2, 0), 7, 2).double()
    x = torch.randn(3, 2, 4, dtype=torch.float64)
    out = mb(x, torch.eye(2, dtype=torch.float64)[[0, 1, 1]])
    assert torch.isfinite(out).all() and out.shape == (3, 2)
    assert last_executor("many_body_product") == "torch-reference"


def test_tensor_product_on_no_rows_and_with_wrong_per_sample_weights():
    tp = GauntTensorProduct(natural(2, 1), natural(2, 1), internal_weights=False, shared_weights=False)
    empty = tp(torch.randn(0, tp.dim_in1), torch.randn(0, tp.dim_in2), torch.randn(0, tp.weight_numel))
    assert empty.shape == (0, tp.dim_out)
    x = torch.randn(3, tp.dim_in1)
    with pytest.raises(ValueError, match=r"per-sample weight must be \[3, 12\]"):
        tp(x, x, torch.randn(2, tp.weight_numel))
    shared = GauntTensorProduct(natural(2, 1), natural(2, 1), internal_weights=False, shared_weights=True)
    with pytest.raises(ValueError, match="shared weight needs 12 elements"):
        shared(x, x, torch.randn(11))


_META_LAYERS = {
    "tp": lambda: GauntTensorProduct(natural(3, 2), natural(3, 2)),
    "conv": lambda: GauntConvolution(natural(3, 1), sh_irreps(2), natural(3, 2), products=2),
    "many_body": lambda: GauntManyBody(natural(3, 1), natural(3, 1), 3, 2),
}


@pytest.mark.parametrize("name", sorted(_META_LAYERS))
def test_layers_build_and_run_on_the_meta_device_and_materialise(name):
    """Built under ``with torch.device("meta")`` or moved with ``.to("meta")``, a layer is wholly on ``meta`` and
    its forward gives the output shape (and the message step's); ``to_empty`` plus the state dict of a real layer
    then computes what that layer computes."""
    make = _META_LAYERS[name]
    real = make()
    with torch.device("meta"):
        built = make()
    for layer in (built, make().to("meta")):
        assert {t.device.type for t in list(layer.parameters()) + list(layer.buffers())} == {"meta"}
        args, _ = _inputs(name, layer, 5, torch.float32)
        out = layer(*[a.to("meta") for a in args])
        assert out.device.type == "meta" and out.shape == real(*_inputs(name, real, 5, torch.float32)[0]).shape
    if name == "conv":
        nodes = torch.empty(4, built.dim_in1, device="meta")
        edges = torch.tensor([[0, 1, 2, 3, 0], [1, 2, 3, 0, 0]], device="meta")
        args, _ = _inputs(name, built, 5, torch.float32)
        assert built(nodes, args[1].to("meta"), args[2].to("meta"), edges).shape == (4, built.dim_out)
    built.to_empty(device="cpu")
    built.load_state_dict(real.state_dict())
    args, _ = _inputs(name, real, 5, torch.float32)
    assert torch.equal(built(*args), real(*args))


@pytest.mark.parametrize("setting", ["torch", "triton", "auto"])
def test_meta_shape_inference_runs_under_every_backend_setting(setting):
    """Meta tensors carry no values, so no kernel runs on them: a forced backend still gives the output shape."""
    from gaunt_plugins import backends
    with torch.device("meta"):
        layer = GauntConvolution(natural(4, 2), sh_irreps(2), natural(4, 2))
    args, _ = _inputs("conv", layer, 5, torch.float32)
    with backends.use_backend(setting):
        out = layer(*[a.to("meta") for a in args])
    assert out.device.type == "meta" and out.shape == (5, layer.dim_out)


def test_plans_first_built_under_another_default_device_keep_their_tables_on_the_cpu():
    """A plan is cached for every later caller: built first under ``torch.device("meta")``, its float64 masters
    are still real CPU tensors, and a layer built afterwards on the CPU computes with them."""
    irreps = "7x0e+7x1o+7x2e+7x3o"  # used by no other test, so this is the plan's first build
    with torch.device("meta"):
        meta_layer = GauntTensorProduct(irreps, irreps)
    assert {t.device.type for t in meta_layer.plan.tensors.get(torch.float64, torch.device("cpu")).values()} == {"cpu"}
    layer = GauntTensorProduct(irreps, irreps)
    x = torch.randn(3, layer.dim_in1)
    assert torch.isfinite(layer(x, x)).all()


def test_many_body_scalar_bias_shifts_only_the_0e_output_per_element():
    layer = GauntManyBody("3x0e+3x1o", "3x0e+3x1o", 2, 2)
    x = torch.randn(4, 3, 4)
    attrs = torch.nn.functional.one_hot(torch.tensor([0, 1, 1, 0]), 2).to(x.dtype)
    before = layer(x, attrs)
    with torch.no_grad():
        layer.scalar_bias.copy_(torch.tensor([[1.0, 2.0, 3.0], [10.0, 20.0, 30.0]]))
    shift = layer(x, attrs) - before
    expected = torch.zeros_like(shift)
    expected[:, :3] = attrs @ layer.scalar_bias.detach()
    assert torch.allclose(shift, expected, atol=1e-5)
    assert GauntManyBody("3x0o+3x1e", "3x0o+3x1e", 2, 2).scalar_bias is None  # a constant 0o would break parity


def test_many_body_saved_without_a_scalar_bias_loads_and_predicts_what_it_did():
    torch.manual_seed(0)
    old = GauntManyBody("3x0e+3x1o", "3x0e+3x1o", 2, 2, scalar_bias=False)
    state = old.state_dict()
    assert "scalar_bias" not in state
    new = GauntManyBody("3x0e+3x1o", "3x0e+3x1o", 2, 2)
    new.load_state_dict(state)
    x = torch.randn(4, 3, 4)
    attrs = torch.nn.functional.one_hot(torch.tensor([0, 1, 1, 0]), 2).to(x.dtype)
    assert torch.equal(new(x, attrs), old(x, attrs))
    pickled = dict(old.__getstate__())  # as a layer pickled before the bias: no trace of it
    pickled["_parameters"] = {k: v for k, v in pickled["_parameters"].items() if k != "scalar_bias"}
    pickled.pop("scalar_bias", None)
    pickled.pop("scalar_start")
    revived = GauntManyBody.__new__(GauntManyBody)
    revived.__setstate__(pickled)
    assert revived.scalar_bias is None and torch.equal(revived(x, attrs), old(x, attrs))


@pytest.mark.parametrize("name", ["conv", "many_body"])
def test_a_layer_pickled_without_the_kernels_index_buffers_rebuilds_them_and_predicts_the_same(name):
    """The kernels' index tables are non-persistent buffers; a layer pickled before they existed gets them back
    from its plan when unpickled, and computes what it did."""
    import pickle

    torch.manual_seed(0)
    layer = _META_LAYERS[name]().double()
    args, _ = _inputs(name, layer, 5, torch.float64)
    expected = layer(*args)
    derived = type(layer)._DERIVED
    assert derived and not set(derived) & set(layer.state_dict())
    for missing in (derived, derived[-1:]):  # pickled before any of them, or before the last one added
        old = copy.deepcopy(layer)
        for key in missing:
            del old._buffers[key]
        restored = pickle.loads(pickle.dumps(old))
        assert all(key in restored._buffers for key in derived)
        torch.testing.assert_close(restored(*args), expected, rtol=0, atol=0)


def test_a_convolution_saved_with_the_harmonics_degree_mask_loads_and_predicts_the_same():
    """Convolutions once also held the harmonics' degrees as a persistent mask (``deg_mask2``): a state dict or
    a pickle with it still loads (strictly) into a layer that reads the degree slots, and computes the same."""
    import pickle

    torch.manual_seed(0)
    layer = _META_LAYERS["conv"]().double()
    args, _ = _inputs("conv", layer, 5, torch.float64)
    expected = layer(*args)
    assert "deg_mask2" not in layer.state_dict()
    old_state = dict(layer.state_dict(), deg_mask2=torch.ones(layer.k2, layer.width2, dtype=torch.float64))
    fresh = _META_LAYERS["conv"]().double()
    fresh.load_state_dict(old_state, strict=True)
    torch.testing.assert_close(fresh(*args), expected, rtol=0, atol=0)
    old = copy.deepcopy(layer)
    old._buffers["deg_mask2"] = torch.ones(layer.k2, layer.width2, dtype=torch.float64)
    restored = pickle.loads(pickle.dumps(old))
    assert "deg_mask2" not in restored._buffers
    torch.testing.assert_close(restored(*args), expected, rtol=0, atol=0)
