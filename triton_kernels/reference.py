"""Pure-PyTorch mirrors of the custom ops' own signatures.

They define what each op computes and serve the tests. The second-order gradients of
``many_body_product`` and ``conv_message`` (force training differentiates their backward once more)
are taken through these functions, which materialise the ``[rows, C, P]`` grid intermediate like
the PyTorch backend does (correct, not fused); the product and convolution ops have a fused second
order (see :mod:`.ops`). No Triton import here.
"""
from __future__ import annotations

from typing import Optional

import torch

__all__ = ["expand_weight", "grid_product_ref", "conv_product_ref", "many_body_ref", "conv_message_ref"]


def _cdt(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def expand_weight(w: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """``w [..., K, C]`` and degree slots ``d [I]`` -> ``[..., C, I]`` (per-degree weights on the coefficients)."""
    return w.transpose(-1, -2).index_select(-1, d)


def grid_product_ref(x1: torch.Tensor, x2: torch.Tensor, w1: Optional[torch.Tensor], w2: Optional[torch.Tensor],
                     w3: Optional[torch.Tensor], d1: Optional[torch.Tensor], d2: Optional[torch.Tensor],
                     d3: Optional[torch.Tensor], to_grid1: torch.Tensor, to_grid2: torch.Tensor,
                     from_grid: torch.Tensor) -> torch.Tensor:
    """``x1 [N, C, I1]``, ``x2 [N|1, C|1, I2]``, weights ``[N|1, K, C]`` or None -> ``[N, C, Io]``."""
    dt = x1.dtype
    c = _cdt(dt)
    a = x1.to(c)
    b = x2.to(c)
    if w1 is not None:
        a = a * expand_weight(w1.to(c), d1)
    if w2 is not None:
        b = b * expand_weight(w2.to(c), d2)
    out = torch.matmul(torch.matmul(a, to_grid1.to(c)) * torch.matmul(b, to_grid2.to(c)), from_grid.to(c))
    if w3 is not None:
        out = out * expand_weight(w3.to(c), d3)
    return out.expand(x1.shape[0], x1.shape[1], from_grid.shape[1]).to(dt)


def conv_product_ref(x1: torch.Tensor, sh: torch.Tensor, weight: torch.Tensor, k1: int, k2: int, d1: torch.Tensor,
                     d2: torch.Tensor, d3: torch.Tensor, to_grid1: torch.Tensor, to_grid2: torch.Tensor,
                     from_grid: torch.Tensor) -> torch.Tensor:
    """``x1 [E, C, I1]``, ``sh [E, I2]``, ``weight [E, K1+K2+K3, C]`` (degree-major) -> ``[E, C, Io]``."""
    return grid_product_ref(x1, sh.unsqueeze(1), weight[:, :k1], weight[:, k1:k1 + k2], weight[:, k1 + k2:],
                            d1, d2, d3, to_grid1, to_grid2, from_grid)


def many_body_ref(x: torch.Tensor, w_in: torch.Tensor, w_out: torch.Tensor, d_in: torch.Tensor,
                  d_out: torch.Tensor, to_grid: torch.Tensor, from_grids: torch.Tensor) -> torch.Tensor:
    """``x [N, C, I]``, ``w_in [N|1, NU, K, C]``, ``w_out [N|1, NU, Ko, C]``, ``from_grids [NU, P, Io]``."""
    dt = x.dtype
    c = _cdt(dt)
    xc = x.to(c)
    y = to_grid.to(c)
    out = None
    running = None
    for nu in range(from_grids.shape[0]):
        f = torch.matmul(xc * expand_weight(w_in[:, nu].to(c), d_in), y)
        running = f if running is None else running * f
        term = torch.matmul(running, from_grids[nu].to(c)) * expand_weight(w_out[:, nu].to(c), d_out)
        out = term if out is None else out + term
    assert out is not None
    return out.expand(x.shape[0], x.shape[1], from_grids.shape[2]).to(dt)


def conv_message_ref(x: torch.Tensor, sh: torch.Tensor, weight: torch.Tensor, edge_index: torch.Tensor,
                     num_nodes: int, k1: int, k2: int, d1: torch.Tensor, d2: torch.Tensor, d3: torch.Tensor,
                     to_grid1: torch.Tensor, to_grid2: torch.Tensor, from_grid: torch.Tensor,
                     deterministic: bool = False) -> torch.Tensor:
    """``out[v] = sum_{e: dst[e] = v} conv(x[src[e]], sh[e], weight[e])`` -> ``[num_nodes, C, Io]``."""
    msg = conv_product_ref(x.index_select(0, edge_index[0]), sh, weight, k1, k2, d1, d2, d3, to_grid1, to_grid2,
                           from_grid)
    out = msg.new_zeros(num_nodes, msg.shape[1], msg.shape[2])
    return out.index_add(0, edge_index[1], msg)
