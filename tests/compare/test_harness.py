"""The harness without a framework: the training budget, Ctrl-C handling, crashes, the report,
and MACE log parsing (fast: fake child processes only)."""
from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import pytest

from gaunt_plugins.compare._budget import TrainingBudget
from gaunt_plugins.compare.aggregate import aggregate
from gaunt_plugins.compare.framework import CompareOptions, Framework, RunRecord
from gaunt_plugins.compare.harness import run_comparison
from gaunt_plugins.compare.mace import parse_compare_lines, parse_error_tables, this_run_log, this_run_rows
from gaunt_plugins.compare.outdir import OutDirError
from gaunt_plugins._process import Job, child_env
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
    up = {"status": "ok", "parameters": 1000, "time_per_step_s": 0.2,
          "tests": {"t": {"e_mae_meV": 10.0, "e_rmse_meV": 12.0, "f_mae_meV_per_A": 50.0, "f_rmse_meV_per_A": 70.0}}}
    ga = {"status": "failed (exit code 1)", "error": "ValueError: boom", "error_tail": "Traceback\nboom"}
    report = {
        "framework": "mace", "config": "cfg.yaml", "budget": {"epochs": 2, "max_minutes": None}, "seeds": [1],
        "labels": {"upstream": "up", "gaunt": "ga"}, "config_differences": {},
        "variants": {"upstream": aggregate({"1": up}), "gaunt": aggregate({"1": ga})},
    }
    report["ratios"] = ratios(report["variants"])
    md = markdown(report)
    assert "| status | ok | failed (exit code 1) | |" in md
    assert "| parameters | 1,000 | — | — |" in md and "machine load" not in md
    assert "| time per step (ms, mean) | 200 | — | — |" in md
    assert "| t: F MAE / RMSE (meV/Å) | 50.0 / 70.0 | — | — |" in md
    assert "**ga: failed (exit code 1).** ValueError: boom" in md
    assert "- seed: 1: one run per variant, so no spread is known" in md


def test_seed_statistics_in_the_table():
    """Mean ± sample std over the seeds that finished; a failed seed is not averaged in, its count shows."""
    def run(seed, f_mae, status="ok"):
        return {"status": status, "seed": seed, "parameters": 1000, "median_step_s": 0.1 * seed,
                "tests": {"t": {"f_mae_meV_per_A": f_mae, "f_rmse_meV_per_A": 2 * f_mae}}}

    up = aggregate({"1": run(1, 40.0), "2": run(2, 60.0), "3": run(3, 50.0)})
    ga = aggregate({"1": run(1, 30.0), "2": run(2, 999.0, "failed (exit code 1)"), "3": run(3, 50.0)})
    assert up["tests"]["t"]["f_mae_meV_per_A"] == pytest.approx(50.0)
    assert up["tests_std"]["t"]["f_mae_meV_per_A"] == pytest.approx(10.0)  # sample std of 40, 60, 50
    assert ga["tests"]["t"]["f_mae_meV_per_A"] == pytest.approx(40.0) and ga["n_ok"] == 2
    assert ga["status"] == "2 of 3 seeds ok (seed 2: failed (exit code 1))"
    assert up["parameters"] == 1000 and up["median_step_s"] == pytest.approx(0.2)
    report = {"framework": "mace", "config": "cfg.yaml", "budget": {"epochs": 2, "max_minutes": None},
              "seeds": [1, 2, 3], "labels": {"upstream": "up", "gaunt": "ga"}, "config_differences": {}, "jobs": 2,
              "variants": {"upstream": up, "gaunt": ga}}
    report["ratios"] = ratios(report["variants"])
    md = markdown(report)
    assert "- seeds: 1, 2, 3: 3 runs per variant" in md
    assert "| t: F MAE / RMSE (meV/Å) | 50.0 ± 10 / 100 ± 20 | 40.0 ± 14 (n=2) / 80.0 ± 28 (n=2) | 0.80x / 0.80x |" in md
    assert "| seeds (finished / run) | 3 / 3 | 2 / 3 | |" in md
    assert "| parameters | 1,000 | 1,000 (n=2) | 1.00x |" in md
    assert "| ga | 2 | failed (exit code 1) |" in md  # the per-seed table
    assert "every timing was taken while another run shared the machine" in md


