"""The CPU kernels (C: the grid product, the convolution on flat e3nn features with the fused MACE message step, the
many-body power product, each with a one-pass backward) as the PyTorch operators ``torch.ops.gaunt.*``, whose
CUDA implementation is the composed reference (ATen operations, in ``ops.cpp``).

The whole chain of a row runs with its grid values in a stack buffer, so no ``[rows, P]`` intermediate is written
to memory. :mod:`.library` builds the operators (``ops.cpp`` linked with the kernels, compiled on first use with
the flags and private cache of :mod:`.build`) and registers them; :mod:`.fake` gives their shapes to
``torch.compile`` and the meta device; :mod:`.script` holds what the layers need to call them; each kernel's
stack limits are the ``#define`` lines of its source (:mod:`.limits`). Importing this package registers the
operators when the cache already holds them.
"""
from .library import load_cached_ops, load_ops, ops_available, ops_unavailable_reason

load_cached_ops()

__all__ = ["load_ops", "ops_available", "ops_unavailable_reason"]
