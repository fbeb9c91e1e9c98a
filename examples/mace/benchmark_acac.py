"""Accuracy and speed: upstream MACE vs Gaunt MACE on acac, same settings, same seed.

Trains both with the stock ``mace_run_train`` (Gaunt through the automatic hook), then evaluates
energy and force MAE on test_MD_300K and test_MD_600K with ``mace_eval_configs``, and reports the
mean training epoch time from MACE's own results file.

Usage: python benchmark_acac.py [--epochs N] [--out DIR] [--channels C] [--max-l L] [--n-train N]
                                [--only upstream|gaunt] [--threads T]
"""
import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
E0S = "{1: -13.568422178253735, 6: -1026.8538996116154, 8: -2037.796869412825}"


def config(name, train_file, epochs, channels, max_l, gaunt):
    lines = [
        f"name: {name}", "model: MACE", f"num_channels: {channels}", f"max_L: {max_l}", f"max_ell: {max_l}",
        "correlation: 3", "r_max: 5.0", "num_interactions: 2",
        f"train_file: {train_file}", "valid_fraction: 0.1",
        "energy_key: REF_energy", "forces_key: REF_forces", f'E0s: "{E0S}"',
        "batch_size: 10", "valid_batch_size: 20", f"max_num_epochs: {epochs}", "eval_interval: 1",
        "lr: 0.01", "ema: True", "ema_decay: 0.99", "device: cpu", "default_dtype: float64", "seed: 123",
        "error_table: PerAtomMAE",
    ]
    if gaunt:
        lines.append("tensor_product: gaunt")
    return "\n".join(lines) + "\n"


def epoch_times(results_file):
    """Seconds per epoch: sum of the optimisation steps' times of each epoch (MACE's 'opt' rows)."""
    per_epoch = {}
    for line in Path(results_file).read_text().splitlines():
        row = json.loads(line)
        if row["mode"] == "opt":
            per_epoch[row["epoch"]] = per_epoch.get(row["epoch"], 0.0) + row["time"]
    return per_epoch


def mae(model, xyz, work):
    import ase.io

    out = work / f"eval_{Path(model).stem}_{Path(xyz).stem}.xyz"
    subprocess.run([str(BIN / "mace_eval_configs"), "--configs", str(xyz), "--model", str(model),
                    "--output", str(out), "--default_dtype", "float64", "--batch_size", "20"],
                   check=True, capture_output=True)
    ref = ase.io.read(xyz, index=":")
    pred = ase.io.read(out, index=":")
    de = [abs(p.info["MACE_energy"] - r.info["REF_energy"]) for p, r in zip(pred, ref)]
    df = np.concatenate([np.abs(p.arrays["MACE_forces"] - r.arrays["REF_forces"]).ravel() for p, r in zip(pred, ref)])
    return 1000 * float(np.mean(de)), 1000 * float(np.mean(df))  # meV, meV/A


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--max-l", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("gaunt_mace_benchmark"))
    parser.add_argument("--only", choices=["upstream", "gaunt"])
    parser.add_argument("--n-train", type=int, default=None,
                        help="use the first N configurations of train_300K (default all 500)")
    parser.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS for the training runs")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(HERE))
    from prepare_acac import default_src, prepare

    data = prepare(default_src(), args.out / "data")
    train_file = data / "train_300K.xyz"
    if args.n_train is not None:
        lines = train_file.read_text().splitlines()
        per = int(lines[0]) + 2
        train_file = data / f"train_300K_first{args.n_train}.xyz"
        train_file.write_text("\n".join(lines[: per * args.n_train]) + "\n")
    from gaunt_plugins.patches.launcher import hook_environment

    summary = {}
    for variant in ("upstream", "gaunt"):
        if args.only and variant != args.only:
            continue
        work = args.out / variant
        work.mkdir(exist_ok=True)
        (work / "cfg.yaml").write_text(config(variant, train_file, args.epochs, args.channels, args.max_l, variant == "gaunt"))
        env = dict(os.environ)
        if args.threads:
            env["OMP_NUM_THREADS"] = str(args.threads)
        if variant == "gaunt":  # what gaunt-run exports: the stock command patches itself
            env = hook_environment(env)
        start = time.time()
        with open(work / "stdout.txt", "w") as log:
            subprocess.run([str(BIN / "mace_run_train"), "--config", "cfg.yaml"], cwd=work, env=env,
                           stdout=log, stderr=subprocess.STDOUT, check=True)
        wall = time.time() - start
        (results,) = (work / "results").glob(f"{variant}_run-*_train.txt")
        times = epoch_times(results)
        row = {"wall_s": wall, "epochs": len(times), "mean_epoch_s": float(np.mean(list(times.values()))),
               "median_epoch_s": float(np.median(list(times.values())))}
        for test in ("test_MD_300K", "test_MD_600K"):
            e, f = mae(work / f"{variant}.model", data / f"{test}.xyz", work)
            row[f"{test}_E_MAE_meV"] = e
            row[f"{test}_F_MAE_meV_per_A"] = f
        summary[variant] = row
        print(variant, json.dumps(row), flush=True)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
