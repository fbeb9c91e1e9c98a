"""Padded, contiguous copies of the Gaunt tables in the kernels' compute dtype, cached.

The kernels read ``Y [IP, PP]``, ``F [PP, IOP]`` and degree slots ``d [IP]`` zero-padded to the
widths in :mod:`.constants`, so padded lanes contribute nothing and the inner loop needs no masks.
Building them is a handful of tiny copies; in eager mode they are cached per source tensor
(identity checked through a weak reference, plus the tensor's version counter, so an in-place
update of a table is seen). Under tracing (FakeTensor / functional tensors, ``torch.compile``)
nothing is cached and the padding is simply part of the graph.
"""
from __future__ import annotations

import weakref
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F

from .constants import grid_padded, padded

__all__ = ["compute_dtype", "pad2", "pad3", "cached", "degree_gather", "product_tables",
           "power_tables"]

_CACHE: dict = {}
_CACHE_MAX = 512


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; everything else (float32, float16, bfloat16) computes in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _plain(t: torch.Tensor) -> bool:
    return type(t) in (torch.Tensor, torch.nn.Parameter)


def cached(tag: str, tensors: Sequence[Optional[torch.Tensor]], params: tuple, build: Callable[[], object]):
    """``build()``, memoised on the identity and version of ``tensors`` (eager real tensors only)."""
    real = [t for t in tensors if t is not None]
    if torch.compiler.is_compiling() or not all(_plain(t) for t in real):
        return build()
    try:
        key = (tag, params) + tuple(
            (id(t), t._version, t.data_ptr(), tuple(t.shape), tuple(t.stride()), t.dtype, str(t.device))
            for t in real)
    except RuntimeError:  # inference tensors have no version counter
        return build()
    hit = _CACHE.get(key)
    if hit is not None and all(r() is t for r, t in zip(hit[0], real)):
        return hit[1]
    value = build()
    if len(_CACHE) >= _CACHE_MAX:
        _CACHE.clear()
    _CACHE[key] = ([weakref.ref(t) for t in real], value)
    return value


def pad2(t: torch.Tensor, rows: int, cols: int, dtype: torch.dtype) -> torch.Tensor:
    """``t [r, c]`` zero-padded to ``[rows, cols]``, contiguous, in ``dtype``."""
    r, c = t.shape
    return F.pad(t.to(dtype), (0, cols - c, 0, rows - r)).contiguous()


def pad3(t: torch.Tensor, rows: int, cols: int, dtype: torch.dtype) -> torch.Tensor:
    """``t [n, r, c]`` zero-padded to ``[n, rows, cols]``."""
    _, r, c = t.shape
    return F.pad(t.to(dtype), (0, cols - c, 0, rows - r)).contiguous()


def product_tables(y1: torch.Tensor, y2: torch.Tensor, f: torch.Tensor, dtype: torch.dtype):
    """Padded ``(Y1 [I1P, PP], Y2 [I2P, PP], F [PP, IOP])`` and the padded sizes."""
    def build():
        p = y1.shape[1]
        pp = grid_padded(p)
        i1p, i2p, iop = padded(y1.shape[0]), padded(y2.shape[0]), padded(f.shape[1])
        return (pad2(y1, i1p, pp, dtype), pad2(y2, i2p, pp, dtype), pad2(f, pp, iop, dtype),
                dict(I1P=i1p, I2P=i2p, IOP=iop, PP=pp))
    return cached("product", (y1, y2, f), (dtype,), build)


def power_tables(y: torch.Tensor, fs: torch.Tensor, dtype: torch.dtype):
    """Padded ``(Y [IP, PP], F [NU, PP, IOP])`` and the padded sizes."""
    def build():
        p = y.shape[1]
        pp = grid_padded(p)
        ip, iop = padded(y.shape[0]), padded(fs.shape[2])
        return pad2(y, ip, pp, dtype), pad3(fs, pp, iop, dtype), dict(IP=ip, IOP=iop, PP=pp)
    return cached("power", (y, fs), (dtype,), build)


def degree_gather(d: Optional[torch.Tensor], width: int, dtype: torch.dtype, like: torch.Tensor):
    """``(deg [IP] int32, scale [IP] dtype)`` of degree slots ``d [I]`` (the weight slot of each coefficient):
    the slots zero-padded to ``IP = padded(width)``, and 1 on the coefficients, 0 on the padding. The kernels
    gather per-degree weights with these; ``d`` None (no weight): all zero."""
    ip = padded(width)
    if d is None:
        return (torch.zeros(ip, dtype=torch.int32, device=like.device),
                torch.zeros(ip, dtype=dtype, device=like.device))

    def build():
        if tuple(d.shape) != (width,):
            raise ValueError(f"gaunt_triton: degree slots must be [{width}] (one per coefficient), got {list(d.shape)}")
        pad = ip - width
        scale = torch.ones(width, dtype=dtype, device=d.device)
        return (F.pad(d.to(torch.int32), (0, pad)).contiguous(), F.pad(scale, (0, pad)).contiguous())
    return cached("degree_gather", (d,), (dtype, ip), build)
