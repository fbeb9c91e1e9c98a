"""Why the Gaunt many-body's energies lag upstream's: two checks that need no training.

The model is the accuracy benchmark's (benchmarks/accuracy_mace.py: 16 channels, max_L 2, max_ell 3, correlation
3, 2 interactions, r_max 5, MACE's training defaults for the radial MLP and readout MLP, avg_num_neighbors from
the data), built as an upstream ``ScaleShiftMACE`` per seed; its Gaunt twin is a copy converted by
``gauntify_model(..., GauntOptions(targets={"product"}))`` (everything but the product's many-body layer shared,
the Gaunt weights fresh). Both run on ``--configs`` acac configurations (train_300K.xyz).

1. ``readouts``: what the readouts see at initialisation, per interaction layer, as Gaunt / upstream ratios:
     feat0e     RMS of the scalar (0e) part of ``products[i]``'s output (the node features ``readouts[i]`` reads)
     prod0e     RMS of the 0e part of the many-body layer's own output (``symmetric_contractions``, before the
                product's linear and skip connection)
     E std      std over configurations of the per-configuration sum of ``readouts[i]``'s output (the layer's
                contribution to the energy; its spread is what the energy fit must shape)
     atom std   std over atoms, within each element (pooled), of ``readouts[i]``'s output
     mean Z     mean of ``readouts[i]``'s output over the atoms of element Z (a per-element offset E0s absorb)
   mean +- std over ``--seeds``.
2. ``fits``: what the Gaunt many-body can express where the readouts look. The target is MACE's randomly
   initialised ``SymmetricContraction`` of layer ``i`` in the same model with ``--fit-channels`` channels (input: the
   ``C x (0e..max_ell)`` features it receives on the acac configurations), restricted to its 0e output, and for
   comparison its full output (layer 0's outputs have degrees 0..max_L; the last layer's are 0e only); whole, or
   its homogeneous part of order 2 or 3 in the input (the 2- and 3-fold couplings alone; at initialisation the
   linear part dominates, and any ``P`` fits it exactly). A ``GauntManyBody`` with ``P`` chains, every weight
   free (gain 1), is fitted in float64: ``weights_out`` by least squares given ``weights_in`` (the output is
   linear in them), ``weights_in`` by L-BFGS on that projected residual from ``--starts`` random starts; the
   relative residual ``||fit - target|| / ||target||`` is the best found (an upper bound of the best possible).
   ``0e, l=1 zeroed``: the same fit with the input's l=1 block set to zero (target recomputed). For natural-
   parity inputs a 0e output of correlation <= 3 has no coupling through an odd intermediate path (parity), so
   the 0e rows test the chains' factorisation; the full output's l > 0 degrees have such couplings.

Table on stdout, JSON in benchmarks/results/energy_gap_diagnostics.json.

    OMP_NUM_THREADS=1 python benchmarks/energy_gap_diagnostics.py     # about 10 minutes on one core
    # the main job's degrees (16x0e+16x1o, max_ell 2), layer 0's fits only
    OMP_NUM_THREADS=1 python benchmarks/energy_gap_diagnostics.py --max-L 1 --max-ell 2 --seeds 0 1 2 \
        --fit-layers 0 --chains 1 2 4 --out benchmarks/results/energy_gap_diagnostics_max_L1_max_ell2.json
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import sys
import time
from pathlib import Path
from typing import Dict, List, Sequence

import torch

import mace  # noqa: F401  (before e3nn)

ROOT = Path(__file__).resolve().parents[1]


def _mace_fixtures():
    """tests/mace/conftest.py, loaded by path (under pytest another ``conftest`` module may hold the name)."""
    spec = importlib.util.spec_from_file_location("_gaunt_mace_fixtures", ROOT / "tests" / "mace" / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_fixtures = _mace_fixtures()
ACAC, E0S, Z = _fixtures.ACAC, _fixtures.E0S, _fixtures.Z

from gaunt_plugins._e3nn import o3  # noqa: E402
from gaunt_plugins.adapters.mace_blocks import _copy_model, gauntify_model  # noqa: E402
from gaunt_plugins.adapters.mace_config import GauntOptions  # noqa: E402
from gaunt_plugins.layers import GauntManyBody  # noqa: E402

#: benchmarks/accuracy_mace.py's MODEL, with mace_run_train's defaults for what it leaves out
MODEL = {"channels": 16, "max_L": 2, "max_ell": 3, "correlation": 3, "num_interactions": 2, "r_max": 5.0,
         "num_bessel": 8, "num_polynomial_cutoff": 5, "radial_MLP": [64, 64, 64], "MLP_irreps": "16x0e"}
SCALAR = o3.Irrep("0e")


def _hidden(channels: int, max_L: int) -> str:
    return "+".join(f"{channels}x{l}{'e' if l % 2 == 0 else 'o'}" for l in range(max_L + 1))


def acac_configs(n: int, r_max: float, name: str = "train_300K.xyz") -> dict:
    """A MACE batch dict of the first ``n`` acac configurations with graph cutoff ``r_max``, one-hot over H, C, O."""
    import ase.io
    from mace import data, tools
    from mace.tools import torch_geometric

    atoms = ase.io.read(ACAC / name, index=f":{n}")
    table = tools.AtomicNumberTable(Z)
    ds = [data.AtomicData.from_config(data.config_from_atoms(a), z_table=table, cutoff=r_max) for a in atoms]
    batch = next(iter(torch_geometric.dataloader.DataLoader(ds, batch_size=len(ds), shuffle=False))).to_dict()
    dtype = torch.get_default_dtype()
    return {k: (v.to(dtype) if torch.is_tensor(v) and v.is_floating_point() else v) for k, v in batch.items()}


def upstream_model(batch: dict, seed: int, channels: int, max_L: int, max_ell: int, correlation: int,
                   num_interactions: int, r_max: float, num_bessel: int, num_polynomial_cutoff: int,
                   radial_MLP: Sequence[int], MLP_irreps: str):
    """A randomly initialised upstream ``ScaleShiftMACE`` (seed ``seed``; avg_num_neighbors of ``batch``)."""
    import numpy as np
    from mace import modules

    torch.manual_seed(seed)
    avg = batch["edge_index"].shape[1] / batch["positions"].shape[0]
    return modules.ScaleShiftMACE(
        r_max=r_max, num_bessel=num_bessel, num_polynomial_cutoff=num_polynomial_cutoff, max_ell=max_ell,
        interaction_cls=modules.interaction_classes["RealAgnosticResidualInteractionBlock"],
        interaction_cls_first=modules.interaction_classes["RealAgnosticResidualInteractionBlock"],
        num_interactions=num_interactions, num_elements=len(Z), hidden_irreps=o3.Irreps(_hidden(channels, max_L)),
        MLP_irreps=o3.Irreps(MLP_irreps), atomic_energies=np.array([E0S[z] for z in Z]),
        avg_num_neighbors=avg, atomic_numbers=Z, correlation=correlation, gate=torch.nn.functional.silu,
        atomic_inter_scale=1.0, atomic_inter_shift=0.0, radial_MLP=list(radial_MLP),
    )


def gaunt_twin(model, seed: int):
    """A copy of ``model`` whose product blocks are Gaunt many-body products with fresh weights (seed ``seed``)."""
    torch.manual_seed(10_000 + seed)
    twin, _ = gauntify_model(_copy_model(model), GauntOptions(targets=frozenset({"product"})))
    return twin


def _scalar_columns(features: torch.Tensor, irreps) -> torch.Tensor:
    """The 0e columns ``[N, mul]`` of flat ``mul_ir`` features ``[N, irreps.dim]``."""
    irreps = o3.Irreps(str(irreps))
    return torch.cat([features[:, sl] for (mul, ir), sl in zip(irreps, irreps.slices()) if ir == SCALAR], 1)


def readout_statistics(model, batch: dict) -> List[Dict]:
    """Per interaction layer: the 0e RMS of the product's and many-body layer's outputs, the per-configuration
    energy contributions ``energies [configs]`` of its readout and their std, the within-element std and
    per-element means of the per-atom readout output."""
    seen: Dict[str, torch.Tensor] = {}
    handles = []
    for i, (product, readout) in enumerate(zip(model.products, model.readouts)):
        handles.append(product.register_forward_hook(lambda m, a, out, i=i: seen.__setitem__(f"p{i}", out.detach())))
        handles.append(product.symmetric_contractions.register_forward_hook(
            lambda m, a, out, i=i: seen.__setitem__(f"s{i}", out.detach())))
        handles.append(readout.register_forward_hook(lambda m, a, out, i=i: seen.__setitem__(f"r{i}", out.detach())))
    try:
        model(batch, training=False, compute_force=False)
    finally:
        for h in handles:
            h.remove()
    element = batch["node_attrs"].argmax(1)
    configs = int(batch["ptr"].shape[0] - 1)
    rows = []
    for i, product in enumerate(model.products):
        feat = _scalar_columns(seen[f"p{i}"], product.linear.irreps_out)
        prod = _scalar_columns(seen[f"s{i}"], product.symmetric_contractions.irreps_out)
        atom_e = seen[f"r{i}"][:, 0]
        energies = atom_e.new_zeros(configs).index_add(0, batch["batch"], atom_e)
        centred = torch.cat([atom_e[element == k] - atom_e[element == k].mean() for k in range(len(Z))])
        rows.append({"feat0e": feat.square().mean().sqrt().item(), "prod0e": prod.square().mean().sqrt().item(),
                     "E std": energies.std().item(), "atom std": centred.square().mean().sqrt().item(),
                     **{f"mean {z}": atom_e[element == k].mean().item() for k, z in enumerate(Z)},
                     "energies": energies.tolist()})
    return rows


RATIO_KEYS = ("feat0e", "prod0e", "E std", "atom std") + tuple(f"mean {z}" for z in Z)


def ratios(gaunt: List[Dict], upstream: List[Dict]) -> List[Dict[str, float]]:
    """``gaunt[k] / upstream[k]`` per layer for :data:`RATIO_KEYS`."""
    return [{k: g[k] / u[k] for k in RATIO_KEYS} for g, u in zip(gaunt, upstream)]


def contraction_inputs(model, batch: dict, layer: int):
    """``(symmetric_contraction, x [N, C, (max_ell+1)^2], node_attrs [N, elements])`` of ``products[layer]``."""
    seen = {}
    sc = model.products[layer].symmetric_contractions
    handle = sc.register_forward_hook(lambda m, a, out: seen.update(x=a[0].detach(), attrs=a[1].detach()))
    try:
        model(batch, training=False, compute_force=False)
    finally:
        handle.remove()
    return sc, seen["x"], seen["attrs"]


def contraction_shape(sc):
    """``(correlation, irreps_in, irreps_out)`` of a MACE ``SymmetricContraction``."""
    correlation = int(getattr(sc, "contraction_degree", len(sc.contractions[0].weights) + 1))
    return correlation, o3.Irreps(str(sc.irreps_in)), o3.Irreps(str(sc.irreps_out))


def write_result(path: Path, result: dict) -> None:
    """The result as indented JSON at ``path`` (folders made as needed), and a line saying so."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {path}")


