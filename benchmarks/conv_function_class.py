"""What each Gaunt convolution can express: fit MACE's ``conv_tp`` + ``linear`` on real acac edges.

For MACE's second interaction (randomly initialised upstream model, 4 channels, max_ell 3, hidden max_L 1, 2, 3)
the target is ``linear(sum over edges of conv_tp(node_feats[sender], Y(r), radial weights))`` on 4 acetylacetone
configurations. Each Gaunt convolution is fitted to it with everything free that a trained model could set:

  paths   the per-path Gaunt convolution fed MACE's own radial weights; its ``linear`` by least squares (exact
          linear problem)
  K = k   the factorised Gaunt convolution with k grid products per channel: its per-edge weights (one free vector
          per edge, a superset of any radial MLP) and its ``linear``, by L-BFGS from --starts random starts (a
          nonconvex fit: the number is the best residual found, an upper bound of the best possible)

Relative residual ``||fit - target|| / ||target||`` per variant; table on stdout, JSON in
benchmarks/results/conv_function_class.json.

    python benchmarks/conv_function_class.py            # about a minute per max_L on one core
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "mace"))

import mace  # noqa: E402,F401
from conftest import _build_tiny_model, acac_batch  # noqa: E402

from gaunt_plugins._e3nn import o3  # noqa: E402
from gaunt_plugins.layers import GauntConvolution, GauntPathConvolution  # noqa: E402


def _natural(channels: int, lmax: int) -> str:
    return "+".join(f"{channels}x{l}{'e' if l % 2 == 0 else 'o'}" for l in range(lmax + 1))


def second_interaction(max_L: int, channels: int, seed: int):
    """``(block, node_feats, sh, radial_weights, edge_index, target)`` of an upstream model's second interaction."""
    torch.manual_seed(seed)
    model = _build_tiny_model(_natural(channels, max_L), 3, 2, True, 2)
    batch = acac_batch(4)
    block = model.interactions[1]
    seen = {}
    block.linear_up.register_forward_hook(lambda m, a, out: seen.__setitem__("x", out.detach()))
    block.conv_tp_weights.register_forward_hook(lambda m, a, out: seen.__setitem__("w", out.detach()))
    block.conv_tp.register_forward_hook(lambda m, a, out: seen.__setitem__("sh", a[1].detach()))
    model(batch, training=False, compute_force=False)
    ei = batch["edge_index"]
    mji = block.conv_tp(seen["x"][ei[0]], seen["sh"], seen["w"])
    message = mji.new_zeros(seen["x"].shape[0], mji.shape[1]).index_add(0, ei[1], mji)
    return block, seen["x"], seen["sh"], seen["w"], ei, block.linear(message).detach()


def _blocks(features: torch.Tensor, irreps, ir_out):
    irreps = o3.Irreps(str(irreps))
    return [features[:, sl].reshape(features.shape[0], mul, ir.dim) for (mul, ir), sl in zip(irreps, irreps.slices())
            if ir == ir_out]


def least_squares_residual(features, irreps_mid, target, irreps_out) -> float:
    irreps_out = o3.Irreps(str(irreps_out))
    num = den = 0.0
    for (mul_o, ir_o), sl in zip(irreps_out, irreps_out.slices()):
        y = target[:, sl].reshape(-1, mul_o, ir_o.dim).transpose(1, 2).reshape(-1, mul_o)
        x = torch.cat([b.transpose(1, 2).reshape(-1, b.shape[1]) for b in _blocks(features, irreps_mid, ir_o)], 1)
        sol = torch.linalg.lstsq(x, y, driver="gelsd").solution
        num += (x @ sol - y).square().sum().item()
        den += y.square().sum().item()
    return (num / den) ** 0.5


def factorised_fit(block, x, sh, ei, target, products: int, starts: int, iterations: int) -> float:
    conv = GauntConvolution(block.edge_irreps, block.edge_attrs_irreps, block.target_irreps, products=products)
    irreps_out = o3.Irreps(str(block.irreps_out))
    best = float("inf")
    for start in range(starts):
        torch.manual_seed(1000 + start)
        w = (0.5 * torch.randn(sh.shape[0], conv.weight_numel)).requires_grad_()
        mixes = {}
        for mul_o, ir_o in irreps_out:
            fan_in = sum(mul for mul, ir in conv.irreps_out if ir == ir_o)
            mixes[str(ir_o)] = (torch.randn(fan_in, mul_o) / fan_in ** 0.5).requires_grad_()
        params = [w] + list(mixes.values())
        opt = torch.optim.LBFGS(params, lr=1, max_iter=iterations, history_size=50, line_search_fn="strong_wolfe")
        den = target.square().sum()

        def residual():
            feats = conv(x, sh, w, ei)
            num = 0.0
            for (mul_o, ir_o), sl in zip(irreps_out, irreps_out.slices()):
                inp = torch.cat(_blocks(feats, conv.irreps_out, ir_o), 1)  # [N, fan_in, 2l+1]
                out = torch.einsum("nim,io->nom", inp, mixes[str(ir_o)])
                num = num + (out - target[:, sl].reshape(-1, mul_o, ir_o.dim)).square().sum()
            return num / den

        def closure():
            opt.zero_grad()
            loss = residual()
            loss.backward()
            return loss

        opt.step(closure)
        with torch.no_grad():
            best = min(best, residual().item() ** 0.5)
    return best


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-L", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--channels", type=int, default=4)
    ap.add_argument("--products", type=int, nargs="+", default=[1, 3])
    ap.add_argument("--starts", type=int, default=2)
    ap.add_argument("--iterations", type=int, default=400)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "conv_function_class.json")
    args = ap.parse_args(argv)
    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(1)
    rows = []
    for max_L in args.max_L:
        block, x, sh, w, ei, target = second_interaction(max_L, args.channels, args.seed)
        paths = GauntPathConvolution(block.edge_irreps, block.edge_attrs_irreps, block.target_irreps)
        t0 = time.perf_counter()
        rows.append({"max_L": max_L, "variant": "paths", "free": "linear (least squares)",
                     "residual": least_squares_residual(paths(x, sh, w, ei), paths.irreps_out, target,
                                                        block.irreps_out), "seconds": time.perf_counter() - t0})
        for k in args.products:
            t0 = time.perf_counter()
            rows.append({"max_L": max_L, "variant": f"K = {k}", "free": "per-edge weights + linear (L-BFGS)",
                         "residual": factorised_fit(block, x, sh, ei, target, k, args.starts, args.iterations),
                         "seconds": time.perf_counter() - t0})
        print(f"max_L {max_L}: " + ", ".join(f"{r['variant']} {r['residual']:.2e}" for r in rows if r["max_L"] == max_L),
              flush=True)
    lines = ["| max_L | variant | fitted | relative residual |", "|---|---|---|---|"]
    lines += [f"| {r['max_L']} | {r['variant']} | {r['free']} | {r['residual']:.2e} |" for r in rows]
    table = "\n".join(lines)
    print(table)
    result = {"what": "fit of MACE's second-interaction conv_tp + linear on 4 acac configurations",
              "channels": args.channels, "edges": int(ei.shape[1]), "starts": args.starts,
              "iterations": args.iterations, "device": f"CPU ({platform.machine()}), 1 thread",
              "date": time.strftime("%Y-%m-%d"), "rows": rows, "table": table}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
