"""Inference benchmark for molecular dynamics: energies and forces of upstream MACE vs ``tensor_product: gaunt``.

What a user of a trained potential pays per MD step, on the CPU, for the model of ``model_step.py``
(mace-torch 0.3.16 ``ScaleShiftMACE``: 2 interactions, max_ell 3, correlation 3, r_max 5, hidden irreps
``C x (0e + 1o + ... + L)``), random weights (``torch.manual_seed(--seed)`` right before each model is
built; the Gaunt models are built directly, as ``tensor_product: gaunt`` builds them):

  upstream        the stock model (MACE's e3nn convolution and symmetric contraction)
  product         ``tensor_product: gaunt`` with the default ``gaunt_targets: [product]``
  conv,product    ``gaunt_targets: [conv, product]`` (one Gaunt product per channel in the convolution)

Systems:

  molecule        one acac molecule (15 atoms) in ASE velocity-Verlet MD (0.5 fs) through ``MACECalculator``
                  (what a user sees per step: the calculator's graph building, the model, stress included)
  box             periodic boxes of acac molecules at liquid density (1 g/cm^3: about 46 neighbours per atom
                  within r_max), k x k x k molecules for the k closest to ``--atoms`` / 15 (100 -> 120 atoms,
                  1000 -> 960, 5000 -> 5145), through MACE's batched evaluation
                  (``model(batch, compute_force=True)``); the graph is built once outside the timing and its
                  cost (MACE's data pipeline, the same for every variant) is reported as ``graph_ms``

Modes: ``eager``; ``script``: ``e3nn.util.jit.compile`` of the whole model, MACE's ``_compiled.model``
(the Gaunt layers call the CPU kernels as ``torch.ops.gaunt`` operators where their library is built);
``compile``: MACE's ``torch.compile`` route (model built with e3nn's codegen off, ``simplify``, ``fullgraph=True``, called
with ``training=True`` as ``MACECalculator(compile_mode=...)`` calls it).

Each case (system, L, C, dtype, threads, mode) runs in its own child process with that many threads; its
variants are built, warmed up and timed round-robin (A B C A B C ...: ``model_step.interleaved_ms``), so
a change in the machine's load hits all alike. Per variant: the median ms per MD step, atom-steps per
second, and the memory of one step (the last warm-up call): ``step_mib``, the resident-set high-water mark
during the step over the resident set before it (free heap returned with ``malloc_trim`` and the mark
reset through ``/proc/self/clear_refs`` first), plus ``model_mib`` (parameters and buffers); ``peak_mib``
is their sum.
Ratios: ``speedup`` = upstream ms / variant ms (= the ratio of atom-steps per second), ``memory_ratio``
= variant peak / upstream peak. ``scaling``: the exponent b of ms = a * atoms^b, fitted per variant on the
boxes. Each variant of a case has ``--case-budget`` seconds: long steps get fewer timed rounds (at least
one), and a variant whose warm-up and one round would pass it (measured, or predicted linearly from the
next smaller box) is recorded as skipped, with the reason. ``--time-budget`` caps the whole grid.

    python benchmarks/md_speed.py                     # the default grid: L 0-3, C 128, the molecule and the
                                                      # 100- and 1,000-atom boxes, eager, float32, 1 and 2
                                                      # threads; capped at 40 min (--time-budget): on 2
                                                      # cores shared at load ~5 it got through 1 thread
    python benchmarks/md_speed.py --modes script --out benchmarks/results/md_speed_cpu_script.json
    python benchmarks/md_speed.py --lmax 1 --channels 64 --atoms 100 --modes eager --dtypes float32 --threads 1
    python benchmarks/md_speed.py --modes compile --atoms 100 --lmax 1 --no-molecule
    python benchmarks/md_speed.py --dry-run                           # the plan only

Table on stdout; JSON in benchmarks/results/md_speed_cpu.json (or --out), rewritten after every case.
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import _supervisor as supervisor  # noqa: E402

VARIANTS = ("upstream", "product", "conv,product")
MODES = ("eager", "script", "compile")
DTYPES = ("float32", "float64")
ACAC_MOLAR_MASS = 100.117  # g/mol, C5H8O2
AVOGADRO = 6.02214076e23
MAX_ELL, CORRELATION = 3, 3
MD_TIMESTEP_FS = 0.5

DEFAULTS = dict(lmax=[0, 1, 2, 3], channels=[128], atoms=[100, 1000], modes=["eager"],
                dtypes=["float32"], threads=[1, 2], variants=list(VARIANTS))


# ----------------------------------------------------------------------------------------- systems
def box_molecules(atoms: int) -> int:
    """k, the molecules per box side: k^3 acac molecules (15 atoms each) closest to ``atoms``."""
    return max(1, round((atoms / 15) ** (1 / 3)))


def acac_box(k: int, density: float = 1.0, seed: int = 0, tries: int = 64):
    """A periodic cubic box of k^3 acac molecules at ``density`` g/cm^3: one on each site of a k^3 lattice,
    each a random training configuration in the best of ``tries`` random orientations (the one farthest
    from the molecules already placed). Returns ``(atoms, info)``; ``info`` has the side (A), the density
    and the closest contact between molecules (A)."""
    import ase
    from scipy.spatial.transform import Rotation

    from model_step import acac_atoms

    frames, source = acac_atoms(64, seed)
    rng = np.random.default_rng(seed)
    n = k ** 3
    side = (n * ACAC_MOLAR_MASS / AVOGADRO / density * 1e24) ** (1 / 3)
    spacing = side / k
    grid = np.stack(np.meshgrid(*[np.arange(k)] * 3, indexing="ij"), -1).reshape(-1, 3)
    sites = (grid + 0.5) * spacing
    placed = np.zeros((n, 15, 3))
    closest = math.inf
    for i, site in enumerate(sites):
        frame = frames[int(rng.integers(len(frames)))]
        local = frame.positions - frame.positions.mean(0)
        delta = sites[:i] - site
        delta -= side * np.round(delta / side)
        near = np.nonzero(np.linalg.norm(delta, axis=1) < 1.8 * spacing)[0]
        others = (placed[near] - site).reshape(-1, 3)
        others -= side * np.round(others / side)
        best, best_d = local, -1.0
        for rot in Rotation.random(tries, random_state=int(rng.integers(1 << 31))):
            p = rot.apply(local)
            d = np.min(np.linalg.norm(p[:, None] - others[None], axis=-1)) if len(others) else math.inf
            if d > best_d:
                best, best_d = p, d
        placed[i] = best + site
        closest = min(closest, best_d)
    atoms = ase.Atoms(numbers=np.tile(frames[0].numbers, n), positions=placed.reshape(-1, 3), cell=[side] * 3,
                      pbc=True)
    return atoms, {"molecules": n, "side_A": round(side, 3), "density_g_cm3": density,
                   "closest_contact_A": round(float(closest), 3), "source": source}


def thermalize(atoms, temperature_K: float, rng) -> None:
    """Maxwell-Boltzmann momenta: ASE's ``thermalize_momenta`` (3.29+), else ``MaxwellBoltzmannDistribution``."""
    try:
        from ase.md.velocitydistribution import thermalize_momenta
    except ImportError:
        from ase.md.velocitydistribution import MaxwellBoltzmannDistribution as thermalize_momenta
    thermalize_momenta(atoms, temperature_K=temperature_K, rng=rng)


