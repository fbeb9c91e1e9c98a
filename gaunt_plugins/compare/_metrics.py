"""Test-set errors as both frameworks report them: energies per configuration (total and per
atom), forces per Cartesian component, in meV and meV/Å (MACE's definitions, ``mace.tools.utils``)."""

from __future__ import annotations

from typing import Dict, Sequence

import numpy as np

__all__ = ["error_metrics"]


def error_metrics(pred_e, ref_e, n_atoms, pred_f: Sequence = (), ref_f: Sequence = ()) -> Dict[str, float]:
    """``pred_e``, ``ref_e``, ``n_atoms``: ``[configs]`` (a NaN reference is left out);
    ``pred_f``, ``ref_f``: one ``[atoms, 3]`` array per configuration that has reference forces."""
    out = {"n_configs": int(len(pred_e)), "n_atoms": int(np.sum(n_atoms))}
    pe, re, na = np.asarray(pred_e, dtype=float), np.asarray(ref_e, dtype=float), np.asarray(n_atoms, dtype=float)
    ok = np.isfinite(re)
    if ok.any():
        de = pe[ok] - re[ok]
        dea = de / na[ok]
        out.update(
            e_mae_meV=1e3 * float(np.mean(np.abs(de))),
            e_rmse_meV=1e3 * float(np.sqrt(np.mean(de**2))),
            e_mae_meV_per_atom=1e3 * float(np.mean(np.abs(dea))),
            e_rmse_meV_per_atom=1e3 * float(np.sqrt(np.mean(dea**2))),
        )
    if len(pred_f):
        df = np.concatenate([(np.asarray(p, float) - np.asarray(r, float)).ravel() for p, r in zip(pred_f, ref_f)])
        rf = np.concatenate([np.asarray(r, float).ravel() for r in ref_f])
        out.update(
            f_mae_meV_per_A=1e3 * float(np.mean(np.abs(df))),
            f_rmse_meV_per_A=1e3 * float(np.sqrt(np.mean(df**2))),
            f_rel_rmse_percent=100.0 * float(np.sqrt(np.mean(df**2)) / np.sqrt(np.mean(rf**2))),
        )
    return out
