"""Gaunt MACE models: symmetry (float64, 1e-8), TorchScript, dtypes, save/load, conversion rules.

Marked ``e3nn044``: the same tests run again in the pass under mace-torch's pinned e3nn 0.4.4.
"""
from __future__ import annotations

import copy
import io

import pytest

import mace  # noqa: F401
import torch

from conftest import acac_batch, tiny_model

from gaunt_plugins.adapters.mace_blocks import (
    GauntProductBasisBlock,
    GauntRealAgnosticInteractionBlock,
    GauntRealAgnosticResidualInteractionBlock,
    gauntify_model,
    is_gaunt_model,
)
from gaunt_plugins.adapters.mace_config import GauntOptions
from gaunt_plugins.testing import random_rotation

pytestmark = pytest.mark.e3nn044


def _energy_forces(model, batch):
    out = model(batch, training=False, compute_force=True)
    return out["energy"].detach(), out["forces"].detach()


def _gaunt(targets=("conv", "product"), method="auto", **kw):
    model, report = gauntify_model(tiny_model(**kw), GauntOptions(targets=frozenset(targets), method=method))
    return model, report


@pytest.mark.parametrize("targets", [("conv", "product"), ("conv",), ("product",)])
def test_energy_invariant_forces_equivariant_float64(float64, targets):
    model, _ = _gaunt(targets)
    gen = torch.Generator().manual_seed(7)
    energy, forces = _energy_forces(model, acac_batch(3))
    assert torch.isfinite(energy).all() and forces.abs().max() > 0
    for _ in range(2):
        rot = random_rotation(torch.float64, generator=gen)
        energy_r, forces_r = _energy_forces(model, acac_batch(3, rotation=rot))
        assert torch.allclose(energy_r, energy, atol=1e-8, rtol=0), (energy_r - energy).abs().max()
        assert torch.allclose(forces_r, forces @ rot.T, atol=1e-8, rtol=0), (forces_r - forces @ rot.T).abs().max()


def test_conversion_replaces_the_chosen_blocks(float64):
    model, report = _gaunt(("conv", "product"), residual_first=False)
    assert type(model.interactions[0]) is GauntRealAgnosticInteractionBlock
    assert type(model.interactions[1]) is GauntRealAgnosticResidualInteractionBlock
    assert all(type(p) is GauntProductBasisBlock for p in model.products)
    assert is_gaunt_model(model)
    # the radial MLP is sized by the Gaunt convolution
    for block in model.interactions:
        assert block.conv_tp_weights.hs[-1] == block.conv_tp.weight_numel
        assert block.linear.irreps_in == block.conv_tp.irreps_out
    # MACE's tools read the correlation and irreps off the Gaunt product
    from mace.tools.scripts_utils import extract_config_mace_model

    config = extract_config_mace_model(model)
    assert config["correlation"] == 3
    assert config["interaction_cls"] is GauntRealAgnosticResidualInteractionBlock
    assert config["interaction_cls_first"] is GauntRealAgnosticInteractionBlock
    assert "conv_tp_weights.layer0.weight" in " ".join(report.copied)
    assert any(n.endswith("symmetric_contractions.weights_out") for n in report.fresh)

    conv_only, _ = _gaunt(("conv",))
    assert not any(isinstance(p, GauntProductBasisBlock) for p in conv_only.products)
    product_only, _ = _gaunt(("product",))
    assert not any(isinstance(b, GauntRealAgnosticResidualInteractionBlock) for b in product_only.interactions)


def test_rebuilding_from_the_gaunt_classes_gives_gaunt_convolutions(float64):
    """MACE rebuilds models from ``extract_config_mace_model`` (fine-tuning, backend conversion):
    the interaction classes it records build Gaunt convolutions themselves."""
    from mace import modules
    from mace.tools.scripts_utils import extract_config_mace_model

    model, _ = _gaunt(("conv",))
    rebuilt = modules.ScaleShiftMACE(**extract_config_mace_model(model))
    rebuilt.load_state_dict(model.state_dict())
    batch = acac_batch(2)
    assert torch.equal(_energy_forces(rebuilt, batch)[0], _energy_forces(model, batch)[0])


def test_torchscript_as_mace_deploys(float64):
    """MACE's ``_compiled.model`` path: ``e3nn.util.jit.compile`` of the whole model."""
    from e3nn.util import jit

    model, _ = _gaunt()
    batch = acac_batch(2)
    energy, forces = _energy_forces(model, batch)
    scripted = jit.compile(model)
    energy_s, forces_s = _energy_forces(scripted, batch)
    assert torch.allclose(energy_s, energy, atol=1e-10) and torch.allclose(forces_s, forces, atol=1e-10)
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)
    buffer.seek(0)
    loaded = torch.jit.load(buffer)
    assert torch.allclose(_energy_forces(loaded, batch)[0], energy, atol=1e-10)


def test_pickle_round_trip_and_float32():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    try:
        model, _ = _gaunt()
        batch = acac_batch(2)
        energy, forces = _energy_forces(model, batch)
        assert energy.dtype == torch.float32 and torch.isfinite(forces).all()
        buffer = io.BytesIO()
        torch.save(model, buffer)
        buffer.seek(0)
        loaded = torch.load(buffer, weights_only=False)
        assert torch.equal(_energy_forces(loaded, batch)[0], energy)
        # float64 copy of the float32 model agrees to float32 precision
        energy64, _ = _energy_forces(loaded.double(), {k: (v.double() if torch.is_tensor(v) and v.is_floating_point() else v) for k, v in batch.items()})
        assert torch.allclose(energy64.float(), energy, rtol=1e-5, atol=1e-3)
    finally:
        torch.set_default_dtype(previous)


