"""A scripted Gaunt MACE (MACE's ``_compiled.model``) and a ``torch.compile``d one (MACE's compile route) run the CPU
kernels (``torch.ops.gaunt``) and give eager's energies and forces (float64, 1e-10); a process that never imports
gaunt_plugins (a C++ host such as LAMMPS) loads the operators' library, then the model, and reproduces them."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

import mace  # noqa: F401  (before e3nn)
import torch

from conftest import _build_tiny_model, acac_batch, tiny_model

from gaunt_plugins.adapters.mace_blocks import gauntify_model
from gaunt_plugins.adapters.mace_config import GauntOptions
from gaunt_plugins.backends.cpu import library


@pytest.fixture(scope="module")
def ops():
    if not library.load_ops():
        pytest.skip(f"the CPU operators are unavailable: {library.ops_unavailable_reason()}")


def _gaunt_model(fresh: bool = False):
    """A tiny Gaunt MACE; ``fresh``: built now (under e3nn's codegen setting of the moment), not copied."""
    stock = _build_tiny_model("8x0e+8x1o", 2, 2, True, 2) if fresh else tiny_model(hidden="8x0e+8x1o", max_ell=2,
                                                                                     correlation=2)
    model, _ = gauntify_model(stock, GauntOptions(targets=frozenset(("conv", "product"))))
    return model


def _energy_forces(model, batch):
    out = model(batch, training=False, compute_force=True)
    return out["energy"].detach(), out["forces"].detach()


def _operators_run(fn) -> set:
    with torch.profiler.profile() as prof:
        fn()
    return {e.name for e in prof.events() if e.name.startswith("gaunt::")}


def test_scripted_gaunt_mace_runs_the_operators_with_eager_energies_and_forces(ops, float64):
    from e3nn.util import jit

    model = _gaunt_model()
    batch = acac_batch(2)
    energy, forces = _energy_forces(model, batch)
    scripted = jit.compile(model)
    ran = _operators_run(lambda: _energy_forces(scripted, batch))
    assert {"gaunt::message", "gaunt::message_backward", "gaunt::many_body", "gaunt::many_body_backward"} <= ran, ran
    energy_s, forces_s = _energy_forces(scripted, batch)
    assert torch.allclose(energy_s, energy, rtol=0, atol=1e-10)
    assert torch.allclose(forces_s, forces, rtol=0, atol=1e-10)


def test_compiled_gaunt_mace_runs_the_operators_with_eager_energies_and_forces(ops, float64):
    """MACE's torch.compile route (e3nn codegen off, ``simplify``, ``fullgraph=True``, called with ``training=True``
    as MACECalculator calls it, so AOTAutograd traces second derivatives too). ``aot_eager``: the same graph
    capture as inductor (Dynamo, the operators' shapes, AOTAutograd), without its code generation."""
    from mace.tools.compile import configure_autograd_for_compile, disable_e3nn_codegen, simplify

    with disable_e3nn_codegen():
        model = _gaunt_model(fresh=True)
    for p in model.parameters():
        p.requires_grad_(False)
    batch = acac_batch(2)
    energy, forces = _energy_forces(model, batch)
    configure_autograd_for_compile(allow_autograd=True)
    torch._dynamo.reset()
    compiled = torch.compile(simplify(model), fullgraph=True, backend="aot_eager")

    def run():
        out = compiled(batch, training=True, compute_force=True)
        return out["energy"].detach(), out["forces"].detach()

    ran = _operators_run(run)
    assert {"gaunt::message", "gaunt::message_backward", "gaunt::many_body", "gaunt::many_body_backward"} <= ran, ran
    energy_c, forces_c = run()
    assert torch.allclose(energy_c, energy, rtol=0, atol=1e-10)
    assert torch.allclose(forces_c, forces, rtol=0, atol=1e-10)
    torch._dynamo.reset()


# a child with torch only: importing gaunt_plugins, mace or e3nn raises
HOST = textwrap.dedent("""
    import sys

    class Blocked:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("gaunt_plugins", "mace", "e3nn"):
                raise ImportError(f"{name} is not available to this host")

    sys.meta_path.insert(0, Blocked())
    import torch

    library, model_path, data_path = sys.argv[1:4]
    torch.ops.load_library(library)
    model = torch.jit.load(model_path)
    saved = torch.load(data_path)
    out = model(saved["batch"], training=False, compute_force=True)
    assert not any(m.split(".")[0] in ("gaunt_plugins", "mace", "e3nn") for m in sys.modules)
    de = (out["energy"] - saved["energy"]).abs().max().item()
    df = (out["forces"] - saved["forces"]).abs().max().item()
    print(f"max differences: energy {de:.3g}, forces {df:.3g}")
    sys.exit(0 if de <= 1e-10 and df <= 1e-10 else 1)
""")


def test_a_host_without_gaunt_plugins_loads_the_library_and_the_scripted_model(ops, float64, tmp_path):
    from e3nn.util import jit

    model = _gaunt_model()
    batch = acac_batch(2)
    energy, forces = _energy_forces(model, batch)
    scripted = jit.compile(model)
    torch.jit.save(scripted, str(tmp_path / "model.pt"))
    tensors = {k: v for k, v in batch.items() if torch.is_tensor(v)}
    torch.save({"batch": tensors, "energy": energy, "forces": forces}, tmp_path / "data.pt")
    path = library.library_path()
    assert path is not None and path.is_file()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", HOST, str(path), str(tmp_path / "model.pt"),
                           str(tmp_path / "data.pt")], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
