"""Training budgets inside a training process: epochs, wall-clock, and a graceful stop request.

The child processes of ``gaunt-compare`` train with the framework's own loop; this module only
decides *whether another epoch starts*. A wall-clock budget counts from the start of the training
loop (data loading and model set-up before it, and the final evaluation after it, are not
counted, so both variants get the same time to train) and an epoch is started only if it is
expected to end within the budget, judging by the last full epoch (training plus validation).
At least one epoch always runs, so there is always a model to evaluate.

SIGTERM (sent by ``gaunt-compare`` on Ctrl-C or at its hard timeout) asks for a stop after the
current epoch: the framework then saves and evaluates its model as usual. Before the training
loop has started, or once it has ended (final evaluation), SIGTERM stops the process at once
(``KeyboardInterrupt``).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from typing import Any, Dict, Iterator, List, Optional

__all__ = ["TrainingBudget", "StatsFile"]


class StatsFile:
    """A small JSON file rewritten atomically after every epoch (read by the parent while it runs)."""

    def __init__(self, path: Optional[str]):
        self.path = path
        self.data: Dict[str, Any] = {"pid": os.getpid(), "epochs": []}

    def update(self, **fields) -> None:
        self.data.update(fields)
        self.flush()

    def flush(self) -> None:
        if not self.path:
            return
        tmp = f"{self.path}.{os.getpid()}.tmp"
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(self.data, handle, indent=1)
        os.replace(tmp, self.path)


class TrainingBudget:
    """Whether the next epoch may start: at most ``max_epochs``, and within ``max_seconds``.

    ``epoch < budget`` (as written in MACE's ``while epoch < max_num_epochs``) asks
    :meth:`allows`, so an instance can stand in for the integer epoch limit.

    >>> b = TrainingBudget(max_epochs=2)
    >>> b.start(); [e < b for e in range(3)]
    [True, True, False]
    """

    def __init__(self, max_epochs: Optional[int] = None, max_seconds: Optional[float] = None,
                 eval_interval: int = 1, clock=time.time):
        self.max_epochs = max_epochs
        self.max_seconds = max_seconds
        self.eval_interval = max(1, int(eval_interval or 1))
        self.clock = clock
        self.started: Optional[float] = None
        self.epoch_starts: List[float] = []
        self.stop_requested = False
        self.stop_reason: Optional[str] = None
        self.finished = False  # set when the training loop has returned

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self.started = self.clock()

    def epoch_started(self) -> None:
        self.epoch_starts.append(self.clock())

    def elapsed(self) -> float:
        return 0.0 if self.started is None else self.clock() - self.started

    def last_cycle(self) -> Optional[float]:
        """Seconds from the start of the previous epoch to now (its training and validation)."""
        return None if not self.epoch_starts else self.clock() - self.epoch_starts[-1]

    # ------------------------------------------------------------------ the decision
    def allows(self, epoch: int) -> bool:
        done = len(self.epoch_starts)
        if self.max_epochs is not None and epoch >= self.max_epochs:
            self.stop_reason = self.stop_reason or "epochs"
            return False
        if done == 0:
            return True  # always one epoch: there must be a model to save and evaluate
        # MACE validates (and checkpoints) only epochs with epoch % eval_interval == 0: stop only
        # right after such an epoch, so a checkpoint of the last epoch exists
        evaluated_last = (epoch - 1) % self.eval_interval == 0
        if self.stop_requested and evaluated_last:
            self.stop_reason = "signal"
            return False
        if self.max_seconds is not None and evaluated_last:
            cycle = self.last_cycle() or 0.0
            if self.elapsed() + cycle > self.max_seconds:
                self.stop_reason = "time budget"
                return False
        return True

    def __gt__(self, epoch) -> bool:  # ``epoch < budget``
        return self.allows(int(epoch))

    def __lt__(self, epoch) -> bool:  # ``epoch > budget``
        return not self.allows(int(epoch))

    def __repr__(self) -> str:
        return f"TrainingBudget(max_epochs={self.max_epochs}, max_seconds={self.max_seconds})"

    # ------------------------------------------------------------------ signals
    @contextlib.contextmanager
    def sigterm_handled(self) -> Iterator["TrainingBudget"]:
        """Within the block, SIGTERM: stop after the current epoch while the training loop runs;
        before it (set-up) or after it (final evaluation), stop now (``KeyboardInterrupt``). The
        previous handler is back after the block."""

        def handler(signum, frame):  # noqa: ARG001
            if self.started is None or self.finished:
                raise KeyboardInterrupt("stopped by gaunt-compare outside the training loop")
            self.stop_requested = True

        previous = signal.signal(signal.SIGTERM, handler)
        try:
            yield self
        finally:
            signal.signal(signal.SIGTERM, previous)