def test_the_report_says_how_far_from_converged():
    """The change of the validation force error over the last quarter of the epochs, per seed."""
    def run(values):
        return {"status": "ok", "curves": {"epoch": list(range(len(values))), "valid_rmse_f_meV_per_A": values}}

    falling = aggregate({"1": run([400.0, 300.0, 200.0, 150.0, 100.0]), "2": run([500.0, 300.0, 200.0, 160.0, 120.0])})
    flat = aggregate({"1": run([400.0, 101.0, 100.5, 100.2, 100.0])})
    report = {"framework": "mace", "config": "cfg.yaml", "budget": {"epochs": 5, "max_minutes": None},
              "seeds": [1, 2], "labels": {"upstream": "up", "gaunt": "ga"}, "config_differences": {},
              "variants": {"upstream": falling, "gaunt": flat}}
    report["ratios"] = ratios(report["variants"])
    md = markdown(report)
    assert ("- up: validation force RMSE 100–120 meV/Å at the last epoch (2 seeds); over the last quarter of the "
            "epochs it changed by -33%, -25%: still falling: not converged, more epochs would lower it.") in md
    assert "- ga: validation force RMSE 100 meV/Å at the last epoch (1 seed); over the last quarter of the epochs " \
           "it changed by -0%: nearly flat" in md


def test_mace_rows_and_log_of_the_last_run_only():
    """MACE appends to its results file and its log: a second run's report must not count the first's."""
    def one_run(losses):
        rows = [{"mode": "eval", "epoch": None, "loss": 9.0, "head": "Default"}]
        for epoch, loss in enumerate(losses):
            rows += [{"mode": "opt", "epoch": epoch, "loss": loss, "time": 0.1} for _ in range(5)]
            rows.append({"mode": "eval", "epoch": epoch, "loss": loss, "head": "Default"})
        return rows

    first, second = one_run([3.0, 2.0]), one_run([5.0])
    assert this_run_rows(first + second) == second
    assert this_run_rows(first) == first
    log = MACE_LOG.replace("00:09:00.100 INFO: gaunt", "00:09:00.050 INFO: ===========VERIFYING SETTINGS===========\n"
                           "2026-11-23 00:09:00.100 INFO: gaunt")
    appended = log + log.replace("4256 parameters (4256 trainable)", "99 parameters (99 trainable)")
    assert parse_compare_lines(this_run_log(appended))["parameters"] == 99
    assert this_run_log(log) == log[log.index("2026-11-23 00:09:00.050"):]


# --------------------------------------------------------------------------- fake framework
CHILD = r"""
import json, os, signal, sys, time
out = sys.argv[1]; mode = sys.argv[2]; seed = int(sys.argv[3])
stop = []
signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
rows = []
epochs, epoch_s = (40, 0.1) if mode == "slow" else (10, 0.01)
for epoch in range(epochs):
    if stop:
        break
    if mode == "crash" and epoch == 1:
        raise RuntimeError("simulated crash in epoch 1")
    time.sleep(epoch_s)
    rows.append({"epoch": epoch, "loss": 1.0 / (epoch + 1), "time": 0.1})
    json.dump({"rows": rows, "threads": os.environ.get("OMP_NUM_THREADS")}, open(out + ".tmp", "w"))
    os.replace(out + ".tmp", out)
json.dump({"tests": {"t": {"f_mae_meV_per_A": 10.0 * seed}}}, open(os.path.join(os.path.dirname(out), "eval.json"), "w"))
print("stopped" if stop else "finished", flush=True)
"""