def _term_outputs(layer: GauntManyBody, x: torch.Tensor, attrs: torch.Tensor) -> torch.Tensor:
    """``[M, N, dim_out]``: the layer's output with ``weights_out`` one for a single (power, chain) and zero
    elsewhere, for power 1 (chain 0: the chains' linear terms coincide up to scale) and every chain of each
    higher power, then for every odd-path chain of ``layer.odd_paths`` (if any) its bracket alone; a function of the
    input weights. Every output of the layer is ``sum_m w[z, m, lo, c] * this[m]``."""
    c = layer.channels
    odd = layer.odd_paths
    terms = [(0, 0)] + [(nu, k) for nu in range(1, layer.correlation) for k in range(layer.chains)]
    odd_terms = [(-1, k) for k in range(odd.chains)] if odd is not None else []
    outs = []
    for nu, k in terms + odd_terms:
        w = torch.zeros_like(layer.weights_out)
        if nu >= 0:
            w[:, nu, :, k * c:(k + 1) * c] = 1.0
        layer.weights_out = torch.nn.Parameter(w, requires_grad=False)
        if odd is not None:
            w_odd = torch.zeros_like(odd.weights_out)
            if nu < 0:
                w_odd[:, :, k * c:(k + 1) * c] = 1.0
            odd.weights_out = torch.nn.Parameter(w_odd, requires_grad=False)
        outs.append(layer(x, attrs))
    return torch.stack(outs)


