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
  (``gaunt-compare: epoch N trained in S s``) and written to the stats file after every epoch;
- with ``swa: true`` (MACE's stage two), a budget that ends training before stage two has saved a
  checkpoint leaves MACE to save and evaluate its stage-one model only, as it does without
  stage two (MACE itself would fail reloading the stage-two checkpoint that does not exist); the
  log says so (``gaunt-compare: stage two (from epoch N) not reached ...``) and the stats file
  records ``stage_two: {start, reached}``.

MACE's own outputs (log, results file with one row per step and per validation, checkpoints,
``<name>.model``) are written where the YAML says.
"""

from __future__ import annotations

import contextlib
import glob
import importlib
import logging
import os
import sys
import time
from typing import Iterator

from ._child import PREFIX, RunRecorder, apply_gaunt, parse_child_args, replaced


def _has_stage_two_checkpoint(handler) -> bool:
    """Whether MACE's checkpoint handler has saved a stage-two (``..._epoch-N_swa.pt``) checkpoint."""
    io = handler.io
    return bool(glob.glob(os.path.join(io.directory, f"{glob.escape(io.tag)}_epoch-*_swa.pt")))


def _settle_stage_two(recorder: RunRecorder, swa, handler, swas) -> None:
    """After the training loop: if stage two was configured but has no checkpoint (the budget
    ended training first), MACE evaluates its stage-one model only (``swas``, the list its
    end-of-run loop walks, loses its stage-two entry)."""
    if swa is None or handler is None:
        return
    reached = _has_stage_two_checkpoint(handler)
    recorder.stats.update(stage_two={"start": int(swa.start), "reached": reached})
    if reached or swas is None or True not in swas:
        return
    swas[:] = [s for s in swas if not s]
    epochs = len(recorder.budget.epoch_starts)
    logging.info(f"{PREFIX} stage two (from epoch {swa.start + 1}) not reached: training stopped after {epochs} epochs "
                 f"({recorder.budget.stop_reason or 'stopped'}); the stage-one model is saved and evaluated")


@contextlib.contextmanager
def _instrumented(recorder: RunRecorder) -> Iterator[None]:
    """MACE's training loop, epochs and ``get_swa`` wrapped for the block; MACE's own after it."""
    import mace.tools
    from mace.cli import run_train as run_train_module

    train_module = importlib.import_module("mace.tools.train")
    original_train = train_module.train
    original_epoch = train_module.train_one_epoch
    original_get_swa = run_train_module.get_swa
    state = {}

    def get_swa(*args, **kwargs):  # run_train's ``swa, swas = get_swa(...)``: keep its ``swas`` list
        result = original_get_swa(*args, **kwargs)
        state["swas"] = result[1]
        return result

    def train(*args, **kwargs):
        model = kwargs.get("model", args[0] if args else None)
        recorder.budget.eval_interval = max(1, int(kwargs.get("eval_interval", 1) or 1))
        recorder.training_starts(model, int(kwargs["max_num_epochs"]), start_epoch=kwargs.get("start_epoch", 0))
        kwargs["max_num_epochs"] = recorder.budget
        try:
            result = original_train(*args, **kwargs)
        finally:
            recorder.training_ends()
        _settle_stage_two(recorder, kwargs.get("swa"), kwargs.get("checkpoint_handler"), state.get("swas"))
        return result

    def train_one_epoch(*args, **kwargs):
        loader = kwargs.get("data_loader")
        recorder.budget.epoch_started()
        start = time.time()
        result = original_epoch(*args, **kwargs)
        try:
            steps = len(loader)
        except TypeError:
            steps = None
        recorder.epoch_trained(kwargs.get("epoch"), start, time.time() - start, steps)
        return result

    with replaced((train_module, "train", train), (train_module, "train_one_epoch", train_one_epoch),
                  (mace.tools, "train", train),  # ``tools.train(...)`` as run_train calls it
                  (run_train_module, "get_swa", get_swa)):
        yield


def main(argv=None) -> int:
    def more(parser):
        parser.add_argument("--max-epochs", type=int, default=None)
        parser.add_argument("--eval-batch-size", type=int, default=16)

    args, mace_args = parse_child_args("_mace_child", "MACE", argv, more)
    with RunRecorder(args.stats, max_seconds=args.max_seconds, max_epochs=args.max_epochs, argv=mace_args,
                     gaunt=args.gaunt) as recorder:
        import mace  # noqa: F401  (before e3nn)

        if args.gaunt:
            apply_gaunt("mace")
        from mace.cli import run_train

        with _instrumented(recorder), replaced((sys, "argv", ["mace_run_train"] + mace_args)):
            run_train.main()
            recorder.finish(args.eval_out if args.test else None, lambda: _evaluate(mace_args, args))
    return 0


def _evaluate(mace_args, args) -> dict:
    """Evaluate the model MACE just saved, in this process (saves a second start of torch and MACE)."""
    from pathlib import Path

    from mace import tools

    from ._mace_eval import evaluate_model, saved_model

    margs = tools.build_default_arg_parser().parse_args(mace_args)
    model_path = saved_model(Path(margs.model_dir), margs.name)
    if model_path is None:
        raise FileNotFoundError(f"no {margs.name}.model in {margs.model_dir}")
    tests = dict(spec.partition("=")[::2] for spec in args.test)
    return evaluate_model(str(model_path), tests, energy_key=margs.energy_key, forces_key=margs.forces_key,
                          dtype=margs.default_dtype, device=margs.device, batch_size=args.eval_batch_size)


if __name__ == "__main__":
    sys.exit(main())
