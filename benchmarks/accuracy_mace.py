"""Accuracy benchmark: upstream MACE vs ``tensor_product: gaunt`` variants on acetylacetone, several seeds.

Every variant trains with the real ``mace_run_train`` (through ``gaunt-run``) on the same data, for the
same number of epochs, once per seed; each run keeps a checkpoint per epoch. The model compared is
MACE's own choice, the best-validation checkpoint, taken

- at equal epochs: among all epochs of the run;
- at equal wall-clock: among the epochs whose training passes (MACE's per-step timer, summed) end
  within one budget shared by all variants (default: the shortest mean training time of any variant).

Every run executes a snapshot of gaunt-plugins taken when the benchmark starts (first on the runs'
``PYTHONPATH``), so editing the working tree while it runs changes nothing; a run is reused only when
its settings and, for the Gaunt variants, the snapshot's content hash match.

Each is evaluated on the MD test sets (energy MAE per atom, force MAE per component); the table gives
mean +- std over the seeds, the JSON every run.

Variants (``--variants``):

  upstream      MACE as released (e3nn conv TensorProduct, SymmetricContraction)
  product       ``gaunt_targets: [product]`` (the symmetric contraction only, as in the paper's MACE; the chains
                by max_ell, the shipped default: here, at max_ell 3, 2 chains and 1 odd-path chain)
  product-P     the same with ``gaunt_product_chains: P`` (``product-2``, ``product-3``, ...; ``product-1-o0``
                is one chain and no odd-path chain)
  conv-K        ``gaunt_targets: [conv, product]`` with ``gaunt_conv_products: K`` (``conv-1``, ``conv-3``, ...)
  conv-paths    the same with ``gaunt_conv_products: paths`` (one output block per path: MACE's convolution)
  conv-K-P      the same with ``gaunt_product_chains: P``
  <name>-oB     any Gaunt variant with ``gaunt_product_odd_chains: B`` (``product-o1``, ``conv-paths-o1``)
  <name>-gG     any Gaunt variant with ``gaunt_product_gain: G`` (``product-g4``, ``conv-paths-2-g2``, after -oB)

Data (../shared/data/acac): ``--n-train`` configurations of train_300K.xyz for training, ``--n-valid``
more for validation, ``--n-test`` of each of test_MD_300K.xyz / test_MD_600K.xyz (evenly spaced).
E0s fitted to the training energies (MACE's `average`). Runs go to ``--work`` (resumable: a finished run whose
settings match is reused; one that differs only in having trained fewer epochs is continued to ``--epochs`` with
MACE's ``restart_latest``, and ``--code-snapshot`` runs the Gaunt variants on the code it was trained with); runs
execute ``--jobs`` at a time, one thread each.

    python benchmarks/accuracy_mace.py                           # 3 seeds, the default variants (about 2 h on 2 cores)
    python benchmarks/accuracy_mace.py --quick                   # a smoke run (minutes)
    python benchmarks/accuracy_mace.py --variants upstream conv-3 --seeds 5 --epochs 40

Table on stdout; JSON in benchmarks/results/accuracy_mace[_quick].json.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
import _supervisor as supervisor  # noqa: E402  (children killed with this process)
TESTS = ("test_MD_300K", "test_MD_600K")
DEFAULT_VARIANTS = ("upstream", "product", "conv-1", "conv-3")

MODEL = {
    "model": "MACE",
    "num_channels": 16,
    "max_L": 2,
    "max_ell": 3,
    "correlation": 3,
    "r_max": 5.0,
    "num_interactions": 2,
    "batch_size": 10,
    "valid_batch_size": 25,
    "lr": 0.01,
    "default_dtype": "float64",
    "device": "cpu",
    "energy_key": "REF_energy",
    "forces_key": "REF_forces",
    "eval_interval": 1,
    "ema": True,
    "ema_decay": 0.99,
    "error_table": "PerAtomMAE",
    "patience": 1000,
}


def find_acac() -> Path:
    for candidate in (ROOT.parent / "shared" / "data" / "acac", Path("/work/shared/data/acac")):
        if (candidate / "train_300K.xyz").exists():
            return candidate
    raise SystemExit("acac dataset not found (expected ../shared/data/acac beside the repository)")


# ------------------------------------------------------------------------------------------- data
sys.path.insert(0, str(ROOT / "examples" / "compare"))
from prepare_acac import frames as _frames, rekey  # noqa: E402  (the acac reader the examples use)


def _write(path: Path, frames: Sequence[List[str]]) -> None:
    """Write ``frames`` to ``path`` unless it holds them already; atomically (runs of another invocation on the
    same ``--work`` may be reading it)."""
    text = "\n".join(line for fr in frames for line in rekey(fr)) + "\n"
    if path.exists() and path.read_text() == text:
        return
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def prepare_data(src: Path, out: Path, n_train: int, n_valid: int, n_test: int) -> Dict[str, Path]:
    """``train.xyz``, ``valid.xyz`` (disjoint, fixed order) and the evenly spaced test subsets."""
    out.mkdir(parents=True, exist_ok=True)
    train = _frames(src / "train_300K.xyz")
    if n_train + n_valid > len(train):
        raise SystemExit(f"--n-train + --n-valid = {n_train + n_valid} exceeds the {len(train)} training configs")
    files = {"train": out / "train.xyz", "valid": out / "valid.xyz"}
    _write(files["train"], train[:n_train])
    _write(files["valid"], train[n_train:n_train + n_valid])
    for name in TESTS:
        frames = _frames(src / f"{name}.xyz")
        if 0 < n_test < len(frames):
            frames = [frames[int(i * len(frames) / n_test)] for i in range(n_test)]
        files[name] = out / f"{name}.xyz"
        _write(files[name], frames)
    return files


# --------------------------------------------------------------------------------------- variants
def variant_options(name: str) -> Dict[str, object]:
    """The config keys a variant adds to the upstream config."""
    if name == "upstream":
        return {}
    head, *counts = name.split("-")
    gain = counts.pop() if counts and counts[-1].startswith("g") else None
    if gain is not None:
        try:
            value = float(gain[1:])
        except ValueError:
            value = 0.0
        if not value > 0.0:
            raise SystemExit(f"unknown variant {name!r}: the weight gain suffix is g<number>, e.g. product-g4")
        options = variant_options("-".join([head, *counts]))
        options["gaunt_product_gain"] = value
        return options
    odd = counts.pop() if counts and counts[-1].startswith("o") else None
    if odd is not None:
        if not odd[1:].isdigit():
            raise SystemExit(f"unknown variant {name!r}: the odd-path suffix is o<whole number>, e.g. product-o1")
        options = variant_options("-".join([head, *counts]))
        options["gaunt_product_odd_chains"] = int(odd[1:])
        return options
    if head == "conv" and counts[:1] == ["paths"] and len(counts) <= 2 and all(c.isdigit() and int(c) >= 1
                                                                               for c in counts[1:]):
        options = {"tensor_product": "gaunt", "gaunt_targets": "[conv, product]", "gaunt_conv_products": "paths"}
        if counts[1:]:
            options["gaunt_product_chains"] = int(counts[1])
        return options
    if head in ("product", "conv") and all(c.isdigit() and int(c) >= 1 for c in counts) \
            and len(counts) <= (1 if head == "product" else 2) and (head == "product" or counts):
        options: Dict[str, object] = {"tensor_product": "gaunt"}
        if head == "product":
            options["gaunt_targets"] = "[product]"
            chains = counts
        else:
            options.update(gaunt_targets="[conv, product]", gaunt_conv_products=int(counts[0]))
            chains = counts[1:]
        if chains:
            options["gaunt_product_chains"] = int(chains[0])
        return options
    raise SystemExit(f"unknown variant {name!r}: choose upstream, product, product-P, conv-K, conv-K-P, "
                     f"conv-paths or conv-paths-P (K, P >= 1, e.g. product-3, conv-3-2, conv-paths), each optionally "
                     f"with an odd-path suffix -oB and a many-body weight gain suffix -gG (product-o1, conv-paths-2-g2, "
                     f"product-o1-g4)")


def run_config(variant: str, seed: int, epochs: int, files: Dict[str, Path], model: Dict[str, object]) -> Dict:
    cfg = dict(model)
    cfg.update(name=f"{variant}_s{seed}", seed=seed, max_num_epochs=epochs, train_file=str(files["train"]),
               valid_file=str(files["valid"]), E0s="average",
               save_all_checkpoints=True, keep_checkpoints=True)
    cfg.update(variant_options(variant))
    return cfg


def _yaml(cfg: Dict[str, object]) -> str:
    lines = []
    for key, value in cfg.items():
        if isinstance(value, bool):
            value = str(value)
        elif isinstance(value, str) and any(c in value for c in ":{}#,"):
            value = json.dumps(value)
        lines.append(f"{key}: {value}")
    return "\n".join(lines) + "\n"


def config_hash(cfg: Dict[str, object], files: Dict[str, Path], code: str) -> str:
    h = hashlib.sha256(json.dumps(cfg, sort_keys=True).encode())
    for key in ("train", "valid"):
        h.update(files[key].read_bytes())
    if cfg.get("tensor_product") == "gaunt":
        h.update(code.encode())
    return h.hexdigest()[:16]


# Where each installed subpackage's source lives in the repository (pyproject's package-dir).
_PACKAGE_DIRS = {"gaunt_plugins": "gaunt_plugins", "gaunt_plugins/patches": "patches",
                 "gaunt_plugins/triton_kernels": "triton_kernels"}


def snapshot_code(dest_root: Path) -> tuple:
    """Copy the package as installed (``patches/`` and ``triton_kernels/`` under ``gaunt_plugins/``) into
    ``dest_root/<hash>``; returns ``(path to put on PYTHONPATH, content hash)``."""
    h = hashlib.sha256()
    files = []
    for target, source in _PACKAGE_DIRS.items():
        for path in sorted((ROOT / source).rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix in (".py", ".c", ".cpp", ".h"):
                rel = Path(target) / path.relative_to(ROOT / source)
                files.append((rel, path))
                h.update(str(rel).encode())
                h.update(path.read_bytes())
    digest = h.hexdigest()[:16]
    dest = dest_root / digest
    if not (dest / "gaunt_plugins" / "__init__.py").exists():
        tmp = dest_root / f".{digest}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        for rel, path in files:
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, tmp / rel)
        shutil.rmtree(dest, ignore_errors=True)
        tmp.rename(dest)
    return dest, digest


def child_env(code_dir: Path) -> Dict[str, str]:
    """One thread, unbuffered, the code snapshot first on ``PYTHONPATH`` (checked: a child imports it)."""
    path = os.environ.get("PYTHONPATH")
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1",
               PYTHONPATH=str(code_dir) + (os.pathsep + path if path else ""))
    probe = "import gaunt_plugins.patches.mace as m, gaunt_plugins.layers as l; print(m.__file__); print(l.__file__)"
    # cwd outside the repository: `python -c` puts the working directory first on sys.path
    out = supervisor.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, check=True,
                         cwd=code_dir)
    if not all(line.startswith(str(code_dir)) for line in out.stdout.split()):
        raise SystemExit(f"the code snapshot {code_dir} is not what child processes import: {out.stdout}")
    return env


# ------------------------------------------------------------------------------------------ train
def train(run_dir: Path, cfg: Dict[str, object], digest: str, env: Dict[str, str],
          digest_at: Optional[Callable[[int], str]] = None) -> Dict:
    """Train one run (or reuse a finished one with the same settings) and return its epoch record.

    ``digest_at(n)``: the digest of these settings with ``max_num_epochs = n``. A finished run that differs only
    in having trained fewer epochs is continued to ``cfg["max_num_epochs"]`` by MACE's ``restart_latest`` (from
    its last checkpoint: model, optimiser and scheduler; with EMA on, the checkpoint holds the averaged weights,
    which the continued run starts from) instead of being trained again; the record says from which epoch."""
    record_path = run_dir / "epochs.json"
    continued_from = None
    if record_path.exists():
        record = json.loads(record_path.read_text())
        if record.get("digest") == digest:
            return record
        done = len(record.get("epochs", []))
        if digest_at is not None and 0 < done < int(cfg["max_num_epochs"]) and record.get("digest") == digest_at(done):
            continued_from = record
    if continued_from is None:
        if run_dir.exists():
            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(_yaml(dict(cfg, restart_latest=True) if continued_from else cfg))
    gaunt_run = Path(sys.executable).parent / "gaunt-run"
    cmd = [str(gaunt_run), "mace_run_train", "--config", "config.yaml"]
    start = time.time()
    with open(run_dir / "stdout.txt", "a" if continued_from else "w") as log:
        # in this process's group: the worker threads' runs get the terminal's Ctrl-C themselves
        proc = supervisor.run(cmd, cwd=run_dir, env=env, stdout=log, stderr=subprocess.STDOUT, own_group=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{run_dir.name}: mace_run_train failed (exit {proc.returncode}); see {run_dir / 'stdout.txt'}")
    record = {"digest": digest, "wall_s": time.time() - start, "epochs": read_epochs(run_dir, cfg["name"])}
    if continued_from is not None:
        record["wall_s"] += continued_from.get("wall_s", 0.0)
        record["continued_from_epoch"] = len(continued_from["epochs"])
    record_path.write_text(json.dumps(record, indent=1))
    return record


def read_epochs(run_dir: Path, name: str) -> List[Dict]:
    """Per epoch: training time (MACE's per-step timer summed), validation loss and errors, checkpoint."""
    results = sorted((run_dir / "results").glob(f"{name}*_train.txt"))
    if len(results) != 1:
        raise RuntimeError(f"{run_dir}: expected one MACE results file for {name}, found {results}")
    step_time: Dict[int, float] = {}
    evals: Dict[int, Dict] = {}
    for line in results[0].read_text().splitlines():
        row = json.loads(line)
        if row.get("mode") == "opt":
            step_time[row["epoch"]] = step_time.get(row["epoch"], 0.0) + row["time"]
        elif row.get("mode") == "eval" and row.get("epoch") is not None:
            evals[row["epoch"]] = row
    checkpoints, stage_two = {}, set()
    for path in (run_dir / "checkpoints").glob("*_epoch-*.pt"):
        tail = path.stem.rsplit("-", 1)[1]  # "<epoch>", or "<epoch>_swa" for MACE's stage two
        epoch = int(tail.removesuffix("_swa"))
        checkpoints[epoch] = path.name
        if tail.endswith("_swa"):
            stage_two.add(epoch)
    epochs, elapsed = [], 0.0
    for epoch in sorted(step_time):
        elapsed += step_time[epoch]
        row = evals.get(epoch, {})
        epochs.append({"epoch": epoch, "train_s": step_time[epoch], "elapsed_s": elapsed,
                       "valid_loss": row.get("loss"), "valid_mae_f": row.get("mae_f"),
                       "checkpoint": checkpoints.get(epoch), "stage_two": epoch in stage_two})
    return epochs


def best_epoch(epochs: List[Dict], budget_s: Optional[float] = None) -> Optional[Dict]:
    """The best-validation epoch with a checkpoint, among those that end within ``budget_s``; where any of them
    is of MACE's stage two, among those only (as MACE chooses: stage two's loss weighs energies differently)."""
    pool = [e for e in epochs if e["checkpoint"] and e["valid_loss"] is not None
            and (budget_s is None or e["elapsed_s"] <= budget_s)]
    if any(e.get("stage_two") for e in pool):
        pool = [e for e in pool if e.get("stage_two")]
    return min(pool, key=lambda e: e["valid_loss"]) if pool else None


# --------------------------------------------------------------------------------------- evaluate
def evaluate(run_dir: Path, name: str, checkpoint: str, files: Dict[str, Path],
             env: Dict[str, str]) -> Dict[str, Dict[str, float]]:
    """Energy MAE (meV/atom) and force MAE (meV/A) of a checkpoint on each test set (cached per checkpoint)."""
    cache = run_dir / f"eval_{Path(checkpoint).stem}.json"
    if cache.exists():
        return json.loads(cache.read_text())
    code = f"""
import json, sys
import gaunt_plugins.adapters.mace_blocks  # noqa: F401  (Gaunt classes importable for unpickling)
import ase.io, numpy as np, torch
from mace import data, tools
from mace.tools import torch_geometric
torch.set_default_dtype(torch.float64)
model = torch.load({str(run_dir / (name + '.model'))!r}, map_location="cpu", weights_only=False)
state = torch.load({str(run_dir / 'checkpoints' / checkpoint)!r}, map_location="cpu", weights_only=False)
model.load_state_dict(state["model"])
model = model.double().eval()
table = tools.AtomicNumberTable([int(z) for z in model.atomic_numbers])
out = {{}}
for name, path in json.loads(sys.argv[1]).items():
    atoms = ase.io.read(path, index=":")
    configs = [data.config_from_atoms(a) for a in atoms]
    ds = [data.AtomicData.from_config(c, z_table=table, cutoff=float(model.r_max)) for c in configs]
    loader = torch_geometric.dataloader.DataLoader(ds, batch_size=50, shuffle=False)
    de, df = [], []
    for batch, start in zip(loader, range(0, len(atoms), 50)):
        pred = model(batch.to_dict(), training=False, compute_force=True)
        for k, a in enumerate(atoms[start:start + 50]):
            de.append(abs(pred["energy"][k].item() - a.info["REF_energy"]) / len(a))
        sel = [a.arrays["REF_forces"] for a in atoms[start:start + 50]]
        df.append(np.abs(pred["forces"].detach().numpy() - np.concatenate(sel)).ravel())
    out[name] = {{"mae_e_mev_per_atom": 1e3 * float(np.mean(de)), "mae_f_mev_per_a": 1e3 * float(np.concatenate(df).mean())}}
print(json.dumps(out))
"""
    tests = {k: str(files[k]) for k in TESTS}
    proc = supervisor.run([sys.executable, "-c", code, json.dumps(tests)], capture_output=True, text=True, env=env,
                          cwd=run_dir)
    if proc.returncode != 0:
        raise RuntimeError(f"evaluating {run_dir.name}/{checkpoint} failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    cache.write_text(json.dumps(result, indent=1))
    return result


# ----------------------------------------------------------------------------------------- report
def _mean_std(values: Sequence[float]) -> Dict[str, float]:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values)}


