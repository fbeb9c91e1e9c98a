"""End to end: the stock ``mace_run_train`` with ``tensor_product: gaunt`` in its YAML, and what MACE
users do with the result (calculator MD, ``mace_eval_configs``, TorchScript, restart).

The stock command is made to accept the key by the opt-in automatic hook
(``GAUNT_PLUGINS_AUTOPATCH=1`` and the launcher's ``sitecustomize`` directory on ``PYTHONPATH``),
exactly what ``gaunt-run`` exports for the processes it starts.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import mace  # noqa: F401
import numpy as np
import torch

from conftest import acac_batch, tiny_config, venv_bin

pytestmark = pytest.mark.slow


def hooked_env():
    """The environment ``gaunt-run`` gives its child processes."""
    from gaunt_plugins.patches.launcher import hook_environment

    env = hook_environment()
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def run(cmd, cwd, env=None, timeout=900):
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"{cmd} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def eval_losses(work: Path, name: str):
    """Validation losses MACE recorded: ``{epoch: loss}`` (``None`` = before training)."""
    (results,) = (work / "results").glob(f"{name}_run-*_train.txt")
    losses = {}
    for line in results.read_text().splitlines():
        row = json.loads(line)
        if row["mode"] == "eval":
            losses[row["epoch"]] = row["loss"]
    return losses


@pytest.fixture(scope="module")
def trained(acac_subset, tmp_path_factory):
    """A Gaunt MACE trained 2 epochs (with EMA) by the stock CLI from a YAML with the key."""
    work = tmp_path_factory.mktemp("gaunt_train")
    (work / "cfg.yaml").write_text(
        tiny_config(acac_subset, "gaunt", tensor_product="gaunt", gaunt_targets=["conv", "product"],
                    gaunt_conv_products=2, ema=True, ema_decay=0.9)
    )
    proc = run([venv_bin("mace_run_train"), "--config", "cfg.yaml"], work, hooked_env())
    return work, proc


def test_stock_cli_trains_with_the_yaml_key_and_the_loss_falls(trained):
    work, proc = trained
    log = next((work / "logs").glob("gaunt_run-*.log")).read_text()
    assert "gaunt-plugins: Gaunt tensor products for conv and product" in log
    assert "interactions.1: RealAgnosticResidualInteractionBlock -> GauntRealAgnosticResidualInteractionBlock" in log
    losses = eval_losses(work, "gaunt")
    assert set(losses) == {None, 0, 1}
    assert losses[1] < losses[None], losses

    from gaunt_plugins.adapters.mace_blocks import GauntProductBasisBlock, is_gaunt_model

    model = torch.load(work / "gaunt.model", weights_only=False, map_location="cpu")
    assert is_gaunt_model(model) and isinstance(model.products[0], GauntProductBasisBlock)
    # gaunt_conv_products is stored in the saved model; the first interaction (scalar node features)
    # is exact with one product
    assert [block.conv_tp.products for block in model.interactions] == [1, 2]
    assert "2 product(s) per channel in the convolution" in log


def test_compiled_model_matches_the_saved_model(trained, acac_subset):
    """MACE writes ``<name>_compiled.model`` (TorchScript) and swallows failures: check it exists
    and computes what the pickled model computes."""
    work, _ = trained

    compiled = torch.jit.load(str(work / "gaunt_compiled.model"), map_location="cpu")
    model = torch.load(work / "gaunt.model", weights_only=False, map_location="cpu")
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        batch = acac_batch(2)
        a = model(batch, training=False, compute_force=True)
        b = compiled(batch, training=False, compute_force=True)
    finally:
        torch.set_default_dtype(previous)
    assert torch.allclose(a["energy"], b["energy"], atol=1e-10)
    assert torch.allclose(a["forces"], b["forces"], atol=1e-10)


def test_calculator_md_and_eval_configs(trained, acac_subset):
    """``MACECalculator(model_paths=...)`` runs MD on the Gaunt model; ``mace_eval_configs`` evaluates it.
    Neither needs the patch: only gaunt-plugins importable."""
    work, _ = trained
    script = f"""
