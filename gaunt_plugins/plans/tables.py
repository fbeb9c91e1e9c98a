"""Master tables of the Gaunt layers (float64, normalisation folded in) and the checks on their irreps."""
from __future__ import annotations

from typing import Sequence, Tuple

import torch

from ..irreps import ChannelIrreps
from ..math import grid_tables, power_grid_tables
from ..math.normalization import product_normalization
from ..math.s2_grid import MAX_DEGREE

__all__ = ["check_output", "product_grid_tables", "power_grids"]


def check_output(out: ChannelIrreps, twist: int, norms: Sequence[float], what: str, inputs: str) -> None:
    """Raise ``ValueError`` naming the irreps a Gaunt product of ``inputs`` cannot produce."""
    if out.twist != twist:
        kind = "natural (0e, 1o, 2e, ...)" if twist == 1 else "pseudo/twisted (0o, 1e, 2o, ...)"
        raise ValueError(f"{what} = {out.irreps}: a Gaunt product of {inputs} only produces {kind} irreps; "
                         f"the opposite-parity paths (l1+l2+l3 odd, e.g. 1o x 1o -> 1e) are missing compared "
                         f"with a Clebsch-Gordan product")
    bad = [l for l in out.degrees if l >= len(norms) or norms[l] == 0.0]
    if bad:
        raise ValueError(f"{what} = {out.irreps}: degrees {bad} cannot be produced from {inputs} (a Gaunt path "
                         f"needs |l1-l2| <= l3 <= l1+l2 and l1+l2+l3 even)")


def _check_degree(degree: int, what: str) -> None:
    if degree > MAX_DEGREE:
        raise ValueError(f"{what}: the product needs a quadrature degree {degree}, which has no grid table "
                         f"(largest supported {MAX_DEGREE})")


def product_grid_tables(f1: ChannelIrreps, f2: ChannelIrreps, out: ChannelIrreps, normalize: bool,
                        what: str) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``to_grid1 [I1, P]``, ``to_grid2 [I2, P]``, ``from_grid [P, Io]`` (float64; output degrees that are not
    emitted are zeroed, the per-degree normalisation folded in), after validating ``out``."""
    _check_degree(f1.lmax + f2.lmax + out.lmax, what)
    norms = product_normalization([f1.degrees, f2.degrees], list(range(out.lmax + 1)))
    check_output(out, f1.twist * f2.twist, norms, what, f"{f1.irreps} and {f2.irreps}")
    y1, y2, proj = grid_tables(f1.lmax, f2.lmax, out.lmax)
    scale = torch.zeros((out.lmax + 1) ** 2, dtype=torch.float64)
    for l in out.degrees:
        scale[l * l:(l + 1) ** 2] = float(norms[l]) if normalize else 1.0
    return torch.from_numpy(y1.copy()), torch.from_numpy(y2.copy()), torch.from_numpy(proj.copy()) * scale


def power_grids(feat: ChannelIrreps, out: ChannelIrreps, correlation: int, normalize: bool,
                what: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """``to_grid [I, P]`` and ``from_grids [correlation, P, Io]`` for the powers ``nu = 1..correlation`` (a
    term whose parity differs from ``out`` is zero), after validating ``out``; float64."""
    _check_degree(correlation * feat.lmax + out.lmax, what)
    to_grid, proj = power_grid_tables(feat.lmax, correlation, out.lmax)
    proj = torch.from_numpy(proj.copy())
    grids = torch.zeros((correlation,) + tuple(proj.shape), dtype=torch.float64)
    reachable = [0.0] * (out.lmax + 1)
    for nu in range(1, correlation + 1):
        if feat.twist ** nu != out.twist:
            continue
        norms = product_normalization([feat.degrees] * nu, list(range(out.lmax + 1)), identical=True)
        scale = torch.zeros((out.lmax + 1) ** 2, dtype=torch.float64)
        for l in out.degrees:
            if norms[l] > 0:
                scale[l * l:(l + 1) ** 2] = float(norms[l]) if normalize else 1.0
                reachable[l] = 1.0
        grids[nu - 1] = proj * scale
    twists = {feat.twist ** nu for nu in range(1, correlation + 1)}
    check_output(out, out.twist if out.twist in twists else feat.twist, reachable, what,
                 f"powers 1..{correlation} of {feat.irreps}")
    return torch.from_numpy(to_grid.copy()), grids
