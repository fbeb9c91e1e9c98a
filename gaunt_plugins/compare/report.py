"""The report of ``gaunt-compare``: ``report.json``, ``report.md`` and ``learning_curves.png``.

A variant's entry (:func:`.aggregate.aggregate`) holds the mean of each number over its seeds,
its standard deviation (``std``) and count (``n``), and the per-seed entries (``runs``). The table
shows ``mean ± std`` and says how many seeds each number rests on; a second table has one row
per seed. What makes the columns unlike (:mod:`.caveats`) is said where it applies: every ratio
that rests on an incomplete run is marked, and when the runs trained different numbers of epochs
the variants are also compared at the last epoch all of them reached.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from .caveats import CURVE_METRICS, common_epoch, incomplete_runs, stage_two_missed

__all__ = ["write_report", "markdown", "plot_curves", "ratio", "ratios", "convergence"]

ORDER = ("upstream", "gaunt")
INCOMPLETE = " (incomplete run)"  # appended to every ratio that rests on an incomplete run
TEST_ROWS = (("E MAE / RMSE (meV)", "e_mae_meV", "e_rmse_meV"),
             ("E MAE / RMSE (meV/atom)", "e_mae_meV_per_atom", "e_rmse_meV_per_atom"),
             ("F MAE / RMSE (meV/Å)", "f_mae_meV_per_A", "f_rmse_meV_per_A"))


def ratio(a, b) -> Optional[float]:
    """``b / a`` (gaunt over upstream) when both are finite and ``a`` is non-zero."""
    try:
        a, b = float(a), float(b)
    except (TypeError, ValueError):
        return None
    if a == 0 or math.isnan(a) or math.isnan(b):
        return None
    return b / a


def _fmt(x, digits=3) -> str:
    """Numbers for the table: integers with separators, floats with about ``digits`` significant digits."""
    if x is None:
        return "—"
    if isinstance(x, bool):
        return str(x)
    if isinstance(x, int):
        return f"{x:,}"
    if isinstance(x, float):
        if math.isnan(x) or math.isinf(x):
            return "—"
        ax = abs(x)
        if ax >= 1000:
            return f"{x:,.0f}"
        if ax >= 1:
            decimals = max(0, digits - len(str(int(ax))))
            return f"{x:.{decimals}f}"
        return f"{x:.{digits}g}"
    return str(x)


def _ratio_cell(r) -> str:
    return "—" if r is None else f"{r:.2f}x"


def ratios(variants: Dict[str, Dict[str, Any]]) -> Dict[str, Any]:
    """gaunt / upstream of the (mean) timing, size and error numbers."""
    up, ga = variants.get("upstream", {}), variants.get("gaunt", {})
    out: Dict[str, Any] = {}
    for key in ("parameters", "time_per_step_s", "median_step_s", "steps_per_s", "time_per_epoch_s", "median_epoch_s",
                "time_per_epoch_after_first_s", "peak_rss_mib", "cuda_peak_mib", "train_s"):
        out[key] = ratio(up.get(key), ga.get(key))
    tests = {}
    for name in sorted(set(up.get("tests") or {}) & set(ga.get("tests") or {})):
        a, b = up["tests"][name], ga["tests"][name]
        tests[name] = {k: ratio(a.get(k), b.get(k)) for k in a if k.startswith(("e_", "f_"))}
    out["tests"] = tests
    return out


def _cell(mean, std, n, n_total, scale=1.0, digits=3) -> str:
    """``mean ± std`` (``(n=K)`` when fewer seeds than the variant ran have the number)."""
    if mean is None:
        return "—"
    value = mean * scale if isinstance(mean, (int, float)) and scale != 1.0 else mean
    text = _fmt(value, digits)
    if std:  # a spread of exactly zero (same parameter count in every seed) is not shown
        text += f" ± {_fmt(std * scale, 2)}"
    if n is not None and n_total > 1 and n < n_total:
        text += f" (n={n})"
    return text


def convergence(entry: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """How far from converged a run is, from its validation force error (else its validation loss):
    the value at the last validated epoch, the best, and the change over the last quarter of the
    validated epochs (a fall of several percent there: still learning)."""
    curves = entry.get("curves") or {}
    for key, unit in (("valid_rmse_f_meV_per_A", "meV/Å"), ("valid_mae_f_meV_per_A", "meV/Å"), ("valid_loss", "")):
        points = [(e, v) for e, v in zip(curves.get("epoch") or [], curves.get(key) or []) if v is not None]
        if len(points) >= 2:
            break
    else:
        return None
    quarter = max(1, len(points) // 4)
    (e0, v0), (e1, v1) = points[-1 - quarter], points[-1]
    return {"metric": key, "unit": unit, "last": v1, "last_epoch": e1 + 1, "best": min(v for _, v in points),
            "from": v0, "from_epoch": e0 + 1, "change": (v1 - v0) / v0 if v0 else None}


def _header(report: Dict[str, Any], names: Sequence[str]) -> List[str]:
    lines = [f"# gaunt-compare: {report['framework']} upstream vs `tensor_product: gaunt`", ""]
    budget = report["budget"]
    epochs, minutes = budget.get("epochs"), budget.get("max_minutes")
    if epochs is not None and minutes is not None:
        text = f"{epochs} epochs per run (at most {minutes:g} min of training)"
    elif epochs is not None:
        text = f"{epochs} epochs per run"
    elif minutes is not None:
        text = f"{minutes:g} min of training per run"
    else:
        text = "as configured"
    equal = report.get("at_common_epoch")
    if equal:
        spans = [f"{n} {min(e)}" + (f"–{max(e)}" if max(e) != min(e) else "")
                 for n, e in equal["trained"].items()]
        text += (f"; the runs ended after different numbers of epochs ({', '.join(spans)}), so the variants are "
                 f"also compared at epoch {equal['epoch']} (see \"At equal epochs\")")
    seeds = report.get("seeds") or [report.get("seed")]
    lines.append(f"- config: `{report['config']}`; budget: {text}")
    if len(seeds) > 1:
        lines.append(f"- seeds: {', '.join(map(str, seeds))}: {len(seeds)} runs per variant; every number is the "
                     f"mean ± standard deviation over the {len(seeds)} runs, or over the K that finished or logged "
                     "it where marked (n=K)")
    else:
        lines.append(f"- seed: {seeds[0]}: one run per variant, so no spread is known; differences of a few "
                     "percent between the variants are within what another seed could change")
    host = report.get("host", {})
    lines.append(f"- device: {host.get('device', '?')}; {host.get('cpus', '?')} CPU cores; threads per run: "
                 f"{host.get('threads', '?')}; torch {host.get('torch', '?')}; {report['framework']} "
                 f"{host.get('framework_version', '?')}; gaunt-plugins {host.get('gaunt_plugins', '?')}")
    if (report.get("jobs") or 1) > 1:
        lines.append(f"- runs: {report['jobs']} at a time (each starting when another ends, in the order upstream, "
                     "gaunt of each seed), so every timing was taken while another run shared the machine")
    lines.append(f"- command: `{report.get('command', '')}`")
    diff = report.get("config_differences") or {}
    if diff:
        def show(x):
            return "(absent)" if x is None else f"`{x}`"

        lines.append("- the two configs differ only in: " + "; ".join(
            f"`{k}`: {show(v['upstream'])} (upstream) vs {show(v['gaunt'])} (gaunt)" for k, v in diff.items()))
    for n in names:
        kept = report["variants"][n].get("kept_from")
        if kept:
            lines.append(f"- {report.get('labels', {}).get(n, n)}: results of an earlier run (started "
                         f"{kept.get('started')}, `{kept.get('command')}`, budget {kept.get('budget')}, seeds "
                         f"{kept.get('seeds')}), kept by `--only` (trained with the same settings)")
    for n, runs in (report.get("incomplete") or {}).items():
        lines.append(f"- incomplete, so every ratio resting on it is marked \"{INCOMPLETE.strip()}\": "
                     + "; ".join(runs))
    return lines + [""]


def _main_table(report: Dict[str, Any], names: Sequence[str]) -> List[str]:
    variants = report["variants"]
    labels = report.get("labels", {})
    pair = len(names) == 2
    rat = report.get("ratios", {})
    mark = INCOMPLETE if report.get("incomplete") else ""
    lines = ["| | " + " | ".join(labels.get(n, n) for n in names) + (" | gaunt / upstream |" if pair else " |"),
             "|---" * (len(names) + 1 + pair) + "|"]

    def add(title, cells, ratio_text=""):
        if mark and ratio_text and any(ch.isdigit() for ch in ratio_text):
            ratio_text += mark
        end = (f" | {ratio_text} |" if ratio_text else " | |") if pair else " |"
        lines.append(f"| {title} | " + " | ".join(cells) + end)

    def row(title, key, scale=1.0, digits=3, show_ratio=True):
        cells = [_cell(variants[n].get(key), (variants[n].get("std") or {}).get(key),
                       (variants[n].get("n") or {}).get(key), variants[n].get("n_seeds", 1), scale, digits)
                 for n in names]
        add(title, cells, _ratio_cell(rat.get(key)) if show_ratio and pair else "")

    add("status", [variants[n].get("status", "?") + (" (earlier run)" if variants[n].get("kept_from") else "")
                   for n in names])
    add("seeds (finished / run)", [f"{variants[n].get('n_ok', 0)} / {variants[n].get('n_seeds', 1)}" for n in names])
    row("parameters", "parameters")
    row("epochs trained", "epochs", show_ratio=False)
    row("optimisation steps", "steps", show_ratio=False)
    row("time per epoch (s, training pass, mean)", "time_per_epoch_s")
    row("time per epoch (s, median)", "median_epoch_s")
    row("time per step (ms, mean)", "time_per_step_s", scale=1e3)
    row("time per step (ms, median)", "median_step_s", scale=1e3)
    row("steps per second", "steps_per_s")
    row("training time (s)", "train_s")
    row("peak memory (RSS, MiB)", "peak_rss_mib")
    if any(variants[n].get("load_avg_range") for n in names):
        def load_cell(v):
            r = v.get("load_avg_range")
            return "—" if not r else f"{r[0]:.1f}" if abs(r[1] - r[0]) < 0.05 else f"{r[0]:.1f} – {r[1]:.1f}"

        add(f"machine load (1-min average, range over the runs; {report.get('host', {}).get('cpus', '?')} cores)",
            [load_cell(variants[n]) for n in names])
    if any(variants[n].get("cuda_peak_mib") for n in names):
        row("peak GPU memory (MiB)", "cuda_peak_mib")
    tests: List[str] = []
    for n in names:
        tests += [t for t in variants[n].get("tests") or {} if t not in tests]
    for t in tests:
        for title, mae, rmse in TEST_ROWS:
            if not any(((variants[n].get("tests") or {}).get(t) or {}).get(mae) is not None for n in names):
                continue  # e.g. no reference forces in this test set
            cells = []
            for n in names:
                v = variants[n]
                m = (v.get("tests") or {}).get(t)
                if not m or m.get(mae) is None:
                    cells.append("—")
                    continue
                sd = (v.get("tests_std") or {}).get(t, {})
                cnt = (v.get("tests_n") or {}).get(t, {})
                total = v.get("n_seeds", 1)
                cells.append(f"{_cell(m.get(mae), sd.get(mae), cnt.get(mae), total)} / "
                             f"{_cell(m.get(rmse), sd.get(rmse), cnt.get(rmse), total)}")
            r = rat.get("tests", {}).get(t, {})
            add(f"{t}: {title}", cells, f"{_ratio_cell(r.get(mae))} / {_ratio_cell(r.get(rmse))}" if r else "—")
    return lines + [""]


def _seed_table(report: Dict[str, Any], names: Sequence[str]) -> List[str]:
    """One row per run: the numbers each mean above rests on."""
    variants = report["variants"]
    labels = report.get("labels", {})
    tests: Dict[str, bool] = {}  # test set -> whether any run has force errors on it
    for n in names:
        for run in (variants[n].get("runs") or {}).values():
            for t, m in (run.get("tests") or {}).items():
                tests[t] = tests.get(t, False) or m.get("f_mae_meV_per_A") is not None
    head = ["variant", "seed", "status", "epochs", "steps", "median step (ms)"]
    for t, forces in tests.items():
        head += [f"{t} E MAE (meV/atom)"] + ([f"{t} F MAE (meV/Å)"] if forces else [])
    lines = ["Per seed:", "", "| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for n in names:
        for seed, run in (variants[n].get("runs") or {}).items():
            cells = [labels.get(n, n), str(seed), run.get("status", "?"), _fmt(run.get("epochs")),
                     _fmt(run.get("steps")), _fmt(run["median_step_s"] * 1e3 if run.get("median_step_s") else None)]
            for t, forces in tests.items():
                m = (run.get("tests") or {}).get(t, {})
                cells += [_fmt(m.get("e_mae_meV_per_atom"))] + ([_fmt(m.get("f_mae_meV_per_A"))] if forces else [])
            lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


def _equal_epoch_lines(report: Dict[str, Any], names: Sequence[str]) -> List[str]:
    """The comparison at equal epochs (:func:`.caveats.common_epoch`), when the budget bound."""
    equal = report.get("at_common_epoch")
    if not equal:
        return []
    labels = report.get("labels", {})
    mark = INCOMPLETE if report.get("incomplete") else ""
    trained = "; ".join(f"{labels.get(n, n)}: {', '.join(map(str, e))}" for n, e in equal["trained"].items())
    lines = ["At equal epochs:", "",
             f"The runs trained different numbers of epochs ({trained}; the time budget, not the epoch count, ended "
             "some of them), so the test errors above compare models trained for different numbers of epochs. At "
             f"epoch {equal['epoch']}, the last one every run validated, their validation errors (from the learning "
             "curves) were:", "",
             f"| validation set, epoch {equal['epoch']} | " + " | ".join(labels.get(n, n) for n in names)
             + " | gaunt / upstream |", "|---" * (len(names) + 2) + "|"]
    for key, metric in equal["metrics"].items():
        cells = [_cell(metric[n]["mean"], metric[n]["std"], metric[n]["n"], len(equal["trained"][n])) for n in names]
        ratio_text = _ratio_cell(metric.get("ratio"))
        lines.append(f"| {CURVE_METRICS.get(key, key)} | " + " | ".join(cells) + f" | {ratio_text}"
                     + (mark if metric.get("ratio") is not None else "") + " |")
    return lines + [""]


def _convergence_lines(report: Dict[str, Any], names: Sequence[str]) -> List[str]:
    lines = []
    labels = report.get("labels", {})
    for n in names:
        runs = [r for r in (report["variants"][n].get("runs") or {}).values() if r.get("status") == "ok"]
        found = [c for c in (convergence(r) for r in runs) if c and c["change"] is not None]
        if not found:
            continue
        c0 = found[0]
        what = "validation force RMSE" if "rmse_f" in c0["metric"] else (
            "validation force MAE" if "mae_f" in c0["metric"] else "validation loss")
        changes = [100.0 * c["change"] for c in found]
        lasts = [c["last"] for c in found]
        unit = f" {c0['unit']}" if c0["unit"] else ""
        state = ("still falling: not converged, more epochs would lower it" if max(changes) < -2.0 else
                 "nearly flat: close to what this model, data and schedule reach" if max(abs(x) for x in changes) < 2.0
                 else "not converged: it still moves by more than 2%")
        span = _fmt(lasts[0]) if len(lasts) == 1 else f"{_fmt(min(lasts))}–{_fmt(max(lasts))}"
        lines.append(f"- {labels.get(n, n)}: {what} {span}{unit} at the last epoch "
                     f"({len(found)} seed{'s' if len(found) > 1 else ''}); over the last quarter of the epochs it "
                     f"changed by {', '.join(f'{x:+.0f}%' for x in changes)}: {state}.")
    if lines:
        lines = ["How far from converged:", ""] + lines + [""]
    return lines


def markdown(report: Dict[str, Any], plot_name: Optional[str] = "learning_curves.png") -> str:
    report = dict(report, incomplete=incomplete_runs(report), at_common_epoch=common_epoch(report))
    variants = report["variants"]
    names = [v for v in ORDER if v in variants]
    labels = report.get("labels", {})
    lines = _header(report, names) + _main_table(report, names)
    if any(len(variants[n].get("runs") or {}) > 1 for n in names):
        lines += _seed_table(report, names)
    lines += _equal_epoch_lines(report, names)
    lines += _convergence_lines(report, names)
    missed = stage_two_missed(report)
    if missed:
        lines += ["Stage two:", ""] + [f"- {line}." for line in missed] + [""]
    if report["framework"] == "mace":
        step_note = "MACE's own per-step timer (results file: forward, forces, loss, backward, optimiser step)"
        model_note = ("the model MACE saved (`<name>.model`, its best-validation checkpoint, or "
                      "`<name>_stagetwo.model` after a stage two)")
    else:
        step_note = "forward, loss, backward and optimiser step of fairchem's trainer, timed around its own calls"
        model_note = "fairchem's best checkpoint (`best_checkpoint.pt`, by its primary validation metric)"
    budget_note = ""
    if report["budget"].get("max_minutes") is not None:
        budget_note = (" Wall-clock budget: counted from the start of the training loop; an epoch starts only if "
                       "it is expected to end within the budget.")
    lines.append("Timings are wall-clock: other jobs on the machine (its load is in the table) slow the runs "
                 "unevenly, and the medians are the robust numbers. "
                 f"Time per epoch: wall time of the training pass (validation excluded); time per step: {step_note}; "
                 "peak memory: the maximum resident set size of the training process (on a GPU also the peak "
                 f"allocated CUDA memory). Test errors: {model_note} on each test set (energies per configuration, "
                 f"forces per Cartesian component).{budget_note}")
    lines.append("")
    for n in names:
        for seed, run in (variants[n].get("runs") or {}).items():
            who = labels.get(n, n) + (f", seed {seed}" if len(variants[n]["runs"]) > 1 else "")
            if run.get("status") not in ("ok", "not run"):
                lines.append(f"**{who}: {run.get('status')}.** {run.get('error', '')}".rstrip())
                if run.get("error_tail"):
                    lines += ["", "```", run["error_tail"], "```"]
                lines.append("")
            if run.get("eval_error"):
                lines += [f"**{who}: evaluation failed.** {run['eval_error']}", ""]
    if plot_name and report.get("plot"):
        lines += [f"![learning curves]({plot_name})", ""]
    lines.append("Files: " + ", ".join(f"`{n}/`" for n in names) + " (each run's config, stdout, the "
                 "framework's own logs/results and the model); `report.json` has every number, per seed under "
                 "`runs`.")
    return "\n".join(lines) + "\n"


def plot_curves(report: Dict[str, Any], path: Path) -> bool:
    """Training loss, validation loss and validation force/energy errors per epoch, and the
    validation force error against training time; one line per seed. Returns whether a plot was
    written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = report["variants"]
    labels = report.get("labels", {})
    titles = {
        "train_loss": "training loss (mean per epoch)",
        "valid_loss": "validation loss",
        "valid_rmse_f_meV_per_A": "validation force RMSE (meV/Å)",
        "valid_mae_f_meV_per_A": "validation force MAE (meV/Å)",
        "valid_rmse_e_per_atom_meV": "validation energy RMSE (meV/atom)",
        "valid_mae_e_meV": "validation energy MAE (meV)",
    }
    runs = {n: [r for r in (variants.get(n, {}).get("runs") or {}).values() if r.get("curves")] for n in ORDER}
    force = ("valid_rmse_f_meV_per_A", "valid_mae_f_meV_per_A")
    energy = ("valid_rmse_e_per_atom_meV", "valid_mae_e_meV")

    def pick(candidates):
        for key in candidates:
            if any(any(v is not None for v in r["curves"].get(key) or []) for rs in runs.values() for r in rs):
                return key
        return candidates[0]

    panels = [(pick(c), x) for c, x in ((("train_loss",), "epoch"), (("valid_loss",), "epoch"), (force, "epoch"),
                                         (energy, "epoch"), (force, "train_elapsed_s"),
                                         (("valid_loss",), "train_elapsed_s"))]
    fig, axes = plt.subplots(2, 3, figsize=(15, 8.5))
    drawn = False
    colors = {"upstream": "tab:blue", "gaunt": "tab:orange"}
    for ax, (key, xkey) in zip(axes.ravel(), panels):
        for name in ORDER:
            labelled = False
            for run in runs[name]:
                curve = run["curves"]
                xs, ys = curve.get(xkey) or [], curve.get(key) or []
                pts = [((x + 1) if xkey == "epoch" else x, y) for x, y in zip(xs, ys) if x is not None and y is not None]
                initial = (curve.get("initial") or {}).get(key)
                if initial is not None and pts:
                    pts.insert(0, (0, initial))
                pts = [p for p in pts if p[1] > 0]
                if not pts:
                    continue
                drawn = True
                n_runs = len(runs[name])
                label = None if labelled else (
                    f"{labels.get(name, name)} ({variants[name].get('status')}"
                    + (f", {n_runs} seeds" if n_runs > 1 else "") + ")")
                labelled = True
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=2 if n_runs > 1 else 3,
                        lw=1.0 if n_runs > 1 else 1.5, alpha=0.8, color=colors.get(name), label=label)
        ax.set_title(titles.get(key, key), fontsize=10)
        ax.set_xlabel("epoch (0: before training)" if xkey == "epoch" else "training time (s)")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    seeds = report.get("seeds") or []
    fig.suptitle(f"{report['framework']}: upstream vs tensor_product: gaunt ({report.get('config_name', '')}"
                 + (f"; one line per seed, {len(seeds)} seeds" if len(seeds) > 1 else "") + ")")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return drawn


def write_report(report: Dict[str, Any], out_dir: Path) -> Dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    report["ratios"] = ratios(report["variants"])
    report["incomplete"] = incomplete_runs(report)
    report["at_common_epoch"] = common_epoch(report)
    png = out_dir / "learning_curves.png"
    try:
        report["plot"] = plot_curves(report, png)
    except Exception as exc:  # a report without a plot is still a report
        report["plot"] = False
        report["plot_error"] = repr(exc)
    paths = {"json": out_dir / "report.json", "md": out_dir / "report.md", "png": png}
    paths["json"].write_text(json.dumps(report, indent=1, default=str))
    paths["md"].write_text(markdown(report))
    return paths
