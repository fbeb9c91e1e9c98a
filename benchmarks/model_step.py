"""Model-level benchmark: one training step (forward, forces, backward) of whole models, upstream vs Gaunt.

MACE (mace-torch 0.3.16 ``ScaleShiftMACE``: 2 interactions, max_ell 3, correlation 3, r_max 5,
3 elements; hidden irreps ``C x (0e + 1o + ... + L)`` for L = 0..3, C = 64..256), on a batch of
acetylacetone molecules (15 atoms each; ../shared/data/acac, or random 15-atom clusters):

  e3nn          the stock model (MACE's e3nn conv TensorProduct and SymmetricContraction)
  gaunt-torch   the same model through ``gauntify_model`` with one Gaunt target set (--targets:
                ``[conv, product]``, ``[conv]``, ``[product]``) and, for the sets with ``conv``, each
                number K of Gaunt products per channel in the convolution (--conv-products; only K = 1
                when this gaunt-plugins has no ``conv_products`` option); backend forced to ``torch``
                on CUDA (the PyTorch reference), the automatic choice on CPU (the C kernels)
  gaunt-auto    the same Gaunt models on the automatic choice on CUDA (the ``torch.ops.gaunt``
                operators' CUDA implementation, the composed reference; CUDA only)
  gaunt-triton  the same Gaunt models with the backend forced to ``triton`` (CUDA only)
  cueq          the stock model converted by MACE's ``run_e3nn_to_cueq`` (CUDA only, only when
                cuequivariance_torch and its ops package import)

  step = ``model(batch, training=True, compute_force=True)``, loss = sum(E^2) + sum(F^2),
  ``loss.backward()`` (the double backward force training needs); no optimiser step.

MACE at high body order (--models mace-correlation; correlation 4, 5, 6 at max_ell 3, hidden L 2,
64 channels by default): upstream is built in a child process with a time and memory limit
(--upstream-build-timeout, --upstream-build-memory-gb; the model is saved and loaded back into this
process, so both are still timed side by side); where it does not build in time or memory the row
says so. The Gaunt model is built directly (Gaunt interaction and product classes passed to MACE's
constructor: MACE's U matrices and CG instructions are never computed) and runs on the automatic
backend; ``served_by`` names the backend that ran each Gaunt op. --build-only builds the upstream
models into --upstream-cache and stops (a later run with the same cache only loads them).

EquiformerV2 (fairchem-core 1.10 hydra model: backbone + ``equiformerV2_scalar_head`` +
``equiformerV2_vector_head``), L = lmax = 2..6 (mmax = min(L, 2)), a stack of --eqv2-layers
transformer blocks, on small EMT-like metal slabs with an adsorbate (built with ASE, no EMT call):

  stock         ``equiformer_v2_backbone`` (no self-mix)
  gaunt-torch   ``GauntEquiformerV2Backbone`` (the Gaunt self-mix in every block), backend torch
  gaunt-auto    the same, the automatic choice (CUDA only: the operators' CUDA implementation)
  gaunt-triton  the same, backend triton (CUDA only)

  step = forward, loss = sum(E^2) + sum(F^2) (direct force head), ``loss.backward()``.

Timing: every variant of a case is built, run once, warmed up (--warmup steps), then timed
round-robin (A B C A B C ..., --iters rounds; CUDA-synchronised on a GPU, perf_counter on the CPU)
so that a change in the machine's load hits every variant alike; the table gives the median, the
JSON also the minimum; ratios = the upstream row's median / the variant's median. Peak CUDA memory
comes from one extra step per variant. A variant that fails (out of memory, unsupported) is
recorded with its error and the others are still timed. --time-budget skips the cases left once
that many seconds have passed (recorded as skipped).

    python benchmarks/model_step.py --quick            # CPU: MACE L=0..2 C=64, EqV2 L=2,4,6 (a few minutes)
    python benchmarks/model_step.py                    # every device present, the full size grid
    python benchmarks/model_step.py --device cuda --models mace --lmax 1 2 3 --channels 128 256
    python benchmarks/model_step.py --models mace --targets conv,product --conv-products 1 3
    python benchmarks/model_step.py --models mace-correlation --device cpu

Table on stdout; JSON in benchmarks/results/model_step_<cpu|cuda>[_quick].json (or --out), rewritten
after every case.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import inspect
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch

import mace  # noqa: F401  (before e3nn: makes e3nn 0.4.4 importable on new torch)

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import _supervisor as supervisor  # noqa: E402
from result_tables import BASELINE, CASE_KEYS, model_step_table  # noqa: E402
E0S = {1: -13.568422178253735, 6: -1026.8538996116154, 8: -2037.796869412825}
Z = [1, 6, 8]
DEFAULT_TARGETS = ("conv,product", "conv", "product")
DEFAULT_CONV_PRODUCTS = (1, 3)


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


class Variant(NamedTuple):
    """One model of a case: ``build() -> (model, extra row fields)``; ``backend`` is the Gaunt backend
    forced while it runs (``None``: the automatic choice; ``gaunt`` False: no Gaunt op inside)."""
    label: str
    impl: str
    build: Callable[[], Tuple[torch.nn.Module, dict]]
    backend: Optional[str] = None
    fields: dict = {}
    gaunt: bool = False


class CannotBuild(RuntimeError):
    """An upstream model that did not build within its limits (the message says which)."""


def _error(exc: BaseException) -> str:
    text = str(exc) if isinstance(exc, CannotBuild) else f"{type(exc).__name__}: {exc}"
    return text.splitlines()[0][:300]


def _served_by() -> Dict[str, str]:
    from gaunt_plugins.backends import last_backend
    return dict(last_backend())


def _forget_served() -> None:
    # the registry keeps the last backend of each op: cleared so that a row names only its own ops
    from gaunt_plugins.backends import registry
    registry._LAST.clear()  # noqa: SLF001


def run_variants(case: dict, variants: Sequence[Variant], make_step, warmup: int, iters: int, device,
                 log) -> List[dict]:
    """Build every variant of one case, then time them interleaved; a variant that fails to build or
    to run is reported with its error and the others are still timed."""
    from gaunt_plugins.backends.registry import use_backend

    cuda = device.type == "cuda"
    rows, steps = {}, {}
    for v in variants:
        row = dict(case, impl=v.impl, **v.fields)
        try:
            t0 = time.perf_counter()
            model, extra = v.build()
            row["setup_s"] = time.perf_counter() - t0
            row.update(extra)
            model = model.to(device)
            row["parameters"] = int(sum(p.numel() for p in model.parameters()))
            inner = make_step(model)

            def step(inner=inner, backend=v.backend):
                with use_backend(backend):
                    inner()

            _forget_served()
            step()  # fails here rather than in the timing loop
            if v.gaunt:
                row["served_by"] = _served_by()
            steps[v.label] = step
            if v.backend is not None:
                row["gaunt_backend"] = v.backend
        except Exception as exc:  # noqa: BLE001
            row["error"] = _error(exc)
            if os.environ.get("GAUNT_BENCH_DEBUG"):
                traceback.print_exc()
        rows[v.label] = row
    if steps:
        try:
            for label, stats in interleaved_ms(steps, warmup, iters, cuda, device).items():
                rows[label].update(stats)
        except Exception as exc:  # noqa: BLE001
            for label in steps:
                rows[label]["error"] = _error(exc)
    for row in rows.values():
        log(row)
    return list(rows.values())


def skipped(case: dict, budget: float) -> dict:
    return dict(case, impl="(all)", error=f"skipped: the time budget of {budget:g} s was spent")


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


def mace_model(lmax: int, channels: int, max_ell: int, correlation: int, interaction=None):
    """``ScaleShiftMACE`` with hidden irreps ``channels x (0e + 1o + ... + lmax)``; ``interaction``
    replaces MACE's ``RealAgnosticResidualInteractionBlock`` (first and later layers)."""
    from e3nn import o3
    from mace import modules

    interaction = interaction or modules.interaction_classes["RealAgnosticResidualInteractionBlock"]
    hidden = o3.Irreps([(channels, (l, (-1) ** l)) for l in range(lmax + 1)])
    return modules.ScaleShiftMACE(
        r_max=5.0, num_bessel=8, num_polynomial_cutoff=5, max_ell=max_ell,
        interaction_cls=interaction, interaction_cls_first=interaction,
        num_interactions=2, num_elements=len(Z), hidden_irreps=hidden,
        MLP_irreps=o3.Irreps("16x0e"), atomic_energies=np.array([E0S[z] for z in Z]),
        avg_num_neighbors=10.0, atomic_numbers=Z, correlation=correlation,
        gate=torch.nn.functional.silu, atomic_inter_scale=1.0, atomic_inter_shift=0.0,
        radial_MLP=[64, 64, 64],
    )