import numpy as np, ase.io
from ase import units
from ase.md.verlet import VelocityVerlet
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
from mace.calculators import MACECalculator
import mace.modules
assert "GauntRealAgnosticResidualInteractionBlock" not in mace.modules.interaction_classes  # not patched
atoms = ase.io.read({str(acac_subset / 'test.xyz')!r}, index=0)
atoms.calc = MACECalculator(model_paths={str(work / 'gaunt.model')!r}, device="cpu", default_dtype="float64")
MaxwellBoltzmannDistribution(atoms, temperature_K=300, rng=np.random.default_rng(0))
dyn = VelocityVerlet(atoms, 0.5 * units.fs)
energies = []
def record():
    energies.append(atoms.get_potential_energy() + atoms.get_kinetic_energy())
dyn.attach(record, interval=1)
dyn.run(10)
e = np.array(energies)
assert np.isfinite(e).all() and np.isfinite(atoms.get_forces()).all()
print("DRIFT", abs(e[-1] - e[0]), "STEPS", len(e))
"""
    proc = run([sys.executable, "-c", script], work)
    drift = float(proc.stdout.split("DRIFT")[1].split()[0])
    assert "STEPS 11" in proc.stdout
    assert drift < 0.05, proc.stdout  # eV over 10 steps of 0.5 fs: forces are the energy's gradient

    out = work / "eval.xyz"
    run([venv_bin("mace_eval_configs"), "--configs", str(acac_subset / "test.xyz"),
         "--model", str(work / "gaunt.model"), "--output", str(out), "--default_dtype", "float64"], work)
    import ase.io

    frames = ase.io.read(out, index=":")
    assert len(frames) == 6 and all(np.isfinite(f.info["MACE_energy"]) for f in frames)


def test_restart_continues_from_the_checkpoint(trained, acac_subset):
    work, _ = trained
    cfg = (work / "cfg.yaml").read_text().replace("max_num_epochs: 2", "max_num_epochs: 3")
    (work / "cfg_restart.yaml").write_text(cfg + "restart_latest: True\n")
    run([venv_bin("mace_run_train"), "--config", "cfg_restart.yaml"], work, hooked_env())
    log = "".join(p.read_text() for p in (work / "logs").glob("gaunt_run-*.log"))
    assert "Loading checkpoint" in log and "epoch-1" in log
    losses = eval_losses(work, "gaunt")
    assert 2 in losses and 0 in losses  # the new epoch was appended to the same run


MISMATCH = "mace_run_train: error: "  # a refused setting: this one line on stderr, no traceback


def _snapshot(work: Path):
    """The bytes of every checkpoint, model and results file of a run folder."""
    files = list((work / "checkpoints").glob("*")) + list(work.glob("*.model")) + list((work / "results").glob("*"))
    return {str(p.relative_to(work)): p.read_bytes() for p in files}


def _restart_config(cfg: str, **settings) -> str:
    """``cfg`` without its Gaunt keys, with ``settings`` instead, one more epoch and ``restart_latest``."""
    lines = [line for line in cfg.splitlines() if not line.startswith(("tensor_product", "gaunt_", "max_num_epochs"))]
    lines += [f"{k}: {v}" for k, v in settings.items()] + ["max_num_epochs: 5", "restart_latest: True"]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("switch", ["e3nn", "targets", "products"])
def test_restart_across_a_switch_of_the_gaunt_settings_is_refused(trained, switch):
    """A Gaunt run restarted as e3nn, or with other targets, or another number of products per
    channel: refused with the checkpoint and both settings named, and nothing of the earlier run is
    overwritten."""
    from gaunt_plugins.adapters.mace_config import DEFAULT_CONV_PRODUCTS
    from gaunt_plugins.patches.mace_restart import describe

    work, _ = trained
    cfg = (work / "cfg.yaml").read_text()
    products = int(next((line.split(":")[1] for line in cfg.splitlines() if line.startswith("gaunt_conv_products")),
                        DEFAULT_CONV_PRODUCTS))
    recorded = {"tensor_product": "gaunt", "gaunt_targets": ["conv", "product"], "gaunt_conv_products": products}
    settings = {"e3nn": {"tensor_product": "e3nn"},
                "targets": {"tensor_product": "gaunt", "gaunt_targets": ["product"]},
                "products": dict(recorded, gaunt_conv_products=products + 1)}[switch]
    yaml_settings = {k: f"[{', '.join(v)}]" if isinstance(v, list) else v for k, v in settings.items()}
    (work / "cfg_switch.yaml").write_text(_restart_config(cfg, **yaml_settings))
    before = _snapshot(work)
    proc = subprocess.run([venv_bin("mace_run_train"), "--config", "cfg_switch.yaml"], cwd=work, env=hooked_env(),
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    (message,) = [line for line in proc.stderr.splitlines() if line.startswith(MISMATCH)]
    assert "restart_latest: the checkpoint " + str(work / "checkpoints" / "gaunt_run-1_epoch-") in message
    assert f"was written with {describe(recorded)}, and this run has {describe(settings)}" in message
    assert "would train again from epoch 0" in message
    assert _snapshot(work) == before


def test_restart_of_an_upstream_run_as_gaunt_is_refused_and_as_e3nn_continues(acac_subset, tmp_path):
    """An e3nn run of stock MACE (no patch, so no gaunt-plugins record in its checkpoints): restarting
    it with tensor_product: gaunt is refused before anything is written; with the same settings the
    restart continues from its checkpoint."""
    from gaunt_plugins.patches.mace_restart import describe, run_settings

    cfg = tiny_config(acac_subset, "up", max_num_epochs=1)
    (tmp_path / "cfg.yaml").write_text(cfg)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("GAUNT_PLUGINS_AUTOPATCH", None)
    run([venv_bin("mace_run_train"), "--config", "cfg.yaml"], tmp_path, env)
    before = _snapshot(tmp_path)
    (tmp_path / "cfg_gaunt.yaml").write_text(_restart_config(cfg, tensor_product="gaunt"))
    proc = subprocess.run([venv_bin("mace_run_train"), "--config", "cfg_gaunt.yaml"], cwd=tmp_path,
                          env=hooked_env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    (message,) = [line for line in proc.stderr.splitlines() if line.startswith(MISMATCH)]
    assert str(tmp_path / "checkpoints" / "up_run-1_epoch-0.pt") in message
    assert "written with no gaunt-plugins record (written by MACE without the patch: tensor_product: e3nn)" in message
    default = describe(run_settings(argparse.Namespace(tensor_product="gaunt", max_ell=2)))  # the config's defaults
    assert f"this run has {default}" in message
    assert "of its tensors do not fit this model" in message
    assert _snapshot(tmp_path) == before

    (tmp_path / "cfg_same.yaml").write_text(_restart_config(cfg).replace("max_num_epochs: 5", "max_num_epochs: 2"))
    run([venv_bin("mace_run_train"), "--config", "cfg_same.yaml"], tmp_path, hooked_env())
    log = "".join(p.read_text() for p in (tmp_path / "logs").glob("up_run-*.log"))
    assert "Loading checkpoint" in log and "epoch-0" in log
    assert 1 in eval_losses(tmp_path, "up")  # the second epoch, trained after the restart


def test_restart_from_a_truncated_checkpoint_names_the_file(trained, tmp_path):
    """``restart_latest`` whose newest checkpoint is truncated: one line naming the file and what was expected,
    status 2, no traceback, and nothing of the earlier run is overwritten (MACE would skip the file and train
    again from epoch 0)."""
    import shutil

    work = tmp_path / "run"
    shutil.copytree(trained[0], work)
    newest = max((work / "checkpoints").glob("gaunt_run-1_epoch-*.pt"), key=lambda p: int(p.stem.split("-")[-1]))
    newest.write_bytes(newest.read_bytes()[:1000])
    (work / "cfg_cut.yaml").write_text((work / "cfg.yaml").read_text() + "restart_latest: True\n")
    before = _snapshot(work)
    proc = subprocess.run([venv_bin("mace_run_train"), "--config", "cfg_cut.yaml"], cwd=work, env=hooked_env(),
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    (message,) = [line for line in proc.stderr.splitlines() if line.startswith(MISMATCH)]
    assert f"restart_latest: cannot read the checkpoint {newest} (1000 bytes" in message
    assert "expected a checkpoint written by mace_run_train" in message
    assert _snapshot(work) == before


def test_gaunt_keys_without_tensor_product_end_the_run_with_one_line(acac_subset, tmp_path):
    """``gaunt_targets`` without ``tensor_product: gaunt``: refused (not ignored) before training, one line
    naming the key and what to add, status 2."""
    (tmp_path / "cfg.yaml").write_text(tiny_config(acac_subset, "keys", gaunt_targets=["conv"], dry_run=True))
    proc = subprocess.run([venv_bin("mace_run_train"), "--config", "cfg.yaml"], cwd=tmp_path, env=hooked_env(),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        "mace_run_train: error: gaunt_targets is set but tensor_product is e3nn (the default): the gaunt_* keys "
        "configure Gaunt tensor products and take effect only with them. Add `tensor_product: gaunt` (command line "
        "`--tensor_product gaunt`), or remove gaunt_targets")


def test_a_disabled_patch_says_so(acac_subset, tmp_path):
    """``GAUNT_PLUGINS_DISABLED=mace`` under the hook: besides MACE's own "unrecognized arguments" the user is
    told that the patch is disabled, and by which variable."""
    (tmp_path / "cfg.yaml").write_text(tiny_config(acac_subset, "off", tensor_product="gaunt", dry_run=True))
    env = dict(hooked_env(), GAUNT_PLUGINS_DISABLED="mace")
    proc = subprocess.run([venv_bin("mace_run_train"), "--config", "cfg.yaml"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0 and "unrecognized arguments: --tensor_product=gaunt" in proc.stderr
    assert "the 'mace' patch is disabled by GAUNT_PLUGINS_DISABLED=mace: mace runs unpatched" in proc.stderr


def test_launcher_and_stock_without_hook(acac_subset, tmp_path):
    """``gaunt-run mace_run_train`` accepts the key; the stock command without the hook refuses it
    (MACE stays exactly upstream unless asked)."""
    (tmp_path / "cfg.yaml").write_text(tiny_config(acac_subset, "launch", tensor_product="gaunt", dry_run=True))
    env = dict(os.environ)
    env.pop("GAUNT_PLUGINS_AUTOPATCH", None)
    proc = subprocess.run([venv_bin("mace_run_train"), "--config", "cfg.yaml"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0 and "unrecognized arguments: --tensor_product=gaunt" in proc.stderr

    run([venv_bin("gaunt-run"), "mace_run_train", "--config", "cfg.yaml"], tmp_path, env)
    log = next((tmp_path / "logs").glob("launch_run-*.log")).read_text()
    assert "GauntProductBasisBlock" in log


MACE_TEST_STYLE = """
import os, subprocess, sys
from pathlib import Path
import mace.cli.run_train

