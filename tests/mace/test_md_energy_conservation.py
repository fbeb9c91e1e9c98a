"""NVE molecular dynamics with a Gaunt MACE conserves energy as well as upstream MACE does.

Velocity Verlet (ASE) through ``MACECalculator``, float64, one acac molecule from the 300 K training set
with Maxwell-Boltzmann velocities (300 K, fixed seed). The models are small (8x0e+8x1o, max_ell 2,
correlation 3, 2 interactions) with random weights; the Gaunt model is the upstream one with its product
basis made Gaunt (``tensor_product: gaunt``'s default ``[product]``; every other weight shared). Random
weights give weak forces, so each model's interaction energy is scaled until the largest force on the
starting configuration is ``F_START`` eV/A.

With forces that are the exact gradient of a smooth energy, velocity Verlet's total energy only
oscillates, by an amount of order dt^2: halving dt divides the largest deviation by about 4. Forces that
are not the gradient of the energy (a wrong backward) or not smooth add work that does not shrink with
dt: the ratio falls towards 1 and the deviation grows beyond upstream's. The tolerance is
``max(2 x upstream's deviation, (w dt)^2 / 8 x E_kin(0))``, the second term the velocity-Verlet energy
error of the fastest vibration of acac (C-H stretch, period ~11 fs) at this dt.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

import mace  # noqa: F401  (before e3nn)
import torch

from conftest import ACAC, tiny_model

F_START = 1.0  # eV/A, the largest force on the starting configuration (typical of acac at 300 K)
DT_FS = 0.25
STEPS = 300
CH_PERIOD_FS = 11.0


def thermalize(atoms, temperature_K: float, rng) -> None:
    """Maxwell-Boltzmann momenta: ASE's ``thermalize_momenta`` (3.29+), else ``MaxwellBoltzmannDistribution``."""
    try:
        from ase.md.velocitydistribution import thermalize_momenta
    except ImportError:
        from ase.md.velocitydistribution import MaxwellBoltzmannDistribution as thermalize_momenta
    thermalize_momenta(atoms, temperature_K=temperature_K, rng=rng)


def _models():
    from gaunt_plugins.adapters.mace_blocks import gauntify_model
    from gaunt_plugins.adapters.mace_config import GauntOptions

    torch.manual_seed(0)
    upstream = tiny_model("8x0e+8x1o", max_ell=2, correlation=3)
    gaunt, _ = gauntify_model(tiny_model("8x0e+8x1o", max_ell=2, correlation=3), GauntOptions())
    return upstream, gaunt


def _start():
    import ase.io
    path = ACAC / "train_300K.xyz"
    if not path.exists():
        pytest.skip(f"acac dataset not found at {path}")
    atoms = ase.io.read(path, index=0)
    thermalize(atoms, temperature_K=300, rng=np.random.default_rng(0))
    return atoms


def _calculator(model):
    from mace.calculators import MACECalculator

    return MACECalculator(models=[model], device="cpu", default_dtype="float64")


def _scaled(model, atoms):
    """``model`` with its interaction energy scaled so that the largest force on ``atoms`` is F_START."""
    probe = atoms.copy()
    probe.calc = _calculator(model)
    fmax = float(np.abs(probe.get_forces()).max())
    assert fmax > 0
    model.scale_shift.scale.mul_(F_START / fmax)
    return model


def _nve(model, atoms, dt_fs: float, steps: int):
    """``(largest |E_tot(t) - E_tot(0)|, range of the potential energy)`` in eV over ``steps`` steps."""
    from ase import units
    from ase.md.verlet import VelocityVerlet

    atoms = atoms.copy()
    atoms.calc = _calculator(model)
    total, potential = [atoms.get_total_energy()], [atoms.get_potential_energy()]
    dyn = VelocityVerlet(atoms, timestep=dt_fs * units.fs)
    dyn.attach(lambda: (total.append(atoms.get_total_energy()), potential.append(atoms.get_potential_energy())))
    dyn.run(steps)
    total = np.asarray(total)
    assert np.isfinite(total).all()
    return float(np.abs(total - total[0]).max()), float(np.ptp(potential))


def test_gaunt_nve_energy_drift_no_worse_than_upstream_and_of_order_dt_squared(float64):
    torch.set_num_threads(1)
    atoms = _start()
    upstream, gaunt = (_scaled(m, atoms) for m in _models())
    drift_up, _ = _nve(upstream, atoms, DT_FS, STEPS)
    drift, swing = _nve(gaunt, atoms, DT_FS, STEPS)
    drift_half, _ = _nve(gaunt, atoms, DT_FS / 2, 2 * STEPS)

    omega_dt = 2 * math.pi * DT_FS / CH_PERIOD_FS
    tolerance = max(2 * drift_up, omega_dt ** 2 / 8 * atoms.get_kinetic_energy())
    # the dynamics are not trivial: the potential energy moves far more than the tolerance
    assert swing > 20 * tolerance, (swing, tolerance)
    assert drift <= tolerance, (drift, drift_up, tolerance)
    # conservative, smooth forces: the deviation is velocity Verlet's O(dt^2) (ratio 4 when dt halves)
    assert drift / drift_half > 3.0, (drift, drift_half)
