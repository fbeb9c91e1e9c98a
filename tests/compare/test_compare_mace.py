"""``gaunt-compare`` on MACE end to end, on a tiny budget: both variants train (stock
``mace_run_train``, and the patched one with ``tensor_product: gaunt``) with two seeds each, the
report has both columns, the per-seed rows, the plot and a JSON whose numbers are the ones MACE
logged; a failing variant is reported and the other's results are kept; a second run into the
same folder never shows the first run's numbers."""
from __future__ import annotations

import json
import re
import shutil
import statistics
import subprocess
from pathlib import Path

import pytest

from conftest import child_env, console_script, tiny_yaml

pytestmark = pytest.mark.slow


def run_compare(cwd: Path, *args: str, timeout: int = 600):
    cmd = [console_script("gaunt-compare"), *args]
    proc = subprocess.run(cmd, cwd=cwd, env=child_env(), capture_output=True, text=True, timeout=timeout)
    return proc


def results_rows(path: str):
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


SEEDS = ("3", "4")


@pytest.fixture(scope="module")
def compared(acac_tiny):
    """Two seeds per variant, two runs at a time."""
    (acac_tiny / "cfg.yaml").write_text(tiny_yaml())
    proc = run_compare(acac_tiny, "cfg.yaml", "--epochs", "2", "--seeds", "2", "--jobs", "2", "--out", "report",
                       "--test", "hot=hot.xyz")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((acac_tiny / "report" / "report.json").read_text())
    return acac_tiny / "report", report, proc


def runs_of(report):
    """``(variant, seed, entry)`` of every run."""
    return [(name, seed, run) for name, v in report["variants"].items() for seed, run in v["runs"].items()]


