"""The acac example configs: they differ only in the Gaunt keys, and the Gaunt one builds a Gaunt model."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ACAC, tiny_model, venv_bin

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "mace"


def _settings(path):
    lines = [l for l in path.read_text().splitlines() if l.strip() and not l.lstrip().startswith("#")]
    return dict(l.split(":", 1) for l in lines)


def test_configs_differ_only_in_the_gaunt_keys():
    upstream, gaunt = _settings(EXAMPLES / "acac_upstream.yaml"), _settings(EXAMPLES / "acac_gaunt.yaml")
    added = {k: v.strip() for k, v in gaunt.items() if k not in upstream}
    assert added == {"tensor_product": "gaunt", "gaunt_targets": "[conv, product]"}
    assert {k: v for k, v in gaunt.items() if k not in added and k != "name"} == {
        k: v for k, v in upstream.items() if k != "name"}


@pytest.mark.slow
def test_gaunt_example_builds_with_gaunt_run(tmp_path):
    # the data preparation the configs' header names (the gaunt-compare example's script)
    subprocess.run([sys.executable, str(EXAMPLES.parent / "compare" / "prepare_acac.py"), "--src", str(ACAC),
                    "--n-train", "500", "--n-test", "0", "--out", str(tmp_path / "data")],
                   check=True, capture_output=True)
    cfg = (EXAMPLES / "acac_gaunt.yaml").read_text().replace("max_num_epochs: 50", "max_num_epochs: 1")
    (tmp_path / "acac_gaunt.yaml").write_text(cfg + "dry_run: True\n")
    env = dict(os.environ)
    env.pop("GAUNT_PLUGINS_AUTOPATCH", None)
    proc = subprocess.run([venv_bin("gaunt-run"), "mace_run_train", "--config", "acac_gaunt.yaml"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    log = next((tmp_path / "logs").glob("acac_gaunt_run-*.log")).read_text()
    assert "gaunt-plugins: Gaunt tensor products for conv and product (method auto)" in log
    assert "32x0e+32x1o+32x2e" in log


@pytest.mark.slow
@pytest.mark.parametrize("script", [False, True], ids=["eager", "torchscript"])
def test_md_example_runs_a_saved_gaunt_model_and_prints_its_speed(tmp_path, script):
    """``examples/mace/md.py``: NVE MD of acac through MACECalculator with a saved Gaunt model (as
    TorchScript too), energies printed per step, the speed and the energy deviation at the end."""
    import re

    import mace  # noqa: F401
    import torch

    from gaunt_plugins.adapters.mace_blocks import gauntify_model

    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        model, _ = gauntify_model(tiny_model("8x0e+8x1o"))
    finally:
        torch.set_default_dtype(previous)
    torch.save(model, tmp_path / "gaunt.model")
    cmd = [sys.executable, str(EXAMPLES / "md.py"), "--model", str(tmp_path / "gaunt.model"), "--structure",
           str(ACAC / "train_300K.xyz"), "--steps", "4", "--print-every", "2", "--timestep", "0.25", "--threads", "1"]
    proc = subprocess.run(cmd + (["--script"] if script else []), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    steps = [int(m.group(1)) for m in re.finditer(r"^step\s+(\d+)\s", proc.stdout, re.M)]
    assert steps == [0, 2, 4], proc.stdout
    speed = re.search(r"^speed: ([\d.]+) ms/step, ([\d,]+) atom-steps/s, ([\d.]+) ns/day \(15 atoms, (\w+), float64",
                      proc.stdout, re.M)
    assert speed and float(speed.group(1)) > 0, proc.stdout
    assert speed.group(4) == ("TorchScript" if script else "eager")
    drift = float(re.search(r"largest \|E_tot - E_tot\(0\)\| = (\S+) eV", proc.stdout).group(1))
    assert drift < 1e-3, proc.stdout  # 4 steps of 0.25 fs: a wrong force would show far more
