"""Can a Gaunt many-body with an odd-path term express MACE's order-3 couplings? A fit, no training.

A product of spherical functions only forms couplings ``l1 x l2 -> l3`` with ``l1 + l2 + l3`` even. MACE's
symmetric contraction at correlation 3 also couples its natural-parity inputs through two odd intermediate
paths (e.g. ``(1 x 2 -> 2) x 1 -> 2``). In function language such a coupling is the nested Poisson bracket of
the sphere, ``{{f1, f2}, f3}`` with ``{f, g}(r) = r . (grad f x grad g)`` (surface gradients): one bracket
flips parity, two restore it. This script fits layer ``--layer``'s order-3 homogeneous part (the target of
``energy_gap_diagnostics.py``'s "order 3" rows) with ``P`` Gaunt chains plus ``B`` bracket chains, each bracket
chain ``proj_out({{f1, f2}, f3})`` with ``f_i = sum_l u_i[z, c, l] A[c, l]`` (per-degree weights, like the
chains'): ``GauntManyBody(..., odd_chains=B)`` (its ``GauntOddPaths``), fitted by
``energy_gap_diagnostics.fit_many_body`` (float64).

    OMP_NUM_THREADS=1 python benchmarks/odd_path_fit.py --chains 4 --brackets 0 1 2

JSON in benchmarks/results/odd_path_fit.json.
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import energy_gap_diagnostics as egd  # noqa: E402

o3 = egd.o3


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--configs", type=int, default=20)
    ap.add_argument("--max-L", type=int, default=egd.MODEL["max_L"])
    ap.add_argument("--max-ell", type=int, default=egd.MODEL["max_ell"])
    ap.add_argument("--fit-channels", type=int, default=4)
    ap.add_argument("--layer", type=int, default=0)
    ap.add_argument("--chains", type=int, nargs="+", default=[4])
    ap.add_argument("--brackets", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--starts", type=int, default=2)
    ap.add_argument("--iterations", type=int, default=300)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "odd_path_fit.json")
    args = ap.parse_args(argv)
    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(1)
    t_start = time.perf_counter()
    batch = egd.acac_configs(args.configs, egd.MODEL["r_max"])
    config = dict(egd.MODEL, channels=args.fit_channels, max_L=args.max_L, max_ell=args.max_ell)
    model = egd.upstream_model(batch, args.seed, **config)
    sc, x, attrs = egd.contraction_inputs(model, batch, args.layer)
    correlation, irreps_in, irreps_out = egd.contraction_shape(sc)
    with torch.no_grad():
        whole = sc(x, attrs)
        order3 = egd.homogeneous_parts(lambda v: sc(v, attrs), x, correlation)[2]
    rows = []
    for p in args.chains:
        for b in args.brackets:
            t0 = time.perf_counter()
            res = egd.fit_many_body(x, attrs, order3, irreps_in, irreps_out, correlation, p, args.starts,
                                    args.iterations, odd_chains=b)
            rows.append({"chains": p, "brackets": b, "residual": res, "seconds": time.perf_counter() - t0})
            print(f"layer {args.layer} order 3, {p} chains + {b} brackets: residual {res:.3e} "
                  f"({rows[-1]['seconds']:.0f} s)", flush=True)
    result = {"what": "fit of MACE's order-3 symmetric-contraction couplings by Gaunt chains + nested-bracket chains",
              "command": " ".join(["python benchmarks/odd_path_fit.py"] + list(sys.argv[1:] if argv is None else argv)),
              "model": config, "layer": args.layer, "seed": args.seed, "configs": args.configs,
              "share_of_output": (order3.norm() / whole.norm()).item(),
              "starts": args.starts, "iterations": args.iterations,
              "device": f"CPU ({platform.machine()}), 1 thread", "date": time.strftime("%Y-%m-%d"),
              "seconds": time.perf_counter() - t_start, "fits": rows}
    egd.write_result(args.out, result)
    return result


if __name__ == "__main__":
    main()