class FakeFramework(Framework):
    """A framework whose "training" is a short Python loop writing one row per epoch."""

    name = "fake"
    distribution = "fake"
    labels = {"upstream": "up", "gaunt": "ga"}

    def __init__(self, config_path, modes, interrupt_after=None):  # no YAML to read
        self.config_path = Path(config_path)
        self.options = CompareOptions()
        self.tests = {}
        self.modes = modes
        self.interrupt_after = interrupt_after
        self.polls = 0
        self._progress = {}

    def _prepare_base(self, raw):
        return raw

    def _config_tests(self):
        return []

    def configured_epochs(self):
        return 40

    def default_seed(self):
        return 7

    def device(self):
        return "cpu"

    def variant_config(self, variant, folder, seed):
        cfg = {"seed": seed, "tensor_product": "gaunt" if variant == "gaunt" else None,
               "max_num_epochs": self.epoch_limit() or self.configured_epochs()}
        cfg.update(self.options.set_both)
        cfg.update(self.options.set_variant.get(variant, {}))
        return cfg

    def job(self, variant, folder, seed):
        folder.mkdir(parents=True, exist_ok=True)
        return Job(cmd=[sys.executable, "-c", CHILD, str(folder / "rows.json"), self.modes[variant], str(seed)],
                   cwd=folder, env=child_env(), log=folder / "stdout.log", label=variant)

    def progress(self, folder, elapsed):
        self.polls += 1
        if self.interrupt_after is not None and self.polls == self.interrupt_after:
            os.kill(os.getpid(), signal.SIGINT)  # the user's Ctrl-C
        return []

    def read_run(self, folder):
        data = json.loads((folder / "rows.json").read_text()) if (folder / "rows.json").exists() else {"rows": []}
        opt = [dict(r, mode="opt") for r in data["rows"]]
        evals = [{"epoch": r["epoch"], "loss": r["loss"]} for r in data["rows"]]
        return RunRecord(opt=opt, evals=evals, stats={}, files={"rows": str(folder / "rows.json")},
                         extra={"threads_seen": data.get("threads")})


def test_crash_of_one_variant_keeps_the_other(tmp_path):
    fw = FakeFramework(tmp_path / "cfg.yaml", {"upstream": "crash", "gaunt": "ok"})
    report = run_comparison(fw, tmp_path / "out", say=lambda s: None)
    up, ga = report["variants"]["upstream"], report["variants"]["gaunt"]
    assert up["status"] == "failed (exit code 1)"
    assert up["runs"]["7"]["error"] == "RuntimeError: simulated crash in epoch 1"
    assert up["epochs"] == 1
    assert ga["status"] == "ok" and ga["epochs"] == 10
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert saved["variants"]["gaunt"]["epochs"] == 10 and saved["seeds"] == [7]
    assert (tmp_path / "out" / "learning_curves.png").exists()
    assert "failed (exit code 1)" in (tmp_path / "out" / "report.md").read_text()


def test_ctrl_c_stops_the_running_variant_and_skips_the_rest(tmp_path):
    fw = FakeFramework(tmp_path / "cfg.yaml", {"upstream": "slow", "gaunt": "slow"}, interrupt_after=1)
    previous = signal.getsignal(signal.SIGINT)
    report = run_comparison(fw, tmp_path / "out", say=lambda s: None)
    assert signal.getsignal(signal.SIGINT) is previous  # handlers restored
    up, ga = report["variants"]["upstream"], report["variants"]["gaunt"]
    assert up["status"] == "interrupted" and 0 < up["epochs"] < 40  # stopped gracefully, results kept
    assert "stopped" in (tmp_path / "out" / "upstream" / "stdout.log").read_text()
    assert ga["status"] == "not run"
    assert report["interrupted"] is True
    assert json.loads((tmp_path / "out" / "report.json").read_text())["variants"]["upstream"]["epochs"] == up["epochs"]


