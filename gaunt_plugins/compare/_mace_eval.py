"""Evaluate a saved MACE model on test files: energy and force MAE/RMSE, parameter count.

Run by ``gaunt-compare`` in its own process (a model that fails to load or evaluate is reported,
the other variant is not affected)::

    python -m gaunt_plugins.compare._mace_eval --model M.model --test NAME=PATH ... --out eval.json

Predictions are computed as ``mace_eval_configs`` computes them (the model's own cutoff and
element table, batched, ``compute_force``); references are read with the training keys
(``--energy-key`` / ``--forces-key``; ``energy`` / ``forces`` are taken from ASE's calculator
results, as MACE does). Metrics follow MACE's definitions (``mace.tools.utils``): energy errors
per configuration (total and per atom), force errors over all Cartesian components.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np

from ._metrics import error_metrics


def _reference(atoms, energy_key: str, forces_key: str):
    energy = atoms.info.get(energy_key)
    forces = atoms.arrays.get(forces_key)
    results = getattr(atoms.calc, "results", {}) if atoms.calc is not None else {}
    if energy is None and energy_key in ("energy", "REF_energy", "free_energy"):
        energy = results.get("energy")
    if forces is None and forces_key in ("forces", "REF_forces"):
        forces = results.get("forces")
    return (None if energy is None else float(energy)), (None if forces is None else np.asarray(forces, float))


def evaluate_file(model, path, energy_key, forces_key, batch_size, device, head=None) -> dict:
    import ase.io
    from mace import data
    from mace.tools import torch_geometric, utils

    atoms_list = ase.io.read(path, index=":")
    refs = [_reference(a, energy_key, forces_key) for a in atoms_list]
    z_table = utils.AtomicNumberTable([int(z) for z in model.atomic_numbers])
    heads = getattr(model, "heads", None)
    head_name = head or (heads[0] if heads else "Default")
    configs = [data.config_from_atoms(a, head_name=head_name) for a in atoms_list]
    dataset = [data.AtomicData.from_config(c, z_table=z_table, cutoff=float(model.r_max), heads=heads)
               for c in configs]
    loader = torch_geometric.dataloader.DataLoader(dataset=dataset, batch_size=batch_size, shuffle=False,
                                                   drop_last=False)
    energies, forces = [], []
    start = time.time()
    for batch in loader:
        batch = batch.to(device)
        out = model(batch.to_dict(), training=False, compute_force=True)
        energies.append(out["energy"].detach().cpu().numpy())
        f = out["forces"].detach().cpu().numpy()
        counts = (batch.ptr[1:] - batch.ptr[:-1]).cpu().numpy()
        forces.extend(np.split(f, np.cumsum(counts)[:-1]))
    seconds = time.time() - start
    pred_e = np.concatenate(energies)
    ref_e = [np.nan if e is None else e for e, _ in refs]
    with_f = [i for i, (_, f) in enumerate(refs) if f is not None]
    result = error_metrics(pred_e, ref_e, [len(a) for a in atoms_list],
                           [forces[i] for i in with_f], [refs[i][1] for i in with_f])
    result["eval_s"] = seconds
    result["path"] = str(path)
    return result


def saved_model(model_dir: Path, name: str) -> Optional[Path]:
    """The model ``mace_run_train`` saved last: ``<name>_stagetwo.model`` (SWA), else ``<name>.model``."""
    for candidate in (Path(model_dir) / f"{name}_stagetwo.model", Path(model_dir) / f"{name}.model"):
        if candidate.exists():
            return candidate
    return None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gaunt_plugins.compare._mace_eval")
    parser.add_argument("--model", required=True)
    parser.add_argument("--test", action="append", default=[], help="NAME=PATH (repeatable)")
    parser.add_argument("--energy-key", default="REF_energy")
    parser.add_argument("--forces-key", default="REF_forces")
    parser.add_argument("--dtype", default="float64")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--head", default=None)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    tests = dict(spec.partition("=")[::2] for spec in args.test)
    result = evaluate_model(args.model, tests, energy_key=args.energy_key, forces_key=args.forces_key,
                            dtype=args.dtype, device=args.device, batch_size=args.batch_size, head=args.head)
    Path(args.out).write_text(json.dumps(result, indent=1))
    return 0


def evaluate_model(model_path: str, tests: dict, energy_key="REF_energy", forces_key="REF_forces",
                   dtype="float64", device="cpu", batch_size=16, head=None) -> dict:
    """``{"parameters": ..., "tests": {name: metrics}}`` for a saved MACE model."""
    import mace  # noqa: F401  (before e3nn)
    import torch
    from mace.tools import torch_tools

    previous = torch.get_default_dtype()
    torch_tools.set_default_dtype(dtype)
    try:
        model = torch.load(model_path, map_location=device, weights_only=False).to(device)
        for p in model.parameters():
            p.requires_grad = False
        result = {
            "model": str(model_path),
            "model_class": type(model).__name__,
            "parameters": int(sum(p.numel() for p in model.parameters())),
            "dtype": dtype,
            "tests": {},
        }
        for name, path in tests.items():
            result["tests"][name] = evaluate_file(model, Path(path), energy_key, forces_key, batch_size, device, head)
            print(f"evaluated {name}: {json.dumps(result['tests'][name])}", flush=True)
    finally:
        torch.set_default_dtype(previous)
    return result


if __name__ == "__main__":
    sys.exit(main())