def acac_molecule():
    from model_step import acac_atoms

    frames, source = acac_atoms(1)
    return frames[0], source


# ----------------------------------------------------------------------------------------- models
def targets_of(variant: str) -> Optional[frozenset]:
    return None if variant == "upstream" else frozenset(variant.split(","))


def build_model(variant: str, lmax: int, channels: int, seed: int, codegen: bool = True, product_chains: int = 1,
                product_odd_chains: int = 0):
    """The model of ``variant`` in the default dtype, seeded, parameters frozen (as MACECalculator leaves
    them); a Gaunt many-body product with ``product_chains`` chains and ``product_odd_chains`` odd-path brackets.
    ``codegen=False`` builds with e3nn's code generation off (MACE's torch.compile route)."""
    import torch
    from mace.tools.compile import disable_e3nn_codegen

    import model_step as ms

    targets = targets_of(variant)
    torch.manual_seed(seed)
    with (contextlib.nullcontext() if codegen else disable_e3nn_codegen()):
        if targets is None:
            model = ms.mace_model(lmax, channels, MAX_ELL, CORRELATION)
        else:
            model = ms.gaunt_mace_model(lmax, channels, MAX_ELL, CORRELATION,
                                        ms.gaunt_options(targets, 1, product_chains, product_odd_chains))
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def prepare(model, mode: str):
    """``(callable, training flag)`` for ``mode``: eager, TorchScript (MACE's ``_compiled.model``: e3nn's
    ``jit.compile``) or MACE's torch.compile route."""
    import torch

    if mode == "eager":
        return model, False
    if mode == "script":
        from e3nn.util import jit
        return jit.compile(model), False
    if mode == "compile":
        from mace.tools.compile import configure_autograd_for_compile, simplify
        configure_autograd_for_compile(allow_autograd=True)
        return torch.compile(simplify(model), fullgraph=True), True
    raise ValueError(f"unknown mode {mode!r}; choose from {', '.join(MODES)}")