def _projected_residual(terms: torch.Tensor, target: torch.Tensor, irreps_out, element: torch.Tensor,
                        num_elements: int, balanced: bool = False) -> torch.Tensor:
    """``||fit - target||^2`` with ``weights_out`` the least-squares solution for the given terms, separately per
    element, channel and output block (ridge ``1e-12`` of the terms' mean squared norm, so that coinciding terms
    keep it differentiable); ``balanced``: the sum over these independent problems of each one's squared residual
    relative to its target's."""
    m_terms = terms.shape[0]
    total = terms.new_zeros(())
    for (mul, ir), sl in zip(o3.Irreps(str(irreps_out)), o3.Irreps(str(irreps_out)).slices()):
        for e in range(num_elements):
            pick = element == e
            if not bool(pick.any()):
                continue
            f = terms[:, pick, sl].reshape(m_terms, -1, mul, ir.dim)  # [M, n, mul, 2l+1]
            a = f.permute(2, 1, 3, 0).reshape(mul, -1, m_terms)  # [mul, n (2l+1), M]
            y = target[pick, sl].reshape(-1, mul, ir.dim).permute(1, 0, 2).reshape(mul, -1, 1)
            # ridge least squares as the QR of [a; sqrt(ridge) I] (full rank, so differentiable even where terms
            # coincide); its first rows are y - a w for the ridge solution w
            ridge = (1e-12 * a.square().sum(1).mean(1)).clamp_min(1e-300).sqrt()  # [mul]
            a_aug = torch.cat([a, ridge[:, None, None] * torch.eye(m_terms, dtype=a.dtype)], 1)
            y_aug = torch.cat([y, y.new_zeros(mul, m_terms, 1)], 1)
            q = torch.linalg.qr(a_aug).Q
            squares = (y_aug - q @ (q.mT @ y_aug))[:, :y.shape[1]].square().sum((1, 2))
            total = total + (squares / y.square().sum((1, 2)).clamp_min(1e-300) if balanced else squares).sum()
    return total


