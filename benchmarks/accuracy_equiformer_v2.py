"""Accuracy benchmark: stock EquiformerV2 vs EquiformerV2 + the Gaunt self-mix, several seeds, two data sets.

For each data set the two variants are trained by ``gaunt-compare`` (fairchem's own trainer, one
process per run, the same config, data, seeds and epochs; the Gaunt variant adds
``tensor_product: gaunt`` to the backbone) and its best checkpoint is evaluated on held-out
configurations. The table gives, per data set and variant, the mean +- sample std over the seeds of
the energy MAE (meV/atom) and force MAE (meV/A, free atoms) on the test set, the median time per
training step and the parameter count.

Data sets (written here, offline, into ``--work``):

  acac   acetylacetone molecules (../shared/data/acac): the first ``--n-train`` + ``--n-valid``
         configurations of train_300K.xyz for training / validation and ``--n-test`` evenly spaced
         ones of test_MD_300K.xyz for testing (read with the reader of examples/compare/prepare_acac.py).
         Each molecule sits in a 30 A periodic box: with a cutoff of 6 A no atom sees an image, so
         this is the non-periodic molecule (fairchem 1.10 builds non-periodic graphs only with pyg-lib).
  emt    fcc(111) slabs of Cu/Pt/Au/Ni with one adsorbate (examples/equiformer_v2/make_emt_dataset.py),
         periodic, EMT energies and forces; the test slabs are drawn with another seed. Draws with a
         force component above 10 eV/A are drawn again: about a quarter of the example's slabs put
         the adsorbate into the surface (forces of 100-460 eV/A), which would dominate any MAE.

Energies are stored minus a per-element linear reference fitted by least squares on the training
set (a fixed function of the composition: energy MAEs are those of the total energies).

    python benchmarks/accuracy_equiformer_v2.py                     # 3 seeds, 40 epochs, 32 channels (hours on 2 cores)
    python benchmarks/accuracy_equiformer_v2.py --short             # 3 seeds, 8 epochs, small (~10 min)
    python benchmarks/accuracy_equiformer_v2.py --datasets emt --seeds 5 --epochs 40

Table on stdout; JSON in benchmarks/results/accuracy_equiformer_v2.json (``--out``). The reports of
the individual comparisons (learning curves, every run's logs) stay under ``--work`` (default: a
folder in the system's temporary directory).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np
import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "examples" / "compare"))
sys.path.insert(0, str(ROOT / "examples" / "equiformer_v2"))
from prepare_acac import frames as _acac_frames  # noqa: E402  (the acac reader the examples use)
from make_emt_dataset import structure as _emt_structure  # noqa: E402  (the example's EMT slabs)
sys.path.insert(0, str(HERE))
import _supervisor as supervisor  # noqa: E402  (gaunt-compare and its runs die with this process)

BASE_CONFIG = ROOT / "examples" / "compare" / "eqv2_emt.yml"
DATASETS = ("acac", "emt")
VARIANTS = ("upstream", "gaunt")
BOX = 30.0  # A: acac molecules in a periodic box larger than the molecule plus two cutoffs
MAX_EMT_FORCE = 10.0  # eV/A: EMT slabs with larger forces (an adsorbate inside the surface) are drawn again

# backbone options over BASE_CONFIG's (2 blocks of 32 channels, lmax 4, mmax 2, cutoff 5 A): none for a
# full run, a smaller model for --small-model / --short
FULL_MODEL: Dict[str, object] = {}
SMALL_MODEL = dict(num_layers=2, sphere_channels=16, attn_hidden_channels=16, ffn_hidden_channels=32,
                   edge_channels=16, num_distance_basis=32, num_heads=2, attn_alpha_channels=8,
                   attn_value_channels=8)


def find_acac() -> Path:
    for candidate in (ROOT.parent / "shared" / "data" / "acac", Path("/work/shared/data/acac")):
        if (candidate / "train_300K.xyz").exists():
            return candidate
    raise SystemExit("acac dataset not found (expected ../shared/data/acac beside the repository)")


# ------------------------------------------------------------------------------------------- data
def _acac_atoms(frame: List[str]):
    """One acac frame (extended XYZ lines) -> ``ase.Atoms`` in a periodic box with energy and forces."""
    import io

    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.io import read

    atoms = read(io.StringIO("\n".join(frame) + "\n"), format="extxyz")
    energy, forces = atoms.get_potential_energy(), atoms.get_forces()
    atoms.set_cell([BOX, BOX, BOX])
    atoms.center()
    atoms.pbc = True
    atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces)
    return atoms


def acac_sets(n_train: int, n_valid: int, n_test: int) -> Dict[str, list]:
    src = find_acac()
    train = _acac_frames(src / "train_300K.xyz")
    if n_train + n_valid > len(train):
        raise SystemExit(f"--n-train + --n-valid = {n_train + n_valid} exceeds the {len(train)} acac training configs")
    test = _acac_frames(src / "test_MD_300K.xyz")
    test = [test[int(i * len(test) / n_test)] for i in range(min(n_test, len(test)))]
    return {"train": [_acac_atoms(f) for f in train[:n_train]],
            "val": [_acac_atoms(f) for f in train[n_train:n_train + n_valid]],
            "test": [_acac_atoms(f) for f in test]}


def _emt_draws(rng: np.random.Generator, n: int) -> list:
    """``n`` of the example's EMT slabs whose largest force component is at most MAX_EMT_FORCE."""
    out = []
    while len(out) < n:
        atoms = _emt_structure(rng)
        if np.abs(atoms.get_forces(apply_constraint=False)).max() <= MAX_EMT_FORCE:
            out.append(atoms)
    return out


