"""Executors: one plan, one way to run it, on e3nn's flat layout at both ends.

An executor is prepared once per (layer, device, dtype) by the dispatch (:mod:`.dispatch`) and called
on every forward. The ones here wrap a *dense* implementation (the PyTorch reference of
:mod:`.torch_ops`, the CPU grid-product kernel, the Triton ops: same signatures) between the gathers of
the plan: flat -> dense on the way in, dense -> flat on the way out. Backends with a natively flat
kernel (the CPU convolution and many-body kernels) provide their own executors with the same calls.

Calls (``compute`` = float64 for float64 inputs, float32 otherwise; the caller casts):

- product: ``(x1 [N, D1], x2 [N, D2], w1, w2, w3) -> [N, Do]``, weights ``[K, C]`` or ``[N, K, C]``;
- conv: ``(x1 [E, D1], sh [E, D2], weight [E, (K1+K2+K3) P C]) -> [E, Do]``;
- message: ``(x [N, D1], sh [E, D2], weight [E, ...], edge_index [2, E], num_nodes) -> [num_nodes, Do]``
  with ``out[v] = sum_{e: edge_index[1, e] = v} conv(x[edge_index[0, e]], sh[e], weight[e])``;
- many_body: ``(x [N, C, Ic] compact, w_in [N, nu, K, chains C], w_out [N, nu, Ko, chains C]) -> [N, Do]``;
- functional: ``(x1 [..., I1], x2 [..., I2]) -> [broadcast(...), Io]`` (the plan's ``lmax_out``).
"""
from __future__ import annotations

from typing import Callable, Dict, NamedTuple, Optional

import torch

from . import torch_ops

__all__ = ["Executor", "ProductExecutor", "ConvExecutor", "ScalarNodeConv", "MessageExecutor", "GatherScatterMessage",
           "ManyBodyExecutor", "FunctionalGrid", "FunctionalFourier", "DenseOps", "dense_executor", "flat_to_dense",
           "dense_to_flat"]


def flat_to_dense(x: torch.Tensor, index: torch.Tensor, lanes: int, width: int) -> torch.Tensor:
    """``x [B, dim]`` -> ``[B, lanes, width]`` with zeros where the feature lacks a degree (``index`` gathers
    from ``x`` extended by one zero column)."""
    padded = torch.cat([x, x.new_zeros(x.shape[0], 1)], dim=1)
    return padded.index_select(1, index).view(x.shape[0], lanes, width)