def _degree_slices(irreps_in) -> List[slice]:
    """The column ranges of each degree in MACE's ``[N, C, sum_l (2l+1)]`` layout of ``C x (degrees)`` irreps."""
    slices, start = [], 0
    for _, ir in o3.Irreps(str(irreps_in)):
        slices.append(slice(start, start + ir.dim))
        start += ir.dim
    return slices


def _fitted_output(layer: GauntManyBody, x: torch.Tensor, attrs: torch.Tensor, target: torch.Tensor,
                   irreps_out) -> torch.Tensor:
    """``[N, irreps_out.dim]``: ``layer``'s output with the least-squares ``weights_out`` for ``target`` (per element,
    channel and output block, as :func:`_projected_residual` solves it) given its ``weights_in``."""
    terms = _term_outputs(layer, x, attrs)  # [M, N, dim]
    element = attrs.argmax(1)
    out = torch.zeros_like(target)
    m_terms = terms.shape[0]
    irreps_out = o3.Irreps(str(irreps_out))
    for (mul, ir), sl in zip(irreps_out, irreps_out.slices()):
        for e in range(attrs.shape[1]):
            pick = element == e
            if not bool(pick.any()):
                continue
            a = terms[:, pick, sl].reshape(m_terms, -1, mul, ir.dim).permute(2, 1, 3, 0).reshape(mul, -1, m_terms)
            y = target[pick, sl].reshape(-1, mul, ir.dim).permute(1, 0, 2).reshape(mul, -1, 1)
            w = torch.linalg.lstsq(a, y, rcond=1e-12).solution
            out[pick, sl] = (a @ w).reshape(mul, -1, ir.dim).permute(1, 0, 2).reshape(-1, mul * ir.dim)
    return out


