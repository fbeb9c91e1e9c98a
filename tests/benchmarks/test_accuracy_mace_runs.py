"""benchmarks/accuracy_mace.py's run bookkeeping: a finished run is reused when its settings match, continued
(MACE's ``restart_latest``) when it differs only in having trained fewer epochs, and trained again otherwise."""
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import accuracy_mace  # noqa: E402


def _fake_mace(calls):
    """Stands in for ``gaunt-run mace_run_train``: appends one MACE results row and checkpoint per epoch from the
    last one it finds to ``max_num_epochs`` (from 0 unless ``restart_latest``)."""
    def run(cmd, cwd, **kwargs):
        cfg = dict(line.split(": ", 1) for line in (Path(cwd) / "config.yaml").read_text().splitlines())
        calls.append(cfg)
        results, checkpoints = Path(cwd) / "results", Path(cwd) / "checkpoints"
        results.mkdir(exist_ok=True)
        checkpoints.mkdir(exist_ok=True)
        start = len(list(checkpoints.glob("*.pt"))) if cfg.get("restart_latest") == "True" else 0
        with open(results / f"{cfg['name']}_run-1_train.txt", "a") as fh:
            fh.write(json.dumps({"mode": "eval", "epoch": None, "loss": 1.0}) + "\n")
            for epoch in range(start, int(cfg["max_num_epochs"])):
                fh.write(json.dumps({"mode": "opt", "epoch": epoch, "time": 1.0}) + "\n")
                fh.write(json.dumps({"mode": "eval", "epoch": epoch, "loss": 1.0 / (epoch + 1), "mae_f": 0.1}) + "\n")
                (checkpoints / f"{cfg['name']}_run-1_epoch-{epoch}.pt").write_bytes(b"")
        return SimpleNamespace(returncode=0)
    return run


@pytest.fixture
def fake_mace(monkeypatch):
    calls = []
    monkeypatch.setattr(accuracy_mace.supervisor, "run", _fake_mace(calls))
    return calls


def _digest(cfg):
    return "d" + json.dumps(cfg, sort_keys=True)


def test_a_shorter_run_is_continued_and_a_different_one_trained_again(tmp_path, fake_mace):
    run_dir = tmp_path / "product_s1"
    cfg = {"name": "product_s1", "seed": 1, "max_num_epochs": 2}

    first = accuracy_mace.train(run_dir, cfg, _digest(cfg), {})
    assert [e["epoch"] for e in first["epochs"]] == [0, 1] and "restart_latest" not in fake_mace[-1]
    assert accuracy_mace.train(run_dir, cfg, _digest(cfg), {}) == first and len(fake_mace) == 1  # reused

    longer = dict(cfg, max_num_epochs=4)
    record = accuracy_mace.train(run_dir, longer, _digest(longer), {},
                                 lambda n: _digest(dict(longer, max_num_epochs=n)))
    assert fake_mace[-1]["restart_latest"] == "True" and fake_mace[-1]["max_num_epochs"] == "4"
    assert [e["epoch"] for e in record["epochs"]] == [0, 1, 2, 3]
    assert record["continued_from_epoch"] == 2 and record["epochs"][3]["elapsed_s"] == 4.0
    assert [e["checkpoint"] for e in record["epochs"][:2]] == [e["checkpoint"] for e in first["epochs"]]

    other = dict(longer, seed=2, max_num_epochs=5)  # other settings: no continuation, a fresh run
    record = accuracy_mace.train(run_dir, other, _digest(other), {}, lambda n: _digest(dict(other, max_num_epochs=n)))
    assert "restart_latest" not in fake_mace[-1] and "continued_from_epoch" not in record
    assert [e["epoch"] for e in record["epochs"]] == [0, 1, 2, 3, 4]


def test_a_missing_code_snapshot_is_named_with_the_ones_there(tmp_path, monkeypatch):
    monkeypatch.setattr(accuracy_mace, "prepare_data", lambda *a, **k: {})
    (tmp_path / "full_ema" / "code" / "abc123").mkdir(parents=True)
    with pytest.raises(SystemExit, match="--code-snapshot nope: no snapshot .*; the snapshots in .*: abc123"):
        accuracy_mace.main(["--work", str(tmp_path), "--code-snapshot", "nope"])


def test_stage_two_compares_the_best_stage_two_checkpoint(tmp_path):
    """MACE's stage two names its checkpoints ``..._epoch-N_swa.pt`` and weighs energies 1000x in its loss: the
    model compared is the best stage-two epoch even where a stage-one epoch has a lower validation loss."""
    run_dir = tmp_path / "upstream_s1"
    (run_dir / "results").mkdir(parents=True)
    (run_dir / "checkpoints").mkdir()
    losses = {0: 0.5, 1: 0.1, 2: 0.9, 3: 0.7}  # epochs 2 and 3 are stage two
    with open(run_dir / "results" / "upstream_s1_run-1_train.txt", "w") as fh:
        for epoch, loss in losses.items():
            fh.write(json.dumps({"mode": "opt", "epoch": epoch, "time": 1.0}) + "\n")
            fh.write(json.dumps({"mode": "eval", "epoch": epoch, "loss": loss, "mae_f": 0.1}) + "\n")
            suffix = "_swa" if epoch >= 2 else ""
            (run_dir / "checkpoints" / f"upstream_s1_run-1_epoch-{epoch}{suffix}.pt").write_bytes(b"")
    epochs = accuracy_mace.read_epochs(run_dir, "upstream_s1")
    assert [e["stage_two"] for e in epochs] == [False, False, True, True]
    best = accuracy_mace.best_epoch(epochs)
    assert best["epoch"] == 3 and best["checkpoint"] == "upstream_s1_run-1_epoch-3_swa.pt"
    assert accuracy_mace.best_epoch(epochs, budget_s=2.0)["epoch"] == 1  # no stage-two epoch within the budget
    assert accuracy_mace.best_epoch(epochs[:2])["epoch"] == 1  # without stage two: among all epochs


def test_the_code_snapshot_holds_every_source_the_package_builds_from(tmp_path):
    """The runs execute the snapshot: it must hold the C kernels and the operators' C++ source, not only Python."""
    dest, digest = accuracy_mace.snapshot_code(tmp_path)
    package = ROOT / "gaunt_plugins"
    for suffix in (".py", ".c", ".cpp", ".h"):
        sources = sorted(p.relative_to(package) for p in package.rglob(f"*{suffix}") if "__pycache__" not in p.parts)
        assert sources, suffix
        for rel in sources:
            assert (dest / "gaunt_plugins" / rel).is_file(), rel