@contextlib.contextmanager
def _gaunt_product_basis():
    """MACE's model constructor builds ``GauntProductBasisBlock`` where it builds its product basis."""
    from mace.modules import models

    from gaunt_plugins.adapters.mace_blocks import GauntProductBasisBlock

    original = models.EquivariantProductBasisBlock
    models.EquivariantProductBasisBlock = GauntProductBasisBlock
    try:
        yield
    finally:
        models.EquivariantProductBasisBlock = original


def gaunt_mace_model(lmax: int, channels: int, max_ell: int, correlation: int, options):
    """The Gaunt MACE of :func:`mace_model` built directly: the Gaunt interaction (``conv`` in the
    targets) and product basis (``product``) classes are what MACE's constructor instantiates, so the
    replaced blocks' e3nn tables are never computed."""
    from mace import modules

    from gaunt_plugins.adapters.mace_blocks import GAUNT_INTERACTIONS
    from gaunt_plugins.adapters.mace_config import build_options

    stock = modules.interaction_classes["RealAgnosticResidualInteractionBlock"]
    interaction = GAUNT_INTERACTIONS[stock] if options.conv else stock
    product = _gaunt_product_basis() if options.product else contextlib.nullcontext()
    with build_options(options), product:
        return mace_model(lmax, channels, max_ell, correlation, interaction)


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