# what MACE's own tests do before starting run_train.py
run_env = os.environ.copy()
sys.path.insert(0, str(Path(__file__).parent))
run_env["PYTHONPATH"] = ":".join(sys.path)
cmd = [sys.executable, mace.cli.run_train.__file__, "--config=cfg.yaml", "--tensor_product=gaunt"]
sys.exit(subprocess.run(cmd, env=run_env).returncode)
"""


def test_launcher_hook_reaches_children_that_rebuild_pythonpath_from_sys_path(acac_subset, tmp_path):
    """``gaunt-run script.py``, where the script starts ``run_train.py`` with ``PYTHONPATH`` set to
    ``":".join(sys.path)`` (MACE's test suite): the child still patches MACE and trains with
    ``--tensor_product=gaunt``."""
    (tmp_path / "cfg.yaml").write_text(tiny_config(acac_subset, "rebuilt", max_num_epochs=1))
    (tmp_path / "mace_style_test.py").write_text(MACE_TEST_STYLE)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("GAUNT_PLUGINS_AUTOPATCH", None)
    run([venv_bin("gaunt-run"), "mace_style_test.py"], tmp_path, env)
    log = next((tmp_path / "logs").glob("rebuilt_run-*.log")).read_text()
    assert "gaunt-plugins: Gaunt tensor products for" in log
    assert set(eval_losses(tmp_path, "rebuilt")) == {None, 0}  # trained its epoch
    assert any("Gaunt" in type(m).__name__ for m in torch.load(tmp_path / "rebuilt.model", weights_only=False,
                                                                   map_location="cpu").modules())


def test_installed_pth_hook(tmp_path):
    """``gaunt-run --install-hook`` writes a .pth that patches MACE on import when
    GAUNT_PLUGINS_AUTOPATCH=1, does nothing otherwise, never replaces a foreign file, and is removable."""
    site = tmp_path / "site"
    env = dict(os.environ)
    env.pop("GAUNT_PLUGINS_AUTOPATCH", None)
    gaunt_run = venv_bin("gaunt-run")
    run([gaunt_run, "--install-hook", "--site-dir", str(site)], tmp_path, env)
    pth = site / "gaunt_plugins_autopatch.pth"
    assert pth.exists()
    probe = (f"import site; site.addsitedir({str(site)!r}); import mace.modules; "
             "print('PATCHED', 'GauntRealAgnosticInteractionBlock' in mace.modules.interaction_classes)")
    off = run([sys.executable, "-c", probe], tmp_path, env)
    assert "PATCHED False" in off.stdout
    on = run([sys.executable, "-c", probe], tmp_path, dict(env, GAUNT_PLUGINS_AUTOPATCH="1"))
    assert "PATCHED True" in on.stdout
    disabled = run([sys.executable, "-c", probe], tmp_path,
                   dict(env, GAUNT_PLUGINS_AUTOPATCH="1", GAUNT_PLUGINS_DISABLED="mace"))
    assert "PATCHED False" in disabled.stdout

    run([gaunt_run, "--uninstall-hook", "--site-dir", str(site)], tmp_path, env)
    assert not pth.exists()
    pth.write_text("import something_of_the_users\n")
    proc = subprocess.run([gaunt_run, "--install-hook", "--site-dir", str(site)], cwd=tmp_path, env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 1 and "not written by gaunt-plugins" in proc.stderr
    assert pth.read_text() == "import something_of_the_users\n"


def test_stock_cli_trains_per_path_convolutions_saves_and_restarts_them(acac_subset, tmp_path):
    """``gaunt_conv_products: paths`` through the stock command: the saved model has per-path convolutions (MACE's
    convolution weights in MACE's shapes), and ``restart_latest`` with the same settings continues the run."""
    from gaunt_plugins.layers import GauntPathConvolution

    cfg = tiny_config(acac_subset, "paths", tensor_product="gaunt", gaunt_targets=["conv", "product"],
                      gaunt_conv_products="paths")
    (tmp_path / "cfg.yaml").write_text(cfg)
    run([venv_bin("mace_run_train"), "--config", "cfg.yaml"], tmp_path, hooked_env())
    log = next((tmp_path / "logs").glob("paths_run-*.log")).read_text()
    assert "one Gaunt path per MACE path in the convolution" in log
    model = torch.load(tmp_path / "paths.model", weights_only=False, map_location="cpu")
    assert all(isinstance(block.conv_tp, GauntPathConvolution) for block in model.interactions)
    (tmp_path / "cfg_restart.yaml").write_text(_restart_config(
        cfg, tensor_product="gaunt", gaunt_targets="[conv, product]", gaunt_conv_products="paths"))
    run([venv_bin("mace_run_train"), "--config", "cfg_restart.yaml"], tmp_path, hooked_env())
    log = "".join(p.read_text() for p in (tmp_path / "logs").glob("paths_run-*.log"))
    assert "Loading checkpoint" in log
    assert 4 in eval_losses(tmp_path, "paths")  # the restart trained on to its 5 epochs