def test_an_unknown_gaunt_method_is_refused_naming_it():
    with pytest.raises(ValueError, match="gaunt_method"):
        GauntOptions(method="no-such-method")


def test_unsupported_interactions_and_irreps_are_refused(float64):
    from mace import modules

    model = tiny_model()
    model.interactions[1] = modules.RealAgnosticDensityResidualInteractionBlock(**{
        k: getattr(model.interactions[1], k) for k in (
            "node_attrs_irreps", "node_feats_irreps", "edge_attrs_irreps", "edge_feats_irreps",
            "target_irreps", "hidden_irreps", "avg_num_neighbors", "radial_MLP")})
    with pytest.raises(ValueError, match="no Gaunt version of interaction RealAgnosticDensityResidualInteractionBlock"):
        gauntify_model(model, GauntOptions(targets=frozenset({"conv", "product"})))
    # the product alone can still be converted
    gauntify_model(model, GauntOptions(targets=frozenset({"product"})))

    pseudo = tiny_model(hidden="8x0e+8x0o+8x1o+8x1e")
    with pytest.raises(ValueError, match="pseudotensor"):
        gauntify_model(pseudo)


def test_cueq_config_is_refused(float64):
    from mace.modules.wrapper_ops import CuEquivarianceConfig

    block = tiny_model().interactions[1]
    kwargs = {k: getattr(block, k) for k in (
        "node_attrs_irreps", "node_feats_irreps", "edge_attrs_irreps", "edge_feats_irreps",
        "target_irreps", "hidden_irreps", "avg_num_neighbors", "radial_MLP")}
    config = CuEquivarianceConfig(enabled=False)
    config.enabled = True  # as on a machine with cuEquivariance installed
    with pytest.raises(ValueError, match="cuEquivariance"):
        GauntRealAgnosticResidualInteractionBlock(**kwargs, cueq_config=config)


@pytest.mark.slow
def test_symmetry_under_mace_pinned_e3nn_044():
    """The symmetry and TorchScript tests again, in a subprocess under e3nn 0.4.4 (mace-torch's pin,
    the ``.venv/e3nn-0.4.4`` overlay), so that a single test pass covers both e3nn versions."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from gaunt_plugins._e3nn import E3NN_VERSION

    if E3NN_VERSION == "0.4.4":
        pytest.skip("this pass already runs under e3nn 0.4.4")
    overlay = Path(sys.executable).resolve().parents[1] / "e3nn-0.4.4"
    if not (overlay / "e3nn").exists():
        overlay = Path(sys.prefix) / "e3nn-0.4.4"
    if not (overlay / "e3nn").exists():
        pytest.skip("no e3nn 0.4.4 overlay next to this environment")
    env = dict(os.environ, GAUNT_EXPECT_E3NN="0.4.4")
    env["PYTHONPATH"] = os.pathsep.join([str(overlay)] + [p for p in [env.get("PYTHONPATH")] if p])
    here = Path(__file__).resolve()
    code = ("import mace, e3nn, sys, pytest; print('E3NN', e3nn.__version__); "
            f"sys.exit(pytest.main(['-q', '-p', 'no:cacheprovider', '-p', 'no:warnings', {str(here)!r}, "
            "'-k', 'invariant or torchscript']))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=here.parent, env=env, capture_output=True,
                          text=True, timeout=1200)
    assert "E3NN 0.4.4" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.returncode == 0 and " passed" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-3000:]


def test_gaunt_interactions_compute_the_message_in_one_call(float64):
    """Gaunt blocks take MACE's conv_fusion seam (one call for gather, convolution and scatter); the model
    predicts what the gather / conv / scatter path predicts, on the CPU kernels and on Triton."""
    from gaunt_plugins.backends import last_executor, use_backend

    model, _ = _gaunt()
    assert all(hasattr(block, "conv_fusion") for block in model.interactions)
    batch = acac_batch(2)
    energy, forces = _energy_forces(model, batch)
    assert last_executor("conv_message") == "cpu-kernels"
    unfused = copy.deepcopy(model)
    for block in unfused.interactions:
        del block.conv_fusion
    energy_u, forces_u = _energy_forces(unfused, batch)
    assert torch.allclose(energy, energy_u, atol=1e-10) and torch.allclose(forces, forces_u, atol=1e-10)
    pytest.importorskip("triton")
    with use_backend("triton"):  # Triton's interpreter on this CPU (tests/conftest.py sets TRITON_INTERPRET)
        energy_t, forces_t = _energy_forces(model, batch)
        assert last_executor("conv_message") == "triton"
    assert torch.allclose(energy_t, energy, atol=1e-9) and torch.allclose(forces_t, forces, atol=1e-9)


def test_product_chains_are_built_stored_and_keep_the_symmetry(float64):
    model, _ = gauntify_model(tiny_model(), GauntOptions(targets=frozenset({"product"}), product_chains=2))
    assert all(p.symmetric_contractions.chains == 2 for p in model.products)
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    assert all(p.symmetric_contractions.chains == 2 for p in loaded.products)
    rot = random_rotation(torch.float64, generator=torch.Generator().manual_seed(2))
    energy, forces = _energy_forces(loaded, acac_batch(2))
    energy_r, forces_r = _energy_forces(loaded, acac_batch(2, rotation=rot))
    assert torch.allclose(energy_r, energy, atol=1e-8) and torch.allclose(forces_r, forces @ rot.T, atol=1e-8)
