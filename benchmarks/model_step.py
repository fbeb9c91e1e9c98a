"""Model-level benchmark: one training step (forward, forces, backward) of whole models, upstream vs Gaunt.

MACE (mace-torch 0.3.16 ``ScaleShiftMACE``: 2 interactions, max_ell 3, correlation 3, r_max 5,
3 elements; hidden irreps ``C x (0e + 1o + ... + L)`` for L = 0..3, C = 64..256), on a batch of
acetylacetone molecules (15 atoms each; ../shared/data/acac, or random 15-atom clusters):

  e3nn          the stock model (MACE's e3nn conv TensorProduct and SymmetricContraction)
  gaunt-torch   the same model through ``gauntify_model`` (Gaunt convolution and many-body
                product), gaunt_plugins backend forced to ``torch``
  gaunt-triton  the same Gaunt model with the backend forced to ``triton`` (CUDA only)
  cueq          the stock model converted by MACE's ``run_e3nn_to_cueq`` (CUDA only, only when
                cuequivariance_torch and its ops package import)

  step = ``model(batch, training=True, compute_force=True)``, loss = sum(E^2) + sum(F^2),
  ``loss.backward()`` (the double backward force training needs); no optimiser step.

EquiformerV2 (fairchem-core 1.10 hydra model: backbone + ``equiformerV2_scalar_head`` +
``equiformerV2_vector_head``), L = lmax = 2..6 (mmax = min(L, 2)), a stack of --eqv2-layers
transformer blocks, on small EMT-like metal slabs with an adsorbate (built with ASE, no EMT call):

  stock         ``equiformer_v2_backbone`` (no self-mix)
  gaunt-torch   ``GauntEquiformerV2Backbone`` (the Gaunt self-mix in every block), backend torch
  gaunt-triton  the same, backend triton (CUDA only)

  step = forward, loss = sum(E^2) + sum(F^2) (direct force head), ``loss.backward()``.

Timing: every variant of a case is built, run once, warmed up (--warmup steps), then timed
round-robin (A B C A B C ..., --iters rounds; CUDA-synchronised on a GPU, perf_counter on the CPU)
so that a change in the machine's load hits every variant alike; the table gives the median, the
JSON also the minimum; ratios = the upstream row's median / the variant's median. Peak CUDA memory
comes from one extra step per variant. A variant that fails (out of memory, unsupported) is
recorded with its error and the others are still timed.

    python benchmarks/model_step.py --quick            # CPU: MACE L=0..2 C=64, EqV2 L=2,4,6 (a few minutes)
    python benchmarks/model_step.py                    # every device present, the full size grid
    python benchmarks/model_step.py --device cuda --models mace --lmax 1 2 3 --channels 128 256

Table on stdout; JSON in benchmarks/results/model_step_<cpu|cuda>[_quick].json.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np
import torch

import mace  # noqa: F401  (before e3nn: makes e3nn 0.4.4 importable on new torch)

HERE = Path(__file__).resolve().parent
E0S = {1: -13.568422178253735, 6: -1026.8538996116154, 8: -2037.796869412825}
Z = [1, 6, 8]


# ----------------------------------------------------------------------------------------- timing
def interleaved_ms(steps: Dict[str, Callable[[], None]], warmup: int, iters: int, cuda: bool,
                   device: torch.device) -> Dict[str, Dict[str, float]]:
    """Median and minimum step time of each variant, timed round-robin (A B C A B C ...) so that a
    change in the machine's load hits every variant alike; peak CUDA memory from one extra step each."""
    out: Dict[str, Dict[str, float]] = {}
    for name, step in steps.items():
        for _ in range(warmup):
            step()
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats(device)
            step()
            torch.cuda.synchronize()
            out[name] = {"peak_mem_mib": torch.cuda.max_memory_allocated(device) / 2**20}
        else:
            out[name] = {}
    times: Dict[str, List[float]] = {name: [] for name in steps}
    for _ in range(iters):
        for name, step in steps.items():
            t0 = time.perf_counter()
            step()
            if cuda:
                torch.cuda.synchronize()
            times[name].append((time.perf_counter() - t0) * 1e3)
    for name, ts in times.items():
        out[name].update(median_ms=statistics.median(ts), min_ms=min(ts), iters=iters)
    return out