def fit_many_body(x, attrs, target, irreps_in, irreps_out, correlation: int, chains: int, starts: int,
                  iterations: int, odd_chains: int = 0, return_output: bool = False):
    """Best relative residual of a ``GauntManyBody(irreps_in -> irreps_out, chains, odd_chains)`` fitted to
    ``target`` (``return_output``: and that fit's output ``[N, irreps_out.dim]``, in ``target``'s units; ``None``
    if every start diverged).

    ``x [N, C, width]``, ``attrs [N, elements]`` (one-hot), ``target [N, irreps_out.dim]``; all weights free
    (gain 1): ``weights_out`` by least squares given ``weights_in`` (exact: the output is linear in them),
    ``weights_in`` by L-BFGS on that projected residual, from ``starts`` random starts of ``iterations``
    iterations each. The residual is that of the weights found (an upper bound of the best); at most 1 (the
    zero function)."""
    # the class is closed under scaling each degree of each channel of the input per element (absorbed by
    # weights_in) and the target (weights_out): fit at unit RMS of each, where the starting weights have the
    # right size and the fit is better conditioned
    element = attrs.argmax(1)
    x = x.clone()
    degrees = _degree_slices(irreps_in)
    for e in range(attrs.shape[1]):
        pick = element == e
        for sl in degrees:
            block = x[pick][:, :, sl]
            x[pick, :, sl] = block / block.square().mean((0, 2), keepdim=True).sqrt().clamp_min(1e-300)
    rms = target.square().mean().sqrt()
    target = target / rms
    den = target.square().sum()
    best, best_layer = 1.0, None
    for start in range(starts):
        torch.manual_seed(1000 + start)
        layer = GauntManyBody(irreps_in, irreps_out, correlation, attrs.shape[1], chains=chains, weight_gain=1.0,
                              odd_chains=odd_chains)
        inputs = [layer.weights_in] + ([layer.odd_paths.weights_in] if layer.odd_paths is not None else [])
        with torch.no_grad():  # random signs: a start keeps the signs of its products of weights_in long
            for w in inputs:
                w.copy_(torch.randn_like(w))
        opt = torch.optim.LBFGS(inputs, lr=1, max_iter=iterations, history_size=50,
                                line_search_fn="strong_wolfe", tolerance_grad=1e-30, tolerance_change=1e-30)

        def residual(balanced=False):
            return _projected_residual(_term_outputs(layer, x, attrs), target, irreps_out, element,
                                       attrs.shape[1], balanced) / (1.0 if balanced else den)

        def closure():  # each element's, channel's and degree's problem weighted alike
            opt.zero_grad()
            loss = residual(balanced=True)
            loss.backward()
            return loss

        opt.step(closure)
        with torch.no_grad():
            value = residual().clamp_min(0.0).sqrt().item()
        if value == value and (best_layer is None or value < best):  # a diverged start (nan) does not count
            best, best_layer = value, layer
    best = min(best, 1.0)
    if not return_output:
        return best
    if best_layer is None:
        return best, None
    with torch.no_grad():
        return best, _fitted_output(best_layer, x, attrs, target, irreps_out) * rms


def _scalar_irreps(irreps) -> o3.Irreps:
    return o3.Irreps([(mul, ir) for mul, ir in o3.Irreps(str(irreps)) if ir == SCALAR])


def homogeneous_parts(fn, x: torch.Tensor, correlation: int) -> List[torch.Tensor]:
    """``[a_1, ..., a_correlation]`` with ``fn(s x) = sum_nu s^nu a_nu`` (``fn`` a polynomial without constant
    term, as MACE's symmetric contraction is), from ``fn`` at ``s = 1 .. correlation`` (a Vandermonde solve)."""
    s = torch.arange(1, correlation + 1, dtype=x.dtype)
    vander = s[:, None] ** torch.arange(1, correlation + 1, dtype=x.dtype)[None, :]
    values = torch.stack([fn(si * x) for si in s])  # [correlation, N, dim]
    parts = torch.linalg.solve(vander, values.reshape(correlation, -1)).reshape(values.shape)
    return list(parts)


