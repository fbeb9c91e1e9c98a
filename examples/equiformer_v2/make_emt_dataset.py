"""Write a small offline S2EF dataset (ase db) for the Gaunt EquiformerV2 example.

Small fcc(111) metal slabs (Cu, Pt, Au, Ni; 2x2x3) with one adsorbate (O, H, C, N or CO),
rattled, with energies and forces from ASE's EMT calculator: nothing is downloaded.

    python make_emt_dataset.py --out data --n-train 64 --n-val 16
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from ase.build import add_adsorbate, fcc111, molecule
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from ase.constraints import FixAtoms
from ase.db import connect

METALS = ("Cu", "Pt", "Au", "Ni")
ADSORBATES = ("O", "H", "C", "N", "CO")
SITES = ("fcc", "hcp", "ontop", "bridge")


def structure(rng: np.random.Generator):
    metal = METALS[rng.integers(len(METALS))]
    ads = ADSORBATES[rng.integers(len(ADSORBATES))]
    slab = fcc111(metal, size=(2, 2, 3), vacuum=6.0)
    if ads == "CO":
        add_adsorbate(slab, molecule("CO"), 1.9, "ontop")
    else:
        add_adsorbate(slab, ads, float(rng.uniform(1.0, 1.8)), SITES[rng.integers(len(SITES))])
    slab.set_constraint(FixAtoms(indices=[a.index for a in slab if a.tag >= 2]))
    slab.rattle(stdev=0.1, seed=int(rng.integers(1 << 30)))
    slab.calc = EMT()
    energy = slab.get_potential_energy()
    forces = slab.get_forces(apply_constraint=False)
    slab.calc = SinglePointCalculator(slab, energy=energy, forces=forces)
    return slab


def write(path: Path, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    if path.exists():
        path.unlink()
    with connect(str(path)) as db:
        for _ in range(n):
            db.write(structure(rng))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("data"))
    parser.add_argument("--n-train", type=int, default=64)
    parser.add_argument("--n-val", type=int, default=16)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    write(args.out / "train.db", args.n_train, seed=0)
    write(args.out / "val.db", args.n_val, seed=1)
    print(f"wrote {args.out / 'train.db'} ({args.n_train}) and {args.out / 'val.db'} ({args.n_val})")


if __name__ == "__main__":
    main()
