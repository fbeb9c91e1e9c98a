"""Before/after a code change: the same MACE step timed on two source trees of gaunt-plugins, alternately.

Each measurement is a fresh process that imports ``gaunt_plugins`` from one tree (``PYTHONPATH``), builds the
seeded model of a case, and times its step (median of ``--iters`` after ``--warmup``); the trees alternate
A B A B ... for ``--pairs`` pairs, the order flipped every other pair, so drift of a shared machine falls on
both. Cases: ``train`` (eager energies, forces with ``create_graph`` and the backward of a loss on both, as
MACE trains), and inference of energies and forces in ``eager``, ``script`` (MACE's ``_compiled.model``) and
``compile`` (MACE's ``torch.compile`` route) mode. Reports each tree's median over the pairs and the median of
the per-pair ratios B / A.

    python benchmarks/code_ab.py --trees <old checkout> . --pairs 4 --out benchmarks/results/code_ab.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
MODES = ("train", "eager", "script", "compile")


def measure(spec: dict) -> dict:
    """Time one case in this process (the tree is whatever ``gaunt_plugins`` imports from)."""
    import torch

    torch.set_num_threads(spec["threads"])
    sys.path.insert(0, str(HERE))
    import gaunt_plugins
    import md_speed
    import model_step as ms

    dtype = getattr(torch, spec["dtype"])
    torch.set_default_dtype(dtype)
    atoms, _ = ms.acac_atoms(spec["molecules"])
    batch = ms.mace_batch(atoms, torch.device("cpu"), dtype)
    if spec["mode"] == "train":
        torch.manual_seed(0)
        model = ms.gaunt_mace_model(spec["lmax"], spec["channels"], md_speed.MAX_ELL, md_speed.CORRELATION,
                                    ms.gaunt_options(spec["targets"].split(","), 1))
        step = ms.mace_step(model, batch)
    else:  # as md_speed builds and prepares it (frozen; e3nn's code generation off for torch.compile)
        model = md_speed.build_model(spec["targets"], spec["lmax"], spec["channels"], 0,
                                     codegen=spec["mode"] != "compile")
        fn, training = md_speed.prepare(model, spec["mode"])
        batch["positions"].requires_grad_(True)  # as md_speed does: a compiled forward needs it done outside
        step = lambda: fn(dict(batch), training=training, compute_force=True)  # noqa: E731
    for _ in range(spec["warmup"]):
        step()
    times = []
    for _ in range(spec["iters"]):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return {"ms": 1e3 * statistics.median(times), "package": str(Path(gaunt_plugins.__file__).parents[1])}


def run_tree(tree: Path, spec: dict, timeout: float) -> dict:
    env = dict(os.environ, PYTHONPATH=str(tree), OMP_NUM_THREADS=str(spec["threads"]))
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--measure", json.dumps(spec)],
                          env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"measuring {spec} on {tree} failed:\n{proc.stderr[-2000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if Path(result["package"]).resolve() != tree.resolve():
        raise RuntimeError(f"{tree} was asked for, but gaunt_plugins came from {result['package']}")
    return result


def compare(trees, spec: dict, pairs: int, timeout: float, log=print) -> dict:
    """Alternate the two trees ``pairs`` times on one case: per-tree medians and the per-pair ratios B / A."""
    runs = {0: [], 1: []}
    ratios = []
    for k in range(pairs):
        order = (0, 1) if k % 2 == 0 else (1, 0)
        got = {i: run_tree(trees[i], spec, timeout)["ms"] for i in order}
        for i in (0, 1):
            runs[i].append(got[i])
        ratios.append(got[1] / got[0])
        log(f"  pair {k + 1}: A {got[0]:.1f} ms, B {got[1]:.1f} ms")
    return {**spec, "a_ms": runs[0], "b_ms": runs[1], "a_median_ms": statistics.median(runs[0]),
            "b_median_ms": statistics.median(runs[1]), "ratio_b_over_a": statistics.median(ratios),
            "ratios": ratios}


def table(rows) -> str:
    lines = ["| mode | targets | L | C | molecules | A (ms, median) | B (ms, median) | B / A (median of pairs) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['mode']} | {r['targets']} | {r['lmax']} | {r['channels']} | {r['molecules']} | "
                     f"{r['a_median_ms']:.1f} | {r['b_median_ms']:.1f} | {r['ratio_b_over_a']:.2f} |")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trees", nargs=2, metavar=("A", "B"), help="two source trees (the folder holding gaunt_plugins/)")
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    ap.add_argument("--targets", nargs="+", default=["product", "conv,product"])
    ap.add_argument("--lmax", type=int, default=1)
    ap.add_argument("--channels", type=int, default=32)
    ap.add_argument("--molecules", type=int, nargs="+", default=[1, 16], help="acac molecules per batch (15 atoms each)")
    ap.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--pairs", type=int, default=4)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--iters", type=int, default=9)
    ap.add_argument("--timeout", type=float, default=600, help="seconds per measuring process")
    ap.add_argument("--out", default=str(HERE / "results" / "code_ab.json"))
    ap.add_argument("--measure", help=argparse.SUPPRESS)
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.measure:
        print(json.dumps(measure(json.loads(args.measure))))
        return 0
    if not args.trees:
        build_parser().error("--trees A B is required")
    trees = [Path(t).resolve() for t in args.trees]
    for tree in trees:
        if not (tree / "gaunt_plugins" / "__init__.py").is_file():
            build_parser().error(f"--trees: {tree} holds no gaunt_plugins/ package")
    rows = []
    for mode in args.modes:
        for targets in args.targets:
            for molecules in args.molecules:
                spec = dict(mode=mode, targets=targets, lmax=args.lmax, channels=args.channels,
                            molecules=molecules, dtype=args.dtype, threads=args.threads,
                            warmup=args.warmup, iters=args.iters)
                print(f"{mode} {targets} {molecules} molecule(s):", flush=True)
                rows.append(compare(trees, spec, args.pairs, args.timeout, log=lambda s: print(s, flush=True)))
    print(table(rows))
    result = {"trees": {"A": str(trees[0]), "B": str(trees[1])}, "pairs": args.pairs,
              "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
              "date": time.strftime("%Y-%m-%d %H:%M"), "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
