"""Fused Triton kernels for the Gaunt products, registered as ``torch.library`` custom ops.

Installed as ``gaunt_plugins.triton_kernels`` (import it only by that name). Importing it imports
Triton and registers the ``torch.ops.gaunt_triton.*`` ops; :mod:`gaunt_plugins.backends` imports it
lazily, only when the Triton backend is selected.

The functions below have the signatures of :mod:`gaunt_plugins.backends.torch_ops` (the reference
semantics) and return the same values; each runs one fused kernel per direction (the grid values
of a row never leave registers). Extra: :func:`conv_message`, the MACE message step (gather by
sender, convolution, sum into receivers) in one kernel, with a bit-reproducible variant.

Kernels need a CUDA device, or ``TRITON_INTERPRET=1`` set before this package is imported (CPU
interpreter, used by the tests; slow).
"""
from __future__ import annotations

from typing import Sequence, Union

import torch

from . import constants
from .ops import INTERPRET, NAMESPACE, OPS

__all__ = [
    "weighted_product",
    "conv_product",
    "many_body_product",
    "conv_message",
    "constants",
    "INTERPRET",
    "NAMESPACE",
    "OPS",
]


def _w3(w: torch.Tensor) -> torch.Tensor:
    """Shared ``[K, C]`` -> ``[1, K, C]``; per-row ``[N, K, C]`` unchanged."""
    return w.unsqueeze(0) if w.dim() == 2 else w


def weighted_product(x1: torch.Tensor, x2: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, w3: torch.Tensor,
                     deg1: torch.Tensor, deg2: torch.Tensor, deg3: torch.Tensor, to_grid1: torch.Tensor,
                     to_grid2: torch.Tensor, from_grid: torch.Tensor) -> torch.Tensor:
    """Fused :func:`gaunt_plugins.backends.torch_ops.weighted_product`: ``x1 [N, C, I1]``,
    ``x2 [N, C, I2]``, weights ``[K, C]`` (shared) or ``[N, K, C]`` -> ``[N, C, Io]``."""
    w1, w2, w3 = _w3(w1), _w3(w2), _w3(w3)
    return torch.ops.gaunt_triton.grid_product(
        x1, x2, w1, w2, w3, deg1, deg2, deg3, to_grid1, to_grid2, from_grid)


def conv_product(x1: torch.Tensor, sh: torch.Tensor, weight: torch.Tensor, k1: int, k2: int, deg1: torch.Tensor,
                 deg2: torch.Tensor, deg3: torch.Tensor, to_grid1: torch.Tensor, to_grid2: torch.Tensor,
                 from_grid: torch.Tensor) -> torch.Tensor:
    """Fused :func:`gaunt_plugins.backends.torch_ops.conv_product`: ``x1 [E, C, I1]``, ``sh [E, I2]``,
    ``weight [E, K1+K2+K3, C]`` -> ``[E, C, Io]``."""
    return torch.ops.gaunt_triton.conv_product(x1, sh, weight, int(k1), int(k2), deg1, deg2, deg3, to_grid1,
                                               to_grid2, from_grid)


def many_body_product(x: torch.Tensor, w_in: torch.Tensor, w_out: torch.Tensor, deg_in: torch.Tensor,
                      deg_out: torch.Tensor, to_grid: torch.Tensor,
                      from_grids: Union[torch.Tensor, Sequence[torch.Tensor]]) -> torch.Tensor:
    """Fused :func:`gaunt_plugins.backends.torch_ops.many_body_product`: ``x [N, C, I]``,
    ``w_in [N, nu, K, C]``, ``w_out [N, nu, Ko, C]``, ``from_grids [nu, P, Io]`` (or a list) -> ``[N, C, Io]``."""
    fs = from_grids if isinstance(from_grids, torch.Tensor) else torch.stack(list(from_grids))
    return torch.ops.gaunt_triton.many_body_product(x, w_in, w_out, deg_in, deg_out, to_grid, fs)


def conv_message(x: torch.Tensor, sh: torch.Tensor, weight: torch.Tensor, edge_index: torch.Tensor,
                 num_nodes: int, k1: int, k2: int, deg1: torch.Tensor, deg2: torch.Tensor, deg3: torch.Tensor,
                 to_grid1: torch.Tensor, to_grid2: torch.Tensor, from_grid: torch.Tensor,
                 deterministic: bool = False) -> torch.Tensor:
    """MACE message passing in one kernel: ``out [num_nodes, C, Io]``,
    ``out[v] = sum_{e: edge_index[1, e] = v} conv_product(x[edge_index[0, e]], sh[e], weight[e])``.

    ``deterministic=False``: one program per (edge block, channel block), float atomics into ``out``
    (and into ``dx`` in backward): fastest, summation order not fixed.
    ``deterministic=True``: edges sorted by receiver (by sender in backward), one program per node
    summing its segment in a fixed order: bit-reproducible run to run.
    """
    return torch.ops.gaunt_triton.conv_message(x, sh, weight, edge_index, int(num_nodes), int(k1), int(k2), deg1,
                                               deg2, deg3, to_grid1, to_grid2, from_grid, bool(deterministic))