def dense_to_flat(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``x [B, lanes, width]`` -> flat ``[B, dim]`` through the gather ``index [dim]``."""
    return x.reshape(x.shape[0], -1).index_select(1, index)


class Executor:
    """``backend``: the backend family a user selects (``torch`` or ``triton``); ``name``: what runs."""

    backend = "torch"
    name = "torch-reference"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name})"


class ProductExecutor(Executor):
    def __init__(self, plan, t: Dict[str, torch.Tensor], dense: Callable, backend: str, name: str):
        self.plan, self.t, self.dense, self.backend, self.name = plan, t, dense, backend, name

    def __call__(self, x1, x2, w1, w2, w3):
        p, t = self.plan, self.t
        i1, i2, _ = p.widths
        a = flat_to_dense(x1, t["index_in1"], p.channels, i1)
        b = flat_to_dense(x2, t["index_in2"], p.channels, i2)
        out = self.dense(a, b, w1, w2, w3, t["deg1"], t["deg2"], t["deg3"], t["to_grid1"], t["to_grid2"],
                         t["from_grid"])
        return dense_to_flat(out, t["index_out"])


class _Conv(Executor):
    """A convolution executor: ``__call__`` takes the flat harmonics, :meth:`with_dense_harmonics` dense ones."""

    def __call__(self, x1, sh, weight):
        i2 = self.plan.widths[1]
        return self.with_dense_harmonics(x1, flat_to_dense(sh, self.t["index_in2"], 1, i2).view(sh.shape[0], i2),
                                         weight)

    def with_dense_harmonics(self, x1, shd, weight):
        raise NotImplementedError


class ConvExecutor(_Conv):
    def __init__(self, plan, t: Dict[str, torch.Tensor], dense: Callable, backend: str, name: str):
        self.plan, self.t, self.dense, self.backend, self.name = plan, t, dense, backend, name

    def with_dense_harmonics(self, x1, shd, weight):
        """The same with the harmonics already dense, ``shd [E, I2]``."""
        p, t = self.plan, self.t
        a = flat_to_dense(x1, t["index_in1"], p.lanes, p.widths[0])
        w = weight.view(weight.shape[0], -1, p.lanes)
        out = self.dense(a, shd, w, p.in1.num_degrees, t["deg1"], t["deg_mask2"], t["deg3"], t["to_grid1"],
                         t["to_grid2"], t["from_grid"])
        return dense_to_flat(out, t["index_out"])


class ScalarNodeConv(_Conv):
    """The convolution of scalar node features (``in1 = C x 0e``, e.g. MACE's first interaction): a degree-0
    factor only scales, so ``out[k] = w3[k] coupling[k] (b + w1) x (b + w2[k]) sh[k]`` coefficient by coefficient,
    no grid (``coupling[k] = N_l Y_00`` from the plan's tables). Any device, differentiable to any order."""

    def __init__(self, plan, t: Dict[str, torch.Tensor]):
        self.plan, self.t = plan, t
        self.name = "torch-scalar-nodes"
        io = plan.widths[2]
        # the Gaunt coefficient of (0 0, l m -> l m) with the output normalisation: zero off the diagonal
        self.coupling = torch.einsum("p,kp,pk->k", t["to_grid1"][0], t["to_grid2"][:io], t["from_grid"])

    def with_dense_harmonics(self, x1, shd, weight):
        p, t = self.plan, self.t
        k1, k2, _ = p.num_degrees
        io = p.widths[2]
        w = weight.view(weight.shape[0], -1, p.lanes)  # [E, K1 + K2 + K3, lanes]
        a = flat_to_dense(x1, t["index_in1"], p.lanes, 1)[:, :, 0] * w[:, 0]  # [E, lanes]
        w2 = w[:, k1:k1 + k2].transpose(1, 2).index_select(2, t["deg2"][:io])  # [E, lanes, Io]
        w3 = w[:, k1 + k2:].transpose(1, 2).index_select(2, t["deg3"])
        out = (a.unsqueeze(2) * w2) * (shd[:, None, :io] * (self.coupling * w3))
        return dense_to_flat(out, t["index_out"])


class GatherScatterMessage(Executor):
    """The message as gather -> a conv executor -> scatter-sum (the per-edge messages are materialised)."""

    def __init__(self, conv: Callable, backend: str, name: str, deterministic: bool = False):
        self.conv, self.backend, self.name, self.deterministic = conv, backend, name, deterministic

    def __call__(self, x, sh, weight, edge_index, num_nodes: int):
        return self.scatter(self.conv(x.index_select(0, edge_index[0]), sh, weight), edge_index[1], num_nodes)

    def with_dense_harmonics(self, x, shd, weight, edge_index, num_nodes: int):
        """The same with the harmonics already dense, ``shd [E, I2]`` (the conv must be a :class:`ConvExecutor`)."""
        msg = self.conv.with_dense_harmonics(x.index_select(0, edge_index[0]), shd, weight)
        return self.scatter(msg, edge_index[1], num_nodes)

    def scatter(self, msg, dst, num_nodes: int):
        if self.deterministic and msg.is_cuda:
            # segment sums over receiver-sorted edges: a fixed order (index_add_ uses atomics on CUDA)
            perm = torch.argsort(dst, stable=True)
            counts = torch.bincount(dst, minlength=int(num_nodes))
            return torch.segment_reduce(msg.index_select(0, perm), "sum", lengths=counts, axis=0, unsafe=True)
        return msg.new_zeros((int(num_nodes), msg.shape[1])).index_add(0, dst, msg)


class MessageExecutor(Executor):
    """A dense fused message op (gather, convolution and scatter in one kernel) between the plan's gathers."""

    def __init__(self, plan, t: Dict[str, torch.Tensor], dense: Callable, backend: str, name: str,
                 deterministic: bool = False):
        self.plan, self.t, self.dense, self.backend, self.name = plan, t, dense, backend, name
        self.deterministic = deterministic

    def __call__(self, x, sh, weight, edge_index, num_nodes: int):
        p, t = self.plan, self.t
        i1, i2, _ = p.widths
        a = flat_to_dense(x, t["index_in1"], p.lanes, i1)
        shd = flat_to_dense(sh, t["index_in2"], 1, i2).view(sh.shape[0], i2)
        w = weight.view(weight.shape[0], -1, p.lanes)
        out = self.dense(a, shd, w, edge_index, int(num_nodes), p.in1.num_degrees, t["deg1"], t["deg_mask2"],
                         t["deg3"], t["to_grid1"], t["to_grid2"], t["from_grid"], deterministic=self.deterministic)
        return dense_to_flat(out, t["index_out"])


class ManyBodyExecutor(Executor):
    def __init__(self, plan, t: Dict[str, torch.Tensor], dense: Callable, backend: str, name: str):
        self.plan, self.t, self.dense, self.backend, self.name = plan, t, dense, backend, name

    def __call__(self, x, w_in, w_out):
        p, t = self.plan, self.t
        xd = x
        if p.compact_width != p.widths[0]:
            xd = torch.cat([x, x.new_zeros(x.shape[0], x.shape[1], 1)], dim=2).index_select(2, t["index_in"])
        if p.chains > 1:
            xd = xd.repeat(1, p.chains, 1)
        out = self.dense(xd, w_in, w_out, t["deg_in"], t["deg_out"], t["to_grid"], t["from_grids"])
        if p.chains > 1:  # [N, chains C, Io] -> the chains of each channel summed
            out = out.view(out.shape[0], p.chains, p.channels, out.shape[-1]).sum(1)
        return dense_to_flat(out, t["index_out"])


class FunctionalGrid(Executor):
    """``proj((x1 @ Y1) * (x2 @ Y2))`` through ``rows(u [R, I1], v [R, I2], Y1, Y2, F) -> [R, Io]`` (a fused
    kernel on equal rows) or, with ``rows=None``, the broadcasting reference."""

    def __init__(self, plan, t: Dict[str, torch.Tensor], rows: Callable = None, backend: str = "torch",
                 name: str = "torch-reference"):
        self.plan, self.t, self.rows, self.backend, self.name = plan, t, rows, backend, name

    def __call__(self, x1, x2):
        t = self.t
        if self.rows is None:
            return torch_ops.grid_product(x1, x2, t["to_grid1"], t["to_grid2"], t["from_grid"])
        a, b = torch.broadcast_tensors(x1[..., :1], x2[..., :1])
        shape = a.shape[:-1]
        u = x1.expand(shape + x1.shape[-1:]).reshape(-1, x1.shape[-1])
        v = x2.expand(shape + x2.shape[-1:]).reshape(-1, x2.shape[-1])
        out = self.rows(u, v, t["to_grid1"], t["to_grid2"], t["from_grid"])
        return out.reshape(shape + out.shape[-1:])


class FunctionalFourier(Executor):
    """The paper's 2D Fourier path (reference only)."""

    def __init__(self, plan, t: Dict[str, torch.Tensor]):
        self.plan, self.t = plan, t
        self.name = "torch-reference-fourier"

    def __call__(self, x1, x2):
        t = self.t
        return torch_ops.fourier_product(x1, x2, t["to_fourier1"], t["to_fourier2"], t["from_fourier"],
                                         self.plan.torus)


class DenseOps(NamedTuple):
    """A backend's dense implementations (the signatures of :mod:`.torch_ops`); ``conv_message=None``: the
    message is gather -> ``conv_product`` -> scatter-sum; ``grid_rows(u, v, Y1, Y2, F)`` on equal rows, or
    ``None`` for the broadcasting reference."""

    weighted_product: Callable
    conv_product: Callable
    conv_message: Optional[Callable]
    many_body_product: Callable
    grid_rows: Optional[Callable]


def dense_executor(kind: str, plan, t: Dict[str, torch.Tensor], ops: DenseOps, backend: str, name: str,
                   deterministic: bool = False) -> Executor:
    """The executor of ``kind`` that runs ``ops`` between the plan's gathers."""
    if kind == "product":
        return ProductExecutor(plan, t, ops.weighted_product, backend, name)
    if kind == "conv":
        return ConvExecutor(plan, t, ops.conv_product, backend, name)
    if kind == "message":
        if ops.conv_message is None:
            return GatherScatterMessage(ConvExecutor(plan, t, ops.conv_product, backend, name), backend, name,
                                        deterministic)
        return MessageExecutor(plan, t, ops.conv_message, backend, name, deterministic)
    if kind == "many_body":
        return ManyBodyExecutor(plan, t, ops.many_body_product, backend, name)
    if kind == "functional":
        if plan.method != "grid":
            return FunctionalFourier(plan, t)
        return FunctionalGrid(plan, t, ops.grid_rows, backend, name)
    raise ValueError(f"unknown Gaunt executor kind {kind!r}")
