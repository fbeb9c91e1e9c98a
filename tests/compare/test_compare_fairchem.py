"""``gaunt-compare`` on fairchem's EquiformerV2 end to end, on a tiny budget: both variants train
with fairchem's own entry point, the validation numbers in the JSON are the ones fairchem logged,
and the best checkpoints are evaluated on the test set."""
from __future__ import annotations

import json
import statistics
import subprocess
from pathlib import Path

import pytest

from conftest import child_env, console_script

pytest.importorskip("fairchem.core")

pytestmark = pytest.mark.slow

HERE = Path(__file__).resolve().parent
CONFIG = HERE.parents[1] / "examples" / "compare" / "eqv2_emt.yml"


def emt_db(path: Path, n: int, seed: int) -> Path:
    """``n`` small Cu/Pt slabs with an adsorbate, rattled, EMT energies and forces (offline)."""
    import numpy as np
    from ase.build import add_adsorbate, fcc111
    from ase.calculators.emt import EMT
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.constraints import FixAtoms
    from ase.db import connect

    rng = np.random.default_rng(seed)
    with connect(str(path)) as db:
        for i in range(n):
            slab = fcc111(("Cu", "Pt")[i % 2], size=(2, 2, 2), vacuum=5.0)
            add_adsorbate(slab, ("O", "H")[(i // 2) % 2], 1.5, ("fcc", "hcp", "ontop")[i % 3])
            slab.set_constraint(FixAtoms(indices=[a.index for a in slab if a.tag == 2]))
            slab.rattle(stdev=0.08, seed=int(rng.integers(1 << 30)))
            slab.calc = EMT()
            energy, forces = slab.get_potential_energy(), slab.get_forces(apply_constraint=False)
            slab.calc = SinglePointCalculator(slab, energy=energy, forces=forces)
            db.write(slab)
    return path


def test_equiformer_v2_both_variants(tmp_path):
    if not CONFIG.exists():
        pytest.skip(f"{CONFIG} missing")
    emt_db(tmp_path / "train.db", 4, 0)
    emt_db(tmp_path / "val.db", 2, 1)
    emt_db(tmp_path / "test.db", 2, 2)
    tiny = ["dataset.train.src=train.db", "dataset.val.src=val.db", "model.backbone.num_layers=1",
            "model.backbone.sphere_channels=8", "model.backbone.attn_hidden_channels=8",
            "model.backbone.ffn_hidden_channels=8", "model.backbone.lmax_list=[2]", "model.backbone.num_distance_basis=16",
            "model.backbone.edge_channels=8", "optim.batch_size=2"]
    cmd = [console_script("gaunt-compare"), str(CONFIG), "--epochs", "1", "--out", "report", "--test",
           "emt=test.db", "--device", "cpu"]
    for item in tiny:
        cmd += ["--set", item]
    proc = subprocess.run(cmd, cwd=tmp_path, env=child_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["framework"] == "fairchem"
    assert report["config_differences"] == {"model.backbone.tensor_product": {"upstream": None, "gaunt": "gaunt"}}
    from gaunt_plugins.compare.fairchem import parse_val_lines

    assert report["seeds"] == [0]
    for name, model_class in (("upstream", "EquiformerV2Backbone"), ("gaunt", "GauntEquiformerV2Backbone")):
        assert report["variants"][name]["status"] == "ok" and report["variants"][name]["n_seeds"] == 1
        v = report["variants"][name]["runs"]["0"]
        assert v["status"] == "ok", v
        assert v["model_class"] == model_class
        assert v["epochs"] == 1 and v["steps"] == 2
        assert v["parameters"] == v["evaluated_model_parameters"]
        assert v["evaluated_checkpoint"].endswith("best_checkpoint.pt")
        emt = v["tests"]["emt"]
        assert emt["n_configs"] == 2 and emt["f_mae_meV_per_A"] > 0 and emt["forces_on"] == "free atoms"
        # the validation numbers are those fairchem logged (4 decimals in its log)
        logged = parse_val_lines(Path(v["files"]["log"]).read_text())
        assert len(logged) == 1
        assert v["curves"]["valid_mae_f_meV_per_A"][0] == pytest.approx(1e3 * logged[0]["forces_mae"], abs=0.051)
        assert v["curves"]["valid_loss"][0] == pytest.approx(logged[0]["loss"], abs=5.1e-5)
        rows = [json.loads(x) for x in Path(v["files"]["results"]).read_text().splitlines()]
        opt = [r for r in rows if r["mode"] == "opt"]
        assert v["time_per_step_s"] == pytest.approx(statistics.fmean(r["time"] for r in opt), rel=1e-12)
    gaunt = report["variants"]["gaunt"]
    assert gaunt["parameters"] > report["variants"]["upstream"]["parameters"]  # the self-mix weights
    assert report["variants"]["gaunt"]["tests"]["emt"]["f_mae_meV_per_A"] == gaunt["runs"]["0"]["tests"]["emt"][
        "f_mae_meV_per_A"]
    assert (tmp_path / "report" / "learning_curves.png").exists()
    assert "EquiformerV2 + Gaunt self-mix" in (tmp_path / "report" / "report.md").read_text()
