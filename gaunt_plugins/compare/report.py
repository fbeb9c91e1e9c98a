"""The report of ``gaunt-compare``: ``report.json``, ``report.md`` and ``learning_curves.png``."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Dict, List, Optional

__all__ = ["write_report", "markdown", "plot_curves", "ratio"]

ORDER = ("upstream", "gaunt")


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
    """gaunt / upstream for the timing, size and error numbers."""
    up, ga = variants.get("upstream", {}), variants.get("gaunt", {})
    out: Dict[str, Any] = {}
    for key in ("parameters", "time_per_step_s", "median_step_s", "steps_per_s", "time_per_epoch_s", "median_epoch_s",
                "time_per_epoch_after_first_s", "peak_rss_mib", "cuda_peak_mib", "train_s"):
        out[key] = ratio(up.get(key), ga.get(key))
    tests = {}
    for name in sorted(set(up.get("tests", {})) & set(ga.get("tests", {}))):
        a, b = up["tests"][name], ga["tests"][name]
        tests[name] = {k: ratio(a.get(k), b.get(k)) for k in a if k.startswith(("e_", "f_"))}
    out["tests"] = tests
    return out


def markdown(report: Dict[str, Any], plot_name: Optional[str] = "learning_curves.png") -> str:
    variants = report["variants"]
    names = [v for v in ORDER if v in variants]
    labels = report.get("labels", {})
    lines: List[str] = []
    lines.append(f"# gaunt-compare: {report['framework']} upstream vs `tensor_product: gaunt`")
    lines.append("")
    budget = report["budget"]
    parts = []
    if budget.get("epochs") is not None:
        parts.append(f"{budget['epochs']} epochs")
    if budget.get("max_minutes") is not None:
        parts.append(f"{budget['max_minutes']:g} min of training each")
    lines.append(f"- config: `{report['config']}`; budget: {', '.join(parts) or 'as configured'}; "
                 f"seed: {report.get('seed')}")
    host = report.get("host", {})
    lines.append(f"- device: {host.get('device', '?')}; {host.get('cpus', '?')} CPU cores; threads per run: "
                 f"{host.get('threads', '?')}; torch {host.get('torch', '?')}; {report['framework']} "
                 f"{host.get('framework_version', '?')}; gaunt-plugins {host.get('gaunt_plugins', '?')}")
    lines.append(f"- command: `{report.get('command', '')}`")
    diff = report.get("config_differences") or {}
    if diff:
        def show(x):
            return "(absent)" if x is None else f"`{x}`"

        lines.append("- the two configs differ only in: " + "; ".join(
            f"`{k}`: {show(v['upstream'])} (upstream) vs {show(v['gaunt'])} (gaunt)" for k, v in diff.items()))
    lines.append("")
    header = "| | " + " | ".join(labels.get(n, n) for n in names) + (" | gaunt / upstream |" if len(names) == 2 else " |")
    lines.append(header)
    lines.append("|---" * (len(names) + 1 + (1 if len(names) == 2 else 0)) + "|")
    rat = report.get("ratios", {})

    def row(title, key, scale=1.0, digits=3, show_ratio=True):
        cells = []
        for n in names:
            v = variants[n].get(key)
            cells.append(_fmt(v * scale if isinstance(v, (int, float)) and scale != 1.0 else v, digits))
        r = _ratio_cell(rat.get(key)) if show_ratio and len(names) == 2 else ""
        lines.append(f"| {title} | " + " | ".join(cells) + (f" | {r} |" if len(names) == 2 else " |"))

    lines.append("| status | " + " | ".join(variants[n].get("status", "?") + (
        f" (earlier run, {variants[n]['kept_from']})" if variants[n].get("kept_from") else "") for n in names)
                 + (" | |" if len(names) == 2 else " |"))
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
    if any(variants[n].get("load_avg_start") is not None for n in names):
        def load_cell(v):
            a, b = v.get("load_avg_start"), v.get("load_avg_end")
            return "—" if a is None else f"{a:.1f} → {b:.1f}" if b is not None else f"{a:.1f}"

        lines.append(f"| machine load (1-min average, start → end; {report.get('host', {}).get('cpus', '?')} cores) | "
                     + " | ".join(load_cell(variants[n]) for n in names) + (" | |" if len(names) == 2 else " |"))
    if any(variants[n].get("cuda_peak_mib") for n in names):
        row("peak GPU memory (MiB)", "cuda_peak_mib")
    tests = []
    for n in names:
        for t in variants[n].get("tests", {}):
            if t not in tests:
                tests.append(t)
    for t in tests:
        for title, mae, rmse in (("E MAE / RMSE (meV)", "e_mae_meV", "e_rmse_meV"),
                                 ("E MAE / RMSE (meV/atom)", "e_mae_meV_per_atom", "e_rmse_meV_per_atom"),
                                 ("F MAE / RMSE (meV/Å)", "f_mae_meV_per_A", "f_rmse_meV_per_A")):
            cells = []
            for n in names:
                m = variants[n].get("tests", {}).get(t, {})
                cells.append(f"{_fmt(m.get(mae))} / {_fmt(m.get(rmse))}" if m else "—")
            r = rat.get("tests", {}).get(t, {})
            rc = f"{_ratio_cell(r.get(mae))} / {_ratio_cell(r.get(rmse))}" if r else "—"
            lines.append(f"| {t}: {title} | " + " | ".join(cells) + (f" | {rc} |" if len(names) == 2 else " |"))
    lines.append("")
    if report["framework"] == "mace":
        step_note = "MACE's own per-step timer (results file: forward, forces, loss, backward, optimiser step)"
        model_note = "the model MACE saved (`<name>.model`, its best-validation checkpoint)"
    else:
        step_note = "forward, loss, backward and optimiser step of fairchem's trainer, timed around its own calls"
        model_note = "fairchem's best checkpoint (`best_checkpoint.pt`, by its primary validation metric)"
    budget_note = ""
    if budget.get("max_minutes") is not None:
        budget_note = (" Wall-clock budget: counted from the start of the training loop; an epoch starts only if "
                       "it is expected to end within the budget.")
    lines.append("Timings are wall-clock: other jobs on the machine (its load is in the table) slow the variants "
                 "unevenly, and the medians are the robust numbers. "
                 f"Time per epoch: wall time of the training pass (validation excluded); time per step: {step_note}; "
                 "peak memory: the maximum resident set size of the training process (on a GPU also the peak "
                 f"allocated CUDA memory). Test errors: {model_note} on each test set (energies per configuration, "
                 f"forces per Cartesian component).{budget_note}")
    lines.append("")
    for n in names:
        v = variants[n]
        if v.get("status") != "ok":
            lines.append(f"**{labels.get(n, n)}: {v.get('status')}.** {v.get('error', '')}".rstrip())
            if v.get("error_tail"):
                lines.append("")
                lines.append("```")
                lines.append(v["error_tail"])
                lines.append("```")
            lines.append("")
        if v.get("eval_error"):
            lines.append(f"**{labels.get(n, n)}: evaluation failed.** {v['eval_error']}")
            lines.append("")
    if plot_name and report.get("plot"):
        lines.append(f"![learning curves]({plot_name})")
        lines.append("")
    lines.append("Files: " + ", ".join(f"`{n}/`" for n in names) + " (each with its config, stdout, the "
                 "framework's own logs/results and the model); `report.json` has every number.")
    return "\n".join(lines) + "\n"


def plot_curves(report: Dict[str, Any], path: Path) -> bool:
    """Training loss, validation loss and validation force/energy errors per epoch, and the
    validation force error against training time. Returns whether a plot was written."""
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
    force = ("valid_rmse_f_meV_per_A", "valid_mae_f_meV_per_A")
    energy = ("valid_rmse_e_per_atom_meV", "valid_mae_e_meV")
    panels = [(("train_loss",), "epoch"), (("valid_loss",), "epoch"), (force, "epoch"), (energy, "epoch"),
              (force, "train_elapsed_s"), (("valid_loss",), "train_elapsed_s")]

    def pick(candidates):
        for key in candidates:
            for name in ORDER:
                curve = variants.get(name, {}).get("curves") or {}
                if any(v is not None for v in curve.get(key) or []):
                    return key
        return candidates[0]

    panels = [(pick(c), x, titles.get(pick(c), pick(c)), True) for c, x in panels]
    fig, axes = plt.subplots(2, 3, figsize=(15, 8.5))
    drawn = False
    colors = {"upstream": "tab:blue", "gaunt": "tab:orange"}
    for ax, (key, xkey, title, logy) in zip(axes.ravel(), panels):
        for name in ORDER:
            curve = variants.get(name, {}).get("curves") or {}
            xs, ys = curve.get(xkey) or [], curve.get(key) or []
            pts = [((x + 1) if xkey == "epoch" else x, y) for x, y in zip(xs, ys) if x is not None and y is not None]
            initial = (curve.get("initial") or {}).get(key)
            if initial is not None and pts:
                pts.insert(0, (0, initial))
            pts = [p for p in pts if not logy or p[1] > 0]
            if not pts:
                continue
            drawn = True
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3, color=colors.get(name),
                    label=f"{labels.get(name, name)} ({variants[name].get('status')})")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch (0: before training)" if xkey == "epoch" else "training time (s)")
        if logy:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    fig.suptitle(f"{report['framework']}: upstream vs tensor_product: gaunt ({report.get('config_name', '')})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return drawn


def write_report(report: Dict[str, Any], out_dir: Path) -> Dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    report["ratios"] = ratios(report["variants"])
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