def emt_sets(n_train: int, n_valid: int, n_test: int) -> Dict[str, list]:
    train = _emt_draws(np.random.default_rng(0), n_train + n_valid)
    return {"train": train[:n_train], "val": train[n_train:], "test": _emt_draws(np.random.default_rng(1), n_test)}


def element_references(structures) -> Dict[int, float]:
    """Per-element energies ``E0[Z]`` minimising ``sum (E - sum_i E0[Z_i])^2`` over ``structures``."""
    zs = sorted({int(z) for a in structures for z in a.numbers})
    counts = np.array([[np.sum(a.numbers == z) for z in zs] for a in structures], dtype=float)
    energies = np.array([a.get_potential_energy() for a in structures])
    e0, *_ = np.linalg.lstsq(counts, energies, rcond=None)
    return dict(zip(zs, e0.tolist()))


def write_db(path: Path, structures, e0: Dict[int, float]) -> Path:
    """An ase db of ``structures`` with energies minus their element references (forces as they are)."""
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.db import connect

    if path.exists():
        path.unlink()
    with connect(str(path)) as db:
        for atoms in structures:
            energy = atoms.get_potential_energy() - sum(e0.get(int(z), 0.0) for z in atoms.numbers)
            forces = atoms.get_forces(apply_constraint=False)
            copy = atoms.copy()
            copy.calc = SinglePointCalculator(copy, energy=energy, forces=forces)
            db.write(copy)
    return path


def prepare(name: str, folder: Path, n_train: int, n_valid: int, n_test: int) -> Dict[str, Path]:
    sets = (acac_sets if name == "acac" else emt_sets)(n_train, n_valid, n_test)
    e0 = element_references(sets["train"])
    folder.mkdir(parents=True, exist_ok=True)
    return {k: write_db(folder / f"{k}.db", v, e0) for k, v in sets.items()}


