"""benchmarks/gpu_ops.py runs end to end (--cpu-smoke: Triton interpreter, tiny shapes) and refuses
clearly without CUDA."""
import json
import os
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "benchmarks", "gpu_ops.py")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_gpu_benchmark_refuses_without_cuda():
    proc = subprocess.run([sys.executable, SCRIPT], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "no CUDA device" in proc.stderr


def test_gpu_benchmark_cpu_smoke(tmp_path):
    pytest.importorskip("triton")
    out = tmp_path / "smoke.json"
    proc = subprocess.run([sys.executable, SCRIPT, "--cpu-smoke", "--ops", "conv", "--lmax", "1",
                           "--max-e3nn-l", "0", "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["info"]["device"].startswith("cpu-smoke")
    impls = {(r["op"], r["impl"]) for r in data["results"] if "error" not in r}
    assert {("conv", "triton"), ("conv", "torch-grid"), ("message", "triton-atomic"),
            ("message", "triton-deterministic")} <= impls
    assert all(r["rel_err_vs_torch"] < 1e-5 for r in data["results"] if r["rel_err_vs_torch"] is not None)


def test_gpu_benchmark_rows_carry_peak_memory_and_a_spent_budget_skips_the_rest(tmp_path):
    pytest.importorskip("triton")
    out = tmp_path / "smoke.json"
    proc = subprocess.run([sys.executable, SCRIPT, "--cpu-smoke", "--ops", "conv", "self", "--lmax", "1",
                           "--max-e3nn-l", "0", "--no-message", "--time-budget", "0", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = json.loads(out.read_text())["results"]
    assert [(r["op"], r["impl"], r["error"]) for r in rows] == [
        ("conv", "(all)", "skipped: the time budget of 0 s was spent"),
        ("self", "(all)", "skipped: the time budget of 0 s was spent")]
    proc = subprocess.run([sys.executable, SCRIPT, "--cpu-smoke", "--ops", "self", "--lmax", "1", "--max-e3nn-l", "0",
                           "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = json.loads(out.read_text())["results"]
    assert {r["impl"] for r in rows} == {"triton", "torch-grid"}
    assert all("fwdbwd_peak_mib" in r and r["fwdbwd_peak_mib"] is None for r in rows)  # measured on CUDA only
