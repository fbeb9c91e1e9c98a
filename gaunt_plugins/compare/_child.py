"""What every training child of ``gaunt-compare`` records, whatever the framework.

A :class:`RunRecorder` holds the child's :class:`~._budget.TrainingBudget` and
:class:`~._budget.StatsFile` and writes the same lines through the framework's own logger (the
root logger, which MACE and fairchem both write their logs with):

- ``gaunt-compare: model CLASS has N parameters (M trainable)`` when training starts;
- ``gaunt-compare: epoch E trained in S s (K steps)`` after every epoch;
- ``gaunt-compare: stopped after E epochs (REASON, S s of training)`` when the budget or a
  SIGTERM ended the loop early.

The stats file (read by the parent while the child runs) carries the same numbers plus the
process, training and evaluation times.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple
from unittest import mock

from ._budget import StatsFile, TrainingBudget

__all__ = ["PREFIX", "RunRecorder", "replaced", "parse_child_args", "apply_gaunt"]

PREFIX = "gaunt-compare:"


def parse_child_args(module: str, framework: str, argv: Optional[List[str]],
                     more: Callable[[argparse.ArgumentParser], None] = lambda parser: None
                     ) -> Tuple[argparse.Namespace, List[str]]:
    """A training child's options (those of every child, then ``more``'s) and the framework's own
    arguments that follow them (a leading ``--`` dropped)."""
    parser = argparse.ArgumentParser(prog=f"python -m gaunt_plugins.compare.{module}")
    parser.add_argument("--stats", default=None)
    parser.add_argument("--max-seconds", type=float, default=None)
    parser.add_argument("--gaunt", action="store_true", help=f"apply the gaunt-plugins {framework} patch")
    parser.add_argument("--eval-out", default=None,
                        help="after training, evaluate the saved model on --test sets into this JSON")
    parser.add_argument("--test", action="append", default=[], help="NAME=PATH (repeatable)")
    more(parser)
    parser.add_argument("framework_args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    rest = args.framework_args
    return args, rest[1:] if rest[:1] == ["--"] else rest


def apply_gaunt(framework: str) -> None:
    """The gaunt-plugins patch of ``framework`` as ``gaunt-run`` applies it: in this process and in
    the processes it starts."""
    import gaunt_plugins
    from gaunt_plugins.patches.launcher import export_hook

    gaunt_plugins.patch(framework)
    export_hook([framework])


@contextlib.contextmanager
def replaced(*changes: Tuple[Any, str, Any]) -> Iterator[None]:
    """Each ``(owner, name, value)`` set (``owner.name = value``) for the duration of the block;
    after it every original is back (an attribute a class inherited is inherited again)."""
    with contextlib.ExitStack() as stack:
        for owner, name, value in changes:
            stack.enter_context(mock.patch.object(owner, name, value))
        yield


class RunRecorder:
    """The budget and the bookkeeping of one training child; see the module docstring. A context
    manager: SIGTERM is the budget's (see :meth:`~._budget.TrainingBudget.sigterm_handled`) within it."""

    def __init__(self, stats_path: Optional[str], max_seconds: Optional[float] = None,
                 max_epochs: Optional[int] = None, **fields: Any):
        self.stats = StatsFile(stats_path)
        self.budget = TrainingBudget(max_epochs=max_epochs, max_seconds=max_seconds)
        self._fields = fields
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> "RunRecorder":
        self._stack.enter_context(self.budget.sigterm_handled())
        self.stats.update(process_start=time.time(), **self._fields)
        return self

    def __exit__(self, *exc) -> bool:
        self._stack.close()
        return False

    def training_starts(self, model, max_epochs: int, model_class: Optional[str] = None, **fields: Any) -> None:
        """Log the parameter count, fix the epoch limit (the tighter of ours and the framework's)
        and start the wall-clock budget."""
        n_params = sum(p.numel() for p in model.parameters())
        n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        model_class = model_class or type(model).__name__
        logging.info(f"{PREFIX} model {model_class} has {n_params} parameters ({n_trainable} trainable)")
        budget = self.budget
        budget.max_epochs = int(max_epochs) if budget.max_epochs is None else min(budget.max_epochs, int(max_epochs))
        budget.start()
        self.stats.update(parameters=n_params, trainable_parameters=n_trainable, model_class=model_class,
                          train_start=budget.started, max_seconds=budget.max_seconds, max_epochs=budget.max_epochs,
                          **fields)
        logging.info(f"{PREFIX} training budget: {budget.max_epochs} epochs"
                     + (f", {budget.max_seconds:.0f} s" if budget.max_seconds is not None else ""))

    def epoch_trained(self, epoch: int, start: float, seconds: float, steps: Optional[int]) -> None:
        logging.info(f"{PREFIX} epoch {epoch} trained in {seconds:.3f} s ({steps} steps)")
        self.stats.data["epochs"].append({"epoch": epoch, "start": start, "train_s": seconds, "steps": steps})
        self.stats.flush()

    def training_ends(self) -> None:
        import torch

        budget = self.budget
        budget.finished = True
        end = time.time()
        if budget.stop_reason in ("time budget", "signal"):
            logging.info(f"{PREFIX} stopped after {len(budget.epoch_starts)} epochs ({budget.stop_reason}, "
                         f"{budget.elapsed():.1f} s of training)")
        cuda_peak = int(torch.cuda.max_memory_allocated()) if torch.cuda.is_available() else None
        self.stats.update(train_end=end, train_s=None if budget.started is None else end - budget.started,
                          stop_reason=budget.stop_reason, cuda_peak_bytes=cuda_peak)

    def finish(self, eval_out: Optional[str], evaluate: Callable[[], Dict[str, Any]]) -> None:
        """After the framework's own run: ``evaluate()`` into ``eval_out`` (JSON, timed; skipped when
        ``None``). A failed evaluation is written there and logged; it does not fail the run."""
        self.stats.update(train_process_end=time.time())
        if eval_out:
            start = time.time()
            try:
                result = evaluate()
            except Exception as exc:  # reported; the training results are kept
                result = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
                logging.error(f"{PREFIX} evaluation failed: {exc!r}")
            result["eval_wall_s"] = time.time() - start
            Path(eval_out).write_text(json.dumps(result, indent=1))
        self.stats.update(process_end=time.time())
