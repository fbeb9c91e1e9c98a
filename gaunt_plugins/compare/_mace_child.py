"""The training process of one MACE variant: ``mace_run_train`` itself, instrumented.

Run by ``gaunt-compare`` as::

    python -m gaunt_plugins.compare._mace_child --stats STATS.json [--max-seconds S]
        [--max-epochs N] [--gaunt] -- --config cfg.yaml

With ``--gaunt`` the gaunt-plugins MACE patch is applied first (exactly what ``gaunt-run`` does),
so ``tensor_product: gaunt`` in the YAML is understood; without it MACE runs as upstream. In both
variants the same light instrumentation is added, and nothing else changes:

- ``mace.tools.train`` (the training loop ``run_train`` calls) gets the epoch limit as a
  :class:`~gaunt_plugins.compare._budget.TrainingBudget` (epochs and/or wall-clock) and logs the
  model's parameter count through MACE's own logger;
- ``train_one_epoch`` is timed: its wall time and the number of optimisation steps are logged
  (``gaunt-compare: epoch N trained in S s``) and written to the stats file after every epoch.

MACE's own outputs (log, results file with one row per step and per validation, checkpoints,
``<name>.model``) are written where the YAML says.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import time

from ._budget import StatsFile, TrainingBudget

PREFIX = "gaunt-compare:"


def _instrument(budget: TrainingBudget, stats: StatsFile) -> None:
    import mace.tools
    import torch

    train_module = importlib.import_module("mace.tools.train")
    original_train = train_module.train
    original_epoch = train_module.train_one_epoch

    def train(*args, **kwargs):
        model = kwargs.get("model", args[0] if args else None)
        n_params = sum(p.numel() for p in model.parameters()) if model is not None else None
        n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad) if model is not None else None
        logging.info(f"{PREFIX} model {type(model).__name__} has {n_params} parameters ({n_trainable} trainable)")
        budget.eval_interval = max(1, int(kwargs.get("eval_interval", 1) or 1))
        if budget.max_epochs is None:
            budget.max_epochs = int(kwargs["max_num_epochs"])
        else:
            budget.max_epochs = min(budget.max_epochs, int(kwargs["max_num_epochs"]))
        kwargs["max_num_epochs"] = budget
        budget.start()
        stats.update(parameters=n_params, trainable_parameters=n_trainable, model_class=type(model).__name__,
                     train_start=budget.started, max_seconds=budget.max_seconds, max_epochs=budget.max_epochs,
                     start_epoch=kwargs.get("start_epoch", 0))
        logging.info(f"{PREFIX} training budget: {budget.max_epochs} epochs"
                     + (f", {budget.max_seconds:.0f} s" if budget.max_seconds is not None else ""))
        try:
            return original_train(*args, **kwargs)
        finally:
            budget.finished = True
            end = time.time()
            if budget.stop_reason in ("time budget", "signal"):
                logging.info(f"{PREFIX} stopped after {len(budget.epoch_starts)} epochs ({budget.stop_reason}, "
                             f"{budget.elapsed():.1f} s of training)")
            cuda_peak = None
            if torch.cuda.is_available():
                cuda_peak = int(torch.cuda.max_memory_allocated())
            stats.update(train_end=end, train_s=end - budget.started, stop_reason=budget.stop_reason,
                         cuda_peak_bytes=cuda_peak)

    def train_one_epoch(*args, **kwargs):
        epoch = kwargs.get("epoch")
        loader = kwargs.get("data_loader")
        budget.epoch_started()
        start = time.time()
        result = original_epoch(*args, **kwargs)
        seconds = time.time() - start
        try:
            steps = len(loader)
        except TypeError:
            steps = None
        logging.info(f"{PREFIX} epoch {epoch} trained in {seconds:.3f} s ({steps} steps)")
        stats.data["epochs"].append({"epoch": epoch, "start": start, "train_s": seconds, "steps": steps})
        stats.flush()
        return result

    train_module.train = train
    train_module.train_one_epoch = train_one_epoch
    mace.tools.train = train  # ``tools.train(...)`` as run_train calls it


def _export_hook(name: str) -> None:
    """As ``gaunt-run`` does: any Python process the framework starts patches itself too."""
    try:
        from gaunt_plugins.patches.launcher import hook_environment
    except ImportError as exc:  # an older launcher: the patch in this process is what matters
        logging.warning(f"{PREFIX} subprocess hook not exported ({exc})")
        return
    os.environ.update(hook_environment(os.environ, [name]))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gaunt_plugins.compare._mace_child")
    parser.add_argument("--stats", default=None)
    parser.add_argument("--max-seconds", type=float, default=None)
    parser.add_argument("--max-epochs", type=int, default=None)
    parser.add_argument("--gaunt", action="store_true", help="apply the gaunt-plugins MACE patch")
    parser.add_argument("--eval-out", default=None,
                        help="after training, evaluate the saved model on --test sets into this JSON")
    parser.add_argument("--test", action="append", default=[], help="NAME=PATH (repeatable)")
    parser.add_argument("--eval-batch-size", type=int, default=16)
    parser.add_argument("mace_args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    mace_args = [a for a in args.mace_args if a != "--"] if args.mace_args[:1] == ["--"] else args.mace_args

    stats = StatsFile(args.stats)
    budget = TrainingBudget(max_epochs=args.max_epochs, max_seconds=args.max_seconds)
    budget.install_sigterm()
    stats.update(process_start=time.time(), argv=mace_args, gaunt=args.gaunt)

    import mace  # noqa: F401  (before e3nn)

    if args.gaunt:
        import gaunt_plugins

        gaunt_plugins.patch("mace")
        _export_hook("mace")
    _instrument(budget, stats)

    from mace.cli import run_train

    sys.argv = ["mace_run_train"] + mace_args
    run_train.main()
    stats.update(train_process_end=time.time())
    if args.eval_out and args.test:
        _evaluate(run_train, mace_args, args)
    stats.update(process_end=time.time())
    return 0


def _evaluate(run_train, mace_args, args) -> None:
    """Evaluate the model MACE just saved, in this process (saves a second start of torch and MACE).
    A failure is recorded in the JSON and does not fail the training run."""
    import json
    import traceback
    from pathlib import Path

    from ._mace_eval import evaluate_model

    start = time.time()
    try:
        from mace import tools

        margs = tools.build_default_arg_parser().parse_args(mace_args)
        model_path = None
        for candidate in (Path(margs.model_dir) / f"{margs.name}_stagetwo.model",
                          Path(margs.model_dir) / f"{margs.name}.model"):
            if candidate.exists():
                model_path = candidate
                break
        if model_path is None:
            raise FileNotFoundError(f"no {margs.name}.model in {margs.model_dir}")
        tests = dict(spec.partition("=")[::2] for spec in args.test)
        result = evaluate_model(str(model_path), tests, energy_key=margs.energy_key, forces_key=margs.forces_key,
                                dtype=margs.default_dtype, device=margs.device, batch_size=args.eval_batch_size)
    except Exception as exc:  # reported, training results kept
        result = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
        logging.error(f"{PREFIX} evaluation failed: {exc!r}")
    result["eval_wall_s"] = time.time() - start
    Path(args.eval_out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    sys.exit(main())