def run_variants(case: dict, builders, make_step, warmup: int, iters: int, device, log) -> List[dict]:
    """Build every variant of one case, then time them interleaved; a variant that fails to build or
    to run is reported with its error and the others are still timed."""
    from gaunt_plugins.backends.registry import use_backend

    cuda = device.type == "cuda"
    rows, steps = {}, {}
    for impl, build, backend in builders:
        row = dict(case, impl=impl)
        try:
            model = build().to(device)
            row["parameters"] = int(sum(p.numel() for p in model.parameters()))
            inner = make_step(model)

            def step(inner=inner, backend=backend):
                with use_backend(backend):
                    inner()

            step()  # fails here rather than in the timing loop
            steps[impl] = step
            if backend is not None:
                row["gaunt_backend"] = backend
        except Exception as exc:  # noqa: BLE001
            row["error"] = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
            if os.environ.get("GAUNT_BENCH_DEBUG"):
                traceback.print_exc()
        rows[impl] = row
    if steps:
        try:
            for impl, stats in interleaved_ms(steps, warmup, iters, cuda, device).items():
                rows[impl].update(stats)
        except Exception as exc:  # noqa: BLE001
            for impl in steps:
                rows[impl]["error"] = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
    for row in rows.values():
        log(row)
    return list(rows.values())


# ----------------------------------------------------------------------------------------- MACE
def acac_atoms(n: int, seed: int = 0):
    import ase
    import ase.io

    for candidate in (HERE.parents[1] / "shared" / "data" / "acac" / "train_300K.xyz",
                      Path("/work/shared/data/acac/train_300K.xyz")):
        if candidate.exists():
            frames = ase.io.read(candidate, index=f":{n}")
            if len(frames) >= n:
                return frames, "acac"
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):  # random 15-atom clusters with acac's composition (C5 H8 O2)
        numbers = [6] * 5 + [1] * 8 + [8] * 2
        pos = [rng.uniform(-2.5, 2.5, 3)]
        while len(pos) < len(numbers):
            p = rng.uniform(-2.5, 2.5, 3)
            if min(np.linalg.norm(p - q) for q in pos) > 1.0:
                pos.append(p)
        out.append(ase.Atoms(numbers=numbers, positions=pos))
    return out, "random clusters"


def mace_batch(atoms, device, dtype, r_max=5.0):
    from mace import data, tools
    from mace.tools import torch_geometric

    table = tools.AtomicNumberTable(Z)
    ds = [data.AtomicData.from_config(data.config_from_atoms(a), z_table=table, cutoff=r_max) for a in atoms]
    batch = next(iter(torch_geometric.dataloader.DataLoader(ds, batch_size=len(ds), shuffle=False)))
    batch = batch.to(device).to_dict()
    return {k: (v.to(dtype) if torch.is_tensor(v) and v.is_floating_point() else v) for k, v in batch.items()}


def mace_model(lmax: int, channels: int, max_ell: int, correlation: int):
    from e3nn import o3
    from mace import modules

    hidden = o3.Irreps([(channels, (l, (-1) ** l)) for l in range(lmax + 1)])
    return modules.ScaleShiftMACE(
        r_max=5.0, num_bessel=8, num_polynomial_cutoff=5, max_ell=max_ell,
        interaction_cls=modules.interaction_classes["RealAgnosticResidualInteractionBlock"],
        interaction_cls_first=modules.interaction_classes["RealAgnosticResidualInteractionBlock"],
        num_interactions=2, num_elements=len(Z), hidden_irreps=hidden,
        MLP_irreps=o3.Irreps("16x0e"), atomic_energies=np.array([E0S[z] for z in Z]),
        avg_num_neighbors=10.0, atomic_numbers=Z, correlation=correlation,
        gate=torch.nn.functional.silu, atomic_inter_scale=1.0, atomic_inter_shift=0.0,
        radial_MLP=[64, 64, 64],
    )


def mace_step(model, batch):
    def step():
        out = model(batch, training=True, compute_force=True)
        loss = (out["energy"] ** 2).sum() + (out["forces"] ** 2).sum()
        loss.backward()
        for p in model.parameters():
            p.grad = None
    return step