def conv_products_supported() -> bool:
    """Whether this gaunt-plugins takes a number of convolution products: ``GauntOptions.conv_products``
    and ``GauntConvolution(..., products=K)``."""
    from gaunt_plugins.adapters.mace_config import GauntOptions
    from gaunt_plugins.layers import GauntConvolution

    fields = {f.name for f in dataclasses.fields(GauntOptions)}
    return "conv_products" in fields and "products" in inspect.signature(GauntConvolution.__init__).parameters


def target_name(targets) -> str:
    """``{"product", "conv"}`` -> ``"conv+product"`` (MACE's order)."""
    from gaunt_plugins.adapters.mace_config import GAUNT_TARGETS
    return "+".join(t for t in GAUNT_TARGETS if t in targets)


def gaunt_options(targets, conv_products: int, product_chains: int = 1, product_odd_chains: int = 0):
    from gaunt_plugins.adapters.mace_config import GauntOptions
    if conv_products_supported():
        # every count explicit (the shipped default picks them by max_ell): P and B are what the row says
        extra = ({"product_odd_chains": product_odd_chains} if "product_odd_chains" in GauntOptions.__dataclass_fields__
                 else {})
        return GauntOptions(targets=frozenset(targets), conv_products=conv_products, product_chains=product_chains,
                            **extra)
    if conv_products != 1:
        raise ValueError("this gaunt-plugins has no conv_products option: only K = 1")
    return GauntOptions(targets=frozenset(targets))


def gaunt_plan(target_sets, conv_products: Sequence[int]) -> List[Tuple[frozenset, int]]:
    """Every (target set, K) to time: each K for the sets with ``conv``, K = 1 otherwise (and only K = 1
    when K is not an option of this gaunt-plugins)."""
    ks = sorted(set(conv_products), key=str) if conv_products_supported() else [1]
    plan = []
    for targets in target_sets:
        for k in (ks if "conv" in targets else [1]):
            if (targets, k) not in plan:
                plan.append((targets, k))
    return plan


def with_chains(plan, product_chains: Sequence[int],
                odd_chains: Sequence[int] = (0,)) -> List[Tuple[frozenset, int, int, int]]:
    """Each (target set, K) of ``plan`` with every number of many-body chains P and odd-path chains B for the sets
    with ``product`` (P = 1, B = 0 otherwise)."""
    ps, bs = sorted(set(product_chains)), sorted(set(odd_chains))
    return [(targets, k, p, b) for targets, k in plan for p in (ps if "product" in targets else [1])
            for b in (bs if "product" in targets else [0])]


def mace_variants(stock, cuda: bool, plan, device) -> List[Variant]:
    from gaunt_plugins.adapters.mace_blocks import gauntify_model

    def convert(targets, k, p, b):
        return lambda: (gauntify_model(copy.deepcopy(stock), gaunt_options(targets, k, p, b))[0], {})

    variants = [Variant("e3nn", "e3nn", lambda: (stock, {}))]
    for targets, k, p, b in plan:
        fields = {"targets": target_name(targets), "conv_products": k, "product_chains": p, "product_odd_chains": b}
        for backend in (("auto", "torch", "triton") if cuda else ("torch",)):
            # on CPU "gaunt-torch" is the automatic choice (the C kernels); a forced "torch" is the reference
            forced = backend if cuda and backend != "auto" else None
            variants.append(Variant(f"gaunt-{backend} {fields['targets']} K={k} P={p} B={b}", f"gaunt-{backend}",
                                    convert(targets, k, p, b), forced, fields, gaunt=True))
    if cuda and cueq_available(device) is None:
        def to_cueq():
            from mace.cli.convert_e3nn_cueq import run as run_e3nn_to_cueq
            return run_e3nn_to_cueq(copy.deepcopy(stock), device=str(device)), {}
        variants.append(Variant("cueq", "cueq", to_cueq))
    return variants


