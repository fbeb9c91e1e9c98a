"""A training child's instrumentation of MACE and fairchem (training loop, epochs, steps, imports, the
SIGTERM handler, ``sys.argv``) is in place while the framework runs and undone when the run ends."""
from __future__ import annotations

import importlib
import signal
import sys

import pytest

from gaunt_plugins.compare._child import RunRecorder


def _owned(owner, names):
    """``owner``'s own entries for ``names`` (absent where inherited): what an exact restore must give back."""
    return {name: vars(owner).get(name, "<inherited>") for name in names}


def test_the_budgets_sigterm_handler_is_installed_only_while_the_recorder_runs():
    before = signal.getsignal(signal.SIGTERM)
    with RunRecorder(None) as recorder:
        assert signal.getsignal(signal.SIGTERM) is not before
        recorder.budget.start()
        signal.raise_signal(signal.SIGTERM)  # inside the training loop: stop after this epoch
        assert recorder.budget.stop_requested
    assert signal.getsignal(signal.SIGTERM) is before


def test_the_mace_child_leaves_mace_as_it_found_it(tmp_path, monkeypatch):
    pytest.importorskip("mace")
    import mace.tools
    from mace.cli import run_train

    from gaunt_plugins.compare import _mace_child

    train_module = importlib.import_module("mace.tools.train")
    owners = {"train_module": (train_module, ("train", "train_one_epoch")), "tools": (mace.tools, ("train",)),
              "run_train": (run_train, ("get_swa",))}
    before = {key: _owned(owner, names) for key, (owner, names) in owners.items()}
    handler, argv = signal.getsignal(signal.SIGTERM), list(sys.argv)
    during = {}

    def fake_main():  # stands in for mace_run_train: what the run sees
        during.update({key: _owned(owner, names) for key, (owner, names) in owners.items()})
        during["argv"] = list(sys.argv)
        during["handler"] = signal.getsignal(signal.SIGTERM)

    monkeypatch.setattr(run_train, "main", fake_main)
    assert _mace_child.main(["--stats", str(tmp_path / "stats.json"), "--", "--name", "x"]) == 0
    assert all(during[key][name] is not before[key][name] for key in owners for name in before[key])
    assert during["argv"] == ["mace_run_train", "--name", "x"] and during["handler"] is not handler
    assert {key: _owned(owner, names) for key, (owner, names) in owners.items()} == before
    assert signal.getsignal(signal.SIGTERM) is handler and sys.argv == argv


def test_the_fairchem_child_leaves_fairchem_as_it_found_it(tmp_path, monkeypatch):
    pytest.importorskip("fairchem.core")
    import fairchem.core._cli as cli
    import fairchem.core.common.utils as utils
    from fairchem.core.trainers.ocp_trainer import OCPTrainer

    from gaunt_plugins.compare import _fairchem_child

    owners = {"trainer": (OCPTrainer, ("train", "_forward", "_backward", "validate")),
              "utils": (utils, ("_import_local_file",))}
    before = {key: _owned(owner, names) for key, (owner, names) in owners.items()}
    handler, argv = signal.getsignal(signal.SIGTERM), list(sys.argv)
    during = {}

    def fake_main():  # stands in for fairchem's entry point: what the run sees
        during.update({key: _owned(owner, names) for key, (owner, names) in owners.items()})
        during["argv"] = list(sys.argv)
        during["handler"] = signal.getsignal(signal.SIGTERM)

    monkeypatch.setattr(cli, "main", fake_main)
    assert _fairchem_child.main(["--stats", str(tmp_path / "stats.json"), "--", "--mode", "train"]) == 0
    assert all(during[key][name] is not before[key][name] for key in owners for name in before[key])
    assert during["argv"] == ["fairchem", "--mode", "train"] and during["handler"] is not handler
    assert {key: _owned(owner, names) for key, (owner, names) in owners.items()} == before
    assert signal.getsignal(signal.SIGTERM) is handler and sys.argv == argv
