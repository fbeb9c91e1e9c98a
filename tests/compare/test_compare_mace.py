"""``gaunt-compare`` on MACE end to end, on a tiny budget: both variants train (stock
``mace_run_train``, and the patched one with ``tensor_product: gaunt``), the report has both rows,
the plot and a JSON whose numbers are the ones MACE logged; a failing variant is reported and
the other's results are kept."""
from __future__ import annotations

import json
import re
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


@pytest.fixture(scope="module")
def compared(acac_tiny):
    (acac_tiny / "cfg.yaml").write_text(tiny_yaml())
    proc = run_compare(acac_tiny, "cfg.yaml", "--epochs", "2", "--out", "report", "--test", "hot=hot.xyz")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((acac_tiny / "report" / "report.json").read_text())
    return acac_tiny / "report", report, proc


def test_both_rows_plot_and_progress(compared):
    out, report, proc = compared
    assert set(report["variants"]) == {"upstream", "gaunt"}
    for name in ("upstream", "gaunt"):
        v = report["variants"][name]
        assert v["status"] == "ok", v
        assert v["epochs"] == 2 and v["steps"] == 2 * 4  # 16 training configs, batch 4
        assert set(v["tests"]) == {"hot", "test"}
        for metrics in v["tests"].values():
            for key in ("e_mae_meV", "e_rmse_meV", "e_mae_meV_per_atom", "f_mae_meV_per_A", "f_rmse_meV_per_A"):
                assert metrics[key] > 0
        assert v["peak_rss_mib"] > 50
        assert v["time_per_epoch_s"] > 0 and v["steps_per_s"] > 0
        assert len(v["curves"]["valid_loss"]) == 2
    assert report["config_differences"] == {"tensor_product": {"upstream": None, "gaunt": "gaunt"}}
    png = (out / "learning_curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10000
    md = (out / "report.md").read_text()
    assert "upstream MACE (e3nn)" in md and "MACE + tensor_product: gaunt" in md
    assert "| hot: F MAE / RMSE (meV/Å) |" in md and "| test: E MAE / RMSE (meV) |" in md
    assert "![learning curves](learning_curves.png)" in md
    # progress: one line per validated epoch and variant
    assert len(re.findall(r"\[gaunt-compare\] (upstream|gaunt): epoch [12]/2: valid loss", proc.stdout)) == 4


def test_variants_are_upstream_and_gaunt(compared):
    out, report, _ = compared
    up, ga = report["variants"]["upstream"], report["variants"]["gaunt"]
    assert "tensor_product" not in (out / "upstream" / "config.yaml").read_text()
    assert "tensor_product: gaunt" in (out / "gaunt" / "config.yaml").read_text()
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
    for name, v in report["variants"].items():
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
    # the ratios are the ratios of the two rows
    up, ga = report["variants"]["upstream"], report["variants"]["gaunt"]
    assert report["ratios"]["time_per_step_s"] == pytest.approx(ga["time_per_step_s"] / up["time_per_step_s"])
    assert report["ratios"]["tests"]["hot"]["f_mae_meV_per_A"] == pytest.approx(
        ga["tests"]["hot"]["f_mae_meV_per_A"] / up["tests"]["hot"]["f_mae_meV_per_A"])


def test_a_failing_variant_is_reported_and_the_other_kept(acac_tiny):
    """An invalid option injected for the gaunt variant only (run first): it fails with MACE's own
    argument error, upstream still trains (on a wall-clock budget shorter than two epochs) and is
    evaluated as usual."""
    (acac_tiny / "cfg_fail.yaml").write_text(tiny_yaml("failing", test_file=None))
    proc = run_compare(acac_tiny, "cfg_fail.yaml", "--max-minutes", "0.005", "--out", "report_fail", "--test",
                       "hot.xyz", "--order", "gaunt-first", "--set-gaunt", "gaunt_method=bogus")
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((acac_tiny / "report_fail" / "report.json").read_text())
    gaunt, up = report["variants"]["gaunt"], report["variants"]["upstream"]
    assert gaunt["status"] == "failed (exit code 2)", gaunt
    assert "--gaunt_method" in gaunt["error"] and "bogus" in gaunt["error"], gaunt["error"]
    assert "tests" not in gaunt and gaunt["steps"] == 0
    assert up["status"] == "ok" and up["tests"]["hot"]["f_mae_meV_per_A"] > 0
    # 0.3 s of training: the first epoch always runs, the budget stops the loop after it
    assert up["epochs"] == 1 and up["stop_reason"] == "time budget", up
    assert "gaunt-compare: stopped after 1 epochs (time budget" in Path(up["files"]["log"]).read_text()
    assert report["budget"] == {"epochs": None, "max_minutes": 0.005}
    assert "[gaunt-compare] gaunt: failed (exit code 2)" in proc.stdout
    md = (acac_tiny / "report_fail" / "report.md").read_text()
    assert "| status | ok | failed (exit code 2) | |" in md
    assert "**MACE + tensor_product: gaunt: failed (exit code 2).**" in md and "bogus" in md
    assert (acac_tiny / "report_fail" / "learning_curves.png").exists()
