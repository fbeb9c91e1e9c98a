"""The harness without a framework: the training budget, Ctrl-C handling, crashes, the report,
and MACE log parsing (fast: fake child processes only)."""
from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path


from gaunt_plugins.compare._budget import TrainingBudget
from gaunt_plugins.compare.harness import run_comparison
from gaunt_plugins.compare.mace import parse_compare_lines, parse_error_tables
from gaunt_plugins.compare.process import Job, child_env
from gaunt_plugins.compare.report import markdown, ratios


class FakeClock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def run_loop(budget, clock, epoch_s):
    """MACE's loop shape: ``while epoch < max_num_epochs``."""
    budget.start()
    epoch, trained = 0, []
    while epoch < budget:
        budget.epoch_started()
        clock.t += epoch_s
        trained.append(epoch)
        epoch += 1
    return trained


def test_budget_epochs_and_wall_clock():
    clock = FakeClock()
    assert run_loop(TrainingBudget(max_epochs=3, clock=clock), clock, 1.0) == [0, 1, 2]
    b = TrainingBudget(max_epochs=100, max_seconds=100.0, clock=clock)
    # 30 s epochs: after 3 (90 s) a fourth would end at 120 s > 100 s
    assert run_loop(b, clock, 30.0) == [0, 1, 2] and b.stop_reason == "time budget"
    # a budget shorter than one epoch still trains one (there must be a model)
    b = TrainingBudget(max_seconds=1.0, clock=clock)
    assert run_loop(b, clock, 30.0) == [0]


def test_budget_stops_only_after_validated_epochs():
    clock = FakeClock()
    b = TrainingBudget(max_epochs=100, max_seconds=100.0, eval_interval=2, clock=clock)
    # MACE validates epochs 0, 2, 4...: the loop may stop only before epochs 1, 3, 5...
    trained = run_loop(b, clock, 30.0)
    assert trained == [0, 1, 2]
    b = TrainingBudget(max_epochs=10, clock=clock)
    b.start()
    b.epoch_started()
    b.stop_requested = True
    assert b.allows(1) is False and b.stop_reason == "signal"


MACE_LOG = """\
2026-11-23 00:09:00.100 INFO: gaunt-compare: model ScaleShiftMACE has 4256 parameters (4256 trainable)
2026-11-23 00:09:01.236 INFO: gaunt-compare: epoch 0 trained in 0.812 s (4 steps)
2026-11-23 00:09:01.564 INFO: gaunt-compare: epoch 1 trained in 0.301 s (4 steps)
2026-11-23 00:09:03.628 INFO: Error-table on TRAIN and VALID:
+---------------+---------------------+------------------+-------------------+
|  config_type  | RMSE E / meV / atom | RMSE F / meV / A | relative F RMSE % |
+---------------+---------------------+------------------+-------------------+
| train_Default |         4899.9      |        914.8     |         90.99     |
| valid_Default |         4904.1      |        962.3     |         90.23     |
+---------------+---------------------+------------------+-------------------+
2026-11-23 00:09:03.741 INFO: Error-table on TEST:
+-----------------+---------------------+------------------+-------------------+
|   config_type   | RMSE E / meV / atom | RMSE F / meV / A | relative F RMSE % |
+-----------------+---------------------+------------------+-------------------+
| 300K_MD_Default |         4900.1      |        929.0     |         93.65     |
+-----------------+---------------------+------------------+-------------------+
2026-11-23 00:09:04.287 INFO: Done
"""


def test_parse_mace_log():
    tables = parse_error_tables(MACE_LOG)
    assert list(tables) == ["TRAIN and VALID", "TEST"]
    assert tables["TEST"] == [{"config_type": "300K_MD_Default", "RMSE E / meV / atom": "4900.1",
                               "RMSE F / meV / A": "929.0", "relative F RMSE %": "93.65"}]
    assert tables["TRAIN and VALID"][1]["RMSE F / meV / A"] == "962.3"
    lines = parse_compare_lines(MACE_LOG)
    assert lines["parameters"] == 4256 and lines["model_class"] == "ScaleShiftMACE"
    assert lines["epoch_train_s"] == {0: 0.812, 1: 0.301}


def test_markdown_and_ratios():
    report = {
        "framework": "mace", "config": "cfg.yaml", "budget": {"epochs": 2, "max_minutes": None}, "seed": 1,
        "labels": {"upstream": "up", "gaunt": "ga"}, "config_differences": {},
        "variants": {
            "upstream": {"status": "ok", "parameters": 1000, "time_per_step_s": 0.2,
                         "tests": {"t": {"e_mae_meV": 10.0, "e_rmse_meV": 12.0, "f_mae_meV_per_A": 50.0,
                                         "f_rmse_meV_per_A": 70.0}}},
            "gaunt": {"status": "failed (exit code 1)", "error": "ValueError: boom", "error_tail": "Traceback\nboom"},
        },
    }
    report["ratios"] = ratios(report["variants"])
    md = markdown(report)
    assert "| status | ok | failed (exit code 1) | |" in md
    assert "| parameters | 1,000 | — | — |" in md and "machine load" not in md
    assert "| time per step (ms, mean) | 200 | — | — |" in md
    assert "| t: F MAE / RMSE (meV/Å) | 50.0 / 70.0 | — | — |" in md
    assert "**ga: failed (exit code 1).** ValueError: boom" in md


