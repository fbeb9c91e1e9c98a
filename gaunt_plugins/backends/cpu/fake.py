"""Shapes of the ``torch.ops.gaunt`` operators (:mod:`.library`) for ``torch.compile`` and the meta device.

Imported once the operators are registered; each function returns empty tensors of the operator's output shapes.
"""
from __future__ import annotations

import torch

__all__: list = []


@torch.library.register_fake("gaunt::grid_product")
def _grid_product(u, v, to_grid1, to_grid2, from_grid):
    return u.new_empty(u.shape[0], from_grid.shape[1])


@torch.library.register_fake("gaunt::grid_product_backward")
def _grid_product_backward(grad, u, v, to_grid1, to_grid2, from_grid):
    return torch.empty_like(u), v.new_empty(v.shape, dtype=u.dtype)


@torch.library.register_fake("gaunt::conv")
def _conv(x1, sh, weight, offsets_in1, offsets_out, deg1, deg2, deg3, to_grid1, to_grid2, from_grid, k1, k2,
          dim_out):
    return x1.new_empty(x1.shape[0], dim_out)


def _conv_grads(x, sh, weight):
    return torch.empty_like(x), sh.new_empty(sh.shape, dtype=x.dtype), weight.new_empty(weight.shape, dtype=x.dtype)


@torch.library.register_fake("gaunt::conv_backward")
def _conv_backward(grad, x1, sh, weight, *tables):
    return _conv_grads(x1, sh, weight)


@torch.library.register_fake("gaunt::message")
def _message(x, sh, weight, edge_index, num_nodes, offsets_in1, offsets_out, deg1, deg2, deg3, to_grid1, to_grid2,
             from_grid, k1, k2, dim_out):
    return x.new_empty(num_nodes, dim_out)


@torch.library.register_fake("gaunt::message_backward")
def _message_backward(grad, x, sh, weight, edge_index, num_nodes, *tables):
    return _conv_grads(x, sh, weight)


@torch.library.register_fake("gaunt::many_body")
def _many_body(x, w_in, w_out, offsets_in, offsets_out, deg_in, deg_out, to_grid, from_grids, dim_out):
    return x.new_empty(x.shape[0], dim_out)


@torch.library.register_fake("gaunt::many_body_backward")
def _many_body_backward(grad, x, w_in, w_out, *tables):
    return torch.empty_like(x), w_in.new_empty(w_in.shape, dtype=x.dtype), w_out.new_empty(w_out.shape, dtype=x.dtype)
