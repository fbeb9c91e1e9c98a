"""GPU benchmark of the fused Triton Gaunt kernels against the implementations they replace.

Operations and shapes (as in ../shared/ANCHORS.md, GPU part; float32):
  conv    MACE interaction convolution: node features C x (0e+1o+..+L) times edge harmonics 0e+..+L,
          per-edge weights, outputs natural parity up to L; 32768 edges.
          triton      gaunt_plugins.triton_kernels.conv_product on dense [E, C, (L+1)^2] tensors
          torch-grid  gaunt_plugins.backends.torch_ops.conv_product (unfused grid product)
          e3nn        MACE's `uvu` o3.TensorProduct with per-edge weights (eager)
          cueq        cuequivariance_torch.ChannelWiseTensorProduct (only with its CUDA ops package)
          message     extra rows: the fused gather -> conv -> scatter-sum op (atomic and
                      deterministic) vs torch (gather, torch_ops.conv_product, index_add), E/16 nodes
  symcon  MACE symmetric contraction, correlation 3, 10 elements, C x (0e..L) -> C x (0e+1o), 16384
          nodes. triton / torch-grid: many-body product with per-node weights contracted from the
          element one-hot inside the timed call; mace: mace's SymmetricContraction; cueq:
          cuequivariance_torch.SymmetricContraction.
  self    channel-wise product of two C x (0e..L) features, shared per-degree weights, 8192 nodes.
          triton / torch-grid: weighted_product; e3nn: `uvu` TensorProduct with all even paths.

Timing: median of --iters calls after --warmup, CUDA events. fwd+bwd = forward plus the backward of
out.sum() with respect to every input that requires grad. "peak MiB" = device memory one call
allocates on top of its inputs (workspace and outputs), from one extra call after the timed ones.
"floor" = bytes every implementation must move at least once (the op's inputs and outputs; backward:
grad_out and the inputs read, the input gradients written) at the copy bandwidth measured at start-up;
"x floor" = time / floor. A case whose set-up fails (a kernel that does not compile, say) is recorded
with its error and the next case runs.
cuEquivariance is timed only when its CUDA ops package is importable (otherwise it silently falls
back to a slow pure-PyTorch path): the table says when it is missing.

    python benchmarks/gpu_ops.py                   # every op, L = 1..6 (self: also 8)
    python benchmarks/gpu_ops.py --ops conv --lmax 2 3
    python benchmarks/gpu_ops.py --fp32-dot tf32x3 # try tensor-core dots for float32
    python benchmarks/gpu_ops.py --cpu-smoke       # tiny shapes in Triton's CPU interpreter (checks the
                                                   # script runs; the timings mean nothing)

Channels: 128 for L <= 3, 64 for L = 4..6, 32 above. Writes a markdown table to stdout and JSON (device
name included) to benchmarks/results/gpu_ops_<device>.json, rewritten after every row (a run stopped
early keeps what it measured); --time-budget skips the cases left once that many seconds have passed.
Exits with a message when CUDA is not available.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

DEFAULT_LMAX = {"conv": [1, 2, 3, 4, 5, 6], "symcon": [1, 2, 3, 4, 5, 6], "self": [1, 2, 3, 4, 5, 6, 8]}


def channels_for(lmax: int) -> int:
    """Channels of the case at degree ``lmax`` (the ANCHORS.md sizes: 128 up to L = 3, then 64, then 32)."""
    return 128 if lmax <= 3 else (64 if lmax <= 6 else 32)


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ops", nargs="*", default=["conv", "symcon", "self"], choices=["conv", "symcon", "self"])
    ap.add_argument("--lmax", type=int, nargs="*", help="only these L (channels: see channels_for)")
    ap.add_argument("--edges", type=int, default=32768)
    ap.add_argument("--nodes-symcon", type=int, default=16384)
    ap.add_argument("--nodes-self", type=int, default=8192)
    ap.add_argument("--elements", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--max-e3nn-l", type=int, default=4, help="largest L at which the slow e3nn baselines run")
    ap.add_argument("--max-mace-l", type=int, default=3,
                    help="largest input L of MACE's SymmetricContraction baseline (its build grows fast with L)")
    ap.add_argument("--max-message-l", type=int, default=6, help="largest L of the fused message rows")
    ap.add_argument("--time-budget", type=float, default=None,
                    help="seconds; cases left when it is spent are recorded as skipped")
    ap.add_argument("--no-message", action="store_true", help="skip the fused message-passing rows")
    ap.add_argument("--fp32-dot", choices=["ieee", "tf32x3", "tf32"], default=None,
                    help="GAUNT_TRITON_FP32_DOT for this run (default: the kernels' default, ieee)")
    ap.add_argument("--cpu-smoke", action="store_true",
                    help="no GPU: tiny shapes, kernels in Triton's CPU interpreter, timings meaningless")
    ap.add_argument("--out", default=None, help="JSON path (default benchmarks/results/gpu_ops_<device>.json)")
    return ap.parse_args(argv)


ARGS = parse() if __name__ == "__main__" else None
if ARGS is not None:
    if ARGS.cpu_smoke:
        os.environ["TRITON_INTERPRET"] = "1"
    elif not torch.cuda.is_available():
        sys.exit("benchmarks/gpu_ops.py: no CUDA device here (torch.cuda.is_available() is False), so nothing "
                 "was measured. Run it on a GPU machine, or with --cpu-smoke to check that the script runs.")
    if ARGS.fp32_dot:
        os.environ["GAUNT_TRITON_FP32_DOT"] = ARGS.fp32_dot

from _timing import copy_bandwidth_gbs, floor_ms, fwd_and_fwdbwd, nbytes  # noqa: E402


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------
def degrees(lmax: int, device) -> torch.Tensor:
    return torch.cat([torch.full((2 * l + 1,), l, dtype=torch.long) for l in range(lmax + 1)]).to(device)


def natural(mul: int, lmax: int):
    from e3nn import o3
    return o3.Irreps([(mul, (l, (-1) ** l)) for l in range(lmax + 1)])


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1.0)).item()


def cueq_status():
    """``(modules or None, reason)``; only usable with the CUDA ops package (no silent fallback)."""
    try:
        import cuequivariance as cue
        import cuequivariance_torch as cuet
    except Exception as exc:
        return None, f"cuequivariance-torch not installed ({type(exc).__name__})"
    try:
        import cuequivariance_ops_torch  # noqa: F401  (the CUDA kernels)
    except Exception as exc:
        return None, (f"cuequivariance-ops-torch-cu12/13 not importable ({type(exc).__name__}): its slow "
                      f"pure-PyTorch fallback is not timed")
    return (cue, cuet), None


class Bench:
    def __init__(self, args, device):
        self.args = args
        self.device = device
        self.cuda = device.type == "cuda"
        self.rows = []
        self.notes = []
        self.on_row = None
        self.bandwidth = copy_bandwidth_gbs(device, nbytes_total=(1 << 30) if self.cuda else (1 << 24))

    def time(self, make_out, inputs):
        return fwd_and_fwdbwd(make_out, inputs, self.args.warmup, self.args.iters, cuda=self.cuda)

    def add(self, op, lmax, c, rows_n, impl, fn, floor_fwd, floor_fwdbwd, err=None, note=""):
        """Time ``fn() -> (make_out, inputs)`` and record a row (errors are recorded, not raised)."""
        rec = {"op": op, "L": lmax, "C": c, "rows": rows_n, "impl": impl, "floor_fwd_ms": floor_fwd,
               "floor_fwdbwd_ms": floor_fwdbwd, "rel_err_vs_torch": err, "note": note}
        try:
            make_out, inputs = fn()
            t = self.time(make_out, inputs)
            rec.update(fwd_ms=t["fwd"], fwdbwd_ms=t["fwdbwd"], fwd_peak_mib=t["fwd_peak_mib"],
                       fwdbwd_peak_mib=t["fwdbwd_peak_mib"])
        except Exception as exc:
            rec["error"] = f"{type(exc).__name__}: {exc}"
            if os.environ.get("GAUNT_BENCH_TRACEBACK"):
                traceback.print_exc()
        finally:
            if self.cuda:
                torch.cuda.empty_cache()
        self.rows.append(rec)
        self.print_row(rec)
        if self.on_row is not None:
            self.on_row()

    @staticmethod
    def header():
        print("| op | L | C | rows | impl | fwd ms | fwd+bwd ms | peak MiB fwd / fwd+bwd | floor fwd / fwd+bwd ms | "
              "x floor (fwd+bwd) | rel err vs torch | note |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|")

    @staticmethod
    def print_row(r):
        if "error" in r:
            print(f"| {r['op']} | {r['L']} | {r['C']} | {r['rows']} | {r['impl']} | — | — | — | "
                  f"{r['floor_fwd_ms']:.3f} / {r['floor_fwdbwd_ms']:.3f} | — | — | {r['error'][:120]} |", flush=True)
            return
        x = r["fwdbwd_ms"] / r["floor_fwdbwd_ms"] if r["floor_fwdbwd_ms"] else float("nan")
        err = "" if r["rel_err_vs_torch"] is None else f"{r['rel_err_vs_torch']:.1e}"
        peak = "—" if r.get("fwd_peak_mib") is None else f"{r['fwd_peak_mib']:.0f} / {r['fwdbwd_peak_mib']:.0f}"
        print(f"| {r['op']} | {r['L']} | {r['C']} | {r['rows']} | {r['impl']} | {r['fwd_ms']:.3f} | "
              f"{r['fwdbwd_ms']:.3f} | {peak} | {r['floor_fwd_ms']:.3f} / {r['floor_fwdbwd_ms']:.3f} | {x:.1f} | "
              f"{err} | {r['note']} |", flush=True)


# ------------------------------------------------------------------------------------------------
# conv
# ------------------------------------------------------------------------------------------------
def bench_conv(b: Bench, lmax: int, c: int, edges: int, cueq):
    import gaunt_plugins.triton_kernels as tk
    from gaunt_plugins.backends import torch_ops
    from gaunt_plugins.math import grid_tables

    dev = b.device
    i = (lmax + 1) ** 2
    k = lmax + 1
    y1, y2, f = (torch.from_numpy(t).float().to(dev) for t in grid_tables(lmax, lmax, lmax))
    d = degrees(lmax, dev)
    x1 = torch.randn(edges, c, i, device=dev, requires_grad=True)
    sh = torch.randn(edges, i, device=dev, requires_grad=True)
    w = torch.randn(edges, 3 * k, c, device=dev, requires_grad=True)
    fl_f = floor_ms(nbytes(x1, sh, w) + edges * c * i * 4, b.bandwidth)
    fl_b = fl_f + floor_ms(edges * c * i * 4 + 2 * nbytes(x1, sh, w), b.bandwidth)
    with torch.no_grad():
        err = rel_err(tk.conv_product(x1, sh, w, k, lmax + 1, d, d, d, y1, y2, f),
                      torch_ops.conv_product(x1, sh, w, k, lmax + 1, d, d, d, y1, y2, f))
    b.add("conv", lmax, c, edges, "triton", lambda: (lambda: tk.conv_product(x1, sh, w, k, lmax + 1, d, d, d, y1, y2, f),
                                                     [x1, sh, w]), fl_f, fl_b, err)
    b.add("conv", lmax, c, edges, "torch-grid",
          lambda: (lambda: torch_ops.conv_product(x1, sh, w, k, lmax + 1, d, d, d, y1, y2, f), [x1, sh, w]), fl_f, fl_b)
    if lmax <= b.args.max_e3nn_l:
        def e3nn_case():
            from e3nn import o3
            node, sh_ir = natural(c, lmax), natural(1, lmax)
            target = natural(c, lmax)
            mid, instr = [], []
            for a, (mul, ir_in) in enumerate(node):
                for bb, (_, ir_e) in enumerate(sh_ir):
                    for ir_out in ir_in * ir_e:
                        if ir_out in [ir for _, ir in target]:
                            instr.append((a, bb, len(mid), "uvu", True))
                            mid.append((mul, ir_out))
            tp = o3.TensorProduct(node, sh_ir, o3.Irreps(mid), instr, shared_weights=False,
                                  internal_weights=False).to(dev)
            xf = torch.randn(edges, node.dim, device=dev, requires_grad=True)
            shf = torch.randn(edges, sh_ir.dim, device=dev)
            wf = torch.randn(edges, tp.weight_numel, device=dev, requires_grad=True)
            return (lambda: tp(xf, shf, wf)), [xf, wf]
        b.add("conv", lmax, c, edges, "e3nn", e3nn_case, fl_f, fl_b, note="uvu, every CG path")
    if cueq is not None:
        def cueq_case():
            cue, cuet = cueq
            node = cue.Irreps("O3", str(natural(c, lmax)))
            sh_ir = cue.Irreps("O3", str(natural(1, lmax)))
            tp = cuet.ChannelWiseTensorProduct(node, sh_ir, filter_irreps_out=cue.Irreps("O3", str(natural(c, lmax))),
                                               layout=cue.mul_ir, shared_weights=False, internal_weights=False,
                                               device=dev, dtype=torch.float32, use_fallback=False)
            xf = torch.randn(edges, node.dim, device=dev, requires_grad=True)
            shf = torch.randn(edges, sh_ir.dim, device=dev)
            wf = torch.randn(edges, tp.weight_numel, device=dev, requires_grad=True)
            return (lambda: tp(xf, shf, wf)), [xf, wf]
        b.add("conv", lmax, c, edges, "cueq", cueq_case, fl_f, fl_b, note="ChannelWiseTensorProduct")
    if not b.args.no_message and lmax <= b.args.max_message_l:
        nodes = max(1, edges // 16)
        xn = torch.randn(nodes, c, i, device=dev, requires_grad=True)
        ei = torch.stack([torch.randint(0, nodes, (edges,), device=dev), torch.randint(0, nodes, (edges,), device=dev)])
        fm_f = floor_ms(nbytes(xn, sh, w, ei) + nodes * c * i * 4, b.bandwidth)
        fm_b = fm_f + floor_ms(nodes * c * i * 4 + nbytes(xn, sh, w, ei) + nbytes(xn, sh, w), b.bandwidth)

        def torch_msg():
            msg = torch_ops.conv_product(xn.index_select(0, ei[0]), sh, w, k, lmax + 1, d, d, d, y1, y2, f)
            return msg.new_zeros(nodes, c, i).index_add(0, ei[1], msg)
        with torch.no_grad():
            ref = torch_msg()
            errs = {det: rel_err(tk.conv_message(xn, sh, w, ei, nodes, k, lmax + 1, d, d, d, y1, y2, f, deterministic=det), ref)
                    for det in (False, True)}
        for det in (False, True):
            b.add("message", lmax, c, edges, f"triton-{'deterministic' if det else 'atomic'}",
                  lambda det=det: (lambda: tk.conv_message(xn, sh, w, ei, nodes, k, lmax + 1, d, d, d, y1, y2, f,
                                                           deterministic=det), [xn, sh, w]),
                  fm_f, fm_b, errs[det], note=f"{nodes} nodes")
        b.add("message", lmax, c, edges, "torch-grid", lambda: (torch_msg, [xn, sh, w]), fm_f, fm_b,
              note="gather + conv + index_add")


# ------------------------------------------------------------------------------------------------
# symcon
# ------------------------------------------------------------------------------------------------
def bench_symcon(b: Bench, lmax: int, c: int, nodes: int, elements: int, cueq):
    import gaunt_plugins.triton_kernels as tk
    from gaunt_plugins.backends import torch_ops
    from gaunt_plugins.math import power_grid_tables

    dev = b.device
    nu, lo = 3, 1
    i, io = (lmax + 1) ** 2, (lo + 1) ** 2
    yg, fg = (torch.from_numpy(t).float().to(dev) for t in power_grid_tables(lmax, nu, lo))
    fs = torch.stack([fg] * nu)
    di, do = degrees(lmax, dev), degrees(lo, dev)
    x = torch.randn(nodes, c, i, device=dev, requires_grad=True)
    species = torch.randint(0, elements, (nodes,), device=dev)
    attrs = torch.nn.functional.one_hot(species, elements).float()
    wi = torch.randn(elements, nu * (lmax + 1) * c, device=dev, requires_grad=True)
    wo = torch.randn(elements, nu * (lo + 1) * c, device=dev, requires_grad=True)

    def weights():
        return ((attrs @ wi).view(nodes, nu, lmax + 1, c), (attrs @ wo).view(nodes, nu, lo + 1, c))

    # floor: x, the element index, the output (backward: grad_out, x read, dx written)
    fl_f = floor_ms(nbytes(x) + nodes * 4 + nodes * c * io * 4, b.bandwidth)
    fl_b = fl_f + floor_ms(nodes * c * io * 4 + 2 * nbytes(x), b.bandwidth)
    with torch.no_grad():
        a, bw = weights()
        err = rel_err(tk.many_body_product(x, a, bw, di, do, yg, fs), torch_ops.many_body_product(x, a, bw, di, do, yg, fs))
    note = "per-node weights from the one-hot inside the call"
    b.add("symcon", lmax, c, nodes, "triton", lambda: (lambda: tk.many_body_product(x, *weights(), di, do, yg, fs),
                                                       [x, wi, wo]), fl_f, fl_b, err, note)
    b.add("symcon", lmax, c, nodes, "torch-grid",
          lambda: (lambda: torch_ops.many_body_product(x, *weights(), di, do, yg, fs), [x, wi, wo]), fl_f, fl_b,
          note=note)
    if lmax <= b.args.max_mace_l:
        def mace_case():
            from mace.modules.symmetric_contraction import SymmetricContraction
            sc = SymmetricContraction(natural(c, lmax), natural(c, lo), correlation=nu, num_elements=elements).to(dev)
            xm = torch.randn(nodes, c, i, device=dev, requires_grad=True)
            return (lambda: sc(xm, attrs)), [xm]
        b.add("symcon", lmax, c, nodes, "mace", mace_case, fl_f, fl_b, note="mace SymmetricContraction (e3nn)")
    if cueq is not None:
        def cueq_case():
            cue, cuet = cueq
            sc = cuet.SymmetricContraction(cue.Irreps("O3", str(natural(c, lmax))), cue.Irreps("O3", str(natural(c, lo))),
                                           contraction_degree=nu, num_elements=elements, layout_in=cue.ir_mul,
                                           layout_out=cue.mul_ir, original_mace=True, device=dev,
                                           dtype=torch.float32, use_fallback=False)
            xm = torch.randn(nodes, c * i, device=dev, requires_grad=True)
            return (lambda: sc(xm, species.to(torch.int32))), [xm]
        b.add("symcon", lmax, c, nodes, "cueq", cueq_case, fl_f, fl_b, note="cuet.SymmetricContraction")


# ------------------------------------------------------------------------------------------------
# self product
# ------------------------------------------------------------------------------------------------
def bench_self(b: Bench, lmax: int, c: int, nodes: int):
    import gaunt_plugins.triton_kernels as tk
    from gaunt_plugins.backends import torch_ops
    from gaunt_plugins.math import grid_tables

    dev = b.device
    i = (lmax + 1) ** 2
    y1, y2, f = (torch.from_numpy(t).float().to(dev) for t in grid_tables(lmax, lmax, lmax))
    d = degrees(lmax, dev)
    x1 = torch.randn(nodes, c, i, device=dev, requires_grad=True)
    x2 = torch.randn(nodes, c, i, device=dev, requires_grad=True)
    ws = [torch.randn(lmax + 1, c, device=dev, requires_grad=True) for _ in range(3)]
    fl_f = floor_ms(nbytes(x1, x2) + nodes * c * i * 4, b.bandwidth)
    fl_b = fl_f + floor_ms(nodes * c * i * 4 + 2 * nbytes(x1, x2), b.bandwidth)
    with torch.no_grad():
        err = rel_err(tk.weighted_product(x1, x2, *ws, d, d, d, y1, y2, f),
                      torch_ops.weighted_product(x1, x2, *ws, d, d, d, y1, y2, f))
    b.add("self", lmax, c, nodes, "triton",
          lambda: (lambda: tk.weighted_product(x1, x2, *ws, d, d, d, y1, y2, f), [x1, x2, *ws]), fl_f, fl_b, err)
    b.add("self", lmax, c, nodes, "torch-grid",
          lambda: (lambda: torch_ops.weighted_product(x1, x2, *ws, d, d, d, y1, y2, f), [x1, x2, *ws]), fl_f, fl_b)
    if lmax <= b.args.max_e3nn_l:
        def e3nn_case():
            from e3nn import o3
            feat = natural(c, lmax)
            instr = [(p, q, r, "uvu", True) for p, (_, a) in enumerate(feat) for q, (_, bb) in enumerate(feat)
                     for r, (_, o) in enumerate(feat) if o in a * bb]
            tp = o3.TensorProduct(feat, feat, feat, instr).to(dev)
            a = torch.randn(nodes, feat.dim, device=dev, requires_grad=True)
            bb = torch.randn(nodes, feat.dim, device=dev, requires_grad=True)
            return (lambda: tp(a, bb)), [a, bb]
        b.add("self", lmax, c, nodes, "e3nn", e3nn_case, fl_f, fl_b, note="uvu, all CG paths")


# ------------------------------------------------------------------------------------------------
def main(args) -> int:
    smoke = args.cpu_smoke
    device = torch.device("cpu" if smoke else "cuda")
    try:
        import triton
        import gaunt_plugins.triton_kernels as tk
    except Exception as exc:
        print(f"benchmarks/gpu_ops.py: the Triton kernels cannot be imported ({exc!r}); install "
              f"'gaunt-plugins[triton]'", file=sys.stderr)
        return 2
    lmaxes = {op: (list(args.lmax) if args.lmax else DEFAULT_LMAX[op]) for op in DEFAULT_LMAX}
    if smoke:
        args.edges, args.nodes_symcon, args.nodes_self = 16, 8, 8
        args.warmup, args.iters, args.elements = 1, 1, 3
        args.max_e3nn_l, args.max_mace_l = min(args.max_e3nn_l, 1), min(args.max_mace_l, 1)
        smoke_lmax = {"conv": [1, 2], "symcon": [1], "self": [1]}
        lmaxes = {op: (list(args.lmax) if args.lmax else smoke_lmax[op]) for op in DEFAULT_LMAX}
        channels = {1: 4, 2: 3}
        cases = {op: [(l, channels.get(l, 2)) for l in ls] for op, ls in lmaxes.items()}
    else:
        cases = {op: [(l, channels_for(l)) for l in ls] for op, ls in lmaxes.items()}
    name = "cpu-smoke (Triton interpreter)" if smoke else torch.cuda.get_device_name(device)
    cueq, cueq_reason = (None, "not tried in --cpu-smoke") if smoke else cueq_status()
    try:
        import e3nn
        e3nn_version = e3nn.__version__
    except Exception:
        e3nn_version = None
    info = {"device": name, "torch": torch.__version__, "triton": triton.__version__, "e3nn": e3nn_version,
            "cuda": torch.version.cuda, "fp32_dot_precision": tk.constants.FP32_DOT_PRECISION,
            "cuequivariance": "available" if cueq is not None else cueq_reason, "python": platform.python_version(),
            "timing": f"median of {args.iters} after {args.warmup} warm-ups" + ("" if smoke else ", CUDA events")}
    torch.manual_seed(0)
    bench = Bench(args, device)
    info["copy_bandwidth_GBps"] = round(bench.bandwidth, 1)
    print(f"# Gaunt op benchmark on {name}")
    for k, v in info.items():
        print(f"# {k}: {v}")
    if cueq is None:
        print(f"# cuEquivariance rows skipped: {cueq_reason}")
    slug = re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_").lower()
    if args.out:
        out = Path(args.out)
    elif smoke:
        out = Path(os.environ.get("TMPDIR", "/tmp")) / "gpu_ops_cpu_smoke.json"
    else:
        out = Path(__file__).resolve().parent / "results" / f"gpu_ops_{slug}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    bench.on_row = lambda: write_json(out, info, bench.rows, [])
    started = time.monotonic()
    bench.header()
    for op in args.ops:
        for lmax, c in cases[op]:
            if args.time_budget is not None and time.monotonic() - started > args.time_budget:
                bench.rows.append({"op": op, "L": lmax, "C": c, "impl": "(all)",
                                   "error": f"skipped: the time budget of {args.time_budget:g} s was spent"})
                continue
            try:
                if op == "conv":
                    bench_conv(bench, lmax, c, args.edges, cueq)
                elif op == "symcon":
                    bench_symcon(bench, lmax, c, args.nodes_symcon, args.elements, cueq)
                else:
                    bench_self(bench, lmax, c, args.nodes_self)
            except Exception as exc:  # the accuracy check or the inputs of the case failed
                bench.rows.append({"op": op, "L": lmax, "C": c, "impl": "(case)", "error": f"{type(exc).__name__}: {exc}"})
                print(f"# {op} L={lmax} C={c}: {bench.rows[-1]['error'][:300]}", flush=True)
                if os.environ.get("GAUNT_BENCH_TRACEBACK"):
                    traceback.print_exc()
            finally:
                if bench.cuda:
                    torch.cuda.empty_cache()
    summary = speedups(bench.rows)
    if summary:
        print("\n# triton speed-ups (other / triton) and distance to the memory floor")
        for r in summary:
            if r["vs"] == "floor":
                print(f"#   {r['op']} L={r['L']} C={r['C']}: fwd+bwd at {r['x_floor_fwdbwd']:.1f}x the floor")
            else:
                print(f"#   {r['op']} L={r['L']} C={r['C']} vs {r['vs']}: fwd {r['speedup_fwd']:.2f}x, "
                      f"fwd+bwd {r['speedup_fwdbwd']:.2f}x")
    write_json(out, info, bench.rows, summary)
    print(f"# wrote {out}")
    errors = [r for r in bench.rows if "error" in r and (r["impl"].startswith("triton") or r["impl"] == "(case)")]
    return 1 if errors else 0


def write_json(path: Path, info: dict, rows: list, summary: list) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"info": info, "results": rows, "summary": summary}, indent=1))
    tmp.replace(path)


def speedups(rows: list) -> list:
    """Triton's speed-up over every other implementation of the same case (other / triton), where both
    were measured, and its distance to the memory floor."""
    summary = []
    by = {(r["op"], r["L"], r["C"], r["impl"]): r for r in rows if "error" not in r}
    for (op, lmax, c, impl), r in by.items():
        if impl != "triton":
            continue
        for other in ("cueq", "torch-grid", "e3nn", "mace"):
            o = by.get((op, lmax, c, other))
            if o:
                summary.append({"op": op, "L": lmax, "C": c, "vs": other,
                                "speedup_fwd": o["fwd_ms"] / r["fwd_ms"], "speedup_fwdbwd": o["fwdbwd_ms"] / r["fwdbwd_ms"]})
        summary.append({"op": op, "L": lmax, "C": c, "vs": "floor", "x_floor_fwdbwd": r["fwdbwd_ms"] / r["floor_fwdbwd_ms"]})
    return summary


if __name__ == "__main__":
    sys.exit(main(ARGS))