def bench_mace(device, dtype, lmaxes, channels_list, molecules, max_ell, correlation, warmup, iters, log,
               plan, deadline=None, budget=None):
    atoms, source = acac_atoms(molecules)
    rows = []
    cuda = device.type == "cuda"
    for lmax in lmaxes:
        for channels in channels_list:
            case = {"model": "mace", "L": lmax, "C": channels, "max_ell": max_ell, "correlation": correlation,
                    "molecules": molecules, "atoms": 15 * molecules, "data": source}
            if deadline is not None and time.monotonic() > deadline:
                rows.append(skipped(case, budget))
                log(rows[-1])
                continue
            previous = torch.get_default_dtype()
            torch.set_default_dtype(dtype)
            try:
                torch.manual_seed(0)
                t0 = time.perf_counter()
                stock = mace_model(lmax, channels, max_ell, correlation).to(device)
                stock_build_s = time.perf_counter() - t0
                batch = mace_batch(atoms, device, dtype)
                case["edges"] = int(batch["edge_index"].shape[1])
                variants = mace_variants(stock, cuda, plan, device)
                variants[0] = variants[0]._replace(build=lambda: (stock, {"setup_s": stock_build_s}))
                if cuda and (why := cueq_available(device)) is not None:
                    rows.append(dict(case, impl="cueq", error=f"skipped: cuequivariance {why}"))
                    log(rows[-1])
                rows += run_variants(case, variants, lambda m: mace_step(m, batch), warmup, iters, device, log)
            except Exception as exc:  # noqa: BLE001
                rows.append(dict(case, impl="(build)", error=_error(exc)))
                log(rows[-1])
            finally:
                torch.set_default_dtype(previous)
    return rows


# ----------------------------------------------------------------------------------------- MACE, high body order
class BuildLimits(NamedTuple):
    seconds: float
    memory_gb: float