def summarise(variant: str, runs: List[Dict], key: str) -> Dict:
    metrics = {}
    for test in TESTS:
        for m in ("mae_e_mev_per_atom", "mae_f_mev_per_a"):
            metrics[f"{test}/{m}"] = _mean_std([r[key]["errors"][test][m] for r in runs])
    return metrics


def fmt(ms: Dict[str, float]) -> str:
    return f"{ms['mean']:.1f} +- {ms['std']:.1f}"


def table(result: Dict) -> str:
    seeds = result["settings"]["seeds"]
    lines = [f"acac, {len(seeds)} seeds ({', '.join(map(str, seeds))}), {result['settings']['epochs']} epochs; "
             f"equal wall-clock budget {result['budget_s']:.0f} s of training; device {result['device']}",
             "", "| variant | params | s / epoch | epochs | F MAE 300K | F MAE 600K | E MAE 300K | E MAE 600K "
             "| F 300K / upstream | epochs in budget | F MAE 300K (budget) | F 300K / upstream (budget) |",
             "|" + "---|" * 12]
    up = result["variants"].get("upstream")
    for name, v in result["variants"].items():
        eq, bud = v["equal_epochs"], v["equal_time"]
        f300 = eq["test_MD_300K/mae_f_mev_per_a"]
        ratio = f"{f300['mean'] / up['equal_epochs']['test_MD_300K/mae_f_mev_per_a']['mean']:.3f}" if up else "-"
        if bud:
            b300 = bud["test_MD_300K/mae_f_mev_per_a"]
            bratio = (f"{b300['mean'] / up['equal_time']['test_MD_300K/mae_f_mev_per_a']['mean']:.3f}"
                      if up and up["equal_time"] else "-")
            bcells = f"{v['epochs_in_budget']['mean']:.1f} | {fmt(b300)} | {bratio}"
        else:
            bcells = "0 | - | -"
        lines.append(f"| {name} | {v['parameters']:,} | {v['epoch_s']['mean']:.1f} | {result['settings']['epochs']} | "
                     f"{fmt(f300)} | {fmt(eq['test_MD_600K/mae_f_mev_per_a'])} | "
                     f"{fmt(eq['test_MD_300K/mae_e_mev_per_atom'])} | {fmt(eq['test_MD_600K/mae_e_mev_per_atom'])} | "
                     f"{ratio} | {bcells} |")
    lines.append("")
    lines.append("Errors: meV/A (forces, per component), meV/atom (energies); mean +- std over the seeds of the "
                 "best-validation checkpoint (equal epochs: among all epochs; budget: among the epochs whose "
                 "training passes end within the budget). s / epoch: MACE's per-step timer summed over an epoch, "
                 f"one thread per run, {result['settings']['jobs']} run(s) at a time.")
    return "\n".join(lines)


