"""benchmarks/accuracy_equiformer_v2.py: its data (element references, acac in a box) and one tiny end-to-end run."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fairchem.core")

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import accuracy_equiformer_v2 as bench  # noqa: E402


def test_element_references_are_the_least_squares_fit():
    sets = bench.emt_sets(12, 0, 0)
    e0 = bench.element_references(sets["train"])
    resid = [a.get_potential_energy() - sum(e0[int(z)] for z in a.numbers) for a in sets["train"]]
    # the fit's residuals are orthogonal to every element count (normal equations)
    counts = np.array([[np.sum(a.numbers == z) for z in sorted(e0)] for a in sets["train"]], dtype=float)
    scale = max(abs(a.get_potential_energy()) for a in sets["train"]) * counts.max()
    assert np.abs(counts.T @ np.array(resid)).max() < 1e-8 * scale * len(resid)


def test_acac_molecules_sit_in_a_box_where_no_atom_sees_an_image():
    try:
        sets = bench.acac_sets(3, 1, 2)
    except SystemExit as exc:
        pytest.skip(str(exc))
    cutoff = bench.yaml.safe_load(bench.BASE_CONFIG.read_text())["model"]["backbone"]["max_radius"]
    for atoms in sets["train"] + sets["val"] + sets["test"]:
        assert atoms.pbc.all()
        extent = np.ptp(atoms.positions, axis=0).max()
        assert bench.BOX - extent > cutoff  # the nearest image of any atom is beyond the cutoff
        assert np.isfinite(atoms.get_forces()).all() and atoms.get_forces().shape == (len(atoms), 3)
    assert len(sets["test"]) == 2


def test_tiny_run_writes_both_variants_errors_times_and_parameters(tmp_path):
    out = tmp_path / "result.json"
    code = bench.main(["--datasets", "emt", "--seeds", "1", "--epochs", "1", "--n-train", "2", "--n-valid", "1",
                       "--n-test", "1", "--batch-size", "2", "--small-model", "--jobs", "2", "--quiet",
                       "--work", str(tmp_path / "work"), "--out", str(out)])
    assert code == 0
    data = json.loads(out.read_text())
    emt = data["results"]["emt"]
    assert set(emt) == {"upstream", "gaunt", "curves"}
    assert emt["curves"]["wall_clock_budget_s"] > 0  # both variants' validation curves were read
    at_budget = [emt["curves"]["at_wall_clock_budget"][v]["f_meV_per_A"]["mean"] for v in ("upstream", "gaunt")]
    assert any(m is not None and np.isfinite(m) for m in at_budget)  # the faster variant's whole run counts
    for variant in ("upstream", "gaunt"):
        run = emt[variant]["runs"][0]
        assert run["status"] == "ok" and run["epochs"] == 1, run
        for key in ("e_mae_meV_per_atom", "f_mae_meV_per_A", "median_step_s"):
            assert np.isfinite(emt[variant][key]["mean"]) and emt[variant][key]["n"] == 1
    assert emt["gaunt"]["parameters"] > emt["upstream"]["parameters"]  # the self-mix adds parameters
    assert data["settings"]["seeds"] == [0] and data["short_run"] is False
    assert "| emt | + Gaunt self-mix |" in data["table"]


def test_emt_sets_leave_out_adsorbates_pushed_into_the_surface():
    sets = bench.emt_sets(6, 2, 3)
    assert [len(sets[k]) for k in ("train", "val", "test")] == [6, 2, 3]
    for atoms in sets["train"] + sets["val"] + sets["test"]:
        assert np.abs(atoms.get_forces(apply_constraint=False)).max() <= bench.MAX_EMT_FORCE


def test_cosine_schedule_reaches_fairchem_as_torch_cosine_annealing(tmp_path):
    files = {"train": tmp_path / "train.db", "val": tmp_path / "val.db"}
    cfg = bench.fairchem_config(files, {}, 4, 2e-3, cosine_steps=120)
    assert cfg["optim"]["scheduler"] == "CosineAnnealingLR"
    assert cfg["optim"]["T_max"] == 120 and cfg["optim"]["eta_min"] == pytest.approx(2e-5)
    from fairchem.core.modules.scheduler import LRScheduler
    import torch

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2e-3)
    sched = LRScheduler(opt, cfg["optim"])
    for _ in range(120):
        opt.step()
        sched.step()
    assert sched.get_lr() == pytest.approx(2e-5)  # the end of the run is at the floor
    assert "scheduler" in bench.fairchem_config(files, {}, 4, 2e-3)["optim"]  # the base's "Null" by default
    assert bench.fairchem_config(files, {}, 4, 2e-3)["optim"]["scheduler"] == "Null"


def _run_curve(errors, seconds):
    return {"status": "ok", "curves": {"epoch": list(range(len(errors))), "train_elapsed_s": seconds,
                                       "valid_mae_e_meV": errors, "valid_mae_f_meV_per_A": [2 * e for e in errors]}}


def test_curve_summary_gives_the_late_fall_and_the_best_error_within_the_shorter_training_time():
    curves = {"upstream": [bench._curve(_run_curve([8.0, 4.0, 2.0, 1.0], [10, 20, 30, 40]))] * 2,
              "gaunt": [bench._curve(_run_curve([6.0, 3.0, 2.0, 1.5], [20, 40, 60, 80])),
                        bench._curve(_run_curve([6.0, 5.0, 2.0, 0.5], [20, 40, 60, 80]))]}
    summary = bench.compare_curves(curves)
    assert summary["fall_over_last_quarter"]["upstream"]["e_meV"] == pytest.approx(0.5)  # 2 -> 1
    assert summary["fall_over_last_quarter"]["gaunt"]["e_meV"] == pytest.approx(0.5)  # mean 2 -> mean 1
    assert summary["wall_clock_budget_s"] == 40  # upstream's mean training time, the shorter
    at = summary["at_wall_clock_budget"]
    assert at["upstream"]["e_meV"]["mean"] == pytest.approx(1.0)
    assert at["gaunt"]["e_meV"]["mean"] == pytest.approx(4.0)  # best within 40 s: 3 and 5
    assert at["gaunt"]["f_meV_per_A"]["mean"] == pytest.approx(8.0)