# ------------------------------------------------------------------------------------------ config
def fairchem_config(files: Dict[str, Path], model: Dict[str, object], batch_size: int, lr: float,
                    cosine_steps: int = 0) -> dict:
    """BASE_CONFIG (a plain stock fairchem config: gaunt-compare adds ``tensor_product: gaunt`` for the
    Gaunt variant) on ``files`` with the backbone options ``model``. ``cosine_steps > 0``: the learning
    rate falls from ``lr`` to ``lr / 100`` over that many optimiser steps (torch's CosineAnnealingLR,
    stepped by fairchem's trainer after every step); 0 keeps it constant."""
    cfg = yaml.safe_load(BASE_CONFIG.read_text())
    cfg["dataset"]["train"]["src"] = str(files["train"])
    cfg["dataset"]["val"]["src"] = str(files["val"])
    cfg["optim"].update(batch_size=batch_size, eval_batch_size=batch_size, lr_initial=lr)
    if cosine_steps > 0:
        cfg["optim"].update(scheduler="CosineAnnealingLR", T_max=int(cosine_steps), eta_min=lr / 100.0)
    backbone = cfg["model"]["backbone"]
    for key in ("tensor_product", "gaunt_method", "gaunt_zero_init"):
        backbone.pop(key, None)
    backbone.update(model)
    return cfg


def run_compare(name: str, cfg: dict, test_db: Path, work: Path, seeds: Sequence[int], epochs: int,
                jobs: int, quiet: bool) -> dict:
    """``gaunt-compare`` on one data set; returns its report.json."""
    folder = work / name
    folder.mkdir(parents=True, exist_ok=True)
    cfg_path = folder / f"eqv2_{name}.yml"
    cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    out = folder / "report"
    cmd = [sys.executable, "-m", "gaunt_plugins.compare.cli", str(cfg_path), "--framework", "fairchem",
           "--epochs", str(epochs), "--seed", str(seeds[0]), "--seeds", str(len(seeds)), "--jobs", str(jobs),
           "--test", f"{name}={test_db}", "--out", str(out), "--overwrite", "--device", "cpu"]
    if quiet:
        cmd.append("--quiet")
    print("+", " ".join(cmd), flush=True)
    proc = supervisor.run(cmd, cwd=ROOT, grace_s=10.0)
    report = out / "report.json"
    if not report.exists():
        raise SystemExit(f"gaunt-compare on {name} wrote no report (exit {proc.returncode})")
    return json.loads(report.read_text())


# ------------------------------------------------------------------------------------------ results
def _mean_std(values: List[float]) -> Dict[str, float]:
    values = [v for v in values if v is not None]
    if not values:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values)}


CURVE_KEYS = {"valid_mae_e_meV": "e_meV", "valid_mae_f_meV_per_A": "f_meV_per_A"}


def _curve(run: dict) -> Dict[str, list]:
    """One run's validation curve: epoch, training time so far (s), energy MAE (meV), force MAE (meV/A)."""
    c = run.get("curves") or {}
    out = {"epoch": list(c.get("epoch") or []), "train_elapsed_s": list(c.get("train_elapsed_s") or [])}
    for key, short in CURVE_KEYS.items():
        out[short] = list(c.get(key) or [])
    return out


def _mean_curve(curves: List[Dict[str, list]]) -> Dict[str, list]:
    """Mean over seeds of the validation curves at the epochs every seed reached."""
    n = min((len(c["epoch"]) for c in curves), default=0)
    if n == 0 or any(len(c[k]) < n for c in curves for k in CURVE_KEYS.values()):
        return {}
    return {"epoch": curves[0]["epoch"][:n],
            **{k: [statistics.fmean(c[k][i] for c in curves) for i in range(n)]
               for k in ("train_elapsed_s", *CURVE_KEYS.values())}}


def still_falling(curve: Dict[str, list], fraction: float = 0.25) -> Dict[str, float]:
    """Relative fall of the mean validation errors over the last ``fraction`` of the epochs:
    ``1 - err(last) / err(last - fraction * epochs)`` (0.02 = still 2% better at the end)."""
    if not curve:
        return {}
    n = len(curve["epoch"])
    back = max(1, int(round(fraction * n)))
    if n <= back:
        return {}
    return {k: 1.0 - curve[k][-1] / curve[k][-1 - back] for k in CURVE_KEYS.values()}


def at_wall_clock(curves: List[Dict[str, list]], seconds: float) -> Dict[str, dict]:
    """Per seed, the best validation errors reached within ``seconds`` of training; mean +- std."""
    best = {k: [] for k in CURVE_KEYS.values()}
    for c in curves:
        within = [i for i, t in enumerate(c["train_elapsed_s"]) if t <= seconds]
        for k in best:
            best[k].append(min(c[k][i] for i in within) if within else None)
    return {k: _mean_std(v) for k, v in best.items()}


