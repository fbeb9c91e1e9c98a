"""Ahead-of-time compilation of the kernels for a GPU target, without a GPU.

The interpreter accepts programs the GPU compiler rejects (dot tiles under 16, some layouts), so
the CPU test suite also compiles every kernel variant down to a cubin for sm_90 (and sm_80) with
Triton's own toolchain: a kernel that compiles here will at least compile on the H100. ``ptxas -v``
reports registers and spills, which is the only register-pressure evidence available without a GPU.

Usage: :func:`capture` runs a function of the public ops with the launches intercepted (run in a
process *without* ``TRITON_INTERPRET``, so the kernels are ``JITFunction``s) and returns the launch
arguments; :func:`compile_launch` compiles one of them.
"""
from __future__ import annotations

import os
import re
import subprocess
import tempfile
from typing import Callable, List, Tuple

import torch

_TYPES = {torch.float32: "fp32", torch.float64: "fp64", torch.float16: "fp16", torch.bfloat16: "bf16",
          torch.int64: "i64", torch.int32: "i32"}


def capture(fn: Callable[[], object]) -> List[Tuple[object, tuple, dict]]:
    """Run ``fn`` with every kernel launch of ``gaunt_plugins.triton_kernels.ops`` recorded, not run."""
    from gaunt_plugins.triton_kernels import ops

    launches = []
    real = ops._launch
    ops._launch = lambda kernel, grid, **kw: launches.append((kernel, grid, dict(kw)))
    try:
        try:
            fn()
        except Exception:
            # outputs are garbage (nothing ran); anything after the first launch may fail: fine
            pass
    finally:
        ops._launch = real
    return launches


def _ty(v) -> str:
    if isinstance(v, torch.Tensor):
        return "*" + _TYPES[v.dtype]
    if isinstance(v, bool):
        return "i1"
    if isinstance(v, int):
        return "i32" if -2**31 <= v < 2**31 else "i64"
    raise TypeError(f"unsupported kernel argument {v!r}")


