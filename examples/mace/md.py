"""Molecular dynamics with a (Gaunt) MACE model through ASE's ``MACECalculator``, printing the speed.

    python examples/mace/md.py --model acac_gaunt.model                # a model mace_run_train wrote
    python examples/mace/md.py --model acac_gaunt.model --script       # as TorchScript (what LAMMPS runs)
    python examples/mace/md.py                                         # no model: a small Gaunt MACE with
                                                                       # random weights (the speed only)

Velocity Verlet (NVE) by default, ``--langevin`` for NVT; the structure is the first configuration of
``--structure`` (default: acac's 300 K training set). Every ``--print-every`` steps it prints the step,
the time, the potential, kinetic and total energy and the temperature; at the end the speed (ms per
step, atom-steps per second, ns per day) and, in NVE, the largest deviation of the total energy.
A Gaunt model needs gaunt-plugins installed to load (no patch); any MACE model works the same way.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ACAC = Path(__file__).resolve().parents[3] / "shared" / "data" / "acac" / "train_300K.xyz"
if not ACAC.exists():
    ACAC = Path("/work/shared/data/acac/train_300K.xyz")


def thermalize(atoms, temperature_K: float, rng) -> None:
    """Maxwell-Boltzmann momenta: ASE's ``thermalize_momenta`` (3.29+), else ``MaxwellBoltzmannDistribution``."""
    try:
        from ase.md.velocitydistribution import thermalize_momenta
    except ImportError:
        from ase.md.velocitydistribution import MaxwellBoltzmannDistribution as thermalize_momenta
    thermalize_momenta(atoms, temperature_K=temperature_K, rng=rng)


def random_gaunt_mace(dtype: str):
    """A small ``ScaleShiftMACE`` (16x0e+16x1o, max_ell 2, correlation 3, H C O) with
    ``tensor_product: gaunt``'s default blocks, random weights."""
    import numpy as np
    import torch
    from e3nn import o3
    from mace import modules

    from gaunt_plugins.adapters.mace_blocks import gaunt_construction
    from gaunt_plugins.adapters.mace_config import GauntOptions

    torch.set_default_dtype(getattr(torch, dtype))
    torch.manual_seed(0)
    with gaunt_construction(GauntOptions()):
        interaction = modules.interaction_classes["RealAgnosticResidualInteractionBlock"]
        return modules.ScaleShiftMACE(
            r_max=5.0, num_bessel=8, num_polynomial_cutoff=5, max_ell=2, interaction_cls=interaction,
            interaction_cls_first=interaction, num_interactions=2, num_elements=3,
            hidden_irreps=o3.Irreps("16x0e+16x1o"), MLP_irreps=o3.Irreps("16x0e"),
            atomic_energies=np.array([-13.568, -1026.854, -2037.797]), avg_num_neighbors=8.0,
            atomic_numbers=[1, 6, 8], correlation=3, gate=torch.nn.functional.silu,
            atomic_inter_scale=1.0, atomic_inter_shift=0.0, radial_MLP=[32, 32])


def load_model(path, dtype: str, script: bool):
    """The model of ``path`` (or a random Gaunt MACE) in ``dtype``; ``script``: through e3nn's
    ``jit.compile``, as MACE writes ``_compiled.model`` and ``create_lammps_model`` exports."""
    import torch

    import mace  # noqa: F401  (before e3nn)

    if path is None:
        print("# no --model: a small Gaunt MACE with random weights (the trajectory means nothing, the speed does)")
        model = random_gaunt_mace(dtype)
    else:
        model = torch.load(path, map_location="cpu", weights_only=False)
    model = model.double() if dtype == "float64" else model.float()
    if script:
        from e3nn.util import jit
        model = jit.compile(model)
    return model


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=None, help="a MACE .model file (default: a random Gaunt MACE)")
    ap.add_argument("--structure", type=Path, default=ACAC, help="an extended-xyz file; its first configuration")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--timestep", type=float, default=0.5, help="fs (default 0.5)")
    ap.add_argument("--temperature", type=float, default=300.0, help="K, initial velocities (and --langevin)")
    ap.add_argument("--langevin", action="store_true", help="NVT (Langevin, friction 0.01/fs) instead of NVE")
    ap.add_argument("--dtype", choices=["float32", "float64"], default="float64")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--script", action="store_true", help="run the TorchScript version of the model")
    ap.add_argument("--print-every", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.steps < 1 or args.print_every < 1 or args.timestep <= 0:
        ap.error("--steps and --print-every must be >= 1 and --timestep > 0")
    if args.model is not None and not args.model.exists():
        ap.error(f"--model {args.model}: no such file")
    if not args.structure.exists():
        ap.error(f"--structure {args.structure}: no such file")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    import numpy as np
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    import ase.io
    from ase import units
    from ase.md.langevin import Langevin
    from ase.md.verlet import VelocityVerlet
    from mace.calculators import MACECalculator

    model = load_model(args.model, args.dtype, args.script)
    atoms = ase.io.read(args.structure, index=0)
    atoms.calc = MACECalculator(models=[model], device="cpu", default_dtype=args.dtype)
    thermalize(atoms, temperature_K=args.temperature, rng=np.random.default_rng(args.seed))
    if args.langevin:
        dyn = Langevin(atoms, args.timestep * units.fs, temperature_K=args.temperature, friction=0.01 / units.fs,
                       rng=np.random.default_rng(args.seed))
    else:
        dyn = VelocityVerlet(atoms, timestep=args.timestep * units.fs)
    e0 = atoms.get_total_energy()
    worst = [0.0]

    def report():
        etot = atoms.get_total_energy()
        worst[0] = max(worst[0], abs(etot - e0))
        if dyn.nsteps % args.print_every == 0:
            print(f"step {dyn.nsteps:6d}  t {dyn.nsteps * args.timestep:8.1f} fs  E_pot {atoms.get_potential_energy():14.6f}"
                  f"  E_kin {atoms.get_kinetic_energy():9.6f}  E_tot {etot:14.6f} eV  T {atoms.get_temperature():7.1f} K",
                  flush=True)

    dyn.attach(report, interval=1)  # also called once before the first step
    t0 = time.perf_counter()
    dyn.run(args.steps)
    seconds = time.perf_counter() - t0
    ms = seconds / args.steps * 1e3
    ns_day = args.timestep * 1e-6 * 86400 / (ms * 1e-3)
    kind = "TorchScript" if args.script else "eager"
    print(f"speed: {ms:.2f} ms/step, {len(atoms) / (ms * 1e-3):,.0f} atom-steps/s, {ns_day:.3f} ns/day "
          f"({len(atoms)} atoms, {kind}, {args.dtype}, {torch.get_num_threads()} threads)")
    if not args.langevin:
        print(f"NVE: largest |E_tot - E_tot(0)| = {worst[0]:.3e} eV over {args.steps} steps of {args.timestep:g} fs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
