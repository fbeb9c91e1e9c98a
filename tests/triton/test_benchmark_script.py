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