# --------------------------------------------------------------------------- fake framework
CHILD = r"""
import json, os, signal, sys, time
out = sys.argv[1]; mode = sys.argv[2]
stop = []
signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
rows = []
for epoch in range(40):
    if stop:
        break
    if mode == "crash" and epoch == 1:
        raise RuntimeError("simulated crash in epoch 1")
    time.sleep(0.1)
    rows.append({"epoch": epoch, "loss": 1.0 / (epoch + 1)})
    open(out, "w").write(json.dumps(rows))
print("stopped" if stop else "finished", flush=True)
"""


class FakeFramework:
    name = "fake"
    labels = {"upstream": "up", "gaunt": "ga"}
    tests = {}

    def __init__(self, config_path, modes, interrupt_after=None):
        self.config_path = Path(config_path)
        self.modes = modes
        self.interrupt_after = interrupt_after
        self.polls = 0

    def budget(self):
        return {"epochs": 40, "max_minutes": None}

    def variant_config(self, variant, vdir):
        return {"seed": 7}

    def config_differences(self):
        return {"tensor_product": {"upstream": None, "gaunt": "gaunt"}}

    def prepare(self, variant, vdir):
        vdir.mkdir(parents=True, exist_ok=True)
        return Job(cmd=[sys.executable, "-c", CHILD, str(vdir / "rows.json"), self.modes[variant]], cwd=vdir,
                   env=child_env(), log=vdir / "stdout.log", label=variant)

    def progress(self, variant, vdir, elapsed):
        self.polls += 1
        if self.interrupt_after is not None and self.polls == self.interrupt_after:
            os.kill(os.getpid(), signal.SIGINT)  # the user's Ctrl-C
        return []

    def eval_job(self, variant, vdir):
        return None

    def collect(self, variant, vdir):
        try:
            rows = json.loads((vdir / "rows.json").read_text())
        except OSError:
            rows = []
        return {"epochs": len(rows), "curves": {"epoch": [r["epoch"] for r in rows],
                                                "train_loss": [r["loss"] for r in rows]}}


def test_crash_of_one_variant_keeps_the_other(tmp_path):
    fw = FakeFramework(tmp_path / "cfg.yaml", {"upstream": "crash", "gaunt": "ok"})
    report = run_comparison(fw, tmp_path / "out", say=lambda s: None)
    up, ga = report["variants"]["upstream"], report["variants"]["gaunt"]
    assert up["status"] == "failed (exit code 1)"
    assert up["error"] == "RuntimeError: simulated crash in epoch 1"
    assert up["epochs"] == 1
    assert ga["status"] == "ok" and ga["epochs"] == 40
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert saved["variants"]["gaunt"]["epochs"] == 40 and saved["seed"] == 7
    assert (tmp_path / "out" / "learning_curves.png").exists()
    assert "failed (exit code 1)" in (tmp_path / "out" / "report.md").read_text()


def test_ctrl_c_stops_the_running_variant_and_skips_the_rest(tmp_path):
    fw = FakeFramework(tmp_path / "cfg.yaml", {"upstream": "ok", "gaunt": "ok"}, interrupt_after=1)
    previous = signal.getsignal(signal.SIGINT)
    report = run_comparison(fw, tmp_path / "out", say=lambda s: None)
    assert signal.getsignal(signal.SIGINT) is previous  # handlers restored
    up, ga = report["variants"]["upstream"], report["variants"]["gaunt"]
    assert up["status"] == "interrupted" and 0 < up["epochs"] < 40  # stopped gracefully, results kept
    assert "stopped" in (tmp_path / "out" / "upstream" / "stdout.log").read_text()
    assert ga["status"] == "not run"
    assert report["interrupted"] is True
    assert json.loads((tmp_path / "out" / "report.json").read_text())["variants"]["upstream"]["epochs"] == up["epochs"]


def test_rerunning_one_variant_keeps_the_other(tmp_path):
    """`--only gaunt` after a run where gaunt crashed: upstream's entry is kept (and marked so)."""
    fw = FakeFramework(tmp_path / "cfg.yaml", {"upstream": "ok", "gaunt": "crash"})
    first = run_comparison(fw, tmp_path / "out", say=lambda s: None)
    assert first["variants"]["gaunt"]["status"].startswith("failed")
    fw.modes["gaunt"] = "ok"
    second = run_comparison(fw, tmp_path / "out", variants=["gaunt"], say=lambda s: None)
    assert second["variants"]["gaunt"]["status"] == "ok"
    assert second["variants"]["upstream"]["epochs"] == 40
    assert second["variants"]["upstream"]["kept_from"] == first["started"]
    assert "ok (earlier run, " in (tmp_path / "out" / "report.md").read_text()