def compile_launch(kernel, kwargs: dict, arch: int = 90):
    """Compile one captured launch for ``sm_<arch>``; returns the compiled kernel."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    kw = dict(kwargs)
    num_warps = kw.pop("num_warps", 4)
    sig, const = {}, {}
    for i, name in enumerate(kernel.arg_names):
        v = kw[name]
        if kernel.params[i].is_constexpr:
            sig[name] = "constexpr"
            const[(i,)] = v
        else:
            sig[name] = _ty(v)
    src = ASTSource(kernel, sig, const)
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options=dict(num_warps=num_warps))


def ptxas_usage(compiled, arch: int = 90) -> dict:
    """``{"registers": int, "spill_stores": int, "spill_loads": int}`` from ``ptxas -v`` on the PTX."""
    import triton

    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "k.ptx")
        with open(path, "w") as fh:
            fh.write(compiled.asm["ptx"])
        gpu = f"sm_{arch}a" if arch >= 90 else f"sm_{arch}"
        res = subprocess.run([ptxas, "-v", f"--gpu-name={gpu}", path, "-o", os.path.join(d, "k.cubin")],
                             capture_output=True, text=True)
    text = res.stdout + res.stderr
    regs = re.findall(r"Used (\d+) registers", text)
    spills = re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", text)
    return {"registers": int(regs[-1]) if regs else -1,
            "spill_stores": int(spills[-1][0]) if spills else -1,
            "spill_loads": int(spills[-1][1]) if spills else -1}


# ---------------------------------------------------------------------------------------------
# the variants compiled by tests/triton/test_gpu_compile.py (run as a script, without TRITON_INTERPRET)
# ---------------------------------------------------------------------------------------------
def _variants(full: bool = False):
    """``{name: fn}``: each fn calls one public op forward and backward on CPU tensors of
    representative shapes (the launches are captured, not run). ``full`` adds the variants that
    only change constants (bfloat16 loads, 8 warps at L=4, nu=1) to keep the test run short."""
    import gaunt_plugins.triton_kernels as tk
    from triton_cases import degrees, power_tables, product_tables

    def conv(l, c, dtype=torch.float32, message=None):
        y1, y2, f = product_tables(l, l, l, torch.float64 if dtype == torch.float64 else torch.float32)
        k = l + 1
        i = (l + 1) ** 2
        e = 64
        x1 = torch.randn(e, c, i).to(dtype).requires_grad_()
        sh = torch.randn(e, i).to(dtype).requires_grad_()
        w = torch.randn(e, 3 * k, c).to(dtype).requires_grad_()
        d = degrees(l)
        if message is None:
            return lambda: tk.conv_product(x1, sh, w, k, l + 1, d, d, d, y1, y2, f).sum().backward()
        ei = torch.randint(0, 16, (2, e))
        return lambda: tk.conv_message(x1[:16], sh, w, ei, 16, k, l + 1, d, d, d, y1, y2, f,
                                       deterministic=message).sum().backward()

    def wprod(l, c):
        y1, y2, f = product_tables(l, l, l)
        i = (l + 1) ** 2
        x1, x2 = torch.randn(64, c, i).requires_grad_(), torch.randn(64, c, i).requires_grad_()
        w = torch.randn(l + 1, c).requires_grad_()
        d = degrees(l)
        return lambda: tk.weighted_product(x1, x2, w, w, w, d, d, d, y1, y2, f).sum().backward()

    def mb(l, nu, c):
        y, fs = power_tables(l, nu, 1)
        x = torch.randn(64, c, (l + 1) ** 2).requires_grad_()
        wi = torch.randn(64, nu, l + 1, c).requires_grad_()
        wo = torch.randn(64, nu, 2, c).requires_grad_()
        return lambda: tk.many_body_product(x, wi, wo, degrees(l), degrees(1), y, fs).sum().backward()

    variants = {
        "self L=2 C=128": wprod(2, 128),
        "conv L=2 C=128": conv(2, 128),
        "conv L=2 C=128 float64": conv(2, 128, torch.float64),
        "message atomic L=2 C=128": conv(2, 128, message=False),
        "message deterministic L=2 C=128": conv(2, 128, message=True),
        "many-body nu=3 L=3 C=128": mb(3, 3, 128),
        "many-body nu=4 L=1 C=64": mb(1, 4, 64),
    }
    if full:
        variants.update({
            "conv L=4 C=64": conv(4, 64),
            "conv L=6 C=64": conv(6, 64),
            "conv L=2 C=128 bfloat16": conv(2, 128, torch.bfloat16),
            "many-body nu=1 L=2 C=64": mb(2, 1, 64),
            "many-body nu=3 L=2 C=128": mb(2, 3, 128),
        })
    return variants


def _compile_one(job):
    name, kernel_name, kwargs, arch = job
    from gaunt_plugins.triton_kernels import kernels
    kernel = getattr(kernels, kernel_name)
    import time
    t0 = time.perf_counter()
    try:
        compiled = compile_launch(kernel, kwargs, arch)
        usage = ptxas_usage(compiled, arch)
        return dict(variant=name, kernel=kernel_name, arch=arch, ok=True, num_warps=kwargs.get("num_warps"),
                    seconds=round(time.perf_counter() - t0, 1), **usage)
    except Exception as exc:  # reported, the test fails on it
        return dict(variant=name, kernel=kernel_name, arch=arch, ok=False, error=f"{type(exc).__name__}: {exc}")


def main(argv=None) -> int:
    import argparse
    import json
    import multiprocessing as mp
    import sys

    parser = argparse.ArgumentParser(description="compile every kernel variant for a GPU target, no GPU needed")
    parser.add_argument("--arch", type=int, nargs="+", default=[90])
    parser.add_argument("--only", default=None, help="substring of the variant names to compile")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--all", action="store_true", help="also the variants that only change constants")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        print("run without TRITON_INTERPRET", file=sys.stderr)
        return 2
    jobs = []
    for name, fn in _variants(args.all).items():
        if args.only and args.only not in name:
            continue
        for kernel, grid, kw in capture(fn):
            for arch in args.arch:
                # only the dtypes of tensors enter the signature: ship placeholders to the workers
                kw2 = {k: (torch.empty(0, dtype=v.dtype) if isinstance(v, torch.Tensor) else v)
                       for k, v in kw.items()}
                jobs.append((name, kernel.fn.__name__, kw2, arch))
    ctx = mp.get_context("fork")
    with ctx.Pool(max(1, args.jobs)) as pool:
        results = pool.map(_compile_one, jobs)
    print(json.dumps(results))
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    import sys
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    raise SystemExit(main())
