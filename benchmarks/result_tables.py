"""Markdown tables from the benchmark JSON: ``model_step.py``, ``gpu_ops.py`` and a ``gpu_suite.py`` folder.

    python benchmarks/result_tables.py benchmarks/results/model_step_cpu.json   # upstream vs Gaunt per case
    python benchmarks/result_tables.py benchmarks/results/gpu_ops_nvidia_h200.json
    python benchmarks/result_tables.py path/to/suite_folder                    # every table of one GPU run

A model-step row without ``targets`` (JSON written before target sets existed) is ``conv+product``
with K = 1. The README's tables are this script's output, pasted.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Dict, Iterable, List, Optional

__all__ = ["model_step_table", "model_step_summary", "gpu_ops_table", "target_checks", "suite_report", "render"]

BASELINE = {"mace": "e3nn", "equiformer_v2": "stock"}
CASE_KEYS = ("model", "L", "C", "layers", "max_ell", "correlation", "molecules", "structures")

# the GPU targets: (op, vs, degrees, factor) -- triton's fwd+bwd speed-up over ``vs``
OP_TARGETS = [
    ("conv", "cueq", (2, 3, 4), 3.0),
    ("conv", "e3nn", (2, 3, 4), 10.0),  # where cuEquivariance is absent
    ("symcon", "cueq", (2, 3), 2.0),
]
STEP_TARGET = {"L": 2, "C": 128, "factor": 2.0}


def _num(value, fmt: str = "{:,.0f}") -> str:
    return "—" if value is None else fmt.format(value)


def _ms(value) -> str:
    if value is None:
        return "—"
    return f"{value:,.0f}" if value >= 100 else (f"{value:.1f}" if value >= 1 else f"{value:.3f}")


def _targets(row: dict) -> str:
    if row.get("model") != "mace" or row.get("impl") in BASELINE.values():
        return ""
    return row.get("targets", "conv+product")


def _case(row: dict) -> tuple:
    return tuple(row.get(k) for k in CASE_KEYS)


def _short_error(text: str, width: int = 90) -> str:
    text = " ".join(str(text).split()).replace("|", "/")
    return text if len(text) <= width else text[: width - 1] + "…"


# ------------------------------------------------------------------------------------------------ model step
def model_step_table(rows: List[dict], title: str) -> str:
    """Every row of a model_step run: one line per variant, errors included."""
    lines = [f"## training step (forward + forces + backward), {title}", "",
             "| model | L | C | corr | atoms | impl | targets | K | served by | params | step (ms, median) | "
             "vs upstream | peak mem (MiB) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "median_ms" in r:
            step = f"{r['median_ms']:.1f}"
            if r["impl"] == BASELINE.get(r["model"]):
                ratio = "(baseline)"
            elif r.get("speedup_vs_upstream"):
                s = r["speedup_vs_upstream"]
                ratio = f"{s:.2f}x faster" if s >= 1 else f"{1 / s:.2f}x slower"
            else:
                ratio = "—"
        else:
            step, ratio = "—", _short_error(r.get("error", ""))
        mem = f"{r['peak_mem_mib']:.0f}" if r.get("peak_mem_mib") else "—"
        model = r["model"] + (f" ({r['layers']} blocks, mmax {r['mmax']})" if r["model"] == "equiformer_v2" else "")
        served = ", ".join(sorted(set(r.get("served_by", {}).values()))) or "—"
        lines.append(f"| {model} | {r.get('L', '')} | {r.get('C', '')} | {r.get('correlation', '')} | "
                     f"{r.get('atoms', '')} | {r['impl']} | {_targets(r)} | "
                     f"{r.get('conv_products', '') if 'targets' in r else ''} | {served} | "
                     f"{r.get('parameters', '—')} | {step} | {ratio} | {mem} |")
    return "\n".join(lines)


def model_step_summary(data: dict) -> str:
    """Upstream vs each Gaunt variant, one line per case and variant (the README's table), with the
    device and date of the run."""
    rows = data["results"]
    base = {_case(r): r for r in rows if r.get("impl") == BASELINE.get(r.get("model"))}
    lines = [f"{data.get('device', '?')}, {data.get('dtype', '?')}, {data.get('date', '?')} "
             f"(median of {data.get('iters', '?')} steps timed round-robin):", "",
             "| model | L | C | corr | Gaunt variant | params upstream / Gaunt | upstream step (ms) | Gaunt step (ms) | "
             "upstream / Gaunt |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r.get("impl") in BASELINE.values() or r.get("impl", "").startswith("(") or r.get("impl") == "cueq":
            continue
        b = base.get(_case(r), {})
        model = "MACE" if r["model"] == "mace" else "EquiformerV2 (+ self-mix)"
        variant = r["impl"] + (f" [{_targets(r)}] K={r.get('conv_products', 1)}" if r["model"] == "mace" else "")
        up_step = _ms(b.get("median_ms")) if "median_ms" in b else _short_error(b.get("error", "—"), 60)
        g_step = _ms(r.get("median_ms")) if "median_ms" in r else _short_error(r.get("error", "—"), 60)
        ratio = f"{r['speedup_vs_upstream']:.2f}x" if r.get("speedup_vs_upstream") else "—"
        lines.append(f"| {model} | {r.get('L')} | {r.get('C')} | {r.get('correlation', '')} | {variant} | "
                     f"{_num(b.get('parameters'))} / {_num(r.get('parameters'))} | {up_step} | {g_step} | {ratio} |")
    corr = [r for r in rows if r.get("rows") == "correlation" and r.get("impl") == "e3nn"]
    if corr:
        gaunt_build = {_case(r): r.get("build_s") for r in rows if r.get("rows") == "correlation" and r.get("impl") == "gaunt"}
        lines += ["", "| correlation | L | C | upstream build | upstream build (s) | upstream peak build memory (GB) | "
                      "Gaunt build (s) |", "|---|---|---|---|---|---|---|"]
        for r in corr:
            status = "built" if r.get("build_status") == "ok" else _short_error(r.get("error", r.get("build_status")))
            lines.append(f"| {r['correlation']} | {r.get('L')} | {r.get('C')} | {status} | "
                         f"{_num(r.get('build_s'), '{:.1f}')} | {_num(r.get('build_peak_rss_gb'), '{:.1f}')} | "
                         f"{_num(gaunt_build.get(_case(r)), '{:.2f}')} |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ ops
def gpu_ops_table(data: dict) -> str:
    """One line per op, L and C: triton's times and peak memory, every other implementation's
    fwd+bwd time, triton's fwd+bwd speed-up over each."""
    info = data.get("info", {})
    rows = data["results"]
    impls = [i for i in ("torch-grid", "e3nn", "mace", "cueq") if any(r["impl"] == i for r in rows)]
    by: Dict[tuple, Dict[str, dict]] = {}
    for r in rows:
        by.setdefault((r["op"], r["L"], r["C"], r.get("rows")), {})[r["impl"]] = r
    head = ["op", "L", "C", "triton fwd / fwd+bwd (ms)", "triton peak MiB (fwd+bwd)"]
    head += [f"{i} fwd+bwd (ms)" for i in impls] + [f"vs {i}" for i in impls]
    lines = [f"{info.get('device', '?')}, torch {info.get('torch', '?')}, triton {info.get('triton', '?')}, "
             f"e3nn {info.get('e3nn', '?')}, cuEquivariance: {info.get('cuequivariance', '?')}; "
             f"{info.get('timing', '')}:", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (op, l, c, _), impl_rows in by.items():
        whole = impl_rows.get("(all)") or impl_rows.get("(case)")  # a skipped or failed case
        if whole is not None:
            lines.append("| " + " | ".join([op, str(l), str(c), _short_error(whole["error"], 80)]
                                           + ["—"] * (len(head) - 4)) + " |")
        for name in sorted(n for n in impl_rows if n.startswith("triton")):
            t = impl_rows[name]
            label = op if name == "triton" else f"{op} ({name})"
            if "error" in t:
                cells = [label, l, c, _short_error(t["error"], 60), "—"]
            else:
                cells = [label, l, c, f"{_ms(t['fwd_ms'])} / {_ms(t['fwdbwd_ms'])}", _num(t.get("fwdbwd_peak_mib"))]
            others = [impl_rows.get(i) for i in impls]
            cells += [_ms(o["fwdbwd_ms"]) if o and "fwdbwd_ms" in o else "—" for o in others]
            cells += [f"{o['fwdbwd_ms'] / t['fwdbwd_ms']:.1f}x" if o and "fwdbwd_ms" in o and "fwdbwd_ms" in t else "—"
                      for o in others]
            lines.append("| " + " | ".join(str(x) for x in cells) + " |")
    return "\n".join(lines)


def target_checks(gpu_ops: Optional[dict], model_step: Optional[dict]) -> List[dict]:
    """Every GPU target with its measured ratio (``None`` where a side was not measured) and whether it is met."""
    checks = []
    ops = {(r["op"], r["L"], r["impl"]): r for r in (gpu_ops or {}).get("results", []) if "fwdbwd_ms" in r}
    have_cueq = any(impl == "cueq" for _, _, impl in ops)
    for op, vs, degrees, factor in OP_TARGETS:
        if vs == "e3nn" and have_cueq:
            continue
        for l in degrees:
            t, o = ops.get((op, l, "triton")), ops.get((op, l, vs))
            ratio = o["fwdbwd_ms"] / t["fwdbwd_ms"] if t and o else None
            checks.append({"what": f"{op} fwd+bwd L={l}: triton vs {vs}", "target": factor, "ratio": ratio,
                           "met": None if ratio is None else ratio >= factor})
    for r in (model_step or {}).get("results", []):
        if (r.get("model") == "mace" and r.get("impl") == "gaunt-triton" and r.get("L") == STEP_TARGET["L"]
                and r.get("C") == STEP_TARGET["C"] and r.get("rows") != "correlation"):
            ratio = r.get("speedup_vs_upstream")
            checks.append({"what": f"MACE step L={r['L']} C={r['C']} [{_targets(r)}] K={r.get('conv_products', 1)}: "
                                   f"gaunt-triton vs e3nn", "target": STEP_TARGET["factor"], "ratio": ratio,
                           "met": None if ratio is None else ratio >= STEP_TARGET["factor"]})
    return checks


def _checks_table(checks: Iterable[dict]) -> str:
    lines = ["| target | needed | measured | met |", "|---|---|---|---|"]
    for c in checks:
        measured = "not measured" if c["ratio"] is None else f"{c['ratio']:.2f}x"
        met = "—" if c["met"] is None else ("yes" if c["met"] else "no")
        lines.append(f"| {c['what']} | >= {c['target']:g}x | {measured} | {met} |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ suite folder
def _load(path: Path) -> Optional[dict]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def suite_report(folder: Path) -> str:
    """Every table of one gpu_suite.py output folder: the machine and missing peers, each stage's
    status, the tests, the ops, the training steps, the targets."""
    folder = Path(folder)
    suite = _load(folder / "suite.json") or {}
    env = suite.get("environment", {})
    out = [f"# GPU suite: {env.get('device', '?')} ({suite.get('date', '?')})", ""]
    versions = env.get("versions", {})
    if versions:
        out.append("Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()) + ".")
    missing = env.get("missing", {})
    if missing:
        out.append("Missing: " + "; ".join(f"{k} ({_short_error(v, 120)})" for k, v in missing.items()) + ".")
    for note in suite.get("notes", []):
        out.append(f"- {note}")
    out += ["", "| stage | status | seconds | budget (s) | result |", "|---|---|---|---|---|"]
    for st in suite.get("stages", []):
        out.append(f"| {st['name']} | {st.get('status', 'running')} | {_num(st.get('seconds'), '{:.0f}')} | "
                   f"{_num(st.get('budget_s'), '{:.0f}')} | {_short_error(st.get('summary', ''), 120)} |")
    for st in suite.get("stages", []):
        tests = st.get("tests")
        if tests and tests.get("failures"):
            out += ["", f"Failures in {st['name']}:", ""]
            out += [f"- `{f['test']}`: {_short_error(f['message'], 160)}" for f in tests["failures"][:30]]
    gpu_ops = _load(folder / "gpu_ops.json")
    if gpu_ops:
        out += ["", "## Ops (forward + backward)", "", gpu_ops_table(gpu_ops)]
    steps = {}
    for name in ("model_step_mace.json", "model_step_mace_correlation.json", "model_step_eqv2.json"):
        data = _load(folder / name)
        if data:
            steps[name] = data
            out += ["", f"## Training step ({name})", "", model_step_summary(data)]
    checks = target_checks(gpu_ops, steps.get("model_step_mace.json"))
    if checks:
        out += ["", "## Targets", "", _checks_table(checks)]
    return "\n".join(out) + "\n"


def render(path: Path) -> str:
    """The Markdown for a suite folder, a model_step JSON or a gpu_ops JSON."""
    path = Path(path)
    if path.is_dir():
        return suite_report(path)
    data = json.loads(path.read_text())
    if "info" in data:
        return gpu_ops_table(data) + "\n\n" + _checks_table(target_checks(data, None)) + "\n"
    return model_step_summary(data) + "\n"


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    for arg in sys.argv[1:]:
        print(render(Path(arg)))