def cueq_available(device) -> Optional[str]:
    if device.type != "cuda":
        return "CUDA only"
    try:
        import cuequivariance_torch  # noqa: F401
        import cuequivariance_ops_torch  # noqa: F401
    except Exception as exc:  # noqa: BLE001
        return f"not installed ({type(exc).__name__})"
    return None


def bench_mace(device, dtype, lmaxes, channels_list, molecules, max_ell, correlation, warmup, iters, log):
    from gaunt_plugins.adapters.mace_blocks import gauntify_model

    atoms, source = acac_atoms(molecules)
    rows = []
    cuda = device.type == "cuda"
    for lmax in lmaxes:
        for channels in channels_list:
            case = {"model": "mace", "L": lmax, "C": channels, "max_ell": max_ell, "correlation": correlation,
                    "molecules": molecules, "atoms": 15 * molecules, "data": source}
            previous = torch.get_default_dtype()
            torch.set_default_dtype(dtype)
            try:
                torch.manual_seed(0)
                stock = mace_model(lmax, channels, max_ell, correlation).to(device)
                batch = mace_batch(atoms, device, dtype)
                case["edges"] = int(batch["edge_index"].shape[1])
                builders = [("e3nn", lambda: stock, None),
                            ("gaunt-torch", lambda: gauntify_model(copy.deepcopy(stock))[0], "torch")]
                if cuda:
                    builders.append(("gaunt-triton", lambda: gauntify_model(copy.deepcopy(stock))[0], "triton"))
                    why = cueq_available(device)
                    if why is None:
                        def to_cueq():
                            from mace.cli.convert_e3nn_cueq import run as run_e3nn_to_cueq
                            return run_e3nn_to_cueq(copy.deepcopy(stock), device=str(device))
                        builders.append(("cueq", to_cueq, None))
                    else:
                        rows.append(dict(case, impl="cueq", error=f"skipped: cuequivariance {why}"))
                rows += run_variants(case, builders, lambda m: mace_step(m, batch), warmup, iters, device, log)
            except Exception as exc:  # noqa: BLE001
                rows.append(dict(case, impl="(build)", error=f"{type(exc).__name__}: {exc}".splitlines()[0][:300]))
                log(rows[-1])
            finally:
                torch.set_default_dtype(previous)
    return rows


# ----------------------------------------------------------------------------------------- EquiformerV2
def slabs(n: int, seed: int = 0):
    """Small fcc(111) slabs (2x2x3) with one adsorbate, rattled (geometry only)."""
    from ase.build import add_adsorbate, fcc111

    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        slab = fcc111(("Cu", "Pt", "Au", "Ni")[i % 4], size=(2, 2, 3), vacuum=6.0)
        add_adsorbate(slab, ("O", "H", "C", "N")[i % 4], 1.5, ("fcc", "hcp", "ontop")[i % 3])
        slab.rattle(stdev=0.08, seed=int(rng.integers(1 << 30)))
        out.append(slab)
    return out


from gaunt_plugins.adapters.equiformer_v2_data import batch_from_atoms as eqv2_batch  # noqa: E402


def eqv2_config(backbone: str, lmax: int, channels: int, layers: int) -> dict:
    return {
        "name": "hydra",
        "pass_through_head_outputs": True,
        "otf_graph": True,
        "backbone": dict(
            model=backbone, use_pbc=True, regress_forces=True, otf_graph=True, max_neighbors=30, max_radius=6.0,
            max_num_elements=90, num_layers=layers, sphere_channels=channels, attn_hidden_channels=channels,
            num_heads=4, attn_alpha_channels=16, attn_value_channels=8, ffn_hidden_channels=2 * channels,
            norm_type="layer_norm_sh", lmax_list=[lmax], mmax_list=[min(lmax, 2)], grid_resolution=18,
            num_sphere_samples=128, edge_channels=64, use_atom_edge_embedding=True, distance_function="gaussian",
            num_distance_basis=128, attn_activation="silu", use_s2_act_attn=False, ffn_activation="silu",
            use_gate_act=False, use_grid_mlp=True, use_sep_s2_act=True, alpha_drop=0.0, drop_path_rate=0.0,
            proj_drop=0.0, weight_init="uniform", avg_num_nodes=13.0, avg_degree=30.0,
        ),
        "heads": {"energy": {"module": "equiformerV2_scalar_head"},
                  "forces": {"module": "equiformerV2_vector_head"}},
    }


