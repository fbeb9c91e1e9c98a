"""What makes the two columns of a report unlike, computed from the report itself.

- :func:`incomplete_runs`: runs the numbers rest on that did not train to the end of their budget
  (interrupted, timed out, failed, or stopped by a signal), e.g. an upstream run kept by
  ``--only gaunt`` that was stopped at 15 of 40 epochs; every line comparing them is marked.
- :func:`common_epoch`: when the runs trained different numbers of epochs (a wall-clock budget
  bound), the validation errors of every run at the last epoch all of them validated, from the
  per-epoch learning curves: the comparison at equal epochs.
- :func:`stage_two_missed`: MACE runs whose stage two (``swa``) was configured but not reached.

A variant's numbers are those of its runs in ``stats_over`` (:func:`.aggregate.aggregate`).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from .aggregate import mean_std

__all__ = ["incomplete_runs", "common_epoch", "stage_two_missed", "CURVE_METRICS", "ORDER"]

ORDER = ("upstream", "gaunt")
# validation curves compared at equal epochs: key -> label
CURVE_METRICS = {
    "valid_mae_f_meV_per_A": "force MAE (meV/Å)",
    "valid_rmse_f_meV_per_A": "force RMSE (meV/Å)",
    "valid_mae_e_per_atom_meV": "energy MAE (meV/atom)",
    "valid_rmse_e_per_atom_meV": "energy RMSE (meV/atom)",
    "valid_mae_e_meV": "energy MAE (meV)",
}


def _basis(entry: Dict[str, Any]) -> Dict[str, Dict[str, Any]]:
    """The runs a variant's numbers rest on (``{seed: run}``)."""
    runs = entry.get("runs") or {}
    over = {str(s) for s in entry.get("stats_over") or runs}
    return {s: r for s, r in runs.items() if s in over and r.get("status") != "not run"}


def _who(report: Dict[str, Any], name: str, seed: str) -> str:
    label = report.get("labels", {}).get(name, name)
    several = len(report["variants"][name].get("runs") or {}) > 1
    return f"{label}, seed {seed}" if several else label


def incomplete_runs(report: Dict[str, Any]) -> Dict[str, List[str]]:
    """``{variant: [description]}`` of the runs its numbers rest on that did not complete:
    ``"upstream MACE (e3nn): interrupted after 15 of 40 epochs (earlier run)"``."""
    planned = (report.get("budget") or {}).get("epochs")
    out: Dict[str, List[str]] = {}
    for name in ORDER:
        entry = report["variants"].get(name)
        if not entry:
            continue
        for seed, run in _basis(entry).items():
            status = run.get("status", "?")
            if status == "ok" and run.get("stop_reason") != "signal":
                continue
            if status == "ok":
                status = "stopped by a signal"
            epochs = run.get("epochs")
            trained = "" if epochs is None else (f" after {epochs} of {planned} epochs" if planned
                                                 else f" after {epochs} epochs")
            earlier = " (earlier run)" if entry.get("kept_from") else ""
            out.setdefault(name, []).append(f"{_who(report, name, seed)}: {status}{trained}{earlier}")
    return out


def common_epoch(report: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """The comparison at equal epochs, when the runs of the two variants trained different numbers
    of epochs: ``{"epoch": E (epochs trained, 1-based), "trained": {variant: [epochs per run]},
    "metrics": {key: {variant: {mean, std, n}, "ratio": gaunt / upstream}}}``; ``None`` when every
    run trained as many epochs (or a variant has no curves)."""
    names = [n for n in ORDER if n in report.get("variants", {})]
    if len(names) != 2:
        return None
    runs = {n: [r for r in _basis(report["variants"][n]).values() if (r.get("curves") or {}).get("epoch")]
            for n in names}
    if not all(runs.values()):
        return None
    trained = {n: [r.get("epochs") for r in rs] for n, rs in runs.items()}
    if len({e for es in trained.values() for e in es}) <= 1:
        return None
    shared = set.intersection(*(set(r["curves"]["epoch"]) for rs in runs.values() for r in rs))
    if not shared:
        return None
    epoch = max(shared)
    metrics: Dict[str, Any] = {}
    for key in CURVE_METRICS:
        values = {}
        for n, rs in runs.items():
            at = [r["curves"].get(key, [None] * len(r["curves"]["epoch"]))[r["curves"]["epoch"].index(epoch)]
                  for r in rs]
            values[n] = [v for v in at if v is not None]
        if not all(values.values()):
            continue
        stats = {n: mean_std(v) for n, v in values.items()}
        up, ga = stats["upstream"]["mean"], stats["gaunt"]["mean"]
        metrics[key] = dict(stats, ratio=ga / up if up else None)
    if not metrics:
        return None
    return {"epoch": epoch + 1, "trained": {n: sorted(es) for n, es in trained.items()}, "metrics": metrics}


def stage_two_missed(report: Dict[str, Any]) -> List[str]:
    """One line per MACE run whose stage two was configured but not reached."""
    out = []
    for name in ORDER:
        entry = report["variants"].get(name)
        for seed, run in (entry or {}).get("runs", {}).items():
            stage = run.get("stage_two") or {}
            if stage and not stage.get("reached"):
                out.append(f"{_who(report, name, seed)}: MACE's stage two (from epoch {stage.get('start', 0) + 1}) "
                           f"was not reached, training stopped after {run.get('epochs')} epochs "
                           f"({run.get('stop_reason') or run.get('status')}): its model is the stage-one model")
    return out