PARTS = ("all orders", "order 2", "order 3")


def expressiveness(model, batch: dict, layer: int, chains: Sequence[int], starts: int, iterations: int,
                   zero_l1: bool = True, parts: Sequence[str] = PARTS) -> List[Dict]:
    """Rows ``{layer, output, part, P, residual, share, seconds}``: fits of ``products[layer]``'s symmetric
    contraction by ``GauntManyBody`` with ``P`` chains, for its 0e output, its full output (where it has more
    than 0e) and its 0e output on inputs whose l=1 block is zero. ``part``: the whole output (``all orders``) or
    its homogeneous part of order ``nu`` in the input (``order nu``, the nu-body couplings alone; the linear part
    is fitted exactly by any ``P``); ``share``: that part's norm relative to the whole output's."""
    sc, x, attrs = contraction_inputs(model, batch, layer)
    correlation, irreps_in, irreps_out = contraction_shape(sc)
    x0 = x.clone()
    x0[:, :, 1:4] = 0.0  # MACE's [N, C, (l m)] layout: l=1 is columns 1..3
    scalars = _scalar_irreps(irreps_out)
    cases = [("0e", x, scalars)]
    if irreps_out != scalars:
        cases.append(("all degrees", x, irreps_out))
    if zero_l1:
        cases.append(("0e, l=1 zeroed", x0, scalars))
    rows = []
    for output, inp, out_irreps in cases:
        with torch.no_grad():
            pick = (lambda y: _scalar_columns(y, irreps_out)) if out_irreps == scalars else (lambda y: y)
            whole = pick(sc(inp, attrs))
            by_order = [pick(a) for a in homogeneous_parts(lambda v: sc(v, attrs), inp, correlation)]
        for part in parts:
            target = whole if part == "all orders" else by_order[int(part.split()[-1]) - 1]
            for p in chains:
                t0 = time.perf_counter()
                residual = fit_many_body(inp, attrs, target, irreps_in, out_irreps, correlation, p, starts, iterations)
                rows.append({"layer": layer, "output": output, "part": part, "P": p, "residual": residual,
                             "share": (target.norm() / whole.norm()).item(), "seconds": time.perf_counter() - t0})
                print(f"  fit layer {layer} {output} {part} P={p}: {residual:.3e} ({rows[-1]['seconds']:.0f} s)",
                      flush=True)
    return rows


def _mean_std(values: Sequence[float]) -> Dict[str, float]:
    t = torch.tensor(list(values), dtype=torch.float64)
    return {"mean": t.mean().item(), "std": t.std().item() if len(values) > 1 else 0.0}