def tensor_mib(model) -> float:
    tensors = list(model.parameters()) + list(model.buffers())
    return sum(t.numel() * t.element_size() for t in tensors) / 2**20


# ----------------------------------------------------------------------------------------- memory
def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def measure_step(step):
    """``(step(), MiB)``: the resident memory one call of ``step`` needs above what is resident before it.
    Free heap is handed back first (``malloc_trim``) and the high-water mark reset
    (``/proc/self/clear_refs``, Linux); the MiB are ``None`` where /proc or glibc are missing."""
    before = None
    try:
        libc = ctypes.CDLL("libc.so.6")
        gc.collect()
        libc.malloc_trim(0)
        before = _rss_kib("VmRSS")
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except (OSError, RuntimeError, AttributeError):
        before = None
    out = step()
    if before is None:
        return out, None
    return out, max(0, _rss_kib("VmHWM") - before) / 1024


# ----------------------------------------------------------------------------------------- one case (child)
def _box_step(model, training: bool, batch):
    # MACE's forward marks the positions as requiring grad; a compiled forward needs it done outside
    batch["positions"].requires_grad_(True)

    def step():
        out = model(dict(batch), training=training, compute_force=True)
        return out["energy"].detach(), out["forces"].detach()
    return step


def _md_step(model, training: bool, dtype: str, steps: int, seed: int):
    """``steps`` velocity-Verlet steps of one acac molecule through MACECalculator."""
    from ase import units
    from ase.md.verlet import VelocityVerlet
    from mace.calculators import MACECalculator

    atoms, _ = acac_molecule()
    atoms = atoms.copy()
    calc = MACECalculator(models=[model], device="cpu", default_dtype=dtype)
    calc.use_compile = training  # MACE's compile route calls the model with training=True
    atoms.calc = calc
    thermalize(atoms, temperature_K=300, rng=np.random.default_rng(seed))
    start, momenta = atoms.get_positions(), atoms.get_momenta()
    dyn = VelocityVerlet(atoms, timestep=MD_TIMESTEP_FS * units.fs)

    def step():
        # every call starts from the same state: random weights give large forces, and a long trajectory
        # would blow the molecule apart (and the neighbour list's bins with it)
        atoms.set_positions(start)
        atoms.set_momenta(momenta)
        dyn.run(steps)
    return step