def eqv2_step(model, batch):
    def step():
        out = model(batch)
        energy, forces = out["energy"], out["forces"]
        energy = energy["energy"] if isinstance(energy, dict) else energy
        forces = forces["forces"] if isinstance(forces, dict) else forces
        loss = (energy ** 2).sum() + (forces ** 2).sum()
        loss.backward()
        for p in model.parameters():
            p.grad = None
    return step


def bench_eqv2(device, dtype, lmaxes, channels, layers, n_slabs, warmup, iters, log):
    try:
        import e3nn  # noqa: F401
        from gaunt_plugins.adapters.equiformer_v2_convert import build_model_from_config
    except Exception as exc:  # noqa: BLE001
        row = {"model": "equiformer_v2", "impl": "(import)", "error": f"{type(exc).__name__}: {exc}"}
        log(row)
        return [row]
    cuda = device.type == "cuda"
    atoms = slabs(n_slabs)
    rows = []
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    gaunt_path = "gaunt_plugins.adapters.equiformer_v2.GauntEquiformerV2Backbone"
    try:
        batch = eqv2_batch(atoms, device)
        for lmax in lmaxes:
            case = {"model": "equiformer_v2", "L": lmax, "mmax": min(lmax, 2), "C": channels, "layers": layers,
                    "structures": n_slabs, "atoms": int(batch.natoms.sum())}

            def build(backbone):
                def make():
                    torch.manual_seed(0)
                    model = build_model_from_config(eqv2_config(backbone, lmax, channels, layers))
                    model.train()
                    return model
                return make

            builders = [("stock", build("equiformer_v2_backbone"), None),
                        ("gaunt-torch", build(gaunt_path), "torch")]
            if cuda:
                builders.append(("gaunt-triton", build(gaunt_path), "triton"))
            rows += run_variants(case, builders, lambda m: eqv2_step(m, batch), warmup, iters, device, log)
    finally:
        torch.set_default_dtype(previous)
    return rows


# ----------------------------------------------------------------------------------------- report
BASELINE = {"mace": "e3nn", "equiformer_v2": "stock"}


def add_ratios(rows: List[dict]) -> None:
    """``ratio_vs_upstream`` = median step time / the upstream row of the same case."""
    def key(r):
        return tuple((k, r.get(k)) for k in ("model", "L", "C", "layers", "max_ell", "molecules", "structures"))

    base = {key(r): r["median_ms"] for r in rows if r.get("impl") == BASELINE.get(r["model"]) and "median_ms" in r}
    for r in rows:
        b = base.get(key(r))
        if b and "median_ms" in r:
            r["ratio_vs_upstream"] = r["median_ms"] / b
            r["speedup_vs_upstream"] = b / r["median_ms"]


