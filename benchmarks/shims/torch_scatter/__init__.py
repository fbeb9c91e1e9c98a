"""A stand-in for ``torch_scatter`` where it cannot be installed (no wheel exists for every torch and CUDA).

fairchem-core imports ``from torch_scatter import scatter`` when it loads (``fairchem.core.common.utils``);
the EquiformerV2 training step that ``benchmarks/model_step.py`` times calls no ``torch_scatter`` function.
``gpu_suite.py`` puts this folder on ``PYTHONPATH`` for the EquiformerV2 stage only when the real package does
not import, and says so in its results. :func:`scatter` computes what ``torch_scatter.scatter`` does with
PyTorch's own ``scatter_add_`` / ``scatter_reduce_``.
"""
from __future__ import annotations

from typing import Optional

import torch

__version__ = "0+gaunt-plugins-benchmark-shim"
__all__ = ["scatter"]

_REDUCE = {"min": "amin", "max": "amax", "mul": "prod"}


def scatter(src: torch.Tensor, index: torch.Tensor, dim: int = -1, out: Optional[torch.Tensor] = None,
            dim_size: Optional[int] = None, reduce: str = "sum") -> torch.Tensor:
    """``torch_scatter.scatter``: reduce the slices of ``src`` along ``dim`` that share an ``index``
    (``index`` 1-D along ``dim`` or ``src``'s shape); ``reduce`` is sum/add, mean, min, max or mul;
    empty groups are 0 (mul: 1)."""
    dim = dim % src.dim()
    if index.dim() == 1:
        index = index.view([-1 if d == dim else 1 for d in range(src.dim())])
    index = index.expand_as(src)
    if out is None:
        size = list(src.shape)
        size[dim] = dim_size if dim_size is not None else (int(index.max()) + 1 if index.numel() else 0)
        out = src.new_ones(size) if reduce == "mul" else src.new_zeros(size)
    if reduce in ("sum", "add"):
        return out.scatter_add_(dim, index, src)
    if reduce == "mean":
        total = out.scatter_add_(dim, index, src)
        count = torch.zeros_like(total).scatter_add_(dim, index, torch.ones_like(src))
        return total / count.clamp(min=1)
    if reduce in _REDUCE:
        return out.scatter_reduce_(dim, index, src, reduce=_REDUCE[reduce], include_self=reduce == "mul")
    raise ValueError(f"scatter: unknown reduce {reduce!r}; choose sum, add, mean, min, max or mul")
