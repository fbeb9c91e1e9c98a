"""benchmarks/model_step.py: which Gaunt variants it times, its argument checks, the limited upstream build
of the high-correlation rows, and its JSON."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "benchmarks"
sys.path.insert(0, str(BENCH))

import model_step  # noqa: E402

CONV, PRODUCT, BOTH = frozenset({"conv"}), frozenset({"product"}), frozenset({"conv", "product"})


def test_every_target_set_is_timed_and_each_k_only_where_there_is_a_convolution(monkeypatch):
    monkeypatch.setattr(model_step, "conv_products_supported", lambda: True)
    assert model_step.gaunt_plan([BOTH, CONV, PRODUCT], [3, 1, 3]) == [
        (BOTH, 1), (BOTH, 3), (CONV, 1), (CONV, 3), (PRODUCT, 1)]


def test_only_k_1_is_timed_where_gaunt_plugins_has_no_conv_products(monkeypatch):
    monkeypatch.setattr(model_step, "conv_products_supported", lambda: False)
    assert model_step.gaunt_plan([BOTH, PRODUCT], [1, 3]) == [(BOTH, 1), (PRODUCT, 1)]
    with pytest.raises(ValueError, match="only K = 1"):
        model_step.gaunt_options(BOTH, 3)


def test_chains_and_odd_chains_are_timed_only_where_there_is_a_many_body_product(monkeypatch):
    monkeypatch.setattr(model_step, "conv_products_supported", lambda: True)
    plan = model_step.with_chains([(CONV, 1), (PRODUCT, 1)], [1, 2], [0, 1])
    assert plan == [(CONV, 1, 1, 0), (PRODUCT, 1, 1, 0), (PRODUCT, 1, 1, 1), (PRODUCT, 1, 2, 0), (PRODUCT, 1, 2, 1)]
    options = model_step.gaunt_options(PRODUCT, 1, 2, 1)
    assert (options.product_chains, options.product_odd_chains) == (2, 1)


def test_bad_targets_models_and_k_are_refused_by_name(capsys):
    for argv, needle in ((["--targets", "conv,edges"], "--targets 'conv,edges'"),
                         (["--models", "mace,nequip"], "unknown ['nequip']"),
                         (["--conv-products", "0"], "every K must be >= 1"),
                         (["--device", "cpu", "--product-odd-chains", "-1"], "every B must be >= 0"),
                         (["--device", "cpu", "--product-chains", "0"], "every P must be >= 1"),
                         (["--out", "x.json"], "pick --device cpu or --device cuda")):
        with pytest.raises(SystemExit):
            model_step.parse_args(argv)
        assert needle in capsys.readouterr().err


def test_parsed_target_sets_are_deduplicated():
    args = model_step.parse_args(["--targets", "conv,product", "[product, conv]", "product"])
    assert args.target_sets == [BOTH, PRODUCT]


def test_an_upstream_build_past_its_limit_is_stopped_and_the_verdict_cached(tmp_path):
    spec = model_step.correlation_specs([3], 1, 4, 3, "float32")
    limits = model_step.BuildLimits(seconds=0.5, memory_gb=8)
    got = model_step.build_upstream_models(spec, limits, tmp_path, jobs=1, log=lambda m: None)
    status = got[spec[0]["key"]]
    assert status["status"] == "timeout"
    assert status["message"].startswith("cannot build within 0.5 s / 8 GB")
    again = model_step.build_upstream_models(spec, limits, tmp_path, jobs=1, log=lambda m: None)
    assert again[spec[0]["key"]]["cached"] is True  # the same limits: not tried again
    only = model_step.build_upstream_models(model_step.correlation_specs([4], 1, 4, 3, "float32"), limits, tmp_path,
                                            jobs=1, log=lambda m: None, cached_only=True)
    assert next(iter(only.values()))["status"] == "not built"


@pytest.mark.slow
def test_correlation_rows_time_upstream_beside_the_directly_built_gaunt_model(tmp_path):
    """Correlation 2 builds in seconds upstream; the row pair is timed side by side, the JSON says so."""
    out = tmp_path / "corr.json"
    proc = subprocess.run([sys.executable, str(BENCH / "model_step.py"), "--device", "cpu", "--models",
                           "mace-correlation", "--correlations", "2", "--correlation-lmax", "1",
                           "--correlation-channels", "4", "--molecules", "1", "--warmup", "0", "--iters", "1",
                           "--upstream-cache", str(tmp_path / "cache"), "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = json.loads(out.read_text())["results"]
    by = {r["impl"]: r for r in rows}
    assert by["e3nn"]["build_status"] == "ok" and by["e3nn"]["build_s"] > 0
    assert by["gaunt"]["build_s"] > 0 and by["gaunt"]["served_by"]
    assert "median_ms" in by["e3nn"] and "median_ms" in by["gaunt"] and "speedup_vs_upstream" in by["gaunt"]


def test_time_budget_skips_the_cases_left_and_says_so(tmp_path):
    out = tmp_path / "m.json"
    proc = subprocess.run([sys.executable, str(BENCH / "model_step.py"), "--device", "cpu", "--models", "mace",
                           "--lmax", "0", "1", "--channels", "4", "--molecules", "1", "--time-budget", "0",
                           "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(out.read_text())
    assert [r["error"] for r in data["results"]] == ["skipped: the time budget of 0 s was spent"] * 2
    assert {"targets", "conv_products", "conv_products_supported", "results", "device"} <= set(data)


def test_on_cuda_each_gaunt_model_is_timed_on_the_operators_the_reference_and_triton():
    """On CUDA every Gaunt case has three rows: ``gaunt-auto`` (the automatic choice: the operators), and the
    reference and the Triton kernels forced; on the CPU one row, the automatic choice."""
    import torch

    plan = [(frozenset({"conv", "product"}), 1, 1, 0)]
    cuda = model_step.mace_variants(object(), True, plan, torch.device("cuda"))
    gaunt = [(v.impl, v.backend) for v in cuda if v.gaunt]
    assert gaunt == [("gaunt-auto", None), ("gaunt-torch", "torch"), ("gaunt-triton", "triton")]
    cpu = model_step.mace_variants(object(), False, plan, torch.device("cpu"))
    assert [(v.impl, v.backend) for v in cpu if v.gaunt] == [("gaunt-torch", None)]
