"""A wall-clock budget that ends MACE's training before its stage two (``swa: true``) ends the run
cleanly: MACE saves and evaluates its stage-one model, and the report says stage two was not
reached (one real MACE run of one epoch of a tiny model)."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from conftest import child_env, console_script, tiny_yaml

pytestmark = pytest.mark.slow


def test_a_budget_ending_training_before_stage_two_ends_the_run_cleanly(acac_tiny, tmp_path):
    """--epochs 4 puts stage two at the fourth epoch; a budget of a few milliseconds stops the
    loop after the first (the first always runs)."""
    data = tmp_path / "data"
    data.mkdir()
    for name in ("train.xyz", "test.xyz"):
        (data / name).symlink_to(acac_tiny / name)
    (data / "cfg.yaml").write_text(tiny_yaml(swa=True, max_num_epochs=4))
    proc = subprocess.run([console_script("gaunt-compare"), "cfg.yaml", "--epochs", "4", "--max-minutes", "0.0001", "--only",
                           "upstream", "--out", "report", "--quiet"],
                          cwd=data, env=child_env(), capture_output=True, text=True, timeout=600)
    report = json.loads((data / "report" / "report.json").read_text())
    run = report["variants"]["upstream"]["runs"]["3"]
    assert proc.returncode == 0, (run.get("error_tail"), proc.stderr[-2000:])
    assert run["status"] == "ok" and run["stop_reason"] == "time budget" and run["epochs"] == 1
    assert run["stage_two"] == {"start": 3, "reached": False}
    assert Path(run["files"]["model"]).name == "tiny.model"  # the stage-one model, evaluated
    assert run["tests"]["test"]["f_mae_meV_per_A"] > 0
    log = Path(run["files"]["log"]).read_text()
    assert "gaunt-compare: stage two (from epoch 4) not reached: training stopped after 1 epochs (time budget)" in log
    md = (data / "report" / "report.md").read_text()
    assert "MACE's stage two (from epoch 4) was not reached, training stopped after 1 epochs (time budget)" in md
