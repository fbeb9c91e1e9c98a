"""LAMMPS's ``pair_style mace`` route for a Gaunt MACE: MACE's ``create_lammps_model`` writes the TorchScript
``<model>-lammps.pt``, and a process that has no gaunt-plugins, no MACE and no e3nn (as libtorch inside
LAMMPS has none) loads it and computes the energy and forces of the Gaunt model from the inputs LAMMPS
passes (``pair_mace.cpp``: batch, cell, edge_index, energy, forces, node_attrs, positions, ptr, shifts,
unit_shifts, weight; a local-or-ghost mask)."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

import mace  # noqa: F401  (before e3nn)
import torch

from conftest import acac_batch, tiny_model

# what LAMMPS's pair_mace.cpp puts into the input dictionary
LAMMPS_KEYS = ("batch", "cell", "edge_index", "energy", "forces", "node_attrs", "positions", "ptr", "shifts",
               "unit_shifts", "weight")

# a child with torch only: importing gaunt_plugins, mace or e3nn raises
LOAD_WITHOUT_PLUGINS = textwrap.dedent("""
    import sys

    class Blocked:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("gaunt_plugins", "mace", "e3nn"):
                raise ImportError(f"{name} is not available to LAMMPS")
            return None

    sys.meta_path.insert(0, Blocked())
    import torch

    if sys.argv[4]:  # the Gaunt CPU operators' library, as LAMMPS loads it (LD_PRELOAD)
        torch.ops.load_library(sys.argv[4])
    model = torch.jit.load(sys.argv[1])
    data = torch.load(sys.argv[2])
    out = model(data, torch.ones(data["positions"].shape[0], dtype=data["positions"].dtype), False)
    torch.save({"energy": out["total_energy_local"].detach(), "forces": out["forces"].detach()}, sys.argv[3])
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("gaunt_plugins", "mace", "e3nn"))
    assert not loaded, loaded
""")


@pytest.mark.slow
@pytest.mark.parametrize("targets", [("product",), ("conv", "product")])
def test_lammps_export_of_a_gaunt_model_runs_with_torch_alone(tmp_path, float64, targets):
    from gaunt_plugins.adapters.mace_blocks import gauntify_model
    from gaunt_plugins.adapters.mace_config import GauntOptions

    model, _ = gauntify_model(tiny_model("8x0e+8x1o"), GauntOptions(targets=frozenset(targets)))
    torch.save(model, tmp_path / "gaunt.model")
    env = dict(os.environ)
    env.pop("GAUNT_PLUGINS_AUTOPATCH", None)
    proc = subprocess.run([sys.executable, "-m", "mace.cli.create_lammps_model", str(tmp_path / "gaunt.model"),
                           "--dtype", "float64"], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    exported = tmp_path / "gaunt.model-lammps.pt"
    assert exported.exists()

    batch = acac_batch(1)
    data = {k: batch[k] for k in LAMMPS_KEYS if k in batch}
    data["energy"] = torch.zeros(1)
    data["forces"] = torch.zeros_like(batch["positions"])
    data["weight"] = torch.ones(1)
    torch.save(data, tmp_path / "inputs.pt")
    from gaunt_plugins.backends.cpu import library

    operators = str(library.library_path() or "")  # None: the export runs the PyTorch reference
    proc = subprocess.run([sys.executable, "-c", LOAD_WITHOUT_PLUGINS, str(exported), str(tmp_path / "inputs.pt"),
                           str(tmp_path / "out.pt"), operators], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = torch.load(tmp_path / "out.pt")

    ref = model(acac_batch(1), training=False, compute_force=True)
    assert torch.allclose(got["energy"], ref["energy"].detach(), atol=1e-10, rtol=0)
    assert torch.allclose(got["forces"], ref["forces"].detach(), atol=1e-10, rtol=0)