def _rss_gb(pid: int) -> float:
    """Resident memory of process ``pid`` (Linux ``/proc``; 0 where it cannot be read)."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return 0.0


def upstream_key(lmax: int, channels: int, max_ell: int, correlation: int, dtype: str) -> str:
    return f"mace{mace.__version__}_L{lmax}_C{channels}_ell{max_ell}_corr{correlation}_{dtype}"


def build_upstream_child(spec: dict) -> int:
    """Child process: build the stock MACE of ``spec`` on the CPU, save it, print its size."""
    torch.set_num_threads(int(spec.get("threads", 1)))
    torch.set_default_dtype(getattr(torch, spec["dtype"]))
    torch.manual_seed(0)
    t0 = time.perf_counter()
    model = mace_model(spec["L"], spec["C"], spec["max_ell"], spec["correlation"])
    build_s = time.perf_counter() - t0
    torch.save(model, spec["path"])
    print("RESULT " + json.dumps({"build_s": build_s, "parameters": int(sum(p.numel() for p in model.parameters()))}),
          flush=True)
    return 0


def build_upstream_models(specs: List[dict], limits: BuildLimits, cache: Path, jobs: int, log=print,
                          cached_only: bool = False) -> Dict[str, dict]:
    """Build every upstream model of ``specs`` in its own child process (at most ``jobs`` at once), each
    stopped when it runs past ``limits.seconds`` or its resident memory passes ``limits.memory_gb``.
    The memory is watched from outside (``/proc``) rather than capped with ``RLIMIT_AS``, which would
    also count the address space CUDA and the libraries reserve. Results (and the saved models) are
    cached in ``cache`` by :func:`upstream_key`: a built model is reused, a failure is reused only when
    it failed under limits at least as large as these; ``cached_only`` builds nothing. Returns
    ``{key: status}`` with ``status`` ``ok`` (``path``, ``build_s``, ``parameters``), ``timeout``,
    ``memory``, ``error`` or ``not built`` (``message``), and ``peak_rss_gb`` where a build ran."""
    cache.mkdir(parents=True, exist_ok=True)
    results: Dict[str, dict] = {}
    pending = []
    for spec in specs:
        key = spec["key"]
        status_file = cache / f"{key}.json"
        if status_file.exists():
            cached = json.loads(status_file.read_text())
            reusable = cached["status"] == "ok" and Path(cached.get("path", "")).exists()
            reusable |= cached["status"] != "ok" and cached["limit_s"] >= limits.seconds and \
                cached["limit_gb"] >= limits.memory_gb
            if reusable:
                results[key] = dict(cached, cached=True)
                continue
        if cached_only:
            results[key] = {"status": "not built", "message": f"no upstream build in {cache} (the build did not "
                                                              f"finish before this run)"}
            continue
        pending.append(dict(spec, path=str(cache / f"{key}.pt")))
    running: Dict[str, tuple] = {}
    while pending or running:
        while pending and len(running) < max(1, jobs):
            spec = pending.pop(0)
            env = dict(os.environ, CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS=str(spec.get("threads", 1)))
            out_file = open(cache / f"{spec['key']}.out", "w+")  # files, not pipes: a full pipe would stall the child
            err_file = open(cache / f"{spec['key']}.err", "w+")
            proc = supervisor.spawn([sys.executable, str(Path(__file__).resolve()), "--build-upstream",
                                     json.dumps(spec)], stdout=out_file, stderr=err_file, text=True, env=env)
            running[spec["key"]] = (proc, spec, time.monotonic(), [0.0], out_file, err_file)
            log(f"  building upstream {spec['key']} (limit {limits.seconds:g} s / {limits.memory_gb:g} GB)")
        time.sleep(0.2)
        for key, (proc, spec, started, peak, out_file, err_file) in list(running.items()):
            peak[0] = max(peak[0], _rss_gb(proc.pid))
            elapsed = time.monotonic() - started
            status = None
            if proc.poll() is not None:
                out, err = _read(out_file), _read(err_file)
                lines = [l for l in out.splitlines() if l.startswith("RESULT ")]
                if proc.returncode == 0 and lines:
                    status = dict(json.loads(lines[-1][7:]), status="ok", path=spec["path"])
                else:
                    tail = (err.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
                    status = {"status": "error", "message": tail[:300]}
            elif elapsed > limits.seconds or peak[0] > limits.memory_gb:
                supervisor.stop(proc, grace_s=0)
                what = "timeout" if elapsed > limits.seconds else "memory"
                status = {"status": what, "message": f"cannot build within {limits.seconds:g} s / "
                                                     f"{limits.memory_gb:g} GB (stopped after {elapsed:.0f} s "
                                                     f"at {peak[0]:.1f} GB resident)"}
            if status is not None:
                out_file.close()
                err_file.close()
                status.update(peak_rss_gb=round(peak[0], 2), wall_s=round(elapsed, 1), limit_s=limits.seconds,
                              limit_gb=limits.memory_gb)
                (cache / f"{key}.json").write_text(json.dumps(status, indent=1))
                results[key] = status
                del running[key]
                log(f"  upstream {key}: {status['status']}"
                    + (f" in {status['build_s']:.1f} s" if status["status"] == "ok" else f" ({status['message']})"))
    return results


def _read(fh) -> str:
    fh.flush()
    fh.seek(0)
    return fh.read()


def correlation_specs(correlations, lmax, channels, max_ell, dtype: str) -> List[dict]:
    return [{"key": upstream_key(lmax, channels, max_ell, nu, dtype), "L": lmax, "C": channels, "max_ell": max_ell,
             "correlation": nu, "dtype": dtype} for nu in correlations]


def bench_mace_correlations(device, dtype, correlations, lmax, channels, molecules, max_ell, warmup, iters, log,
                            limits: BuildLimits, cache: Path, jobs: int, deadline=None, budget=None,
                            build_only: bool = False, cached_only: bool = False):
    """Rows at high body order: upstream built under ``limits`` in child processes, Gaunt built directly;
    both timed side by side where upstream built."""
    from gaunt_plugins.adapters.mace_config import GauntOptions

    options = GauntOptions()  # the shipped default
    dtype_name = str(dtype).replace("torch.", "")
    specs = correlation_specs(correlations, lmax, channels, max_ell, dtype_name)
    built = build_upstream_models(specs, limits, cache, jobs, log=lambda m: print(m, flush=True),
                                  cached_only=cached_only)
    atoms, source = acac_atoms(molecules)
    rows = []
    for spec in specs:
        status = built[spec["key"]]
        case = {"model": "mace", "L": lmax, "C": channels, "max_ell": max_ell, "correlation": spec["correlation"],
                "molecules": molecules, "atoms": 15 * molecules, "data": source, "rows": "correlation"}
        upstream_fields = {"build_status": status["status"], "build_s": status.get("build_s"),
                           "build_peak_rss_gb": status.get("peak_rss_gb"),
                           "build_limit": f"{limits.seconds:g} s / {limits.memory_gb:g} GB"}
        if build_only:
            rows.append(dict(case, impl="e3nn", **upstream_fields,
                             **({} if status["status"] == "ok" else {"error": status["message"]})))
            log(rows[-1])
            continue
        if deadline is not None and time.monotonic() > deadline:
            rows.append(skipped(case, budget))
            log(rows[-1])
            continue
        previous = torch.get_default_dtype()
        torch.set_default_dtype(dtype)
        try:
            batch = mace_batch(atoms, device, dtype)
            case["edges"] = int(batch["edge_index"].shape[1])

            def load_upstream(status=status):
                if status["status"] != "ok":
                    raise CannotBuild(status["message"])
                return torch.load(status["path"], map_location="cpu", weights_only=False), {}

            def build_gaunt(nu=spec["correlation"]):
                torch.manual_seed(0)
                t0 = time.perf_counter()
                model = gaunt_mace_model(lmax, channels, max_ell, nu, options)
                return model, {"build_s": time.perf_counter() - t0}

            gaunt_fields = {"targets": target_name(options.targets), "conv_products": getattr(options, "conv_products", 1)}
            variants = [Variant("e3nn", "e3nn", load_upstream, fields=upstream_fields),
                        Variant("gaunt", "gaunt", build_gaunt, None, gaunt_fields, gaunt=True)]
            rows += run_variants(case, variants, lambda m: mace_step(m, batch), warmup, iters, device, log)
        except Exception as exc:  # noqa: BLE001
            rows.append(dict(case, impl="(build)", error=_error(exc)))
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


def bench_eqv2(device, dtype, lmaxes, channels, layers, n_slabs, warmup, iters, log, deadline=None, budget=None):
    try:
        import e3nn  # noqa: F401
        from gaunt_plugins.adapters.equiformer_v2_convert import build_model_from_config
    except Exception as exc:  # noqa: BLE001
        row = {"model": "equiformer_v2", "impl": "(import)", "error": _error(exc)}
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
            if deadline is not None and time.monotonic() > deadline:
                rows.append(skipped(case, budget))
                log(rows[-1])
                continue

            def build(backbone, lmax=lmax):
                def make():
                    torch.manual_seed(0)
                    model = build_model_from_config(eqv2_config(backbone, lmax, channels, layers))
                    model.train()
                    return model, {}
                return make

            variants = [Variant("stock", "stock", build("equiformer_v2_backbone")),
                        Variant("gaunt-torch", "gaunt-torch", build(gaunt_path), "torch" if cuda else None, gaunt=True)]
            if cuda:
                variants += [Variant("gaunt-auto", "gaunt-auto", build(gaunt_path), None, gaunt=True),
                             Variant("gaunt-triton", "gaunt-triton", build(gaunt_path), "triton", gaunt=True)]
            rows += run_variants(case, variants, lambda m: eqv2_step(m, batch), warmup, iters, device, log)
    finally:
        torch.set_default_dtype(previous)
    return rows


# ----------------------------------------------------------------------------------------- report
def add_ratios(rows: List[dict]) -> None:
    """``ratio_vs_upstream`` = median step time / the upstream row of the same case."""
    def key(r):
        return tuple((k, r.get(k)) for k in CASE_KEYS)

    base = {key(r): r["median_ms"] for r in rows if r.get("impl") == BASELINE.get(r["model"]) and "median_ms" in r}
    for r in rows:
        b = base.get(key(r))
        if b and "median_ms" in r:
            r["ratio_vs_upstream"] = r["median_ms"] / b
            r["speedup_vs_upstream"] = b / r["median_ms"]


def write_result(path: Path, result: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(path)


# ----------------------------------------------------------------------------------------- command line
MODELS = ("mace", "mace-correlation", "eqv2")


def _conv_products_arg(value: str):
    """``--conv-products`` items: ``paths`` (the per-path convolution) or a whole number K."""
    return "paths" if value.strip().lower() == "paths" else int(value)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small grid, few iterations (CPU: a few minutes)")
    ap.add_argument("--device", choices=["all", "cpu", "cuda"], default="all")
    ap.add_argument("--models", default="mace,eqv2", help=f"comma-separated, from {', '.join(MODELS)}")
    ap.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    ap.add_argument("--lmax", type=int, nargs="*", default=None, help="MACE hidden L (default 0..3; quick 0..2)")
    ap.add_argument("--channels", type=int, nargs="*", default=None,
                    help="MACE channels (default 64 128 256; CPU 64 128; quick 64)")
    ap.add_argument("--max-ell", type=int, default=3)
    ap.add_argument("--correlation", type=int, default=3)
    ap.add_argument("--targets", nargs="*", default=list(DEFAULT_TARGETS),
                    help="Gaunt target sets to time, each 'conv,product', 'conv' or 'product' "
                         f"(default: {' '.join(DEFAULT_TARGETS)})")
    ap.add_argument("--conv-products", type=_conv_products_arg, nargs="*", default=list(DEFAULT_CONV_PRODUCTS),
                    help="K, Gaunt products per channel in the convolution, for the target sets with conv "
                         f"(default {' '.join(map(str, DEFAULT_CONV_PRODUCTS))})")
    ap.add_argument("--product-odd-chains", type=int, nargs="*", default=[0],
                    help="B, odd-path chains per channel in the Gaunt many-body product (gaunt_product_odd_chains), "
                         "for the target sets with product (default 0)")
    ap.add_argument("--product-chains", type=int, nargs="*", default=[1],
                    help="P, power chains per channel in the Gaunt many-body product, for the target sets with "
                         "product (default 1)")
    ap.add_argument("--molecules", type=int, default=None, help="acac molecules per batch (CPU 4, GPU 64)")
    ap.add_argument("--correlations", type=int, nargs="*", default=[4, 5, 6],
                    help="mace-correlation rows: correlation orders (default 4 5 6)")
    ap.add_argument("--correlation-lmax", type=int, default=2, help="mace-correlation rows: hidden L (default 2)")
    ap.add_argument("--correlation-channels", type=int, default=64, help="mace-correlation rows: channels")
    ap.add_argument("--upstream-build-timeout", type=float, default=300.0,
                    help="mace-correlation rows: seconds an upstream model may take to build")
    ap.add_argument("--upstream-build-memory-gb", type=float, default=16.0,
                    help="mace-correlation rows: resident GB an upstream build may use")
    ap.add_argument("--upstream-build-jobs", type=int, default=1, help="upstream builds at once")
    ap.add_argument("--upstream-cache", type=Path, default=Path(tempfile.gettempdir()) / "gaunt_model_step_upstream",
                    help="where the built upstream models (and failed builds) are kept")
    ap.add_argument("--build-only", action="store_true",
                    help="mace-correlation: build the upstream models into --upstream-cache, time nothing")
    ap.add_argument("--cached-only", action="store_true",
                    help="mace-correlation: use only the upstream models already in --upstream-cache, build none")
    ap.add_argument("--eqv2-lmax", type=int, nargs="*", default=None, help="default 2..6 (quick 2 4 6)")
    ap.add_argument("--eqv2-channels", type=int, default=None, help="sphere channels (CPU 32, GPU 128)")
    ap.add_argument("--eqv2-layers", type=int, default=None, help="blocks (quick 2, else 4)")
    ap.add_argument("--eqv2-structures", type=int, default=None, help="slabs per batch (CPU 2, GPU 16)")
    ap.add_argument("--warmup", type=int, default=None)
    ap.add_argument("--iters", type=int, default=None)
    ap.add_argument("--time-budget", type=float, default=None,
                    help="seconds per device; the cases left when it is spent are recorded as skipped")
    ap.add_argument("--out-dir", type=Path, default=HERE / "results")
    ap.add_argument("--out", type=Path, default=None,
                    help="JSON path (one device only; default <out-dir>/model_step_<device>[_quick].json)")
    ap.add_argument("--build-upstream", default=None, help=argparse.SUPPRESS)
    return ap


def parse_args(argv=None) -> argparse.Namespace:
    """The parsed command line, with ``target_sets`` (frozensets) and ``model_set`` resolved; a bad
    target or model name is an argparse error naming it."""
    ap = build_parser()
    args = ap.parse_args(argv)
    if args.build_upstream is not None:
        return args
    from gaunt_plugins.adapters.mace_config import GauntOptions, parse_targets

    args.target_sets = []
    for item in args.targets:
        targets = parse_targets(item)
        try:
            GauntOptions(targets=targets)
        except ValueError as exc:
            ap.error(f"--targets {item!r}: {exc}")
        if targets not in args.target_sets:
            args.target_sets.append(targets)
    if any(k != "paths" and k < 1 for k in args.conv_products):
        ap.error(f"--conv-products: every K must be >= 1, got {args.conv_products}")
    if any(p < 1 for p in args.product_chains):
        ap.error(f"--product-chains: every P must be >= 1, got {args.product_chains}")
    if any(b < 0 for b in args.product_odd_chains):
        ap.error(f"--product-odd-chains: every B must be >= 0, got {args.product_odd_chains}")
    args.model_set = {m.strip() for m in args.models.split(",") if m.strip()}
    args.model_set = {"eqv2" if m == "equiformer_v2" else m for m in args.model_set}
    unknown = args.model_set - set(MODELS)
    if unknown:
        ap.error(f"--models: unknown {sorted(unknown)}; choose from {', '.join(MODELS)}")
    if args.build_only and args.cached_only:
        ap.error("--build-only and --cached-only exclude each other")
    if args.out is not None and args.device == "all" and not args.build_only:
        ap.error("--out names one file: pick --device cpu or --device cuda")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.build_upstream is not None:
        return build_upstream_child(json.loads(args.build_upstream))
    devices = []
    if args.device in ("all", "cpu"):
        devices.append(torch.device("cpu"))
    if args.device in ("all", "cuda") and not args.build_only:
        if torch.cuda.is_available():
            devices.append(torch.device("cuda"))
        elif args.device == "cuda":
            print("model_step: CUDA is not available", file=sys.stderr)
            return 2
    if args.build_only:
        devices = [torch.device("cpu")]
    dtype = getattr(torch, args.dtype)
    models = args.model_set
    k_supported = conv_products_supported()
    plan = with_chains(gaunt_plan(args.target_sets, args.conv_products), args.product_chains, args.product_odd_chains)
    notes = []
    if not k_supported and any(k != 1 for k in args.conv_products):
        notes.append("this gaunt-plugins has no conv_products option (GauntOptions.conv_products / "
                     "GauntConvolution(products=K)): only K = 1 timed")
    for note in notes:
        print(f"# note: {note}")
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
        started = time.time()
        deadline = None if args.time_budget is None else time.monotonic() + args.time_budget
        out = args.out or args.out_dir / f"model_step_{device.type}{'_quick' if args.quick else ''}.json"
        rows: List[dict] = []

        def save():
            add_ratios(rows)
            write_result(out, {
                "device": name, "device_type": device.type, "dtype": args.dtype, "quick": args.quick,
                "torch": torch.__version__, "threads": torch.get_num_threads(), "warmup": warmup, "iters": iters,
                "host": platform.platform(), "cpus": os.cpu_count(), "seconds": time.time() - started,
                "date": time.strftime("%Y-%m-%d %H:%M:%S"), "command": " ".join(sys.argv),
                "targets": [target_name(t) for t in args.target_sets], "conv_products": sorted({k for _, k, *_ in plan}, key=str),
                "product_chains": sorted({p for _, _, p, _ in plan}),
                "product_odd_chains": sorted({b for *_, b in plan}),
                "conv_products_supported": k_supported, "notes": notes, "results": rows,
            })

        def log(row):
            label = row["impl"] + (f" [{row['targets']}] K={row.get('conv_products', 1)} P={row.get('product_chains', 1)}"
                                   f" B={row.get('product_odd_chains', 0)}" if "targets" in row else "")
            what = f"{row['median_ms']:9.1f} ms" if "median_ms" in row else row.get("error")
            print(f"  {row['model']:>13} L={row.get('L')} C={row.get('C')} corr={row.get('correlation', '-')} "
                  f"{label:>32}: {what}", flush=True)
            rows.append(row)  # every row passes through here: the JSON is rewritten after each
            save()

        if "mace" in models and not args.build_only:
            bench_mace(device, dtype, lmaxes, channels, molecules, args.max_ell, args.correlation, warmup, iters, log,
                       plan, deadline, args.time_budget)
        if "mace-correlation" in models:
            bench_mace_correlations(
                device, dtype, args.correlations, args.correlation_lmax, args.correlation_channels, molecules,
                args.max_ell, warmup, iters, log, BuildLimits(args.upstream_build_timeout, args.upstream_build_memory_gb),
                args.upstream_cache, args.upstream_build_jobs, deadline, args.time_budget, args.build_only,
                args.cached_only)
        if "eqv2" in models and not args.build_only:
            bench_eqv2(device, dtype, eq_l, eq_c, eq_layers, eq_n, warmup, iters, log, deadline, args.time_budget)
        save()
        print()
        print(model_step_table(rows, f"{name}, {args.dtype}"))
        print()
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