def run_case(spec: dict) -> List[dict]:
    """Build, warm up and time every variant of one case; rows with ``median_ms`` per MD step, or with
    ``skipped`` / ``error``."""
    import warnings

    import torch

    from model_step import interleaved_ms

    warnings.filterwarnings("ignore")
    torch.set_num_threads(spec["threads"])
    dtype = getattr(torch, spec["dtype"])
    torch.set_default_dtype(dtype)
    started = time.perf_counter()
    case = {k: spec[k] for k in ("system", "L", "C", "dtype", "threads", "mode")}
    chunk = spec.get("md_chunk", 1)
    if spec["system"] == "box":
        from model_step import mace_batch
        box, info = acac_box(spec["k"], seed=spec["seed"])
        batch = mace_batch([box], torch.device("cpu"), dtype)  # the first call also imports and caches
        t0 = time.perf_counter()
        batch = mace_batch([box], torch.device("cpu"), dtype)
        graph_ms = (time.perf_counter() - t0) * 1e3
        case.update(atoms=len(box), edges=int(batch["edge_index"].shape[1]), graph_ms=graph_ms, box=info)
    else:
        molecule, source = acac_molecule()
        case.update(atoms=len(molecule), md_steps_per_call=chunk, timestep_fs=MD_TIMESTEP_FS, data=source)
    rows, steps, rounds = {}, {}, []
    for variant in spec["variants"]:
        row = dict(case, variant=variant)
        rows[variant] = row
        if variant in spec.get("skip", {}):
            row["skipped"] = spec["skip"][variant]
            continue
        try:
            t_variant = time.perf_counter()
            model = build_model(variant, spec["L"], spec["C"], spec["seed"], codegen=spec["mode"] != "compile",
                                product_chains=spec.get("product_chains", 1),
                                product_odd_chains=spec.get("product_odd_chains", 0))
            row["parameters"] = int(sum(p.numel() for p in model.parameters()))
            row["model_mib"] = tensor_mib(model)
            fn, training = prepare(model, spec["mode"])
            if spec["system"] == "box":
                step = _box_step(fn, training, batch)
            else:
                step = _md_step(fn, training, spec["dtype"], chunk, spec["seed"])
            row["setup_s"] = time.perf_counter() - t_variant
            row["first_call_s"], step_mib, rounds_left = _warm_up(step, spec, t_variant)
            if spec["mode"] == "eager" and variant != "upstream":
                from gaunt_plugins.backends.registry import last_executor
                row["served_by"] = dict(last_executor())
            if step_mib is not None:
                row["step_mib"] = step_mib
                row["peak_mib"] = step_mib + row["model_mib"]
            steps[variant] = step
            rounds.append(rounds_left)
        except _Skip as exc:
            row["skipped"] = str(exc)
        except Exception as exc:  # noqa: BLE001
            row["error"] = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
            if os.environ.get("GAUNT_BENCH_DEBUG"):
                traceback.print_exc()
    if steps:
        stats = interleaved_ms(steps, 0, max(1, min(rounds)), False, torch.device("cpu"))
        for variant, st in stats.items():
            row = rows[variant]
            row["median_ms"] = st["median_ms"] / chunk
            row["min_ms"] = st["min_ms"] / chunk
            row["rounds"] = st["iters"]
            row["atom_steps_per_s"] = row["atoms"] / (row["median_ms"] * 1e-3)
    for row in rows.values():
        row["case_s"] = time.perf_counter() - started
    return list(rows.values())


