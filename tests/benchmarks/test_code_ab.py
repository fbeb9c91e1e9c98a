"""benchmarks/code_ab.py: each measurement runs the tree it names (the package is checked), the trees alternate
with the order flipped every other pair, and the ratio is B over A."""
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))

import code_ab  # noqa: E402

ROOT = BENCH.parent


def test_alternating_pairs_flip_the_order_and_report_b_over_a(monkeypatch):
    calls = []
    times = {"a": 10.0, "b": 15.0}

    def fake_run(tree, spec, timeout):
        calls.append(tree)
        return {"ms": times[tree], "package": tree}

    monkeypatch.setattr(code_ab, "run_tree", fake_run)
    row = code_ab.compare(["a", "b"], {"mode": "eager"}, 3, 60, log=lambda s: None)
    assert calls == ["a", "b", "b", "a", "a", "b"]
    assert row["a_ms"] == [10.0] * 3 and row["b_ms"] == [15.0] * 3
    assert row["ratio_b_over_a"] == pytest.approx(1.5)


@pytest.mark.slow
def test_one_measuring_process_imports_the_tree_it_was_given(tmp_path):
    out = tmp_path / "ab.json"
    assert code_ab.main(["--trees", str(ROOT), str(ROOT), "--modes", "eager", "--targets", "product",
                         "--molecules", "1", "--pairs", "1", "--warmup", "1", "--iters", "1", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    (row,) = result["rows"]
    assert row["mode"] == "eager" and row["a_median_ms"] > 0 and row["b_median_ms"] > 0


def test_a_tree_without_the_package_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit):
        code_ab.main(["--trees", str(tmp_path), str(ROOT)])
    assert "holds no gaunt_plugins/ package" in capsys.readouterr().err