def tables(ratio_rows: Dict[int, List[Dict]], upstream: Dict[int, List[Dict]], fits: List[Dict]) -> str:
    seeds = sorted(ratio_rows)
    layers = len(ratio_rows[seeds[0]])
    lines = ["Gaunt / upstream at initialisation (mean +- std over seeds " + ", ".join(map(str, seeds)) + ")", "",
             "| layer | " + " | ".join(RATIO_KEYS) + " |", "|---" * (len(RATIO_KEYS) + 1) + "|"]
    for i in range(layers):
        cells = []
        for k in RATIO_KEYS:
            ms = _mean_std([ratio_rows[s][i][k] for s in seeds])
            cells.append(f"{ms['mean']:.3g} +- {ms['std']:.2g}")
        lines.append(f"| {i} | " + " | ".join(cells) + " |")
    lines += ["", "upstream's values (mean over seeds)", "", "| layer | " + " | ".join(RATIO_KEYS) + " |",
              "|---" * (len(RATIO_KEYS) + 1) + "|"]
    for i in range(layers):
        lines.append(f"| {i} | " + " | ".join(f"{_mean_std([upstream[s][i][k] for s in seeds])['mean']:.3g}"
                                              for k in RATIO_KEYS) + " |")
    if fits:
        chains = sorted({r["P"] for r in fits})
        lines += ["", "relative residual of the best GauntManyBody fit of MACE's SymmetricContraction", "",
                  "(part: the whole output or its homogeneous part of that order in the input, with its share of "
                  "the whole output's norm)", "",
                  "| layer | output | part (share) | " + " | ".join(f"P = {p}" for p in chains) + " |",
                  "|---|---|---" + "|---" * len(chains) + "|"]
        for key in dict.fromkeys((r["layer"], r["output"], r["part"]) for r in fits):
            rows = [r for r in fits if (r["layer"], r["output"], r["part"]) == key]
            by_p = {r["P"]: r["residual"] for r in rows}
            lines.append(f"| {key[0]} | {key[1]} | {key[2]} ({rows[0]['share']:.2g}) | "
                         + " | ".join(f"{by_p[p]:.2e}" for p in chains) + " |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--configs", type=int, default=20)
    ap.add_argument("--channels", type=int, default=MODEL["channels"])
    ap.add_argument("--max-L", type=int, default=MODEL["max_L"], help="the hidden features' largest degree")
    ap.add_argument("--max-ell", type=int, default=MODEL["max_ell"], help="the edge harmonics' largest degree")
    ap.add_argument("--fit-channels", type=int, default=4, help="channels of the model whose contraction is fitted")
    ap.add_argument("--fit-layers", type=int, nargs="*", default=[1, 0])
    ap.add_argument("--chains", type=int, nargs="+", default=[1, 2, 3, 4])
    ap.add_argument("--starts", type=int, default=2)
    ap.add_argument("--iterations", type=int, default=300)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "energy_gap_diagnostics.json")
    args = ap.parse_args(argv)
    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(1)
    t_start = time.perf_counter()
    batch = acac_configs(args.configs, MODEL["r_max"])
    config = dict(MODEL, channels=args.channels, max_L=args.max_L, max_ell=args.max_ell)
    upstream, gaunt, ratio_rows = {}, {}, {}
    for seed in args.seeds:
        t0 = time.perf_counter()
        model = upstream_model(batch, seed, **config)
        upstream[seed] = readout_statistics(model, batch)
        gaunt[seed] = readout_statistics(gaunt_twin(model, seed), batch)
        ratio_rows[seed] = ratios(gaunt[seed], upstream[seed])
        print(f"seed {seed}: " + "; ".join(f"layer {i} feat0e {r['feat0e']:.3g} E std {r['E std']:.3g}"
                                           for i, r in enumerate(ratio_rows[seed]))
              + f" ({time.perf_counter() - t0:.0f} s)", flush=True)
    fits = []
    if args.fit_layers:
        model = upstream_model(batch, args.seeds[0], **dict(config, channels=args.fit_channels))
        for layer in args.fit_layers:
            fits += expressiveness(model, batch, layer, args.chains, args.starts, args.iterations)
    table = tables(ratio_rows, upstream, fits)
    print(table)
    result = {"what": "Gaunt many-body (gaunt_targets: [product]) vs upstream MACE at initialisation: the readouts' "
                      "inputs and outputs, and fits of MACE's SymmetricContraction by GauntManyBody",
              "model": config, "fit_channels": args.fit_channels, "configs": args.configs,
              "atoms": int(batch["positions"].shape[0]),
              "avg_num_neighbors": batch["edge_index"].shape[1] / batch["positions"].shape[0],
              "command": " ".join(["python benchmarks/energy_gap_diagnostics.py"]
                                  + list(sys.argv[1:] if argv is None else argv)),
              "seeds": args.seeds, "starts": args.starts, "iterations": args.iterations,
              "device": f"CPU ({platform.machine()}), 1 thread", "date": time.strftime("%Y-%m-%d"),
              "seconds": time.perf_counter() - t_start,
              "ratios": {str(s): r for s, r in ratio_rows.items()},
              "upstream": {str(s): r for s, r in upstream.items()}, "gaunt": {str(s): r for s, r in gaunt.items()},
              "fits": fits, "table": table}
    write_result(args.out, result)
    return result


if __name__ == "__main__":
    main()
