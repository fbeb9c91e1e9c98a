"""``gaunt-compare``: upstream vs ``tensor_product: gaunt``, one command, one report.

Given the config a user already trains with (a ``mace_run_train`` YAML, or a fairchem
``--config-yml`` for EquiformerV2), :func:`gaunt_plugins.compare.cli.main` trains the upstream
model and the Gaunt variant on the same data, seeds and budget (``--epochs N`` and/or
``--max-minutes M``; ``--seeds N`` runs per variant), each run in its own process, and writes to
``--out`` (a new or empty folder; ``--overwrite`` replaces an earlier report, ``--only`` reruns one
variant and keeps the other's results if they were trained with the same settings; only files
gaunt-compare wrote are ever removed, see :mod:`.outdir`):

- ``report.md``: a side-by-side table (status, parameters, epochs and steps, time per epoch and per
  step, steps per second, peak memory, energy and force MAE/RMSE on every test set, with the
  gaunt / upstream ratio; mean ± std over the seeds, and one row per seed), how far from converged
  each variant is, and the plot;
- ``report.json``: every number, per seed, the learning curves, the configs' differences, the host;
- ``learning_curves.png``: training and validation curves per epoch and against training time;
- ``upstream/`` and ``gaunt/`` (``<variant>/seed-<S>/`` for several seeds): each run's config,
  stdout, the framework's own logs and results, checkpoints and the trained model.

Numbers come from what the frameworks log themselves (MACE's results file and log; fairchem's
validation metrics), plus light instrumentation in the child process (epoch wall time, parameter
count, the wall-clock budget) that logs through the framework's own logger. Layout:
:mod:`.framework` (the interface, and what is computed from a run's record), :mod:`.mace` and
:mod:`.fairchem` (its two implementations), :mod:`.harness` (running the runs), :mod:`.process`
(the child processes), :mod:`.outdir`, :mod:`.settings` (what each variant was trained with),
:mod:`.aggregate`, :mod:`.caveats` (incomplete runs, unequal epochs) and :mod:`.report`; the
``_*child`` modules run inside the training processes. A crashed run is reported with its error
and the others' results are kept; Ctrl-C stops the running runs after their current epoch (they
are then evaluated and marked interrupted) and skips the rest; if gaunt-compare is killed, its
children die with it.
"""

__all__ = ["main"]


def main(argv=None) -> int:
    from .cli import main as _main

    return _main(argv)
