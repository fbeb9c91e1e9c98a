"""examples/equiformer_v2: the config builds the Gaunt model (and the stock one without the key),
and the offline dataset script writes a readable S2EF dataset."""
from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytest.importorskip("fairchem.core")

import gaunt_plugins  # noqa: E402
from eqv2_testing import build_model  # noqa: E402

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "equiformer_v2"


def test_example_config_selects_gaunt_and_stock_without_key():
    config = yaml.safe_load((EXAMPLE / "gaunt_emt.yml").read_text())
    assert config["model"]["backbone"]["tensor_product"] == "gaunt"
    with gaunt_plugins.patched("fairchem"):
        model = build_model(config["model"])
        assert type(model.backbone).__name__ == "GauntEquiformerV2Backbone"
        stock_cfg = copy.deepcopy(config["model"])
        for key in [k for k in stock_cfg["backbone"] if k == "tensor_product" or k.startswith("gaunt_")]:
            del stock_cfg["backbone"][key]
        stock = build_model(stock_cfg)
        assert type(stock.backbone).__name__ == "EquiformerV2Backbone"
    n_gaunt = sum(p.numel() for p in model.parameters())
    n_stock = sum(p.numel() for p in stock.parameters())
    assert n_gaunt > n_stock


def test_example_dataset_script(tmp_path):
    res = subprocess.run(
        [sys.executable, str(EXAMPLE / "make_emt_dataset.py"), "--out", str(tmp_path), "--n-train", "3", "--n-val", "2"],
        capture_output=True, text=True, timeout=300,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    from fairchem.core.datasets import AseDBDataset

    ds = AseDBDataset(config={"src": str(tmp_path / "train.db"), "a2g_args": {"r_energy": True, "r_forces": True}})
    assert len(ds) == 3
    sample = ds[0]
    assert sample.forces.shape == (sample.natoms, 3)
    assert float(abs(sample.energy)) > 0
