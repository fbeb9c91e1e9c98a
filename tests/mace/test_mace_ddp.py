"""MACE's own ``--distributed`` under ``torchrun`` (2 processes, gloo on CPU) with a Gaunt model
matches a single-process run of the same global batch.

The training set is one global batch (8 configurations: 4 per process, or 8 in one process), so
both runs take the same optimisation steps whatever order the samplers choose; scaling is off and
E0s are given, so no statistic depends on how the data are split between processes.
"""
from __future__ import annotations

import json
import os
import subprocess

import pytest

import mace  # noqa: F401
import torch

from conftest import acac_frames, tiny_config, venv_bin, write_frames

pytestmark = pytest.mark.slow


def _run(cmd, cwd, env):
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=1200)
    if proc.returncode != 0:
        raise AssertionError(f"{cmd} failed ({proc.returncode}):\n{proc.stdout[-5000:]}\n{proc.stderr[-5000:]}")
    return proc


def _eval_losses(work, name):
    """``{epoch: validation loss}`` (``None``: before training; both ranks may log that one)."""
    (results,) = (work / "results").glob(f"{name}_run-*_train.txt")
    rows = [json.loads(line) for line in results.read_text().splitlines()]
    return {row["epoch"]: row["loss"] for row in rows if row["mode"] == "eval"}


def test_ddp_two_processes_match_one(tmp_path):
    frames = acac_frames()
    write_frames(tmp_path / "train.xyz", frames[:8])
    write_frames(tmp_path / "valid.xyz", frames[8:12])
    common = dict(tensor_product="gaunt", scaling="no_scaling", max_num_epochs=2, valid_batch_size=2,
                  lr=0.005)
    (tmp_path / "single.yaml").write_text(tiny_config(tmp_path, "single", batch_size=8, **common))
    (tmp_path / "ddp.yaml").write_text(tiny_config(tmp_path, "ddp", batch_size=4, **common))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("GAUNT_PLUGINS_AUTOPATCH", None)
    gaunt_run = venv_bin("gaunt-run")
    # the launcher patches the torchrun process and, through the environment, both workers
    _run([gaunt_run, "torchrun", "--standalone", "--nproc_per_node", "2", venv_bin("mace_run_train"),
          "--config", "ddp.yaml", "--distributed", "--launcher", "torchrun"], tmp_path, env)
    _run([gaunt_run, "mace_run_train", "--config", "single.yaml"], tmp_path, env)

    log = next((tmp_path / "logs").glob("ddp_run-*.log")).read_text()
    assert "Processes: 2" in log and "GauntProductBasisBlock" in log
    ddp = torch.load(tmp_path / "ddp.model", weights_only=False)
    single = torch.load(tmp_path / "single.model", weights_only=False)
    for (name, a), b in zip(ddp.state_dict().items(), single.state_dict().values()):
        assert torch.allclose(a, b, rtol=1e-7, atol=1e-9), name
    losses_ddp, losses_single = _eval_losses(tmp_path, "ddp"), _eval_losses(tmp_path, "single")
    assert set(losses_ddp) == set(losses_single) == {None, 0, 1}
    assert losses_single[1] < losses_single[None]  # it trained
    assert all(abs(losses_ddp[k] - losses_single[k]) <= 1e-7 * abs(losses_single[k]) for k in losses_single), (
        losses_ddp, losses_single)