def count_parameters(run_dir: Path, name: str, env: Dict[str, str]) -> int:
    code = ("import sys, torch, gaunt_plugins.adapters.mace_blocks\n"
            "m = torch.load(sys.argv[1], map_location='cpu', weights_only=False)\n"
            "print(sum(p.numel() for p in m.parameters()))")
    out = supervisor.run([sys.executable, "-c", code, str(run_dir / f"{name}.model")], capture_output=True, text=True,
                         check=True, env=env, cwd=run_dir)
    return int(out.stdout.strip().splitlines()[-1])


def main(argv: Optional[Sequence[str]] = None) -> Dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--budget-s", type=float, default=None,
                        help="equal wall-clock budget in seconds of training (default: shortest mean training time)")
    parser.add_argument("--n-train", type=int, default=450)
    parser.add_argument("--n-valid", type=int, default=50)
    parser.add_argument("--n-test", type=int, default=300)
    parser.add_argument("--channels", type=int, default=MODEL["num_channels"])
    parser.add_argument("--max-L", type=int, default=MODEL["max_L"])
    parser.add_argument("--correlation", type=int, default=MODEL["correlation"])
    parser.add_argument("--jobs", type=int, default=2, help="runs trained at once (one thread each)")
    parser.add_argument("--work", type=Path, default=ROOT / "out" / "accuracy_mace")
    parser.add_argument("--code-snapshot", default=None, metavar="HASH",
                        help="run the Gaunt variants on the earlier code snapshot --work/<full|quick>[_ema]/code/HASH "
                             "instead of the working tree (to continue runs trained with it to more --epochs)")
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default benchmarks/results/...)")
    parser.add_argument("--no-ema", action="store_true", help="train without MACE's exponential moving average")
    parser.add_argument("--stage-two", action="store_true",
                        help="train with MACE's stage two (swa: energy weight 1000, lr 1e-3, the last quarter of the "
                             "epochs); the model compared is the best-validation checkpoint of stage two")
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 seeds, 2 epochs, 40 configs")
    args = parser.parse_args(argv)
    for v in args.variants:
        variant_options(v)
    if args.quick:
        args.seeds, args.epochs, args.n_train, args.n_valid, args.n_test = args.seeds[:2], 2, 40, 10, 20
    model = dict(MODEL, num_channels=args.channels, max_L=args.max_L, correlation=args.correlation)
    if args.no_ema:
        model.pop("ema")
        model.pop("ema_decay")
    if args.stage_two:
        model["swa"] = True
    work = args.work.resolve() / (("quick" if args.quick else "full") + ("" if args.no_ema else "_ema")
                                  + ("_stage_two" if args.stage_two else ""))
    files = prepare_data(find_acac(), work / "data", args.n_train, args.n_valid, args.n_test)
    if args.code_snapshot is None:
        code_dir, code = snapshot_code(work / "code")
    else:  # an earlier snapshot, e.g. to continue runs trained with earlier code
        code_dir, code = work / "code" / args.code_snapshot, args.code_snapshot
        if not (code_dir / "gaunt_plugins" / "__init__.py").is_file():
            known = sorted(p.name for p in (work / "code").glob("*") if not p.name.startswith("."))
            raise SystemExit(f"--code-snapshot {args.code_snapshot}: no snapshot {code_dir}; "
                             f"the snapshots in {work / 'code'}: {', '.join(known) or 'none'}")
    env = child_env(code_dir)

    jobs = [(v, s) for s in args.seeds for v in args.variants]
    cfgs = {(v, s): run_config(v, s, args.epochs, files, model) for v, s in jobs}

    def do(job):
        cfg = cfgs[job]
        run_dir = work / "runs" / cfg["name"]
        record = train(run_dir, cfg, config_hash(cfg, files, code), env,
                       lambda n: config_hash(dict(cfg, max_num_epochs=n), files, code))
        print(f"[accuracy] trained {cfg['name']}: {len(record['epochs'])} epochs, "
              f"{record['epochs'][-1]['elapsed_s']:.0f} s of training", flush=True)
        return job, record

    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        records = dict(pool.map(do, jobs))

    train_time = {v: statistics.fmean(records[(v, s)]["epochs"][-1]["elapsed_s"] for s in args.seeds)
                  for v in args.variants}
    budget = args.budget_s if args.budget_s is not None else min(train_time.values())

    result = {"settings": {"variants": args.variants, "seeds": args.seeds, "epochs": args.epochs, "jobs": args.jobs,
                           "n_train": args.n_train, "n_valid": args.n_valid, "n_test": args.n_test, "model": model,
                           "E0s": "average (least squares on the training set)"},
              "device": f"CPU ({platform.processor() or platform.machine()}), {os.cpu_count()} cores, one thread per run",
              "date": time.strftime("%Y-%m-%d"), "code": code, "budget_s": budget, "variants": {}, "runs": []}
    for v in args.variants:
        runs = []
        for s in args.seeds:
            cfg, record = cfgs[(v, s)], records[(v, s)]
            run_dir = work / "runs" / cfg["name"]
            entry = {"variant": v, "seed": s, "epochs": record["epochs"]}
            if "continued_from_epoch" in record:
                entry["continued_from_epoch"] = record["continued_from_epoch"]
            for key, limit in (("equal_epochs", None), ("equal_time", budget)):
                ep = best_epoch(record["epochs"], limit)
                entry[key] = None if ep is None else {
                    "epoch": ep["epoch"], "epochs_done": sum(1 for e in record["epochs"] if limit is None
                                                             or e["elapsed_s"] <= limit),
                    "errors": evaluate(run_dir, cfg["name"], ep["checkpoint"], files, env)}
            runs.append(entry)
            result["runs"].append(entry)
        timed = [r for r in runs if r["equal_time"]]
        result["variants"][v] = {
            "parameters": count_parameters(work / "runs" / cfgs[(v, args.seeds[0])]["name"],
                                           cfgs[(v, args.seeds[0])]["name"], env),
            "epoch_s": _mean_std([statistics.fmean(e["train_s"] for e in r["epochs"]) for r in runs]),
            "equal_epochs": summarise(v, runs, "equal_epochs"),
            "equal_time": summarise(v, timed, "equal_time") if len(timed) == len(runs) else None,
            "epochs_in_budget": _mean_std([r["equal_time"]["epochs_done"] if r["equal_time"] else 0 for r in runs]),
            "options": variant_options(v),
        }
    text = table(result)
    print(text)
    out = args.out or HERE / "results" / (f"accuracy_mace{'_quick' if args.quick else ''}"
                                          f"{'_stage_two' if args.stage_two else ''}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    result["table"] = text
    out.write_text(json.dumps(result, indent=1))
    print(f"\n[accuracy] wrote {out}")
    return result


if __name__ == "__main__":
    main()
