"""``gaunt-compare``: upstream vs ``tensor_product: gaunt``, one command, one report.

Given the config a user already trains with (a ``mace_run_train`` YAML, or a fairchem
``--config-yml`` for EquiformerV2), :func:`gaunt_plugins.compare.cli.main` trains the upstream
model and the Gaunt variant on the same data, seed and budget (``--epochs N`` and/or
``--max-minutes M``), one after the other, each in its own process, and writes to ``--out``:

- ``report.md``: a side-by-side table (status, parameters, epochs and steps, time per epoch and per
  step, steps per second, peak memory, energy and force MAE/RMSE on every test set, with the
  gaunt / upstream ratio) and the plot;
- ``report.json``: every number, the learning curves, the configs' differences, the host;
- ``learning_curves.png``: training and validation curves per epoch and against training time;
- ``upstream/`` and ``gaunt/``: each variant's config, stdout, the framework's own logs and
  results, checkpoints and the trained model.

Numbers come from what the frameworks log themselves (MACE's results file and log; fairchem's
log lines), plus light instrumentation in the child process (epoch wall time, parameter count,
the wall-clock budget) that logs through the framework's own logger. A crashed variant is
reported with its error and the other's results are kept; Ctrl-C stops the running variant after
its current epoch (it is then evaluated and marked interrupted) and skips the rest.
"""

__all__ = ["main"]


def main(argv=None) -> int:
    from .cli import main as _main

    return _main(argv)
