"""Fused CPU kernels (C, compiled on first use, called through ctypes): the grid product, the convolution on
flat e3nn features and the many-body power product, each with a one-pass backward.

The whole chain of a row runs with its grid values in a stack buffer, so no ``[rows, P]`` intermediate is
written to memory. :mod:`.executors` says which plans they serve and builds their executors; :mod:`.build`
compiles them; each kernel's stack limits are the ``#define`` lines of its source (:mod:`.limits`). The same
kernels are PyTorch operators (``torch.ops.gaunt.*``, :mod:`.library`) for TorchScript, ``torch.compile`` and C++
hosts; importing this package registers them when the cache already holds them.
"""
from .build import cpu_kernels_available, cpu_kernels_unavailable_reason
from .library import load_cached_ops
from .fused import grid_product_fused
from .ops import use_fused_kernels, weighted_product

load_cached_ops()

__all__ = ["grid_product_fused", "cpu_kernels_available", "cpu_kernels_unavailable_reason", "use_fused_kernels",
           "weighted_product"]