def compare_curves(per_variant_curves: Dict[str, List[Dict[str, list]]]) -> dict:
    """The validation curves' summary: per variant the mean curve and how fast it still fell at the end,
    and both variants' best validation errors within the shorter variant's mean training time."""
    means = {v: _mean_curve(cs) for v, cs in per_variant_curves.items()}
    totals = [m["train_elapsed_s"][-1] for m in means.values() if m]
    budget = min(totals) if len(totals) == len(means) and totals else None
    return {"mean_valid_curve": means,
            "fall_over_last_quarter": {v: still_falling(m) for v, m in means.items()},
            "wall_clock_budget_s": budget,
            "at_wall_clock_budget": ({v: at_wall_clock(cs, budget) for v, cs in per_variant_curves.items()}
                                     if budget is not None else {})}


def summarise(name: str, report: dict) -> Dict[str, dict]:
    """Per variant: per-seed runs and mean +- std of the test errors, step time and parameters; under
    ``"curves"`` the validation curves' summary (``compare_curves``)."""
    out = {}
    curves = {}
    for variant in VARIANTS:
        v = report["variants"][variant]
        runs = v.get("runs") or {str(report.get("seed")): v}  # keyed by seed
        per_seed = []
        curves[variant] = [_curve(run) for run in runs.values() if run.get("status") == "ok"]
        for seed, run in runs.items():
            test = (run.get("tests") or {}).get(name, {})
            per_seed.append({
                "seed": int(seed), "status": run.get("status"), "epochs": run.get("epochs"),
                "e_mae_meV_per_atom": test.get("e_mae_meV_per_atom"), "f_mae_meV_per_A": test.get("f_mae_meV_per_A"),
                "median_step_s": run.get("median_step_s"), "parameters": run.get("parameters"),
            })
        out[variant] = {
            "runs": per_seed,
            **{key: _mean_std([r[key] for r in per_seed])
               for key in ("e_mae_meV_per_atom", "f_mae_meV_per_A", "median_step_s")},
            "parameters": next((r["parameters"] for r in per_seed if r["parameters"]), None),
        }
    out["curves"] = compare_curves(curves)
    return out


def _fmt(stat: Dict[str, float], scale: float = 1.0, digits: int = 1) -> str:
    if stat["mean"] is None:
        return "-"
    return f"{stat['mean'] * scale:.{digits}f} +- {stat['std'] * scale:.{digits}f}"


def table(results: Dict[str, Dict[str, dict]]) -> str:
    lines = ["| data set | variant | parameters | E MAE (meV/atom) | F MAE (meV/A) | step (ms, median) |",
             "|---|---|---|---|---|---|"]
    for name, per_variant in results.items():
        for variant in VARIANTS:
            r = per_variant[variant]
            label = "stock EquiformerV2" if variant == "upstream" else "+ Gaunt self-mix"
            params = f"{r['parameters']:,}" if r["parameters"] else "-"
            lines.append(f"| {name} | {label} | {params} | {_fmt(r['e_mae_meV_per_atom'], digits=2)} "
                         f"| {_fmt(r['f_mae_meV_per_A'])} | {_fmt(r['median_step_s'], 1000.0, 0)} |")
    return "\n".join(lines)


