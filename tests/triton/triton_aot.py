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
