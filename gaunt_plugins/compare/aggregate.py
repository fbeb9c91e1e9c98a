"""One variant's runs over several seeds as one report entry: mean, standard deviation and count.

The numbers of a variant are taken over its seeds that finished (status ``ok``); when none did,
over every seed that has the number, so a single failed run still shows what it logged. Each
number carries its own count (``n``): a metric missing from one seed's run rests on fewer seeds,
and the report says so.
"""

from __future__ import annotations

import statistics
from typing import Any, Dict, List, Optional

__all__ = ["aggregate", "NUMBERS", "mean_std"]

NUMBERS = ("parameters", "epochs", "steps", "time_per_step_s", "median_step_s", "steps_per_s", "time_per_epoch_s",
           "median_epoch_s", "time_per_epoch_after_first_s", "valid_time_per_epoch_s", "train_s", "setup_s",
           "peak_rss_mib", "cuda_peak_mib", "wall_s", "eval_wall_s")


def mean_std(values: List[float]) -> Dict[str, Any]:
    """``{"mean", "std", "n"}``; ``std`` is the sample standard deviation (``None`` for one value)."""
    values = [float(v) for v in values]
    return {"mean": statistics.fmean(values) if values else None,
            "std": statistics.stdev(values) if len(values) > 1 else None, "n": len(values)}


def _status(runs: Dict[str, Dict[str, Any]]) -> str:
    statuses = [r.get("status", "not run") for r in runs.values()]
    if len(statuses) == 1:
        return statuses[0]
    ok = sum(s == "ok" for s in statuses)
    if ok == len(statuses):
        return "ok"
    others = "; ".join(f"seed {seed}: {r.get('status')}" for seed, r in runs.items() if r.get("status") != "ok")
    return f"{ok} of {len(statuses)} seeds ok ({others})"


def aggregate(runs: Dict[str, Dict[str, Any]]) -> Dict[str, Any]:
    """The report entry of a variant from its per-seed entries ``{seed: entry}`` (kept under ``runs``)."""
    finished = {s: r for s, r in runs.items() if r.get("status") == "ok"}
    basis = finished or runs
    entry: Dict[str, Any] = {"status": _status(runs), "seeds": [int(s) for s in runs], "n_seeds": len(runs),
                             "n_ok": len(finished), "stats_over": sorted(int(s) for s in basis), "runs": runs}
    std: Dict[str, Optional[float]] = {}
    count: Dict[str, int] = {}
    for key in NUMBERS:
        values = [r[key] for r in basis.values() if isinstance(r.get(key), (int, float))]
        if not values:
            continue
        ms = mean_std(values)
        entry[key], std[key], count[key] = ms["mean"], ms["std"], ms["n"]
        if key in ("parameters", "epochs", "steps") and all(float(v).is_integer() for v in values) and len(set(values)) == 1:
            entry[key] = int(values[0])
    tests: Dict[str, Dict[str, Any]] = {}
    for run in basis.values():
        for name, metrics in (run.get("tests") or {}).items():
            for metric, value in metrics.items():
                if isinstance(value, (int, float)) and metric.startswith(("e_", "f_")):
                    tests.setdefault(name, {}).setdefault(metric, []).append(value)
    if tests:
        entry["tests"], entry["tests_std"], entry["tests_n"] = {}, {}, {}
        for name, metrics in tests.items():
            for metric, values in metrics.items():
                ms = mean_std(values)
                entry["tests"].setdefault(name, {})[metric] = ms["mean"]
                entry["tests_std"].setdefault(name, {})[metric] = ms["std"]
                entry["tests_n"].setdefault(name, {})[metric] = ms["n"]
    entry["std"], entry["n"] = std, count
    loads = [r[k] for r in runs.values() for k in ("load_avg_start", "load_avg_end") if r.get(k) is not None]
    if loads:  # the machine's 1-minute load average at the start and end of each run: its range
        entry["load_avg_range"] = [min(loads), max(loads)]
    errors = {s: r["error"] for s, r in runs.items() if r.get("error")}
    if errors:
        entry["errors"] = errors
    return entry
