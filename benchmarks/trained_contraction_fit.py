"""Can a Gaunt many-body express what MACE's symmetric contraction learned? Fits of a trained model's block.

``energy_gap_diagnostics.py`` and ``odd_path_fit.py`` fit randomly initialised contractions, whose many-body
(order >= 2) part is a small share of the output. This script fits the contractions of upstream MACE models
trained by ``accuracy_mace.py`` (``--models``: ``upstream_s<seed>.model`` files), where training has grown
those parts: for each interaction layer ``--layers``, the symmetric contraction's output on the features it
receives on ``--configs`` acac configurations (``--data``), on ``--fit-channels`` of its channels (MACE's
contraction acts on each channel alone, so a subset is a fair sample), is fitted by a ``GauntManyBody`` with
``P`` chains (``--chains``) and ``B`` odd-path chains (``--brackets``), every weight free, in float64
(``energy_gap_diagnostics.fit_many_body``: least squares for ``weights_out``, L-BFGS for ``weights_in``).

Reported per fit: the relative residual ``||fit - target|| / ||target||`` (an upper bound of the best), of the
whole output and per output degree, and the same after the layer that follows it (``products[i].linear``,
which mixes channels: the fitted channels' outputs through the linear's columns of those channels), and the
share of each homogeneous order (1, 2, 3) in the target.

    OMP_NUM_THREADS=1 python benchmarks/trained_contraction_fit.py --models RUNS/upstream_s1/upstream_s1.model

JSON in benchmarks/results/trained_contraction_fit.json.
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path
from typing import Dict, List

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import energy_gap_diagnostics as egd  # noqa: E402

o3 = egd.o3


def channel_columns(irreps, channels: List[int]) -> torch.Tensor:
    """Column indices of ``channels`` in flat ``C x (irreps)`` features (e3nn's ``[mul, 2l+1]`` blocks)."""
    cols = []
    for (mul, ir), sl in zip(irreps, irreps.slices()):
        for c in channels:
            cols.extend(range(sl.start + c * ir.dim, sl.start + (c + 1) * ir.dim))
    return torch.tensor(cols)


def relative_by_degree(fitted, target, irreps) -> Dict[str, float]:
    rows = {"all": ((fitted - target).norm() / target.norm()).item()}
    for (mul, ir), sl in zip(irreps, irreps.slices()):
        rows[str(ir)] = ((fitted[:, sl] - target[:, sl]).norm() / target[:, sl].norm().clamp_min(1e-300)).item()
    return rows


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=Path, nargs="+", required=True)
    ap.add_argument("--data", default="train_300K.xyz")
    ap.add_argument("--configs", type=int, default=20)
    ap.add_argument("--layers", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--fit-channels", type=int, default=4)
    ap.add_argument("--chains", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--brackets", type=int, nargs="+", default=[0])
    ap.add_argument("--starts", type=int, default=2)
    ap.add_argument("--iterations", type=int, default=300)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "trained_contraction_fit.json")
    args = ap.parse_args(argv)
    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(1)
    t_start = time.perf_counter()
    rows: List[Dict] = []
    for path in args.models:
        model = torch.load(path, map_location="cpu", weights_only=False).double()
        r_max = float(model.r_max)
        batch = egd.acac_configs(args.configs, r_max, args.data)
        for layer_index in args.layers:
            sc, x, attrs = egd.contraction_inputs(model, batch, layer_index)
            linear = model.products[layer_index].linear
            correlation, irreps_in, irreps_out = egd.contraction_shape(sc)
            channels = list(range(args.fit_channels))
            cols = channel_columns(irreps_out, channels)
            sub_out = o3.Irreps([(len(channels), ir) for _, ir in irreps_out])
            sub_in = o3.Irreps([(len(channels), ir) for _, ir in irreps_in])
            with torch.no_grad():
                whole = sc(x, attrs)
                orders = egd.homogeneous_parts(lambda v: sc(v, attrs), x, correlation)
                target = whole[:, cols]
                shares = {f"order {i + 1}": (o[:, cols].norm() / target.norm()).item() for i, o in enumerate(orders)}
            xs = x[:, channels, :].contiguous()
            for p in args.chains:
                for b in args.brackets:
                    if b and correlation < 3:
                        continue
                    t0 = time.perf_counter()
                    _, fitted = egd.fit_many_body(xs, attrs, target, sub_in, sub_out, correlation, p, args.starts,
                                                  args.iterations, odd_chains=b, return_output=True)
                    with torch.no_grad():  # through the linear's columns of the fitted channels only
                        full_fit, full_target = torch.zeros_like(whole), torch.zeros_like(whole)
                        full_fit[:, cols], full_target[:, cols] = fitted, target
                        after_fit, after_target = linear(full_fit), linear(full_target)
                    row = {"model": str(path), "layer": layer_index, "chains": p, "brackets": b,
                           "shares": shares, "residual": relative_by_degree(fitted, target, sub_out),
                           "after_linear": relative_by_degree(after_fit, after_target, o3.Irreps(str(linear.irreps_out))),
                           "seconds": time.perf_counter() - t0}
                    rows.append(row)
                    print(f"{path.name} layer {layer_index} P={p} B={b}: residual "
                          + ", ".join(f"{k} {v:.3f}" for k, v in row["residual"].items())
                          + "; after linear " + ", ".join(f"{k} {v:.3f}" for k, v in row["after_linear"].items())
                          + "; shares " + ", ".join(f"{k} {v:.3f}" for k, v in shares.items())
                          + f" ({row['seconds']:.0f} s)", flush=True)
    result = {"what": "fits of trained upstream MACE symmetric contractions by GauntManyBody (chains, odd-path chains)",
              "command": " ".join(["python benchmarks/trained_contraction_fit.py"]
                                  + [str(a) for a in (sys.argv[1:] if argv is None else argv)]),
              "configs": args.configs, "data": args.data, "fit_channels": args.fit_channels,
              "starts": args.starts, "iterations": args.iterations,
              "device": f"CPU ({platform.machine()}), 1 thread", "date": time.strftime("%Y-%m-%d"),
              "seconds": time.perf_counter() - t_start, "fits": rows}
    egd.write_result(args.out, result)
    return result


if __name__ == "__main__":
    main()
