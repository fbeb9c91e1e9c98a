"""``tensor_product: gaunt`` builds the Gaunt blocks directly: a body order and degree that upstream MACE
needs minutes and tens of GB to build (correlation 5, max_ell 3) builds in seconds and trains.

MACE's own Clebsch-Gordan instructions and symmetric-contraction U-matrices are never computed for the
replaced blocks (upstream's ``SymmetricContraction`` at 16 channels, max_ell 3, correlation 4 alone took
92 s and 5.7 GB to build on this kind of machine; at 8 channels and correlation 5 it was killed at 24 GB).
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from datetime import datetime

import pytest

import mace  # noqa: F401
import torch

from conftest import tiny_config, venv_bin

pytestmark = pytest.mark.slow

# a parent that reports the peak resident memory of the one child it runs
_MEASURE = ("import json, resource, subprocess, sys; p = subprocess.run(sys.argv[1:]); "
            "print(json.dumps({'rc': p.returncode, 'peak_kib': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))")


def _seconds(log: str, first: str, last: str) -> float:
    """Seconds between the log lines containing ``first`` and ``last`` (MACE's own timestamps)."""
    def stamp(text):
        found = re.search(rf"^(\S+ \S+) INFO: .*{re.escape(text)}", log, re.M)
        assert found, f"no log line with {text!r}"
        return datetime.strptime(found.group(1), "%Y-%m-%d %H:%M:%S.%f")
    return (stamp(last) - stamp(first)).total_seconds()


def test_correlation_5_max_ell_3_builds_in_seconds_and_trains_one_epoch(acac_subset, tmp_path):
    from gaunt_plugins.patches.launcher import hook_environment

    (tmp_path / "cfg.yaml").write_text(tiny_config(acac_subset, "deep", tensor_product="gaunt", num_channels=8,
                                                   max_L=1, max_ell=3, correlation=5, max_num_epochs=1))
    env = dict(hook_environment(), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", _MEASURE, venv_bin("mace_run_train"), "--config", "cfg.yaml"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["rc"] == 0, proc.stderr[-3000:]
    assert result["peak_kib"] < 2 * 1024 * 1024, f"peak memory {result['peak_kib'] / 1024:.0f} MiB"
    log = next((tmp_path / "logs").glob("deep_run-*.log")).read_text()
    assert _seconds(log, "===========MODEL DETAILS", "===========OPTIMIZER INFORMATION") < 10
    assert "Training complete" in log
    model = torch.load(tmp_path / "deep.model", weights_only=False, map_location="cpu")
    assert all(p.symmetric_contractions.correlation == 5 for p in model.products)