def table(rows: List[dict], device_name: str) -> str:
    lines = [f"## training step (forward + forces + backward), {device_name}", "",
             "| model | L | C | atoms | impl | params | step (ms, median) | vs upstream | peak mem (MiB) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "median_ms" in r:
            step = f"{r['median_ms']:.1f}"
            ratio = f"{r['speedup_vs_upstream']:.2f}x faster" if r.get("speedup_vs_upstream", 0) >= 1 else (
                f"{r['ratio_vs_upstream']:.2f}x slower" if r.get("ratio_vs_upstream") else "—")
            if r["impl"] == BASELINE.get(r["model"]):
                ratio = "(baseline)"
        else:
            step, ratio = "—", r.get("error", "")
        mem = f"{r['peak_mem_mib']:.0f}" if r.get("peak_mem_mib") else "—"
        model = r["model"] + (f" ({r['layers']} blocks, mmax {r['mmax']})" if r["model"] == "equiformer_v2" else "")
        lines.append(f"| {model} | {r.get('L', '')} | {r.get('C', '')} | {r.get('atoms', '')} | {r['impl']} | "
                     f"{r.get('parameters', '—')} | {step} | {ratio} | {mem} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small grid, few iterations (CPU: a few minutes)")
    ap.add_argument("--device", choices=["all", "cpu", "cuda"], default="all")
    ap.add_argument("--models", default="mace,eqv2")
    ap.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    ap.add_argument("--lmax", type=int, nargs="*", default=None, help="MACE hidden L (default 0..3; quick 0..2)")
    ap.add_argument("--channels", type=int, nargs="*", default=None,
                    help="MACE channels (default 64 128 256; CPU 64 128; quick 64)")
    ap.add_argument("--max-ell", type=int, default=3)
    ap.add_argument("--correlation", type=int, default=3)
    ap.add_argument("--molecules", type=int, default=None, help="acac molecules per batch (CPU 4, GPU 64)")
    ap.add_argument("--eqv2-lmax", type=int, nargs="*", default=None, help="default 2..6 (quick 2 4 6)")
    ap.add_argument("--eqv2-channels", type=int, default=None, help="sphere channels (CPU 32, GPU 128)")
    ap.add_argument("--eqv2-layers", type=int, default=None, help="blocks (quick 2, else 4)")
    ap.add_argument("--eqv2-structures", type=int, default=None, help="slabs per batch (CPU 2, GPU 16)")
    ap.add_argument("--warmup", type=int, default=None)
    ap.add_argument("--iters", type=int, default=None)
    ap.add_argument("--out-dir", type=Path, default=HERE / "results")
    args = ap.parse_args(argv)

    devices = []
    if args.device in ("all", "cpu"):
        devices.append(torch.device("cpu"))
    if args.device in ("all", "cuda"):
        if torch.cuda.is_available():
            devices.append(torch.device("cuda"))
        elif args.device == "cuda":
            print("model_step: CUDA is not available", file=sys.stderr)
            return 2
    dtype = getattr(torch, args.dtype)
    models = {m.strip() for m in args.models.split(",")}
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for device in devices:
        cuda = device.type == "cuda"
        name = torch.cuda.get_device_name(device) if cuda else f"CPU ({platform.processor() or platform.machine()}, " \
                                                               f"{torch.get_num_threads()} threads)"
        lmaxes = args.lmax if args.lmax is not None else ([0, 1, 2] if args.quick else [0, 1, 2, 3])
        channels = args.channels or ([64] if args.quick else ([64, 128, 256] if cuda else [64, 128]))
        molecules = args.molecules or (64 if cuda else 4)
        warmup = args.warmup if args.warmup is not None else (3 if cuda else 1)
        iters = args.iters or ((10 if args.quick else 30) if cuda else (5 if args.quick else 7))
        eq_l = args.eqv2_lmax or ([2, 4, 6] if args.quick else [2, 3, 4, 5, 6])
        eq_c = args.eqv2_channels or (128 if cuda else 32)
        eq_layers = args.eqv2_layers or (2 if args.quick else 4)
        eq_n = args.eqv2_structures or (16 if cuda else 2)
        print(f"# model_step on {name}, {args.dtype}, warmup {warmup}, median of {iters}", flush=True)

        def log(row):
            if "median_ms" in row:
                print(f"  {row['model']:>13} L={row.get('L')} C={row.get('C')} {row['impl']:>12}: "
                      f"{row['median_ms']:9.1f} ms", flush=True)
            else:
                print(f"  {row['model']:>13} L={row.get('L')} C={row.get('C')} {row['impl']:>12}: "
                      f"{row.get('error')}", flush=True)

        rows: List[dict] = []
        started = time.time()
        if "mace" in models:
            rows += bench_mace(device, dtype, lmaxes, channels, molecules, args.max_ell, args.correlation, warmup,
                               iters, log)
        if "eqv2" in models or "equiformer_v2" in models:
            rows += bench_eqv2(device, dtype, eq_l, eq_c, eq_layers, eq_n, warmup, iters, log)
        add_ratios(rows)
        print()
        print(table(rows, f"{name}, {args.dtype}"))
        print()
        result = {
            "device": name, "device_type": device.type, "dtype": args.dtype, "quick": args.quick,
            "torch": torch.__version__, "threads": torch.get_num_threads(), "warmup": warmup, "iters": iters,
            "host": platform.platform(), "cpus": os.cpu_count(), "seconds": time.time() - started,
            "date": time.strftime("%Y-%m-%d %H:%M:%S"), "command": " ".join(sys.argv), "results": rows,
        }
        out = args.out_dir / f"model_step_{device.type}{'_quick' if args.quick else ''}.json"
        out.write_text(json.dumps(result, indent=1))
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