def test_a_second_run_never_shows_the_first_runs_numbers(tmp_path):
    """A used --out is refused; with --overwrite the earlier run's files and numbers are gone, so a
    variant that fails this time reports its failure, not the last run's results."""
    fw = FakeFramework(tmp_path / "cfg.yaml", {"upstream": "ok", "gaunt": "ok"})
    first = run_comparison(fw, tmp_path / "out", say=lambda s: None)
    assert first["variants"]["gaunt"]["epochs"] == 10 and first["variants"]["gaunt"]["tests"]
    with pytest.raises(OutDirError, match="already holds the report of an earlier run.*--overwrite"):
        run_comparison(fw, tmp_path / "out", say=lambda s: None)
    assert json.loads((tmp_path / "out" / "report.json").read_text())["started"] == first["started"]  # untouched
    fw.modes["gaunt"] = "crash"
    second = run_comparison(fw, tmp_path / "out", overwrite=True, say=lambda s: None)
    gaunt = second["variants"]["gaunt"]
    assert gaunt["status"] == "failed (exit code 1)"
    assert gaunt["epochs"] == 1 and "tests" not in gaunt  # this run's one epoch, no earlier eval.json
    assert not (tmp_path / "out" / "gaunt" / "eval.json").exists()
    assert "kept_from" not in gaunt and "kept_from" not in second["variants"]["upstream"]


def test_out_dir_with_other_files_is_never_touched(tmp_path):
    fw = FakeFramework(tmp_path / "cfg.yaml", {"upstream": "ok", "gaunt": "ok"})
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "thesis.tex").write_text("mine")
    for overwrite in (False, True):
        with pytest.raises(OutDirError, match="did not write \\(thesis.tex\\)"):
            run_comparison(fw, tmp_path / "out", overwrite=overwrite, say=lambda s: None)
    assert (tmp_path / "out" / "thesis.tex").read_text() == "mine"


def test_rerunning_one_variant_keeps_the_other(tmp_path):
    """`--only gaunt` after a run where gaunt crashed: gaunt's folder is new, upstream's entry is kept
    (and marked so)."""
    fw = FakeFramework(tmp_path / "cfg.yaml", {"upstream": "ok", "gaunt": "crash"})
    first = run_comparison(fw, tmp_path / "out", say=lambda s: None)
    assert first["variants"]["gaunt"]["status"].startswith("failed")
    fw.modes["gaunt"] = "ok"
    second = run_comparison(fw, tmp_path / "out", variants=["gaunt"], say=lambda s: None)
    assert second["variants"]["gaunt"]["status"] == "ok"
    assert second["variants"]["upstream"]["epochs"] == 10
    assert second["variants"]["upstream"]["kept_from"]["started"] == first["started"]
    md = (tmp_path / "out" / "report.md").read_text()
    assert "| status | ok (earlier run) | ok |" in md and "kept by `--only`" in md


def test_seeds_and_two_runs_at_a_time(tmp_path):
    """--seeds 2 --jobs 2: every (variant, seed) in its own folder with the seed passed on, one thread
    each, started in the order upstream, gaunt of each seed; per-seed values in the JSON, mean in the entry."""
    fw = FakeFramework(tmp_path / "cfg.yaml", {"upstream": "ok", "gaunt": "ok"})
    lines = []
    report = run_comparison(fw, tmp_path / "out", seeds=fw.seeds(2), jobs=2, say=lines.append)
    assert report["seeds"] == [7, 8] and report["jobs"] == 2
    for variant in ("upstream", "gaunt"):
        entry = report["variants"][variant]
        assert set(entry["runs"]) == {"7", "8"} and entry["n_ok"] == 2
        for seed in (7, 8):
            run = entry["runs"][str(seed)]
            assert run["folder"] == str((tmp_path / "out" / variant / f"seed-{seed}").resolve())
            assert run["tests"]["t"]["f_mae_meV_per_A"] == 10.0 * seed  # each run reads its own files
            assert run["threads_seen"] == str(max(1, (os.cpu_count() or 1) // 2))
        assert entry["tests"]["t"]["f_mae_meV_per_A"] == pytest.approx(75.0)
        assert entry["tests_n"]["t"]["f_mae_meV_per_A"] == 2
    starts = [line for line in lines if ": training (" in line]
    assert [s.split(":")[0] for s in starts] == ["[gaunt-compare] upstream seed 7", "[gaunt-compare] gaunt seed 7",
                                                 "[gaunt-compare] upstream seed 8", "[gaunt-compare] gaunt seed 8"]
    assert "Per seed:" in (tmp_path / "out" / "report.md").read_text()
