"""The training process of one fairchem (EquiformerV2) variant: fairchem's own entry point, instrumented.

Run by ``gaunt-compare`` as::

    python -m gaunt_plugins.compare._fairchem_child --stats STATS.json --results RESULTS.jsonl
        [--max-seconds S] [--gaunt] [--eval-out EVAL.json --test NAME=PATH ...]
        -- --mode train --config-yml cfg.yml --run-dir DIR ...

With ``--gaunt`` the gaunt-plugins fairchem patch is applied first (what ``gaunt-run`` does), so
``tensor_product: gaunt`` in the model section is understood; without it fairchem runs as upstream.
In both variants the trainer (``OCPTrainer``) is instrumented the same way:

- ``train``: logs the parameter count through fairchem's logger, applies the wall-clock budget
  (an epoch starts only if it is expected to end within it; the checkpoint of the last finished
  epoch is the one fairchem saved), records start and end;
- ``_forward`` / ``_backward``: the wall time of each optimisation step (forward, loss, backward,
  optimiser step) and its loss, one JSON row per step in ``RESULTS.jsonl`` (``mode: opt``);
- ``validate``: fairchem's validation metrics, one row per validation (``mode: eval``), exactly the
  numbers fairchem logs.

After training the best checkpoint (``best_checkpoint.pt``, else ``checkpoint.pt``) is loaded into
the same trainer and evaluated on every ``--test`` set (energy and force MAE/RMSE, forces on the
free atoms when the config evaluates on free atoms, as fairchem does).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Iterator

import numpy as np

from ._child import PREFIX, RunRecorder, apply_gaunt, parse_child_args, replaced
from ._metrics import error_metrics


class _BudgetStop(Exception):
    """Raised at the start of an epoch the budget does not allow; caught around ``train``."""


class _Rows:
    def __init__(self, path):
        self.path = path

    def log(self, row):
        if self.path:
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(row) + "\n")


@contextlib.contextmanager
def _instrumented(recorder: RunRecorder, rows: _Rows, state: dict) -> Iterator[None]:
    """``OCPTrainer``'s training loop, steps and validation wrapped for the block; fairchem's own after it."""
    from fairchem.core.trainers.ocp_trainer import OCPTrainer

    budget = recorder.budget
    original_train = OCPTrainer.train
    original_forward = OCPTrainer._forward
    original_backward = OCPTrainer._backward
    original_validate = OCPTrainer.validate

    def train(self, *args, **kwargs):
        state["trainer"] = self
        model = self._unwrapped_model
        state["steps_per_epoch"] = len(self.train_loader)
        state["start_step"] = self.step
        recorder.training_starts(model, int(self.config["optim"]["max_epochs"]),
                                 model_class=type(getattr(model, "backbone", model)).__name__,
                                 steps_per_epoch=state["steps_per_epoch"])
        try:
            return original_train(self, *args, **kwargs)
        except _BudgetStop:
            return None
        finally:
            _close_epoch(state, recorder)
            recorder.training_ends()

    def _forward(self, batch):
        if self.model.training and state.get("trainer") is self:
            steps = state["steps_per_epoch"]
            index = self.step - 1  # train() sets self.step to the step being taken before _forward
            if index % steps == 0 and state.get("epoch_index") != index // steps:
                epoch = index // steps
                if not budget.allows(epoch):
                    raise _BudgetStop()
                _close_epoch(state, recorder)
                budget.epoch_started()
                state.update(epoch_index=epoch, epoch_start=time.time(), epoch_steps=0)
            state["step_start"] = time.time()
        return original_forward(self, batch)

    def _backward(self, loss):
        value = float(loss.detach().item())
        result = original_backward(self, loss)
        if state.get("step_start") is not None and state.get("trainer") is self:
            rows.log({"loss": value, "time": time.time() - state["step_start"], "mode": "opt",
                      "epoch": state.get("epoch_index"), "step": self.step})
            state["epoch_steps"] = state.get("epoch_steps", 0) + 1
            state["step_start"] = None
            if self.step % state["steps_per_epoch"] == 0:  # the epoch's last step: before validation
                _close_epoch(state, recorder)
        return result

    def validate(self, split="val", disable_tqdm=False):
        start = time.time()
        metrics = original_validate(self, split=split, disable_tqdm=disable_tqdm)
        if split == "val" and state.get("trainer") is self:
            row = {k: float(v["metric"]) for k, v in metrics.items()}
            row.update(mode="eval", epoch=state.get("epoch_index"), fairchem_epoch=float(self.epoch),
                       step=self.step, time=time.time() - start)
            rows.log(row)
        return metrics

    with replaced((OCPTrainer, "train", train), (OCPTrainer, "_forward", _forward),
                  (OCPTrainer, "_backward", _backward), (OCPTrainer, "validate", validate)):
        yield


@contextlib.contextmanager
def _forgiving_imports() -> Iterator[None]:
    """Within the block, fairchem's ``setup_imports`` skips, with a log line, the model files it ships
    whose optional dependencies are missing (``torch_sparse`` for DimeNet/GemNet; the config needs none
    of them) instead of stopping at the first (the same in both variants)."""
    import fairchem.core.common.utils as utils

    original = utils._import_local_file

    def _import_local_file(path, *, project_root):
        try:
            return original(path, project_root=project_root)
        except ImportError as exc:
            logging.info(f"{PREFIX} skipped fairchem module {Path(path).name} ({type(exc).__name__}: {exc})")
            return None

    with replaced((utils, "_import_local_file", _import_local_file)):
        yield


def _close_epoch(state: dict, recorder: RunRecorder) -> None:
    """Record the epoch in progress (called when the next one starts and when training ends)."""
    if state.get("epoch_start") is None:
        return
    recorder.epoch_trained(state["epoch_index"], state["epoch_start"], time.time() - state["epoch_start"],
                           state.get("epoch_steps"))
    state["epoch_start"] = None


# ------------------------------------------------------------------------------------- evaluation
def _dataset_format(path: str) -> str:
    p = Path(path)
    if p.suffix in (".db", ".aselmdb") or (p.is_dir() and any(p.glob("*.db"))):
        return "ase_db"
    if p.suffix == ".lmdb" or (p.is_dir() and any(p.glob("*.lmdb"))):
        return "lmdb"
    return "ase_read"


def evaluate_trainer(trainer, tests: dict) -> dict:
    """Energy and force errors of ``trainer``'s model on each test set (fairchem's own data pipeline)."""
    import copy

    import torch
    from fairchem.core.datasets.base_dataset import create_dataset

    out = {}
    free_only = bool(getattr(trainer, "output_targets", {}).get("forces", {}).get("eval_on_free_atoms", True))
    batch_size = trainer.config["optim"].get("eval_batch_size", trainer.config["optim"].get("batch_size", 1))
    model = trainer.model
    model.eval()
    if trainer.ema:
        trainer.ema.store()
        trainer.ema.copy_to()
    try:
        for name, path in tests.items():
            cfg = copy.deepcopy(trainer.config["dataset"])
            for key in ("splits", "train_split_settings"):
                cfg.pop(key, None)
            cfg.update(src=str(path), format=_dataset_format(path))
            dataset = create_dataset(cfg, "test")
            loader = trainer.get_dataloader(dataset, trainer.get_sampler(dataset, batch_size, shuffle=False))
            e_pred, e_ref, n_atoms, f_pred, f_ref = [], [], [], [], []
            start = time.time()
            for batch in loader:
                batch = batch.to(trainer.device)
                with torch.no_grad():
                    pred = trainer._forward(batch)
                energy = trainer._denorm_preds("energy", pred["energy"], batch).reshape(-1)
                e_pred.append(energy.double().cpu().numpy())
                e_ref.append(batch.energy.reshape(-1).double().cpu().numpy())
                n_atoms.append(batch.natoms.reshape(-1).cpu().numpy())
                if "forces" in pred and hasattr(batch, "forces"):
                    forces = trainer._denorm_preds("forces", pred["forces"], batch).reshape(-1, 3)
                    ref = batch.forces.reshape(-1, 3)
                    if free_only and hasattr(batch, "fixed"):
                        mask = batch.fixed.reshape(-1) == 0
                        forces, ref = forces[mask], ref[mask]
                    f_pred.append(forces.double().cpu().numpy())
                    f_ref.append(ref.double().cpu().numpy())
            result = error_metrics(np.concatenate(e_pred), np.concatenate(e_ref), np.concatenate(n_atoms),
                                   f_pred, f_ref)
            result.update(path=str(path), forces_on="free atoms" if free_only else "all atoms")
            result["eval_s"] = time.time() - start
            out[name] = result
            logging.info(f"{PREFIX} test set {name}: {json.dumps(result)}")
    finally:
        if trainer.ema:
            trainer.ema.restore()
    return out


def _evaluate(state: dict, tests: dict) -> dict:
    """The best checkpoint (else the last, else the model in memory) on every test set."""
    trainer = state.get("trainer")
    if trainer is None:
        raise RuntimeError("training did not start: no model to evaluate")
    ckpt_dir = Path(trainer.config["cmd"]["checkpoint_dir"])
    chosen = next((ckpt_dir / n for n in ("best_checkpoint.pt", "checkpoint.pt") if (ckpt_dir / n).exists()), None)
    if chosen is not None:
        trainer.load_checkpoint(str(chosen), inference_only=True)
    return {"checkpoint": str(chosen) if chosen else "(in memory)",
            "parameters": int(sum(p.numel() for p in trainer._unwrapped_model.parameters())),
            "tests": evaluate_trainer(trainer, tests)}


def main(argv=None) -> int:
    args, fc_args = parse_child_args("_fairchem_child", "fairchem", argv,
                                     lambda parser: parser.add_argument("--results", default=None))
    with RunRecorder(args.stats, max_seconds=args.max_seconds, argv=fc_args, gaunt=args.gaunt) as recorder:
        if args.gaunt:
            apply_gaunt("fairchem")
        state: dict = {}
        with _forgiving_imports(), _instrumented(recorder, _Rows(args.results), state), \
                replaced((sys, "argv", ["fairchem"] + fc_args)):
            from fairchem.core._cli import main as fairchem_main

            fairchem_main()
            tests = dict(spec.partition("=")[::2] for spec in args.test)
            recorder.finish(args.eval_out if tests else None, lambda: _evaluate(state, tests))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
