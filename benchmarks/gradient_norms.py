"""Gradient norms during training: does MACE's gradient clipping treat a Gaunt model differently?

For finished ``benchmarks/accuracy_mace.py`` runs, at several epochs' checkpoints: the norm of the gradient of
MACE's weighted loss (energy weight 1, forces 100, MACE's defaults) over all parameters, on the first batches of
10 training configurations, and the share of its square in the many-body parameters (``symmetric_contractions``).
MACE clips the gradient norm at 10 (``clip_grad``); where both models stay below it, clipping cannot explain a
difference in what they learn.

    python benchmarks/gradient_norms.py --work out/accuracy_mace/full_ema --runs upstream_s1 product_s1

Table on stdout, JSON in benchmarks/results/gradient_norms.json (``--out``).
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, required=True, help="an accuracy_mace work folder (with data/ and runs/)")
    ap.add_argument("--runs", nargs="+", required=True, help="run names under --work/runs, e.g. upstream_s1")
    ap.add_argument("--epochs", type=int, nargs="+", default=[0, 5, 15, 29])
    ap.add_argument("--batches", type=int, default=5)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "gradient_norms.json")
    args = ap.parse_args(argv)

    import torch

    import gaunt_plugins.adapters.mace_blocks  # noqa: F401  (Gaunt classes for unpickling)
    import ase.io
    from mace import data, tools
    from mace.modules.loss import WeightedEnergyForcesLoss
    from mace.tools import torch_geometric

    torch.set_default_dtype(torch.float64)
    atoms = ase.io.read(args.work / "data" / "train.xyz", index=f":{10 * args.batches}")
    keys = data.KeySpecification(info_keys={"energy": "REF_energy"}, arrays_keys={"forces": "REF_forces"})
    loss_fn = WeightedEnergyForcesLoss(energy_weight=1.0, forces_weight=100.0)
    rows = []
    for name in args.runs:
        run = args.work / "runs" / name
        model = torch.load(run / f"{name}.model", map_location="cpu", weights_only=False).double()
        table = tools.AtomicNumberTable([int(z) for z in model.atomic_numbers])
        ds = [data.AtomicData.from_config(data.config_from_atoms(a, key_specification=keys), z_table=table,
                                          cutoff=float(model.r_max)) for a in atoms]
        batches = list(torch_geometric.dataloader.DataLoader(ds, batch_size=10, shuffle=False))
        for epoch in args.epochs:
            found = sorted(run.glob(f"checkpoints/{name}_run-*_epoch-{epoch}.pt"))
            if not found:
                raise SystemExit(f"{run}: no checkpoint of epoch {epoch}")
            model.load_state_dict(torch.load(found[0], map_location="cpu", weights_only=False)["model"])
            norms, shares = [], []
            for batch in batches:
                model.zero_grad()
                loss_fn(pred=model(batch.to_dict(), training=True, compute_force=True), ref=batch).backward()
                squares = {n: p.grad.square().sum().item() for n, p in model.named_parameters() if p.grad is not None}
                total = sum(squares.values())
                norms.append(total ** 0.5)
                shares.append(sum(v for n, v in squares.items() if "symmetric_contractions" in n) / total)
            rows.append({"run": name, "epoch": epoch, "grad_norm_mean": sum(norms) / len(norms),
                         "grad_norm_min": min(norms), "grad_norm_max": max(norms),
                         "many_body_share": sum(shares) / len(shares)})
    lines = ["| run | epoch | gradient norm (mean, min-max) | many-body share of its square |", "|---|---|---|---|"]
    lines += [f"| {r['run']} | {r['epoch']} | {r['grad_norm_mean']:.2f} ({r['grad_norm_min']:.2f}-{r['grad_norm_max']:.2f}) "
              f"| {r['many_body_share']:.2f} |" for r in rows]
    text = "\n".join(lines)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"command": " ".join(["python benchmarks/gradient_norms.py", *(argv or sys.argv[1:])]),
                                    "device": f"CPU ({platform.machine()})", "date": time.strftime("%Y-%m-%d"),
                                    "batches": args.batches, "batch_size": 10, "rows": rows, "table": text},
                                   indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