def test_both_rows_plot_and_progress(compared):
    out, report, proc = compared
    assert set(report["variants"]) == {"upstream", "gaunt"} and report["seeds"] == [3, 4]
    for name, seed, v in runs_of(report):
        assert v["status"] == "ok", v
        assert v["seed"] == int(seed) and v["folder"] == str(out / name / f"seed-{seed}")
        assert v["epochs"] == 2 and v["steps"] == 2 * 4  # 16 training configs, batch 4
        assert set(v["tests"]) == {"hot", "test"}
        for metrics in v["tests"].values():
            for key in ("e_mae_meV", "e_rmse_meV", "e_mae_meV_per_atom", "f_mae_meV_per_A", "f_rmse_meV_per_A"):
                assert metrics[key] > 0
        assert v["peak_rss_mib"] > 50
        assert v["time_per_epoch_s"] > 0 and v["steps_per_s"] > 0
        assert len(v["curves"]["valid_loss"]) == 2
    for name, entry in report["variants"].items():  # the means and spreads are those of the two runs
        assert set(entry["runs"]) == set(SEEDS) and entry["n_ok"] == 2
        values = [entry["runs"][s]["tests"]["hot"]["f_mae_meV_per_A"] for s in SEEDS]
        assert entry["tests"]["hot"]["f_mae_meV_per_A"] == pytest.approx(statistics.fmean(values))
        assert entry["tests_std"]["hot"]["f_mae_meV_per_A"] == pytest.approx(statistics.stdev(values))
        assert values[0] != values[1]  # the seeds differ
    assert report["config_differences"] == {"tensor_product": {"upstream": None, "gaunt": "gaunt"}}
    png = (out / "learning_curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10000
    md = (out / "report.md").read_text()
    assert "upstream MACE (e3nn)" in md and "MACE + tensor_product: gaunt" in md
    assert "| hot: F MAE / RMSE (meV/Å) |" in md and "| test: E MAE / RMSE (meV) |" in md
    assert "- seeds: 3, 4: 2 runs per variant" in md and "Per seed:" in md
    assert "every timing was taken while another run shared the machine" in md
    assert "![learning curves](learning_curves.png)" in md
    # progress: one line per validated epoch and run
    assert len(re.findall(r"\[gaunt-compare\] (upstream|gaunt) seed [34]: epoch [12]/2: valid loss", proc.stdout)) == 8


def test_variants_are_upstream_and_gaunt(compared):
    out, report, _ = compared
    up, ga = report["variants"]["upstream"]["runs"]["3"], report["variants"]["gaunt"]["runs"]["3"]
    assert "tensor_product" not in (out / "upstream" / "seed-3" / "config.yaml").read_text()
    assert "tensor_product: gaunt" in (out / "gaunt" / "seed-3" / "config.yaml").read_text()
    assert "gaunt_plugins_log" not in up
    assert any("Gaunt" in line for line in ga["gaunt_plugins_log"])
    import mace  # noqa: F401
    import torch

    model = torch.load(ga["files"]["model"], weights_only=False, map_location="cpu")
    names = {type(m).__name__ for m in model.modules()}
    assert "GauntProductBasisBlock" in names
    stock = torch.load(up["files"]["model"], weights_only=False, map_location="cpu")
    assert not any("Gaunt" in type(m).__name__ for m in stock.modules())


def test_json_numbers_are_what_the_runs_logged(compared):
    out, report, _ = compared
    for name, seed, v in runs_of(report):
        rows = results_rows(v["files"]["results"])
        opt = [r for r in rows if r["mode"] == "opt"]
        evals = [r for r in rows if r["mode"] == "eval" and r["epoch"] is not None]
        # MACE's results file: validation curves, steps, per-step times
        assert v["steps"] == len(opt)
        assert v["curves"]["valid_loss"] == [r["loss"] for r in evals]
        assert v["curves"]["valid_rmse_f_meV_per_A"] == pytest.approx([1e3 * r["rmse_f"] for r in evals], rel=1e-12)
        assert v["curves"]["valid_rmse_e_per_atom_meV"] == pytest.approx(
            [1e3 * r["rmse_e_per_atom"] for r in evals], rel=1e-12)
        assert v["time_per_step_s"] == pytest.approx(statistics.fmean(r["time"] for r in opt), rel=1e-12)
        assert v["steps_per_s"] == pytest.approx(len(opt) / sum(r["time"] for r in opt), rel=1e-12)
        for epoch, loss in zip(v["curves"]["epoch"], v["curves"]["train_loss"]):
            assert loss == pytest.approx(statistics.fmean(r["loss"] for r in opt if r["epoch"] == epoch), rel=1e-12)
        # MACE's log: the parameter count and the epoch times logged through MACE's logger
        log = Path(v["files"]["log"]).read_text()
        (params,) = re.findall(r"gaunt-compare: model \S+ has (\d+) parameters", log)
        assert v["parameters"] == int(params) == v["evaluated_model_parameters"]
        epoch_s = [float(s) for s in re.findall(r"gaunt-compare: epoch \d+ trained in ([0-9.]+) s", log)]
        assert len(epoch_s) == 2
        assert v["time_per_epoch_s"] == pytest.approx(statistics.fmean(epoch_s), abs=1e-3)
        # MACE's own final error table on its test file: the harness's evaluation of the saved model agrees
        table = {row["config_type"]: row for row in v["mace_error_tables"]["TEST"]}
        (row,) = table.values()
        assert v["tests"]["test"]["e_rmse_meV_per_atom"] == pytest.approx(float(row["RMSE E / meV / atom"]), abs=0.051)
        assert v["tests"]["test"]["f_rmse_meV_per_A"] == pytest.approx(float(row["RMSE F / meV / A"]), abs=0.051)
        assert v["tests"]["test"]["f_rel_rmse_percent"] == pytest.approx(float(row["relative F RMSE %"]), abs=0.0051)


def test_numbers_come_from_the_last_run_in_mace_s_appended_files(compared, tmp_path):
    """MACE appends to its results file and log: a folder whose files hold an earlier run too (here:
    the same run twice) gives the numbers of the last run only, not twice the steps."""
    from gaunt_plugins.compare.framework import CompareOptions
    from gaunt_plugins.compare.mace import MaceFramework

    out, report, _ = compared
    run = report["variants"]["upstream"]["runs"]["3"]
    folder = tmp_path / "run"
    shutil.copytree(run["folder"], folder)
    cfg = folder / "config.yaml"
    cfg.write_text(cfg.read_text().replace(run["folder"], str(folder)))
    framework = MaceFramework(out.parent / "cfg.yaml", CompareOptions(cwd=out.parent))
    once = framework.collect(folder)
    for kind in ("results", "log"):
        path = Path(once["files"][kind])
        path.write_text(path.read_text() * 2)
    twice = framework.collect(folder)
    assert once["steps"] == twice["steps"] == run["steps"] == 8
    assert twice["curves"] == once["curves"] and twice["curves"]["epoch"] == [0, 1]
    assert twice["parameters"] == once["parameters"] and twice["mace_error_tables"] == once["mace_error_tables"]


    # the ratios are the ratios of the two columns (means over the seeds)
    up, ga = report["variants"]["upstream"], report["variants"]["gaunt"]
    assert report["ratios"]["time_per_step_s"] == pytest.approx(ga["time_per_step_s"] / up["time_per_step_s"])
    assert report["ratios"]["tests"]["hot"]["f_mae_meV_per_A"] == pytest.approx(
        ga["tests"]["hot"]["f_mae_meV_per_A"] / up["tests"]["hot"]["f_mae_meV_per_A"])


def test_a_second_run_into_the_folder_shows_only_its_own_numbers(compared, tmp_path):
    """The case of a reused --out: the first run's report is refused without --overwrite; with it, a
    second run whose gaunt variant fails (an invalid option, MACE's own argument error; run first)
    reports that failure and none of the first run's gaunt numbers, upstream trains again on a
    wall-clock budget shorter than two epochs and is evaluated as usual."""
    out, first, _ = compared
    data = out.parent
    reused = tmp_path / "report"
    shutil.copytree(out, reused)
    args = ["cfg.yaml", "--max-minutes", "0.005", "--out", str(reused), "--test", "hot.xyz", "--order", "gaunt-first",
            "--set-gaunt", "gaunt_method=bogus"]
    refused = run_compare(data, *args)
    assert refused.returncode == 2 and "already holds the report of an earlier run" in refused.stderr
    assert "--overwrite" in refused.stderr
    assert json.loads((reused / "report.json").read_text())["started"] == first["started"]  # untouched

    proc = run_compare(data, *args, "--overwrite")
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((reused / "report.json").read_text())
    gaunt, up = report["variants"]["gaunt"], report["variants"]["upstream"]
    assert gaunt["status"] == "failed (exit code 2)", gaunt
    assert "--gaunt_method" in gaunt["runs"]["3"]["error"] and "bogus" in gaunt["runs"]["3"]["error"]
    for key in ("tests", "parameters", "time_per_step_s", "median_step_s", "time_per_epoch_s"):
        assert key not in gaunt, key  # nothing of the first run's gaunt model
    assert gaunt["steps"] == 0 and "kept_from" not in gaunt
    assert sorted(p.name for p in reused.iterdir()) == ["gaunt", "gaunt-compare-files.json", "learning_curves.png",
                                                          "report.json", "report.md", "upstream"]
    assert not (reused / "gaunt" / "eval.json").exists() and not list((reused / "gaunt").glob("*.model"))
    assert up["status"] == "ok" and up["tests"]["hot"]["f_mae_meV_per_A"] > 0
    # 0.3 s of training: the first epoch always runs, the budget stops the loop after it
    run = up["runs"]["3"]
    assert up["epochs"] == 1 and up["steps"] == 4 and run["stop_reason"] == "time budget", up
    assert run["curves"]["epoch"] == [0]
    assert "gaunt-compare: stopped after 1 epochs (time budget" in Path(run["files"]["log"]).read_text()
    assert report["budget"] == {"epochs": None, "max_minutes": 0.005}
    assert "[gaunt-compare] gaunt: failed (exit code 2)" in proc.stdout
    md = (reused / "report.md").read_text()
    assert "| status | ok | failed (exit code 2) | |" in md
    assert "**MACE + tensor_product: gaunt: failed (exit code 2).**" in md and "bogus" in md
    assert "| parameters | " + f"{up['parameters']:,} | — | — |" in md
