"""CPU benchmark of the MACE-shaped operations: Gaunt layers vs the e3nn/MACE modules doing the job today.

Operations (shapes as in ../shared/ANCHORS.md, CPU part):
  conv   node features C x (0e+1o+..+L) times edge harmonics 0e+..+L with per-edge weights, outputs
         natural parity up to L. e3nn: MACE's `uvu` TensorProduct built by
         `tp_out_irreps_with_instructions`; gaunt: GauntConvolution; grid3mm: the plain three-matmul
         S2-grid product (the floor a Gaunt implementation must not fall below); fourier: the
         functional op with method="fourier" on the same shapes (weights applied outside); each K of
         --conv-products (``gaunt K=3``: three products per channel).
  message MACE's message step: gather the senders' features, conv, scatter-sum onto the receivers (16 edges
         per node). e3nn: the TensorProduct between an index gather and index_add; gaunt: GauntConvolution
         with edge_index (on the CPU one fused kernel, no per-edge messages); gaunt unfused: the layer
         between the same gather and index_add.
  self   channel-wise product of two C x (0e..L) features. e3nn: `uvu` TensorProduct with every
         parity-allowed path; gaunt: GauntTensorProduct.
  symcon many-body product, correlation 3, 4 elements, output C x (0e+1o). MACE: SymmetricContraction;
         gaunt: GauntManyBody.
Timing: best of --repeats calls after a warm-up, time.perf_counter; fwd+bwd = forward plus backward of
out.sum() with respect to every float input. Ratios are measured side by side in one run.

    python benchmarks/cpu_ops.py                 # default sizes (L = 1..6)
    python benchmarks/cpu_ops.py --quick         # L = 1..3, fewer repeats
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

import mace  # noqa: F401  (sets TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD for e3nn 0.4.4)
from e3nn import o3
from mace.modules.irreps_tools import tp_out_irreps_with_instructions
from mace.modules.symmetric_contraction import SymmetricContraction

from gaunt_plugins import GauntConvolution, GauntManyBody, GauntTensorProduct, gaunt_product
from gaunt_plugins.math import grid_tables


def natural(mul: int, lmax: int) -> o3.Irreps:
    return o3.Irreps([(mul, (l, (-1) ** l)) for l in range(lmax + 1)])


CLOCK = time.perf_counter


def best_time(fn, repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = CLOCK()
        fn()
        best = min(best, CLOCK() - t0)
    return best * 1e3


def fwd_and_fwdbwd(make_out, inputs, repeats):
    def fwd():
        with torch.no_grad():
            make_out()

    def fwdbwd():
        out = make_out()
        torch.autograd.grad(out.sum(), [x for x in inputs if x.requires_grad])

    return best_time(fwd, repeats), best_time(fwdbwd, repeats)


CONV_PRODUCTS = (1,)


def conv_case(lmax, c, edges, repeats, with_e3nn):
    node, sh_ir = natural(c, lmax), natural(1, lmax)
    x = torch.randn(edges, node.dim, requires_grad=True)
    sh = o3.spherical_harmonics(sh_ir, torch.randn(edges, 3), True, normalization="component")
    rows = {}
    if with_e3nn:
        mid, instr = tp_out_irreps_with_instructions(node, sh_ir, node)
        tp = o3.TensorProduct(node, sh_ir, mid, instructions=instr, shared_weights=False, internal_weights=False)
        w = torch.randn(edges, tp.weight_numel, requires_grad=True)
        rows["e3nn"] = fwd_and_fwdbwd(lambda: tp(x, sh, w), [x, w], repeats)
    for k in CONV_PRODUCTS:
        gconv = GauntConvolution(node, sh_ir, node, products=k)
        gw = torch.randn(edges, gconv.weight_numel, requires_grad=True)
        rows["gaunt" if k == 1 else f"gaunt K={k}"] = fwd_and_fwdbwd(lambda: gconv(x, sh, gw), [x, gw], repeats)
    # the floor: three matmuls and a pointwise product on dense [E, C, I] tensors, per-edge weighted harmonics
    y1, y2, proj = (torch.from_numpy(t).float() for t in grid_tables(lmax, lmax, lmax))
    xd = torch.randn(edges, c, (lmax + 1) ** 2, requires_grad=True)
    shw = torch.randn(edges, c, (lmax + 1) ** 2, requires_grad=True)
    rows["grid3mm"] = fwd_and_fwdbwd(lambda: torch.matmul(torch.matmul(xd, y1) * torch.matmul(shw, y2), proj),
                                     [xd, shw], repeats)
    rows["fourier"] = fwd_and_fwdbwd(lambda: gaunt_product(xd, shw, lmax, method="fourier"), [xd, shw], repeats)
    return rows


def message_case(lmax, c, edges, repeats, with_e3nn):
    """MACE's message step: gather senders, convolve, scatter-sum onto receivers (16 edges per node)."""
    node, sh_ir = natural(c, lmax), natural(1, lmax)
    nodes = max(1, edges // 16)
    x = torch.randn(nodes, node.dim, requires_grad=True)
    edge_index = torch.randint(0, nodes, (2, edges))
    sh = o3.spherical_harmonics(sh_ir, torch.randn(edges, 3), True, normalization="component")
    rows = {}

    def scatter(msg):
        return msg.new_zeros(nodes, msg.shape[1]).index_add(0, edge_index[1], msg)

    if with_e3nn:
        mid, instr = tp_out_irreps_with_instructions(node, sh_ir, node)
        tp = o3.TensorProduct(node, sh_ir, mid, instructions=instr, shared_weights=False, internal_weights=False)
        w = torch.randn(edges, tp.weight_numel, requires_grad=True)
        rows["e3nn"] = fwd_and_fwdbwd(lambda: scatter(tp(x[edge_index[0]], sh, w)), [x, w], repeats)
    for k in CONV_PRODUCTS:
        gconv = GauntConvolution(node, sh_ir, node, products=k)
        gw = torch.randn(edges, gconv.weight_numel, requires_grad=True)
        rows["gaunt" if k == 1 else f"gaunt K={k}"] = fwd_and_fwdbwd(lambda: gconv(x, sh, gw, edge_index), [x, gw],
                                                                     repeats)
        rows[("gaunt unfused" if k == 1 else f"gaunt unfused K={k}")] = fwd_and_fwdbwd(
            lambda: scatter(gconv(x[edge_index[0]], sh, gw)), [x, gw], repeats)
    y1, y2, proj = (torch.from_numpy(t).float() for t in grid_tables(lmax, lmax, lmax))
    xd = torch.randn(edges, c, (lmax + 1) ** 2, requires_grad=True)
    shw = torch.randn(edges, c, (lmax + 1) ** 2, requires_grad=True)
    rows["grid3mm"] = fwd_and_fwdbwd(lambda: torch.matmul(torch.matmul(xd, y1) * torch.matmul(shw, y2), proj),
                                     [xd, shw], repeats)
    return rows


def self_case(lmax, c, nodes, repeats, with_e3nn):
    feat = natural(c, lmax)
    x1 = torch.randn(nodes, feat.dim, requires_grad=True)
    x2 = torch.randn(nodes, feat.dim, requires_grad=True)
    rows = {}
    if with_e3nn:
        instr = [(i, j, k, "uvu", True) for i, (_, a) in enumerate(feat) for j, (_, b) in enumerate(feat)
                 for k, (_, o) in enumerate(feat) if o in a * b]
        tp = o3.TensorProduct(feat, feat, feat, instr)
        rows["e3nn"] = fwd_and_fwdbwd(lambda: tp(x1, x2), [x1, x2], repeats)
    gtp = GauntTensorProduct(feat, feat, feat)
    rows["gaunt"] = fwd_and_fwdbwd(lambda: gtp(x1, x2), [x1, x2], repeats)
    y1, y2, proj = (torch.from_numpy(t).float() for t in grid_tables(lmax, lmax, lmax))
    a = torch.randn(nodes, c, (lmax + 1) ** 2, requires_grad=True)
    b = torch.randn(nodes, c, (lmax + 1) ** 2, requires_grad=True)
    rows["grid3mm"] = fwd_and_fwdbwd(lambda: torch.matmul(torch.matmul(a, y1) * torch.matmul(b, y2), proj),
                                     [a, b], repeats)
    rows["fourier"] = fwd_and_fwdbwd(lambda: gaunt_product(a, b, lmax, method="fourier"), [a, b], repeats)
    return rows


def symcon_case(lmax, c, nodes, repeats, with_e3nn, elements=4):
    feat, out_ir = natural(c, lmax), natural(c, 1)
    x = torch.randn(nodes, c, (lmax + 1) ** 2, requires_grad=True)
    attrs = torch.nn.functional.one_hot(torch.randint(0, elements, (nodes,)), elements).float()
    rows = {}
    if with_e3nn:
        sc = SymmetricContraction(feat, out_ir, correlation=3, num_elements=elements)
        rows["e3nn"] = fwd_and_fwdbwd(lambda: sc(x, attrs), [x], repeats)
    mb = GauntManyBody(feat, out_ir, 3, elements)
    rows["gaunt"] = fwd_and_fwdbwd(lambda: mb(x, attrs), [x], repeats)
    # the floor: the grid function, its square and cube, projections (no element weights)
    from gaunt_plugins.math import power_grid_tables
    yg, proj = (torch.from_numpy(t).float() for t in power_grid_tables(lmax, 3, 1))

    def plain():
        f = torch.matmul(x, yg)
        return torch.matmul(f, proj) + torch.matmul(f * f, proj) + torch.matmul(f * f * f, proj)

    rows["grid3mm"] = fwd_and_fwdbwd(plain, [x], repeats)
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="L = 1..3 and 3 repeats")
    ap.add_argument("--lmax", type=int, nargs="*", help="degrees to run (default 1..6)")
    ap.add_argument("--channels", type=int, nargs="*", help="override channel counts (default 64 for L<=3, 32 above)")
    ap.add_argument("--max-e3nn-l", type=int, default=4, help="largest L at which the slow e3nn baseline runs")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--edges", type=int, default=2048)
    ap.add_argument("--nodes", type=int, default=512)
    ap.add_argument("--ops", nargs="*", default=["conv", "message", "self", "symcon"])
    ap.add_argument("--conv-products", type=int, nargs="*", default=[1, 3],
                    help="K, Gaunt products per channel, for the conv and message rows (default 1 3)")
    ap.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--clock", choices=["wall", "process"], default="wall",
                    help="wall: perf_counter; process: CPU time of this process (steadier on a shared machine)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "cpu_ops.json"))
    args = ap.parse_args(argv)
    global CLOCK, CONV_PRODUCTS
    CONV_PRODUCTS = tuple(args.conv_products)
    if args.threads:
        torch.set_num_threads(args.threads)
    CLOCK = time.process_time if args.clock == "process" else time.perf_counter
    lmaxes = args.lmax or ([1, 2, 3] if args.quick else [1, 2, 3, 4, 5, 6])
    repeats = 3 if args.quick else args.repeats
    device = {"device": "cpu", "processor": platform.processor() or platform.machine(),
              "threads": torch.get_num_threads(), "torch": torch.__version__, "e3nn": o3.__name__ and __import__("e3nn").__version__,
              "cpu_count": os.cpu_count(), "clock": args.clock}
    print(f"# CPU op benchmark: {device}")
    print("| op | L | C | rows | impl | fwd ms | fwd+bwd ms | e3nn/impl fwd+bwd | impl vs grid3mm fwd+bwd |")
    print("|---|---|---|---|---|---|---|---|---|")
    results = []
    cases = {"conv": (conv_case, args.edges), "message": (message_case, args.edges), "self": (self_case, 2 * args.nodes),
             "symcon": (symcon_case, args.nodes)}
    for op in args.ops:
        fn, rows_n = cases[op]
        for lmax in lmaxes:
            for c in (args.channels or [64 if lmax <= 3 else 32]):
                torch.manual_seed(0)
                rows = fn(lmax, c, rows_n, repeats, lmax <= args.max_e3nn_l)
                for impl, (f, fb) in rows.items():
                    ratio = rows["e3nn"][1] / fb if "e3nn" in rows else None
                    floor = fb / rows["grid3mm"][1]
                    results.append({"op": op, "L": lmax, "C": c, "rows": rows_n, "impl": impl, "fwd_ms": f,
                                    "fwdbwd_ms": fb, "speedup_vs_e3nn_fwdbwd": ratio, "vs_grid3mm_fwdbwd": floor})
                    print(f"| {op} | {lmax} | {c} | {rows_n} | {impl} | {f:.2f} | {fb:.2f} | "
                          f"{'' if ratio is None else f'{ratio:.1f}x'} | {floor:.2f} |", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"device": device, "results": results}, indent=1))
    print(f"# wrote {args.out}")


if __name__ == "__main__":
    main()
