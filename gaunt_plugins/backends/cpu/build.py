"""Compile the kernels (``grid_product.c``, ``conv.c``, ``many_body.c``) once per source/flags/CPU and load them with ctypes.

The shared library is cached under ``$GAUNT_PLUGINS_CACHE`` (default ``~/.cache/gaunt_plugins``),
named by a hash of the source, the compiler flags and the CPU's instruction-set flags, so a cache
shared between machines never loads code the CPU cannot run. Set ``GAUNT_CPU_KERNELS=0`` to disable
the kernels (the layers then use the plain PyTorch path).
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Optional

__all__ = ["load_library", "cpu_kernels_available", "cpu_kernels_unavailable_reason"]

_SOURCES = [Path(__file__).with_name(name) for name in ("grid_product.c", "conv.c", "many_body.c")]
_HEADERS = [Path(__file__).with_name("simd_apply.h")]
# the arguments of every exported function: i = ptrdiff_t (sizes, strides), p = pointer
_SIGNATURES = {
    "gp_forward": "i" * 6 + "pipi" + "p" * 4,
    "gp_backward": "i" * 6 + "pipi" + "p" * 8,
    "conv_forward": "i" * 12 + "p" * 12,
    "conv_backward": "i" * 12 + "p" * 18,
    "msg_forward": "i" * 12 + "p" * 15,
    "msg_backward": "i" * 12 + "p" * 20,
    "mb_forward": "i" * 11 + "p" * 10,
    "mb_backward": "i" * 11 + "p" * 15,
}
# No -ffast-math: with GCC < 13 a shared library built with it turns on flush-to-zero for the
# whole process. These flags are the ones the reductions need to vectorise.
_BASE_FLAGS = ["-O3", "-fPIC", "-shared", "-std=c99", "-fno-math-errno", "-fassociative-math",
               "-fno-signed-zeros", "-fno-trapping-math"]


def _cpu_flags() -> list[str]:
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags.update(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    if platform.machine() in ("x86_64", "AMD64") and {"avx2", "fma"} <= flags:
        return ["-mavx2", "-mfma"]
    return []


def _cache_dir() -> Path:
    return Path(os.environ.get("GAUNT_PLUGINS_CACHE", Path.home() / ".cache" / "gaunt_plugins"))


def _compiler() -> Optional[str]:
    return os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc") or shutil.which("clang")


@lru_cache(maxsize=None)
def _load() -> tuple[Optional[ctypes.CDLL], Optional[str]]:
    if os.environ.get("GAUNT_CPU_KERNELS", "1") == "0":
        return None, "disabled by GAUNT_CPU_KERNELS=0"
    cc = _compiler()
    if cc is None:
        return None, "no C compiler found (gcc, cc or clang; or set CC)"
    flags = _BASE_FLAGS + _cpu_flags()
    key = hashlib.sha256(b"".join(src.read_bytes() for src in _SOURCES + _HEADERS) + " ".join([cc] + flags).encode()).hexdigest()[:16]
    target = _cache_dir() / f"gaunt_grid_product_{key}.so"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            out = Path(tmp) / target.name
            proc = subprocess.run([cc, *flags, "-o", str(out), *map(str, _SOURCES)], capture_output=True, text=True)
            if proc.returncode != 0:
                return None, f"compiling the CPU kernels failed: {proc.stderr.strip()[:500]}"
            os.replace(out, target)  # atomic: concurrent builders (DDP workers) never see half a file
    lib = ctypes.CDLL(str(target))
    kinds = {"i": ctypes.c_ssize_t, "p": ctypes.c_void_p}
    for suffix in ("f32", "f64"):
        for name, signature in _SIGNATURES.items():
            fn = getattr(lib, f"{name}_{suffix}")
            fn.argtypes = [kinds[c] for c in signature]
            fn.restype = ctypes.c_int
    return lib, None


def load_library() -> ctypes.CDLL:
    """The loaded kernels; ``RuntimeError`` with the reason when they cannot be built."""
    lib, reason = _load()
    if lib is None:
        raise RuntimeError(f"gaunt_plugins CPU kernels unavailable: {reason}")
    return lib


def cpu_kernels_available() -> bool:
    return _load()[0] is not None


def cpu_kernels_unavailable_reason() -> Optional[str]:
    return _load()[1]
