"""benchmarks/gpu_suite.py: the dry run CI runs, the stage runner (budgets, failures, process groups), the
source overlay, the tables made from the suite's JSON, and the pytest plugin that moves tests to a GPU."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "benchmarks"
sys.path.insert(0, str(BENCH))

import gpu_suite  # noqa: E402
import result_tables  # noqa: E402

STAGES = ["setup", "mace-build", "tests-triton", "tests-layers", "gpu-ops", "mace-step", "mace-correlation",
          "eqv2-step"]


def test_dry_run_plans_and_checks_every_stage(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(BENCH / "gpu_suite.py"), "--dry-run", "--out", str(out), "--work",
                           str(tmp_path / "work"), "--wheels", str(tmp_path / "no-wheels")],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    record = json.loads((out / "suite.json").read_text())
    assert [s["name"] for s in record["stages"]] == STAGES
    assert record["problems"] == []
    planned = {s["name"]: s for s in record["stages"][1:]}
    assert all(s["status"] == "planned" for s in planned.values())
    assert "--device" in planned["mace-step"]["argv"] and "cuda" in planned["mace-step"]["argv"]
    assert planned["tests-layers"]["argv"].count("pytest_cuda_device") == 1
    assert record["environment"]["modules"]["gaunt_plugins"]["file"].startswith(str(tmp_path / "work" / "src"))
    assert "collects" in proc.stdout
    assert (out / "tables.md").read_text().startswith("# GPU suite")


def test_dry_run_reports_an_argument_a_benchmark_rejects(tmp_path):
    args = type("Args", (), {"out": tmp_path / "out", "work": tmp_path / "work", "python": sys.executable,
                             "total_budget": 60.0, "mode": "dry-run", "wheels": None, "stages": None})()
    suite = gpu_suite.Suite(args)
    bad = gpu_suite.Stage("mace-step", 10, [sys.executable, str(BENCH / "model_step.py"), "--no-such-option"], "x")
    worse = gpu_suite.Stage("tests", 10, [sys.executable, "-P", "-m", "pytest", "tests/no_such_dir"], "x")
    problems = suite.dry_run([bad, worse], {})
    assert any("mace-step: the argument parser rejects" in p for p in problems)
    assert any("tests/no_such_dir does not exist" in p for p in problems)


def _suite(tmp_path, budget=60.0):
    args = type("Args", (), {"out": tmp_path / "out", "work": tmp_path / "work", "python": sys.executable,
                             "total_budget": budget, "mode": "rehearse", "wheels": None, "stages": None})()
    return gpu_suite.Suite(args)


def _running(pid: int) -> bool:
    """Whether ``pid`` is alive (a zombie left for a parent that does not reap it counts as ended)."""
    time.sleep(0.5)
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_stage_past_its_budget_is_stopped_with_its_children_and_the_next_stage_runs(tmp_path):
    pid_file = tmp_path / "grandchild.pid"
    slow = (f"import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']);"
            f" open({str(pid_file)!r}, 'w').write(str(p.pid)); time.sleep(120)")
    stages = [gpu_suite.Stage("slow", 8, [sys.executable, "-c", slow], "sleeps"),
              gpu_suite.Stage("fails", 30, [sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"], "exits 3"),
              gpu_suite.Stage("needs", 30, [sys.executable, "-c", "pass"], "needs a module", needs=["absent_module"]),
              gpu_suite.Stage("fine", 30, [sys.executable, "-c", "print('fine')"], "prints")]
    suite = _suite(tmp_path)
    started = time.monotonic()
    suite.run(stages, {})
    assert time.monotonic() - started < 60
    status = {s["name"]: s["status"] for s in suite.record["stages"]}
    assert status == {"slow": "stopped at its 8 s budget", "fails": "failed (exit 3)", "needs": "skipped",
                      "fine": "ok"}
    assert not _running(int(pid_file.read_text()))
    log = (tmp_path / "out" / "suite.log").read_text()
    assert "boom" in log and "fine" in log
    assert json.loads((tmp_path / "out" / "suite.json").read_text())["stages"][1]["exit_code"] == 3


def test_unused_budget_passes_to_the_next_stage_and_the_total_budget_caps_it(tmp_path):
    stages = [gpu_suite.Stage("quick", 20, [sys.executable, "-c", "pass"], "x"),
              gpu_suite.Stage("long", 1, [sys.executable, "-c", "import time; time.sleep(2.5)"], "x")]
    suite = _suite(tmp_path)
    suite.run(stages, {})
    assert [s["status"] for s in suite.record["stages"]] == ["ok", "ok"]  # 1 s own + what "quick" left
    capped = _suite(tmp_path / "capped", budget=6.0)
    capped.run([gpu_suite.Stage("long", 30, [sys.executable, "-c", "import time; time.sleep(20)"], "x")], {})
    assert capped.record["stages"][0]["status"].startswith("stopped at its")
    assert capped.record["stages"][0]["seconds"] < 10  # the total, not the stage's 30 s


def test_suite_refuses_to_mix_with_an_earlier_run(tmp_path):
    (tmp_path / "suite.json").write_text("{}")
    proc = subprocess.run([sys.executable, str(BENCH / "gpu_suite.py"), "--dry-run", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "earlier run" in proc.stderr and "--overwrite" in proc.stderr


def test_source_overlay_is_this_checkout_with_its_entry_points(tmp_path):
    gpu_suite.source_overlay(tmp_path / "src")
    code = ("import importlib.metadata as md, gaunt_plugins, gaunt_plugins.patches;"
            "print(gaunt_plugins.__file__); print(gaunt_plugins.patches.__file__);"
            "print(sorted(e.name for e in md.entry_points(group='gaunt_plugins.patches')))")
    env = dict(os.environ, PYTHONPATH=str(tmp_path / "src"))
    proc = subprocess.run([sys.executable, "-P", "-c", code], capture_output=True, text=True, env=env, cwd=str(ROOT),
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    init, patches, eps = proc.stdout.splitlines()[-3:]
    assert init == str(tmp_path / "src" / "gaunt_plugins" / "__init__.py")
    assert Path(patches).resolve() == (ROOT / "patches" / "__init__.py").resolve()
    assert {"mace", "fairchem"} <= set(eval(eps))


def test_junit_and_log_summaries_count_failures(tmp_path):
    xml = tmp_path / "r.xml"
    xml.write_text('<testsuites><testsuite tests="3" failures="1" errors="0" skipped="1">'
                   '<testcase classname="tests.a" name="t1"/><testcase classname="tests.a" name="t2">'
                   '<failure message="assert 1 == 2">trace</failure></testcase>'
                   '<testcase classname="tests.a" name="t3"><skipped/></testcase></testsuite></testsuites>')
    got = gpu_suite.junit_summary(xml)
    assert (got["passed"], got["failures"][0]["test"], got["skipped"]) == (1, "tests.a::t2", 1)
    log = "[gw0] PASSED tests/a.py::t1\n[gw1] FAILED tests/a.py::t2\nFAILED tests/a.py::t2 - assert 1 == 2\n"
    got = gpu_suite.log_summary(log)
    assert got["passed"] == 1 and got["failures"] == [{"test": "tests/a.py::t2", "kind": "failure",
                                                        "message": "assert 1 == 2"}]


def _write_suite_folder(folder: Path) -> None:
    folder.mkdir()
    ops = []
    for l, cueq in ((2, 2.5), (3, 4.0), (4, 3.0)):
        ops += [{"op": "conv", "L": l, "C": 128, "rows": 32768, "impl": "triton", "fwd_ms": 0.4, "fwdbwd_ms": 1.0,
                 "fwd_peak_mib": 10.0, "fwdbwd_peak_mib": 30.0},
                {"op": "conv", "L": l, "C": 128, "rows": 32768, "impl": "cueq", "fwd_ms": 1.0, "fwdbwd_ms": cueq},
                {"op": "conv", "L": l, "C": 128, "rows": 32768, "impl": "e3nn", "fwd_ms": 5.0, "fwdbwd_ms": 20.0}]
    ops += [{"op": "symcon", "L": 2, "C": 128, "rows": 16384, "impl": "triton", "fwd_ms": 1.0, "fwdbwd_ms": 2.0},
            {"op": "symcon", "L": 2, "C": 128, "rows": 16384, "impl": "cueq", "fwd_ms": 2.0, "fwdbwd_ms": 3.0},
            {"op": "conv", "L": 5, "C": 64, "rows": 32768, "impl": "triton", "error": "ValueError: too wide"}]
    (folder / "gpu_ops.json").write_text(json.dumps({"info": {"device": "NVIDIA H200"}, "results": ops}))
    case = {"model": "mace", "L": 2, "C": 128, "max_ell": 3, "correlation": 3, "molecules": 64}
    steps = [dict(case, impl="e3nn", median_ms=90.0, parameters=837264),
             dict(case, impl="gaunt-triton", targets="conv+product", conv_products=1, median_ms=30.0,
                  parameters=558096, speedup_vs_upstream=3.0),
             dict(case, impl="gaunt-triton", targets="product", conv_products=1, median_ms=60.0, parameters=600000,
                  speedup_vs_upstream=1.5)]
    (folder / "model_step_mace.json").write_text(json.dumps({"device": "NVIDIA H200", "results": steps}))
    corr = [dict(case, correlation=5, rows="correlation", impl="e3nn", build_status="timeout", build_peak_rss_gb=20.5,
                 error="cannot build within 240 s / 24 GB (stopped after 240 s at 20.5 GB resident)"),
            dict(case, correlation=5, rows="correlation", impl="gaunt", targets="conv+product", conv_products=1,
                 median_ms=40.0, build_s=0.8, parameters=700000)]
    (folder / "model_step_mace_correlation.json").write_text(json.dumps({"device": "NVIDIA H200", "results": corr}))
    suite = {"date": "2026-12-01", "environment": {"device": "NVIDIA H200", "versions": {"torch": "2.11.0"},
                                                   "missing": {"fairchem.core": "fairchem-core: no wheel given"}},
             "stages": [{"name": "tests-triton", "status": "ok", "seconds": 80, "budget_s": 100,
                         "summary": "60 passed, 1 failed",
                         "tests": {"failures": [{"test": "tests/triton/test_gpu.py::test_x", "message": "boom"}]}}]}
    (folder / "suite.json").write_text(json.dumps(suite))


def test_tables_from_a_suite_folder_carry_every_ratio_and_target(tmp_path):
    folder = tmp_path / "suite"
    _write_suite_folder(folder)
    report = result_tables.suite_report(folder)
    assert "| conv | 2 | 128 | 0.400 / 1.0 | 30 |" in report  # triton times and peak memory
    assert "| conv fwd+bwd L=2: triton vs cueq | >= 3x | 2.50x | no |" in report
    assert "| conv fwd+bwd L=3: triton vs cueq | >= 3x | 4.00x | yes |" in report
    assert "| conv fwd+bwd L=4: triton vs cueq | >= 3x | 3.00x | yes |" in report
    assert "conv fwd+bwd L=2: triton vs e3nn" not in report  # cuEquivariance present: its targets apply
    assert "| symcon fwd+bwd L=2: triton vs cueq | >= 2x | 1.50x | no |" in report
    assert "| symcon fwd+bwd L=3: triton vs cueq | >= 2x | not measured | — |" in report
    assert "MACE step L=2 C=128 [conv+product] K=1: gaunt-triton vs e3nn | >= 2x | 3.00x | yes" in report
    assert "MACE step L=2 C=128 [product] K=1: gaunt-triton vs e3nn | >= 2x | 1.50x | no" in report
    assert "ValueError: too wide" in report
    assert "cannot build within 240 s / 24 GB" in report and "| 0.80 |" in report
    assert "tests/triton/test_gpu.py::test_x" in report and "fairchem-core: no wheel given" in report


def test_tables_of_the_committed_cpu_results_keep_their_numbers():
    data = json.loads((BENCH / "results" / "model_step_cpu.json").read_text())
    table = result_tables.model_step_summary(data)
    for row in data["results"]:
        if row["impl"] == "gaunt-torch" and "speedup_vs_upstream" in row:
            assert f"{row['speedup_vs_upstream']:.2f}x |" in table


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given without CUDA")
def test_cuda_device_plugin_refuses_without_cuda(tmp_path):
    (tmp_path / "test_x.py").write_text("def test_x():\n    pass\n")
    env = dict(os.environ, PYTHONPATH=str(BENCH), GAUNT_TEST_DEVICE="cuda")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "pytest_cuda_device", "-p", "no:cacheprovider",
                           str(tmp_path / "test_x.py"), "--rootdir", str(tmp_path)], capture_output=True, text=True,
                          env=env, cwd=str(tmp_path), timeout=120)
    assert proc.returncode != 0
    assert "GAUNT_TEST_DEVICE=cuda" in proc.stdout + proc.stderr


def test_cuda_device_plugin_puts_tables_and_new_tensors_on_its_device(tmp_path):
    """With the device set to ``cpu`` the plugin must leave tensors where they are; the ``meta`` device
    shows where a GPU run puts them (no CUDA needed)."""
    (tmp_path / "test_x.py").write_text(
        "import numpy as np, torch\n"
        "def test_x():\n"
        "    assert torch.zeros(2).device.type == 'meta'\n"
        "    assert torch.from_numpy(np.ones(3)).device.type == 'meta'\n")
    env = dict(os.environ, PYTHONPATH=str(BENCH), GAUNT_TEST_DEVICE="meta")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "pytest_cuda_device", "-p", "no:cacheprovider",
                           str(tmp_path / "test_x.py"), "--rootdir", str(tmp_path)], capture_output=True, text=True,
                          env=env, cwd=str(tmp_path), timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:]


def test_torch_scatter_shim_matches_torch_scatter():
    torch_scatter = pytest.importorskip("torch_scatter")
    import importlib.util
    spec = importlib.util.spec_from_file_location("shim", BENCH / "shims" / "torch_scatter" / "__init__.py")
    shim = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(shim)
    src = torch.randn(7, 5, 3)
    for reduce in ("sum", "mean", "min", "max", "mul"):
        idx = torch.tensor([0, 2, 2, 4, 0, 4, 4])
        assert torch.equal(shim.scatter(src, idx, 0, dim_size=6, reduce=reduce),
                           torch_scatter.scatter(src, idx, 0, dim_size=6, reduce=reduce)), reduce
        full = torch.randint(0, 4, src.shape)
        assert torch.allclose(shim.scatter(src, full, -2, reduce=reduce),
                              torch_scatter.scatter(src, full, -2, reduce=reduce)), reduce
    with pytest.raises(ValueError, match="unknown reduce 'median'"):
        shim.scatter(src, idx, 0, reduce="median")


def test_tables_of_a_suite_folder_written_while_a_stage_runs(tmp_path):
    """suite.json is saved when a stage starts, before it has a status: the tables show it as running."""
    folder = tmp_path / "suite"
    _write_suite_folder(folder)
    suite = json.loads((folder / "suite.json").read_text())
    suite["stages"].append({"name": "eqv2-step", "what": "EquiformerV2", "budget_s": 50})
    (folder / "suite.json").write_text(json.dumps(suite))
    assert "| eqv2-step | running |" in result_tables.suite_report(folder)
