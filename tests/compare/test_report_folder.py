"""What gaunt-compare may do to a report folder and say about it (fast: fake child processes):
only its own files are ever removed, runs trained with other settings are never put side by side,
and incomplete runs and unequal epochs are said in every line that compares them (that no training
child outlives gaunt-compare: tests/benchmarks/test_children.py)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from gaunt_plugins.compare.aggregate import aggregate
from gaunt_plugins.compare.framework import CompareOptions
from gaunt_plugins.compare.harness import run_comparison
from gaunt_plugins.compare.report import markdown, ratios
from test_harness import FakeFramework

QUIET = {"say": lambda line: None}


@pytest.fixture(autouse=True)
def no_plots(monkeypatch):
    """The plot is not what these tests check (and takes seconds per report on a loaded machine)."""
    from gaunt_plugins.compare import report

    monkeypatch.setattr(report, "plot_curves", lambda report, path: False)


def files_under(folder: Path):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


# --------------------------------------------------------------------------- user files are never removed
def test_overwrite_and_only_remove_only_files_gaunt_compare_wrote(tmp_path):
    """A notebook in upstream/ and a notes folder in gaunt/ of an earlier report: --overwrite and
    --only gaunt stop with an error naming them, and remove nothing; once they are moved away,
    --overwrite removes exactly the files the earlier run wrote."""
    out = tmp_path / "out"
    fw = FakeFramework(tmp_path / "cfg.yaml", {"upstream": "ok", "gaunt": "ok"})
    first = run_comparison(fw, out, **QUIET)
    notebook = out / "upstream" / "analysis.ipynb"
    notebook.write_text("{}")
    (out / "gaunt" / "notes").mkdir()
    (out / "gaunt" / "notes" / "ideas.txt").write_text("mine")
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    for kwargs, named in ((dict(overwrite=True), "upstream/analysis.ipynb"),
                          (dict(variants=["gaunt"]), "gaunt/notes/")):
        with pytest.raises(ValueError, match=re.escape(named) + ".*nothing was removed"):
            run_comparison(fw, out, **kwargs, **QUIET)
        assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    # --only gaunt keeps upstream/ as it is, the user's notebook with it
    (out / "gaunt" / "notes" / "ideas.txt").rename(tmp_path / "ideas.txt")
    (out / "gaunt" / "notes").rmdir()
    second = run_comparison(fw, out, variants=["gaunt"], **QUIET)
    assert second["variants"]["upstream"]["kept_from"]["started"] == first["started"]
    assert notebook.read_text() == "{}"
    # --overwrite once the notebook is moved away: everything the earlier runs wrote is replaced
    notebook.rename(tmp_path / "analysis.ipynb")
    third = run_comparison(fw, out, overwrite=True, **QUIET)
    assert third["variants"]["upstream"]["status"] == third["variants"]["gaunt"]["status"] == "ok"
    assert "kept_from" not in third["variants"]["upstream"]
    listed = json.loads((out / "gaunt-compare-files.json").read_text())["files"]
    assert sorted(p.rstrip("/") for p in listed) == [f for f in files_under(out) if f != "gaunt-compare-files.json"]


# --------------------------------------------------------------------------- settings recorded and checked
def test_only_refuses_to_keep_results_trained_with_other_settings(tmp_path):
    """--only gaunt with other epochs, another config value or other seeds than the kept upstream
    results were trained with is refused before anything is removed, saying what differs and how
    to rerun both; a change to the gaunt variant alone is what --only is for."""
    out = tmp_path / "out"
    fw = FakeFramework(tmp_path / "cfg.yaml", {"upstream": "ok", "gaunt": "ok"})
    first = run_comparison(fw, out, **QUIET)
    assert first["settings"]["upstream"]["budget"] == {"epochs": 40, "max_minutes": None}
    before = files_under(out)
    for options, seeds, what in (
            (CompareOptions(epochs=2), None, r"config `max_num_epochs`: 40 before, 2 now.*budget"),
            (CompareOptions(set_both={"num_channels": 32}), None, r"config `num_channels`: \(absent\) before, 32 now"),
            (CompareOptions(), [7, 8], r"seeds: \[7\] before, \[7, 8\] now")):
        fw.options = options
        with pytest.raises(ValueError, match="kept upstream results were trained with other settings.*" + what
                           + ".*--overwrite"):
            run_comparison(fw, out, variants=["gaunt"], seeds=seeds, **QUIET)
        assert files_under(out) == before
        assert json.loads((out / "report.json").read_text())["started"] == first["started"]
    fw.options = CompareOptions(set_variant={"gaunt": {"gaunt_targets": ["conv"]}})
    second = run_comparison(fw, out, variants=["gaunt"], **QUIET)
    assert second["variants"]["upstream"]["kept_from"]["started"] == first["started"]
    assert second["config_differences"]["gaunt_targets"] == {"upstream": None, "gaunt": ["conv"]}


def test_only_refuses_a_report_that_does_not_record_its_settings(tmp_path):
    out = tmp_path / "out"
    fw = FakeFramework(tmp_path / "cfg.yaml", {"upstream": "ok", "gaunt": "ok"})
    run_comparison(fw, out, **QUIET)
    report = json.loads((out / "report.json").read_text())
    del report["settings"]
    (out / "report.json").write_text(json.dumps(report))
    with pytest.raises(ValueError, match="does not record the settings its upstream runs"):
        run_comparison(fw, out, variants=["gaunt"], **QUIET)
    assert (out / "gaunt" / "rows.json").exists()


def test_cli_reports_a_settings_mismatch_in_one_line(tmp_path, monkeypatch, capsys):
    from gaunt_plugins.compare import cli, harness
    from gaunt_plugins.compare.settings import SettingsMismatch

    def refuse(*args, **kwargs):
        raise SettingsMismatch("--only gaunt: the kept upstream results were trained with other settings")

    monkeypatch.setattr(harness, "run_comparison", refuse)
    (tmp_path / "cfg.yaml").write_text("name: x\nmax_num_epochs: 3\n")
    monkeypatch.chdir(tmp_path)
    assert cli.main(["cfg.yaml", "--only", "gaunt", "--out", "out", "--quiet"]) == 2
    assert capsys.readouterr().err == ("gaunt-compare: --only gaunt: the kept upstream results were trained with "
                                       "other settings\n")


def test_every_ratio_resting_on_an_incomplete_run_is_marked(tmp_path):
    """An upstream run stopped by Ctrl-C part way, then --only gaunt: every line of the report that
    compares the two says the upstream run is incomplete, and how far it got."""
    out = tmp_path / "out"
    fw = FakeFramework(tmp_path / "cfg.yaml", {"upstream": "slow", "gaunt": "ok"}, interrupt_after=1)
    first = run_comparison(fw, out, **QUIET)
    stopped = first["variants"]["upstream"]["epochs"]
    assert first["variants"]["upstream"]["status"] == "interrupted" and 0 < stopped < 40
    fw.interrupt_after = None
    second = run_comparison(fw, out, variants=["gaunt"], **QUIET)
    assert second["incomplete"] == {"upstream": [f"up: interrupted after {stopped} of 40 epochs (earlier run)"]}
    md = (out / "report.md").read_text()
    compared = [line for line in md.splitlines() if re.search(r"\d\.\d\dx", line)]
    assert len(compared) >= 3  # time per step, steps per second, the test set
    assert all(line.endswith("(incomplete run) |") for line in compared), compared
    assert f"up: interrupted after {stopped} of 40 epochs (earlier run)" in md


# --------------------------------------------------------------------------- unequal epochs
def _run(epochs, f_rmse, stop_reason="time budget", stage_two=None):
    """A run that validated after every one of ``epochs`` epochs, ``f_rmse(epoch)`` its force RMSE."""
    curve = {"epoch": list(range(epochs)), "valid_rmse_f_meV_per_A": [f_rmse(e) for e in range(epochs)],
             "valid_loss": [1.0] * epochs}
    run = {"status": "ok", "epochs": epochs, "stop_reason": stop_reason, "curves": curve,
           "tests": {"t": {"f_mae_meV_per_A": f_rmse(epochs - 1)}}}
    if stage_two is not None:
        run["stage_two"] = stage_two
    return run


def test_when_the_budget_binds_the_report_compares_at_the_common_epoch():
    """Upstream ended after 80 and 90 epochs, gaunt after 100 (a wall-clock budget): the report says
    the epochs differ and compares the validation errors at epoch 80, where every run was; a run
    that stopped before MACE's stage two says its model is the stage-one model."""
    up = aggregate({"1": _run(80, lambda e: 200.0 - e, stage_two={"start": 89, "reached": False}),
                    "2": _run(90, lambda e: 210.0 - e, stage_two={"start": 89, "reached": True})})
    ga = aggregate({"1": _run(100, lambda e: 150.0 - e), "2": _run(100, lambda e: 170.0 - e)})
    report = {"framework": "mace", "config": "cfg.yaml", "budget": {"epochs": 120, "max_minutes": 5.0},
              "seeds": [1, 2], "labels": {"upstream": "up", "gaunt": "ga"}, "config_differences": {},
              "variants": {"upstream": up, "gaunt": ga}}
    report["ratios"] = ratios(report["variants"])
    md = markdown(report)
    assert ("budget: 120 epochs per run (at most 5 min of training); the runs ended after different numbers of "
            "epochs (upstream 80–90, gaunt 100), so the variants are also compared at epoch 80") in md
    assert "At equal epochs:" in md and "(up: 80, 90; ga: 100, 100;" in md
    # at epoch 80 (index 79): upstream 121, 131 -> 126 ± 7.07; gaunt 71, 91 -> 81.0 ± 14; 81 / 126 = 0.64
    assert "| force RMSE (meV/Å) | 126 ± 7.1 | 81.0 ± 14 | 0.64x |" in md
    assert ("- up, seed 1: MACE's stage two (from epoch 90) was not reached, training stopped after 80 epochs "
            "(time budget): its model is the stage-one model.") in md
    assert "seed 2: MACE's stage two" not in md
    same = {"framework": "mace", "config": "c", "budget": {"epochs": 90, "max_minutes": None}, "seeds": [1, 2],
            "labels": {}, "config_differences": {},
            "variants": {"upstream": aggregate({"1": _run(90, float), "2": _run(90, float)}),
                         "gaunt": aggregate({"1": _run(90, float), "2": _run(90, float)})}}
    assert "At equal epochs" not in markdown(same) and "compared at epoch" not in markdown(same)
