"""benchmarks/gradient_norms.py: per checkpoint, the gradient norm of MACE's weighted loss and the many-body
parameters' share of its square, on a saved run laid out as accuracy_mace.py lays it out."""
import json
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))

import accuracy_mace  # noqa: E402
import energy_gap_diagnostics as egd  # noqa: E402
import gradient_norms  # noqa: E402


def _saved_run(work: Path, name: str, model) -> None:
    run = work / "runs" / name
    (run / "checkpoints").mkdir(parents=True)
    torch.save(model, run / f"{name}.model")
    torch.save({"model": model.state_dict()}, run / "checkpoints" / f"{name}_run-1_epoch-0.pt")


def test_gradient_norms_and_the_many_body_share_of_a_stock_and_a_gaunt_run(tmp_path, small_mace):
    accuracy_mace.prepare_data(accuracy_mace.find_acac(), tmp_path / "data", 20, 5, 5)
    _, upstream = small_mace
    _saved_run(tmp_path, "upstream_s1", upstream)
    _saved_run(tmp_path, "product_s1", egd.gaunt_twin(upstream, 0))
    out = tmp_path / "norms.json"
    gradient_norms.main(["--work", str(tmp_path), "--runs", "upstream_s1", "product_s1", "--epochs", "0",
                         "--batches", "2", "--out", str(out)])
    rows = json.loads(out.read_text())["rows"]
    assert [r["run"] for r in rows] == ["upstream_s1", "product_s1"]
    for r in rows:
        assert 0 < r["grad_norm_min"] <= r["grad_norm_mean"] <= r["grad_norm_max"] < float("inf")
        assert 0 < r["many_body_share"] < 1
    assert rows[0]["grad_norm_mean"] != rows[1]["grad_norm_mean"]  # the many-body layers differ
    with pytest.raises(SystemExit, match="no checkpoint of epoch 7"):
        gradient_norms.main(["--work", str(tmp_path), "--runs", "upstream_s1", "--epochs", "7", "--out", str(out)])
