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


def _left_as_found(monkeypatch, main, argv, entry, owners, framework_argv) -> None:
    """Run a child's ``main(argv)`` with the framework's entry point ``entry`` (module, name) replaced by a
    stand-in: while it runs, every ``owners`` attribute is the child's, SIGTERM is the budget's and
    ``sys.argv`` is ``framework_argv``; after the run all three are as they were before."""
    def state():
        return {key: _owned(owner, names) for key, (owner, names) in owners.items()}

    before, handler, argv_before, during = state(), signal.getsignal(signal.SIGTERM), list(sys.argv), {}

    def stand_in():
        during.update(state(), argv=list(sys.argv), handler=signal.getsignal(signal.SIGTERM))

    monkeypatch.setattr(*entry, stand_in)
    assert main(argv) == 0
    assert all(during[key][name] is not before[key][name] for key in owners for name in before[key])
    assert during["argv"] == framework_argv and during["handler"] is not handler
    assert state() == before
    assert signal.getsignal(signal.SIGTERM) is handler and sys.argv == argv_before


def test_the_mace_child_leaves_mace_as_it_found_it(tmp_path, monkeypatch):
    pytest.importorskip("mace")
    import mace.tools
    from mace.cli import run_train

    from gaunt_plugins.compare import _mace_child

    owners = {"train_module": (importlib.import_module("mace.tools.train"), ("train", "train_one_epoch")),
              "tools": (mace.tools, ("train",)), "run_train": (run_train, ("get_swa",))}
    _left_as_found(monkeypatch, _mace_child.main, ["--stats", str(tmp_path / "stats.json"), "--", "--name", "x"],
                   (run_train, "main"), owners, ["mace_run_train", "--name", "x"])


def test_the_fairchem_child_leaves_fairchem_as_it_found_it(tmp_path, monkeypatch):
    pytest.importorskip("fairchem.core")
    import fairchem.core._cli as cli
    import fairchem.core.common.utils as utils
    from fairchem.core.trainers.ocp_trainer import OCPTrainer

    from gaunt_plugins.compare import _fairchem_child

    owners = {"trainer": (OCPTrainer, ("train", "_forward", "_backward", "validate")),
              "utils": (utils, ("_import_local_file",))}
    _left_as_found(monkeypatch, _fairchem_child.main,
                   ["--stats", str(tmp_path / "stats.json"), "--", "--mode", "train"], (cli, "main"), owners,
                   ["fairchem", "--mode", "train"])
