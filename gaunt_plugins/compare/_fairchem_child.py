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

import argparse
import json
import logging
import os
import sys
import time
import traceback
from pathlib import Path

import numpy as np

from ._budget import StatsFile, TrainingBudget

PREFIX = "gaunt-compare:"


class _BudgetStop(Exception):
    """Raised at the start of an epoch the budget does not allow; caught around ``train``."""


class _Rows:
    def __init__(self, path):
        self.path = path

    def log(self, row):
        if self.path:
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(row) + "\n")


def _instrument(budget: TrainingBudget, stats: StatsFile, rows: _Rows, state: dict) -> None:
    import torch
    from fairchem.core.trainers.ocp_trainer import OCPTrainer

    original_train = OCPTrainer.train
    original_forward = OCPTrainer._forward
    original_backward = OCPTrainer._backward
    original_validate = OCPTrainer.validate

    def train(self, *args, **kwargs):
        state["trainer"] = self
        model = self._unwrapped_model
        n_params = sum(p.numel() for p in model.parameters())
        n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        backbone = getattr(model, "backbone", model)
        logging.info(f"{PREFIX} model {type(backbone).__name__} has {n_params} parameters ({n_trainable} trainable)")
        budget.max_epochs = int(self.config["optim"]["max_epochs"])
        budget.start()
        state["steps_per_epoch"] = len(self.train_loader)
        state["start_step"] = self.step
        stats.update(parameters=n_params, trainable_parameters=n_trainable, model_class=type(backbone).__name__,
                     train_start=budget.started, max_seconds=budget.max_seconds, max_epochs=budget.max_epochs,
                     steps_per_epoch=state["steps_per_epoch"])
        try:
            return original_train(self, *args, **kwargs)
        except _BudgetStop:
            logging.info(f"{PREFIX} stopped after {len(budget.epoch_starts)} epochs ({budget.stop_reason}, "
                         f"{budget.elapsed():.1f} s of training)")
            return None
        finally:
            budget.finished = True
            end = time.time()
            _close_epoch(state, stats)
            cuda_peak = int(torch.cuda.max_memory_allocated()) if torch.cuda.is_available() else None
            stats.update(train_end=end, train_s=end - budget.started, stop_reason=budget.stop_reason,
                         cuda_peak_bytes=cuda_peak)

    def _forward(self, batch):
        if self.model.training and state.get("trainer") is self:
            steps = state["steps_per_epoch"]
            index = self.step - 1  # train() sets self.step to the step being taken before _forward
            if index % steps == 0 and state.get("epoch_index") != index // steps:
                epoch = index // steps
                if not budget.allows(epoch):
                    raise _BudgetStop()
                _close_epoch(state, stats)
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
                _close_epoch(state, stats)
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

    OCPTrainer.train = train
    OCPTrainer._forward = _forward
    OCPTrainer._backward = _backward
    OCPTrainer.validate = validate


def _forgiving_imports() -> None:
    """fairchem's ``setup_imports`` imports every model file it ships and stops at the first
    missing optional dependency (``torch_sparse`` for DimeNet/GemNet), although the config needs
    none of them: skip such files with a log line instead (the same in both variants)."""
    import fairchem.core.common.utils as utils

    original = utils._import_local_file

    def _import_local_file(path, *, project_root):
        try:
            return original(path, project_root=project_root)
        except ImportError as exc:
            logging.info(f"{PREFIX} skipped fairchem module {Path(path).name} ({type(exc).__name__}: {exc})")
            return None

    utils._import_local_file = _import_local_file


