"""The plans' cache: each plan is built once, on the CPU whatever torch's default device is."""
from __future__ import annotations

import functools

import torch

__all__ = ["cached_plan"]


def cached_plan(build):
    """``build`` cached (256 plans), its float64 master tables made on the CPU even under ``torch.device("meta")``
    or ``torch.set_default_device("cuda")``: the masters are shared by every later caller, who casts them to
    the device it needs."""
    @functools.lru_cache(maxsize=256)
    @functools.wraps(build)
    def cached(*args, **kwargs):
        with torch.device("cpu"):
            return build(*args, **kwargs)
    return cached