def curve_table(results: Dict[str, Dict[str, dict]]) -> str:
    """Validation errors (mean of the seeds): how much they still fell over the last quarter of the
    epochs, and the best reached within the shorter variant's training time."""
    lines = ["| data set | variant | valid E fall, last quarter | valid F fall, last quarter "
             "| budget (s) | best valid E at budget (meV) | best valid F at budget (meV/A) |",
             "|---|---|---|---|---|---|---|"]
    for name, per_variant in results.items():
        c = per_variant.get("curves") or {}
        for variant in VARIANTS:
            fall = (c.get("fall_over_last_quarter") or {}).get(variant) or {}
            at = (c.get("at_wall_clock_budget") or {}).get(variant) or {}
            budget = c.get("wall_clock_budget_s")
            pct = lambda key: f"{100 * fall[key]:.1f}%" if key in fall else "-"  # noqa: E731
            lines.append(f"| {name} | {variant} | {pct('e_meV')} | {pct('f_meV_per_A')} "
                         f"| {budget:.0f} | {_fmt(at['e_meV'])} | {_fmt(at['f_meV_per_A'])} |" if at and budget
                         else f"| {name} | {variant} | {pct('e_meV')} | {pct('f_meV_per_A')} | - | - | - |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------- main
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", nargs="+", choices=DATASETS, default=list(DATASETS))
    p.add_argument("--seeds", type=int, default=3, help="number of seeds (0, 1, ...); >= 3 for mean +- std")
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--n-train", type=int, default=200)
    p.add_argument("--n-valid", type=int, default=40)
    p.add_argument("--n-test", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--schedule", choices=("cosine", "constant"), default="cosine",
                   help="learning rate: cosine from --lr to --lr/100 over the run (default), or constant")
    p.add_argument("--small-model", action="store_true", help="16 channels instead of 32 (2 blocks either way)")
    p.add_argument("--short", action="store_true",
                   help="a short run: 32/8/32 configurations, 8 epochs, the small model (does not answer "
                        "the accuracy question)")
    p.add_argument("--jobs", type=int, default=2, help="runs at a time (each with one thread)")
    p.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "gaunt_accuracy_equiformer_v2",
                   help="data, configs and gaunt-compare reports (its report folders are replaced)")
    p.add_argument("--out", type=Path, default=HERE / "results" / "accuracy_equiformer_v2.json")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    if args.short:
        args.n_train, args.n_valid, args.n_test, args.epochs, args.small_model = 32, 8, 32, 8, True
    for key in ("seeds", "epochs", "n_train", "n_valid", "n_test", "batch_size", "jobs"):
        if getattr(args, key) < 1:
            p.error(f"--{key.replace('_', '-')} must be >= 1, got {getattr(args, key)}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    model = SMALL_MODEL if args.small_model else FULL_MODEL
    seeds = list(range(args.seeds))
    started, t0 = time.strftime("%Y-%m-%d %H:%M:%S"), time.monotonic()
    results = {}
    for name in args.datasets:
        files = prepare(name, args.work / name / "data", args.n_train, args.n_valid, args.n_test)
        steps = args.epochs * -(-args.n_train // args.batch_size)
        cfg = fairchem_config(files, model, args.batch_size, args.lr, steps if args.schedule == "cosine" else 0)
        report = run_compare(name, cfg, files["test"], args.work, seeds, args.epochs, args.jobs, args.quiet)
        results[name] = summarise(name, report)
    text = table(results) + "\n\n" + curve_table(results)
    print(text)
    payload = {
        "benchmark": "accuracy_equiformer_v2",
        "short_run": bool(args.short),
        "note": ("a short run: a few epochs on a few dozen configurations; it checks the pipeline and "
                 "shows the early-training trend only, it does not answer whether the self-mix improves "
                 "accuracy") if args.short else "",
        "command": " ".join(["python benchmarks/accuracy_equiformer_v2.py", *(sys.argv[1:] if argv is None else argv)]),
        "settings": {"datasets": args.datasets, "seeds": seeds, "epochs": args.epochs, "n_train": args.n_train,
                     "n_valid": args.n_valid, "n_test": args.n_test, "batch_size": args.batch_size, "lr": args.lr,
                     "schedule": args.schedule,
                     "model": model, "base_config": str(BASE_CONFIG.relative_to(ROOT)), "threads_per_run": 1,
                     "jobs": args.jobs},
        "units": {"e_mae": "meV/atom", "f_mae": "meV/A (free atoms)", "step": "s (median training step)"},
        "host": {"machine": platform.machine(), "processor": platform.processor(), "cpus": os.cpu_count()},
        "started": started,
        "wall_s": time.monotonic() - t0,
        "results": results,
        "table": text,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