def _close_epoch(state: dict, stats: StatsFile) -> None:
    """Record the epoch in progress (called when the next one starts and when training ends)."""
    if state.get("epoch_start") is None:
        return
    seconds = time.time() - state["epoch_start"]
    epoch = state["epoch_index"]
    logging.info(f"{PREFIX} epoch {epoch} trained in {seconds:.3f} s ({state.get('epoch_steps')} steps)")
    stats.data["epochs"].append({"epoch": epoch, "start": state["epoch_start"], "train_s": seconds,
                                 "steps": state.get("epoch_steps")})
    stats.flush()
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
            e_pred, e_ref, n_atoms, f_err, f_ref = [], [], [], [], []
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
                    f_err.append((forces - ref).double().cpu().numpy().ravel())
                    f_ref.append(ref.double().cpu().numpy().ravel())
            de = np.concatenate(e_pred) - np.concatenate(e_ref)
            na = np.concatenate(n_atoms).astype(float)
            result = {
                "n_configs": int(de.size), "n_atoms": int(na.sum()), "path": str(path),
                "e_mae_meV": 1e3 * float(np.mean(np.abs(de))), "e_rmse_meV": 1e3 * float(np.sqrt(np.mean(de**2))),
                "e_mae_meV_per_atom": 1e3 * float(np.mean(np.abs(de / na))),
                "e_rmse_meV_per_atom": 1e3 * float(np.sqrt(np.mean((de / na) ** 2))),
                "forces_on": "free atoms" if free_only else "all atoms",
            }
            if f_err:
                df, rf = np.concatenate(f_err), np.concatenate(f_ref)
                result.update(f_mae_meV_per_A=1e3 * float(np.mean(np.abs(df))),
                              f_rmse_meV_per_A=1e3 * float(np.sqrt(np.mean(df**2))),
                              f_rel_rmse_percent=100.0 * float(np.sqrt(np.mean(df**2)) / np.sqrt(np.mean(rf**2))))
            result["eval_s"] = time.time() - start
            out[name] = result
            logging.info(f"{PREFIX} test set {name}: {json.dumps(result)}")
    finally:
        if trainer.ema:
            trainer.ema.restore()
    return out


def _evaluate(state: dict, args) -> None:
    start = time.time()
    result: dict = {}
    try:
        trainer = state.get("trainer")
        if trainer is None:
            raise RuntimeError("training did not start: no model to evaluate")
        ckpt_dir = Path(trainer.config["cmd"]["checkpoint_dir"])
        chosen = None
        for name in ("best_checkpoint.pt", "checkpoint.pt"):
            if (ckpt_dir / name).exists():
                chosen = ckpt_dir / name
                break
        if chosen is not None:
            trainer.load_checkpoint(str(chosen), inference_only=True)
        result["checkpoint"] = str(chosen) if chosen else "(in memory)"
        result["parameters"] = int(sum(p.numel() for p in trainer._unwrapped_model.parameters()))
        result["tests"] = evaluate_trainer(trainer, dict(spec.partition("=")[::2] for spec in args.test))
    except Exception as exc:  # reported; the training results are kept
        result.update(error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc())
        logging.error(f"{PREFIX} evaluation failed: {exc!r}")
    result["eval_wall_s"] = time.time() - start
    Path(args.eval_out).write_text(json.dumps(result, indent=1))


def _export_hook(name: str) -> None:
    """As ``gaunt-run`` does: any Python process the framework starts patches itself too."""
    try:
        from gaunt_plugins.patches.launcher import hook_environment
    except ImportError as exc:  # an older launcher: the patch in this process is what matters
        logging.warning(f"{PREFIX} subprocess hook not exported ({exc})")
        return
    os.environ.update(hook_environment(os.environ, [name]))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gaunt_plugins.compare._fairchem_child")
    parser.add_argument("--stats", default=None)
    parser.add_argument("--results", default=None)
    parser.add_argument("--max-seconds", type=float, default=None)
    parser.add_argument("--gaunt", action="store_true", help="apply the gaunt-plugins fairchem patch")
    parser.add_argument("--eval-out", default=None)
    parser.add_argument("--test", action="append", default=[], help="NAME=PATH (repeatable)")
    parser.add_argument("fairchem_args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    fc_args = args.fairchem_args[1:] if args.fairchem_args[:1] == ["--"] else args.fairchem_args

    stats = StatsFile(args.stats)
    budget = TrainingBudget(max_seconds=args.max_seconds)
    budget.install_sigterm()
    stats.update(process_start=time.time(), argv=fc_args, gaunt=args.gaunt)
    if args.gaunt:
        import gaunt_plugins

        gaunt_plugins.patch("fairchem")
        _export_hook("fairchem")
    state: dict = {}
    _forgiving_imports()
    _instrument(budget, stats, _Rows(args.results), state)

    from fairchem.core._cli import main as fairchem_main

    sys.argv = ["fairchem"] + fc_args
    fairchem_main()
    stats.update(train_process_end=time.time())
    if args.eval_out and args.test:
        _evaluate(state, args)
    stats.update(process_end=time.time())
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