def _rounds(step_s: float, spec: dict, t_variant: float) -> int:
    """Timed rounds a variant can still afford within its budget (at most ``iters``)."""
    left = spec["budget_s"] - (time.perf_counter() - t_variant)
    return int(min(spec["iters"], left // max(step_s, 1e-9)))


def _warm_up(step, spec: dict, t_variant: float):
    """The untimed calls: ``warmup`` of them (TorchScript: at least 2, its profiling runs), the first one's
    output checked, the last one's memory measured. Returns ``(first call s, step MiB, timed rounds the
    variant's budget still affords)``; raises ``_Skip`` when not even one round fits."""
    import torch

    calls = max(1, spec["warmup"], 2 if spec["mode"] == "script" else 1)
    first, step_mib = None, None
    for i in range(calls):
        t0 = time.perf_counter()
        if i == calls - 1:
            out, step_mib = measure_step(step)
        else:
            out = step()
        took = time.perf_counter() - t0
        if i == 0:
            first = took
            if spec["system"] == "box" and not all(bool(torch.isfinite(t).all()) for t in out):
                raise RuntimeError("non-finite energy or forces")
        left = spec["budget_s"] - (time.perf_counter() - t_variant) - took * (calls - i - 1)
        if left < took:
            raise _Skip(f"one step took {took:.1f} s: the warm-up and one timed round would pass the budget of "
                        f"{spec['budget_s']:g} s per variant")
    return first, step_mib, int(min(spec["iters"], left // took))


class _Skip(Exception):
    pass


# ----------------------------------------------------------------------------------------- the grid (parent)
def plan_cases(args) -> List[dict]:
    """Every case of the grid: mode by mode (eager first), then threads, dtype, L, C; within each, the
    molecule and the boxes smallest first, so that a box's cost can be predicted from the smaller one."""
    cases = []
    for mode in args.modes:
        for threads in args.threads:
            for dtype in args.dtypes:
                for lmax in args.lmax:
                    for channels in args.channels:
                        base = dict(L=lmax, C=channels, dtype=dtype, threads=threads, mode=mode,
                                    variants=list(args.variants), seed=args.seed, budget_s=args.case_budget,
                                    product_chains=args.product_chains, product_odd_chains=args.product_odd_chains)
                        if args.molecule:
                            cases.append(dict(base, system="molecule", warmup=args.md_warmup, iters=args.md_iters,
                                              md_chunk=args.md_chunk))
                        for k in sorted({box_molecules(n) for n in args.atoms}):
                            cases.append(dict(base, system="box", k=k, warmup=args.warmup, iters=args.iters))
    return cases


def predicted_skips(spec: dict, rows: Sequence[dict]) -> Dict[str, str]:
    """Variants whose warm-up and one timed round, predicted linearly in the atoms from the
    largest smaller box of the same settings, would pass the budget per variant."""
    if spec["system"] != "box":
        return {}
    atoms = 15 * spec["k"] ** 3
    steps = max(1, spec["warmup"], 2 if spec["mode"] == "script" else 1) + 1  # the warm-ups and one timed round
    out = {}
    for variant in spec["variants"]:
        prior = [r for r in rows if r.get("system") == "box" and r["variant"] == variant and r["atoms"] < atoms
                 and all(r[k] == spec[k] for k in ("L", "C", "dtype", "threads", "mode"))]
        done = [r for r in prior if "median_ms" in r]
        if done:
            ref = max(done, key=lambda r: r["atoms"])
            need = ref["median_ms"] * 1e-3 * atoms / ref["atoms"] * steps
            if need > spec["budget_s"]:
                out[variant] = (f"predicted {need:.0f} s for {steps} steps (linear from {ref['median_ms']:.0f} ms at "
                                f"{ref['atoms']} atoms) passes the budget of {spec['budget_s']:g} s per variant")
        elif any("skipped" in r for r in prior):
            out[variant] = "skipped at a smaller box: " + max(
                (r for r in prior if "skipped" in r), key=lambda r: r["atoms"])["skipped"]
    return out


def run_child(spec: dict, timeout: float, script: Path) -> List[dict]:
    """Run one case in a child process (``script``: this file as it was when the grid started) with
    ``spec["threads"]`` threads; rows, or error rows when it fails or runs past ``timeout``."""
    env = dict(os.environ, OMP_NUM_THREADS=str(spec["threads"]), MKL_NUM_THREADS=str(spec["threads"]),
               PYTHONPATH=os.pathsep.join([str(HERE)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    cmd = [sys.executable, str(script), "--child", json.dumps(spec)]
    try:
        proc = supervisor.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        if proc.returncode == 0 and lines:
            return json.loads(lines[-1][7:])
        why = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1][:300]
    except subprocess.TimeoutExpired:
        why = f"skipped: the case ran past {timeout:g} s and was stopped"
    return [dict(_case_fields(spec), variant=v, error=why) for v in spec["variants"]]


def _case_fields(spec: dict) -> dict:
    out = {k: spec[k] for k in ("system", "L", "C", "dtype", "threads", "mode")}
    out["atoms"] = 15 * spec["k"] ** 3 if spec["system"] == "box" else 15
    return out


def add_ratios(rows: List[dict]) -> None:
    """``speedup`` = upstream ms / variant ms of the same case; ``memory_ratio`` = variant / upstream peak."""
    key = ("system", "atoms", "L", "C", "dtype", "threads", "mode")
    base = {tuple(r.get(k) for k in key): r for r in rows if r["variant"] == "upstream" and "median_ms" in r}
    for r in rows:
        b = base.get(tuple(r.get(k) for k in key))
        if b is None or "median_ms" not in r:
            continue
        r["speedup"] = b["median_ms"] / r["median_ms"]
        if r.get("peak_mib") and b.get("peak_mib"):
            r["memory_ratio"] = r["peak_mib"] / b["peak_mib"]


def fit_scaling(rows: Sequence[dict]) -> List[dict]:
    """Per (variant, L, C, dtype, threads, mode) with at least two boxes timed: the exponent b of
    ms = a * atoms^b (least squares in log-log)."""
    groups: Dict[tuple, List[dict]] = {}
    for r in rows:
        if r.get("system") == "box" and "median_ms" in r:
            groups.setdefault((r["variant"], r["L"], r["C"], r["dtype"], r["threads"], r["mode"]), []).append(r)
    out = []
    for (variant, lmax, channels, dtype, threads, mode), rs in sorted(groups.items(), key=str):
        if len({r["atoms"] for r in rs}) < 2:
            continue
        x = np.log([r["atoms"] for r in rs])
        y = np.log([r["median_ms"] for r in rs])
        b, a = np.polyfit(x, y, 1)
        out.append({"variant": variant, "L": lmax, "C": channels, "dtype": dtype, "threads": threads, "mode": mode,
                    "atoms": [r["atoms"] for r in rs], "exponent": round(float(b), 3),
                    "ms_per_atom_at_1000": round(float(math.exp(a) * 1000 ** b / 1000), 4)})
    return out


def target_checks(rows: Sequence[dict]) -> List[dict]:
    """The targets for the default [product]: >= 3x upstream's atom-steps/s at L 1 and 2, 128 channels, on
    the ~1,000-atom box; never slower at L 0; peak memory <= upstream's (each timed case)."""
    out = []
    for r in rows:
        if r["variant"] != "product" or "speedup" not in r:
            continue
        if r["system"] == "box" and 900 <= r["atoms"] <= 1100 and r["C"] == 128 and r["L"] in (1, 2):
            out.append({"target": ">= 3x upstream at L 1-2, C 128, 1,000 atoms", **_where(r),
                        "value": round(r["speedup"], 2), "met": r["speedup"] >= 3.0})
        if r["L"] == 0:
            out.append({"target": "never slower at L 0", **_where(r), "value": round(r["speedup"], 2),
                        "met": r["speedup"] >= 1.0})
        if "memory_ratio" in r:
            out.append({"target": "peak memory <= upstream", **_where(r), "value": round(r["memory_ratio"], 2),
                        "met": r["memory_ratio"] <= 1.0})
    return out


def _where(r: dict) -> dict:
    return {k: r[k] for k in ("system", "atoms", "L", "C", "dtype", "threads", "mode")}


# ----------------------------------------------------------------------------------------- report
def _fmt_ms(v: Optional[float]) -> str:
    if v is None:
        return "—"
    return f"{v:,.0f}" if v >= 100 else f"{v:.1f}" if v >= 1 else f"{v:.2f}"


def table(rows: Sequence[dict], variants: Sequence[str]) -> str:
    """One Markdown line per case: ms per MD step and the speed-up over upstream per variant, atom-steps/s
    and peak MiB."""
    key = ("system", "atoms", "L", "C", "dtype", "threads", "mode")
    cases: Dict[tuple, Dict[str, dict]] = {}
    for r in rows:
        cases.setdefault(tuple(r.get(k) for k in key), {})[r["variant"]] = r
    head = ["system", "atoms", "L", "C", "dtype", "threads", "mode"]
    head += [f"{v} ms/step" for v in variants] + ["atom-steps/s (" + " / ".join(variants) + ")",
                                                  "peak MiB (" + " / ".join(variants) + ")"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for k, by in cases.items():
        cells = [str(x) for x in k]
        for v in variants:
            r = by.get(v, {})
            if "median_ms" in r:
                cells.append(_fmt_ms(r["median_ms"]) + (f" ({r['speedup']:.2f}x)" if v != "upstream" and "speedup" in r
                                                         else ""))
            else:
                cells.append(_short(r.get("skipped") or r.get("error") or "—"))
        cells.append(" / ".join(f"{by[v]['atom_steps_per_s']:,.0f}" if "atom_steps_per_s" in by.get(v, {}) else "—"
                                for v in variants))
        cells.append(" / ".join(f"{by[v]['peak_mib']:,.0f}" if "peak_mib" in by.get(v, {}) else "—"
                                for v in variants))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _short(text: str, width: int = 48) -> str:
    text = " ".join(str(text).split()).replace("|", "/")
    return text if len(text) <= width else text[: width - 1] + "…"


def scaling_table(fits: Sequence[dict]) -> str:
    lines = ["| variant | L | C | dtype | threads | mode | atoms | exponent |", "|---|---|---|---|---|---|---|---|"]
    for f in fits:
        lines.append(f"| {f['variant']} | {f['L']} | {f['C']} | {f['dtype']} | {f['threads']} | {f['mode']} | "
                     f"{', '.join(map(str, f['atoms']))} | {f['exponent']:.2f} |")
    return "\n".join(lines)


def write_result(path: Path, result: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(path)


# ----------------------------------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    d = DEFAULTS
    ap.add_argument("--lmax", type=int, nargs="+", default=d["lmax"], help="hidden L (default 0 1 2 3)")
    ap.add_argument("--channels", type=int, nargs="+", default=d["channels"], help="channels (default 128)")
    ap.add_argument("--atoms", type=int, nargs="*", default=d["atoms"],
                    help="box sizes, rounded to k^3 molecules (default 100 1000; none: no boxes)")
    ap.add_argument("--no-molecule", dest="molecule", action="store_false",
                    help="leave out the one-molecule MD through MACECalculator")
    ap.add_argument("--modes", nargs="+", default=d["modes"], choices=MODES, help="default eager")
    ap.add_argument("--dtypes", nargs="+", default=d["dtypes"], choices=DTYPES, help="default float32")
    ap.add_argument("--threads", type=int, nargs="+", default=d["threads"], help="default 1 2")
    ap.add_argument("--variants", nargs="+", default=d["variants"], choices=VARIANTS,
                    help="default: all (upstream, product, conv,product)")
    ap.add_argument("--seed", type=int, default=0, help="torch.manual_seed before each model is built")
    ap.add_argument("--product-chains", type=int, default=1,
                    help="the Gaunt many-body product's chains (default 1; the shipped default at max_ell 3 is 2)")
    ap.add_argument("--product-odd-chains", type=int, default=0,
                    help="its odd-path brackets (default 0; the shipped default at max_ell 3 is 1)")
    ap.add_argument("--warmup", type=int, default=1,
                    help="box: untimed calls per variant, the last one measuring memory (TorchScript: at least 2)")
    ap.add_argument("--iters", type=int, default=3, help="box: timed rounds (median)")
    ap.add_argument("--md-warmup", type=int, default=2, help="molecule: untimed calls per variant (as --warmup)")
    ap.add_argument("--md-iters", type=int, default=5, help="molecule: timed rounds (median)")
    ap.add_argument("--md-chunk", type=int, default=10, help="molecule: MD steps per timed call")
    ap.add_argument("--case-budget", type=float, default=200.0,
                    help="seconds each variant of a case may take: fewer timed rounds when steps are long, skipped "
                         "when not even one fits (default 200)")
    ap.add_argument("--time-budget", type=float, default=2400.0,
                    help="seconds for the whole grid; the cases left when it is spent are recorded as skipped "
                         "(default 2400; 0: none)")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "md_speed_cpu.json")
    ap.add_argument("--dry-run", action="store_true", help="print the cases and exit")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    return ap


def parse_args(argv=None) -> argparse.Namespace:
    ap = build_parser()
    args = ap.parse_args(argv)
    if args.child is not None:
        return args
    for name in ("lmax", "channels", "atoms", "threads"):
        values = getattr(args, name)
        low = 0 if name == "lmax" else 1
        if any(v < low for v in values):
            ap.error(f"--{name}: every value must be >= {low}, got {values}")
    if any(v > 6 for v in args.lmax):
        ap.error(f"--lmax: MACE's hidden L here is at most 6, got {args.lmax}")
    if not args.atoms and not args.molecule:
        ap.error("nothing to time: no --atoms and --no-molecule")
    if args.product_chains < 1 or args.product_odd_chains < 0:
        ap.error(f"--product-chains must be >= 1 and --product-odd-chains >= 0, got {args.product_chains} and "
                 f"{args.product_odd_chains}")
    for name in ("iters", "md_iters", "md_chunk"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')}: must be >= 1")
    if args.case_budget <= 0:
        ap.error("--case-budget: must be > 0")
    args.variants = list(dict.fromkeys(args.variants))
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child is not None:
        rows = run_case(json.loads(args.child))
        print("RESULT " + json.dumps(rows), flush=True)
        return 0
    cases = plan_cases(args)
    if args.dry_run:
        for c in cases:
            size = f"{15 * c['k'] ** 3} atoms" if c["system"] == "box" else "15 atoms (MD)"
            print(f"{c['system']:>8} {size:>15} L={c['L']} C={c['C']} {c['dtype']} threads={c['threads']} "
                  f"{c['mode']}: {', '.join(c['variants'])}")
        print(f"{len(cases)} cases")
        return 0
    import torch

    import mace

    args.out.parent.mkdir(parents=True, exist_ok=True)
    started = time.time()
    deadline = None if not args.time_budget else time.monotonic() + args.time_budget
    load_start = os.getloadavg()
    rows: List[dict] = []
    meta = {
        "benchmark": "md_speed", "device": f"CPU ({platform.processor() or platform.machine()})",
        "cpus": os.cpu_count(), "host": platform.platform(), "torch": torch.__version__,
        "mace": mace.__version__, "date": time.strftime("%Y-%m-%d %H:%M:%S"), "command": " ".join(sys.argv),
        "model": {"class": "ScaleShiftMACE", "num_interactions": 2, "max_ell": MAX_ELL, "correlation": CORRELATION,
                  "r_max": 5.0, "radial_MLP": [64, 64, 64], "hidden_irreps": "C x (0e + 1o + ... + L)"},
        "weights": f"random: torch.manual_seed({args.seed}) right before each model is built (upstream and the "
                   "Gaunt variants alike); the Gaunt models built directly as tensor_product: gaunt builds them",
        "variants": {"upstream": "mace-torch's e3nn model", "product": "tensor_product: gaunt, gaunt_targets: [product]",
                     "conv,product": "tensor_product: gaunt, gaunt_targets: [conv, product], gaunt_conv_products: 1"},
        "gaunt_product_chains": args.product_chains, "gaunt_product_odd_chains": args.product_odd_chains,
        "timing": "median over round-robin rounds (variants interleaved) in one child process per case; box: one "
                  "energy+forces evaluation (graph built outside, graph_ms); molecule: ASE velocity Verlet through "
                  "MACECalculator, ms per MD step",
        "memory": "step_mib: resident high-water mark during one step over the resident set before it (malloc_trim, "
                  "clear_refs); model_mib: parameters + buffers; peak_mib = step_mib + model_mib",
        "case_budget_s": args.case_budget, "warmup": args.warmup, "iters": args.iters,
        "md": {"warmup_calls": args.md_warmup, "rounds": args.md_iters, "steps_per_call": args.md_chunk,
               "timestep_fs": MD_TIMESTEP_FS, "temperature_K": 300},
        "loadavg_start": load_start,
    }

    def save(final: bool = False):
        add_ratios(rows)
        result = dict(meta, seconds=round(time.time() - started, 1), results=rows, scaling=fit_scaling(rows),
                      targets=target_checks(rows))
        result["loadavg_end" if final else "loadavg_now"] = os.getloadavg()
        write_result(args.out, result)

    # the children run a copy of this file: an edit while the grid runs cannot reach them
    snapshot = Path(tempfile.mkdtemp(prefix="md_speed_")) / "md_speed.py"
    shutil.copyfile(Path(__file__).resolve(), snapshot)
    print(f"# md_speed: {len(cases)} cases, load average {load_start[0]:.2f} at start", flush=True)
    for spec in cases:
        if deadline is not None and time.monotonic() > deadline:
            for v in spec["variants"]:
                rows.append(dict(_case_fields(spec), variant=v,
                                 skipped=f"skipped: the time budget of {args.time_budget:g} s was spent"))
            continue
        spec["skip"] = predicted_skips(spec, rows)
        if len(spec["skip"]) == len(spec["variants"]):
            new = [dict(_case_fields(spec), variant=v, skipped=spec["skip"][v]) for v in spec["variants"]]
        else:
            spec["loadavg"] = os.getloadavg()[0]
            new = run_child(spec, len(spec["variants"]) * args.case_budget + 180, snapshot)
            for r in new:
                r["loadavg_1min"] = spec["loadavg"]
        rows.extend(new)
        for r in new:
            what = (f"{r['median_ms']:10.1f} ms/step  {r['atom_steps_per_s']:10,.0f} atom-steps/s"
                    + (f"  peak {r['peak_mib']:7.1f} MiB" if "peak_mib" in r else "")
                    if "median_ms" in r else (r.get("skipped") or r.get("error")))
            print(f"  {r['system']:>8} {r['atoms']:>5} L={r['L']} C={r['C']} {r['dtype']} t={r['threads']} "
                  f"{r['mode']:>7} {r['variant']:>12}: {what}", flush=True)
        save()
    save(final=True)
    print()
    print(table(rows, args.variants))
    fits = fit_scaling(rows)
    if fits:
        print()
        print(scaling_table(fits))
    print(f"\nload average {load_start[0]:.2f} at start, {os.getloadavg()[0]:.2f} at end; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
