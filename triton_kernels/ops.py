"""``torch.library`` registration of the fused Gaunt kernels: custom ops, autograd, fake tensors.

Ops (namespace ``gaunt_triton``), all taking degree *slots* ``d [I]`` (long: the weight slot of each
coefficient, as every Gaunt plan hands them out; see :mod:`.reference` for the exact math of each):

- ``grid_product(x1, x2, w1?, w2?, w3?, d1?, d2?, d3?, to_grid1, to_grid2, from_grid)``: channel-wise
  weighted product; ``x2`` and the weights broadcast over rows (and ``x2`` over channels) when that
  dimension is 1.
- ``conv_product(x1, sh, weight, k1, k2, d1, d2, d3, to_grid1, to_grid2, from_grid)``: MACE convolution with
  one per-edge weight tensor ``[E, K1+K2+K3, C]``.
- ``many_body_product(x, w_in, w_out, d_in, d_out, to_grid, from_grids)``: power product, nu <= 4.
- ``conv_message(x, sh, weight, edge_index, num_nodes, k1, k2, d1, d2, d3, to_grid1, to_grid2, from_grid,
  deterministic)``: gather by sender, convolution, sum into receivers, one kernel.
- ``*_backward``: the fused gradients of each (recomputing the grid chunks).

Registration: on a GPU build, ``torch.library.triton_op`` + ``wrap_triton``, so ``torch.compile``
traces into the kernels (the op body is its own fake implementation). Under ``TRITON_INTERPRET=1``
(CPU tests) ``wrap_triton`` cannot trace interpreted kernels, so the same bodies are registered
with ``torch.library.custom_op`` plus the explicit fake implementations below: the ops stay opaque
to the compiler but autograd, fake tensors, ``opcheck`` and ``torch.compile(fullgraph=True)``
behave the same.

Autograd: ``register_autograd`` on every forward op calls its fused backward op, and the backward
ops are differentiable once more (second order, which force training needs): for ``grid_product``
and ``conv_product`` the first-order gradients are themselves Gaunt products with transposed tables
(``d/da`` of ``((a Y1) * (b Y2)) F`` at cotangent ``h`` is ``((h F^T) * (b Y2)) Y1^T``), so the second
order runs on the same fused kernels; for ``many_body_product`` and ``conv_message`` it goes through
:mod:`.reference` (unfused, one warning). Third order raises ``NotImplementedError``.
"""
import inspect
import os
import warnings
from typing import List, Optional, Tuple

import torch
from torch import Tensor
from torch.library import wrap_triton

import triton

from . import constants as K
from .kernels import gp_bwd_kernel, gp_fwd_kernel, mb_bwd_kernel, mb_fwd_kernel, msg_bwd_segment_kernel, \
    msg_fwd_segment_kernel
from .reference import conv_message_ref, expand_weight, many_body_ref
from .tables import compute_dtype, degree_gather, power_tables, product_tables

__all__ = ["INTERPRET", "NAMESPACE", "OPS"]

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
NAMESPACE = "gaunt_triton"
OPS = {}
_BODIES = {}  # op name -> its Python body (whose signature is the op's schema)


def _define(name, fake):
    qual = f"{NAMESPACE}::{name}"

    def deco(fn):
        _BODIES[name] = fn
        if INTERPRET:
            op = torch.library.custom_op(qual, fn, mutates_args=())
            op.register_fake(fake)
        else:
            op = torch.library.triton_op(qual, fn, mutates_args=())
        OPS[name] = op
        return op
    return deco


def _launch(kernel, grid, **kwargs):
    wrap_triton(kernel)[grid](**kwargs)


def _lastc(t: Tensor) -> Tensor:
    """Last dimension contiguous (the kernels index coefficients with stride 1)."""
    return t if t.shape[-1] <= 1 or t.stride(-1) == 1 else t.contiguous()


def _s(t: Tensor, d: int) -> int:
    """Stride of dimension ``d``, 0 where the dimension broadcasts (size 1)."""
    return 0 if t.shape[d] == 1 else t.stride(d)


def _empty(like: Tensor) -> Tensor:
    return like.new_empty(0)


def _no_table_grads(needs, what: str) -> None:
    if any(needs):
        raise NotImplementedError(f"gaunt_triton::{what}: gradients with respect to the tables are not "
                                  f"implemented (they are constants of the layer)")


def _wcheck(w: Optional[Tensor], dim: int) -> None:
    if w is not None and w.dim() != dim:
        raise ValueError(f"gaunt_triton: weights must have {dim} dimensions, got shape {list(w.shape)}")


# ----------------------------------------------------------------------------------------------
# launchers
# ----------------------------------------------------------------------------------------------
def _gp_common(x1, x2, w1, w2, w3, d1, d2, d3, y1, y2, f):
    cdt = compute_dtype(x1.dtype)
    y1p, y2p, fp, sz = product_tables(y1, y2, f, cdt)
    i1, i2, io = y1.shape[0], y2.shape[0], f.shape[1]
    gk = {}
    for j, (d, width) in enumerate(((d1, i1), (d2, i2), (d3, io)), start=1):
        gk[f"dg{j}_ptr"], gk[f"sc{j}_ptr"] = degree_gather(d, width, cdt, x1)
    sizes = dict(I1P=sz["I1P"], I2P=sz["I2P"], IOP=sz["IOP"], PP=sz["PP"], BLOCK_P=K.BLOCK_P)
    return cdt, (y1p, y2p, fp, gk), sizes, (i1, i2, io)


def _wargs(prefix: str, w: Optional[Tensor], dummy: Tensor, packed_k: int = 0):
    """Pointer and strides of a weight ``[N|1, K, C]`` (packed: the slot offset is applied in-kernel)."""
    if w is None:
        return {f"{prefix}_ptr": dummy}, {f"s_{prefix}n": 0, f"s_{prefix}k": 0, f"s_{prefix}c": 0}, 1
    return ({f"{prefix}_ptr": w},
            {f"s_{prefix}n": _s(w, 0), f"s_{prefix}k": w.stride(1), f"s_{prefix}c": w.stride(2)},
            w.shape[1])


def _gp_forward(x1: Tensor, x2: Tensor, w1, w2, w3, d1, d2, d3, y1, y2, f, *, packed=None, message=None,
                n_out: int = 0) -> Tensor:
    """Launch ``gp_fwd_kernel``. ``packed = (weight, k1, k2)`` for one per-edge weight tensor;
    ``message = (src, dst)`` to gather x1 by ``src`` and scatter-add into ``n_out`` receivers."""
    x1, x2 = _lastc(x1), _lastc(x2)
    cdt, (y1p, y2p, fp, gk), sz, (i1, i2, io) = _gp_common(x1, x2, w1, w2, w3, d1, d2, d3, y1, y2, f)
    c = x1.shape[1]
    n = x2.shape[0] if message is not None else x1.shape[0]
    if packed is not None:
        weight, k1, k2 = packed
        kk = weight.shape[1]
        wp = dict(w1_ptr=weight, w2_ptr=weight, w3_ptr=weight)
        ws = {}
        for p in ("w1", "w2", "w3"):
            ws.update({f"s_{p}n": weight.stride(0), f"s_{p}k": weight.stride(1), f"s_{p}c": weight.stride(2)})
        kdims = (k1, k2, kk - k1 - k2)
        has = (True, True, True)
    else:
        wp, ws, kdims, has = {}, {}, [], []
        for p, w in (("w1", w1), ("w2", w2), ("w3", w3)):
            a, b, k = _wargs(p, w, x1)
            wp.update(a)
            ws.update(b)
            kdims.append(k)
            has.append(w is not None)
    if message is not None:
        src, dst = message
        out = torch.zeros(n_out, c, io, dtype=cdt, device=x1.device)
    else:
        src = dst = x1
        out = x1.new_empty(n, c, io)
    block_r, block_c = K.tile_shape(c, K.BLOCK_M_FWD)
    grid = (triton.cdiv(n, block_r), triton.cdiv(c, block_c))
    if n > 0 and c > 0:
        _launch(gp_fwd_kernel, grid,
                x1_ptr=x1, x2_ptr=x2, **wp, **gk, y1_ptr=y1p, y2_ptr=y2p, f_ptr=fp,
                out_ptr=out, src_ptr=src, dst_ptr=dst,
                N=n, N_OUT=n_out, C=c, I1=i1, I2=i2, IO=io, K1=kdims[0], K2=kdims[1], K3=kdims[2],
                s_x1n=x1.stride(0), s_x1c=x1.stride(1), s_x2n=_s(x2, 0), s_x2c=_s(x2, 1), **ws,
                s_on=out.stride(0), s_oc=out.stride(1),
                HAS_W1=has[0], HAS_W2=has[1], HAS_W3=has[2], MESSAGE=message is not None,
                W_PACKED=packed is not None, BLOCK_R=block_r, BLOCK_C=block_c, **sz,
                num_warps=K.num_warps_for(sz["I1P"], sz["I2P"], sz["IOP"]))
    if message is not None and out.dtype != x1.dtype:
        out = out.to(x1.dtype)
    return out


def _gp_backward(go: Tensor, x1: Tensor, x2: Tensor, w1, w2, w3, d1, d2, d3, y1, y2, f,
                 need: Tuple[bool, bool, bool, bool, bool], *, packed=None, message=None) -> List[Tensor]:
    """Launch ``gp_bwd_kernel``; returns ``[dx1, dx2, dw1, dw2, dw3]`` (``dw1`` = the whole packed weight
    gradient when ``packed``), empty tensors where not needed, each shaped like its input."""
    go, x1, x2 = _lastc(go), _lastc(x1), _lastc(x2)
    cdt, (y1p, y2p, fp, gk), sz, (i1, i2, io) = _gp_common(x1, x2, w1, w2, w3, d1, d2, d3, y1, y2, f)
    c = x1.shape[1]
    n = x2.shape[0] if message is not None else x1.shape[0]
    need_dx1, need_dx2, need_dw1, need_dw2, need_dw3 = need
    block_r, block_c = K.tile_shape(c, K.BLOCK_M_BWD)
    ncb = triton.cdiv(c, block_c)
    grid = (triton.cdiv(n, block_r), ncb)
    x2_bcast = x2.shape[1] == 1 and c > 1
    # outputs (per-row buffers for anything that broadcasts over rows; summed afterwards)
    if need_dx1:
        dx1 = (torch.zeros(x1.shape, dtype=cdt, device=x1.device) if message is not None
               else x1.new_empty(x1.shape))
    else:
        dx1 = _empty(x1)
    if need_dx2:
        dx2 = x2.new_empty((ncb, n, x2.shape[2]) if x2_bcast else (n, c, x2.shape[2]),
                           dtype=cdt if (x2_bcast or x2.shape[0] != n) else x2.dtype)
    else:
        dx2 = _empty(x2)
    if x2_bcast and need_dx2:
        s_d2b, s_d2n, s_d2c = dx2.stride(0), dx2.stride(1), 0
    elif need_dx2:
        s_d2b, s_d2n, s_d2c = 0, dx2.stride(0), dx2.stride(1)
    else:
        s_d2b = s_d2n = s_d2c = 0
    ws, wp, es, ep, kdims, has, douts = {}, {}, {}, {}, [], [], []
    if packed is not None:
        weight, k1, k2 = packed
        kk = weight.shape[1]
        kdims = [k1, k2, kk - k1 - k2]
        has = [True, True, True]
        dweight = weight.new_empty(weight.shape) if (need_dw1 or need_dw2 or need_dw3) else _empty(weight)
        for p in ("w1", "w2", "w3"):
            wp[f"{p}_ptr"] = weight
            ws.update({f"s_{p}n": weight.stride(0), f"s_{p}k": weight.stride(1), f"s_{p}c": weight.stride(2)})
        for p in ("e1", "e2", "e3"):
            es.update({f"s_{p}n": dweight.stride(0) if dweight.numel() else 0,
                       f"s_{p}k": dweight.stride(1) if dweight.numel() else 0,
                       f"s_{p}c": dweight.stride(2) if dweight.numel() else 0})
        ep = dict(dw1_ptr=dweight if dweight.numel() else x1, dw2_ptr=x1, dw3_ptr=x1)
    else:
        for idx, (p, e, w, nd) in enumerate((("w1", "e1", w1, need_dw1), ("w2", "e2", w2, need_dw2),
                                             ("w3", "e3", w3, need_dw3))):
            a, b, k = _wargs(p, w, x1)
            wp.update(a)
            ws.update(b)
            kdims.append(k)
            has.append(w is not None)
            if nd and w is not None:
                buf = w.new_empty((n, w.shape[1], w.shape[2]), dtype=cdt if w.shape[0] != n else w.dtype)
                ep[f"d{p}_ptr"] = buf
                es.update({f"s_{e}n": buf.stride(0), f"s_{e}k": buf.stride(1), f"s_{e}c": buf.stride(2)})
            else:
                buf = None
                ep[f"d{p}_ptr"] = x1
                es.update({f"s_{e}n": 0, f"s_{e}k": 0, f"s_{e}c": 0})
            douts.append(buf)
    src, dst = message if message is not None else (x1, x1)
    if n > 0 and c > 0:
        _launch(gp_bwd_kernel, grid,
                go_ptr=go, x1_ptr=x1, x2_ptr=x2, **wp, **gk,
                y1_ptr=y1p, y2_ptr=y2p, f_ptr=fp,
                dx1_ptr=dx1 if need_dx1 else x1, dx2_ptr=dx2 if need_dx2 else x1, **ep,
                src_ptr=src, dst_ptr=dst,
                N=n, C=c, I1=i1, I2=i2, IO=io, K1=kdims[0], K2=kdims[1], K3=kdims[2],
                s_gn=go.stride(0), s_gc=go.stride(1), s_x1n=x1.stride(0), s_x1c=x1.stride(1),
                s_x2n=_s(x2, 0), s_x2c=_s(x2, 1), **ws,
                s_d1n=dx1.stride(0) if need_dx1 else 0, s_d1c=dx1.stride(1) if need_dx1 else 0,
                s_d2b=s_d2b, s_d2n=s_d2n, s_d2c=s_d2c, **es,
                HAS_W1=has[0], HAS_W2=has[1], HAS_W3=has[2], MESSAGE=message is not None, X2_BCAST=x2_bcast,
                W_PACKED=packed is not None,
                NEED_DX1=need_dx1, NEED_DX2=need_dx2, NEED_DW1=need_dw1 and has[0], NEED_DW2=need_dw2 and has[1],
                NEED_DW3=need_dw3 and has[2],
                BLOCK_R=block_r, BLOCK_C=block_c, **sz,
                num_warps=K.num_warps_for(sz["I1P"], sz["I2P"], sz["IOP"]))
    elif n == 0 or c == 0:
        for t in (dx1, dx2):
            if t.numel():
                t.zero_()
    # reductions for broadcast inputs
    if need_dx1 and dx1.dtype != x1.dtype:
        dx1 = dx1.to(x1.dtype)
    if need_dx2:
        if x2_bcast:
            dx2 = dx2.sum(0).unsqueeze(1)  # [n, 1, I2]
        if x2.shape[0] != n:
            dx2 = dx2.sum(0, keepdim=True)
        dx2 = dx2.to(x2.dtype)
    if packed is not None:
        return [dx1, dx2, dweight, _empty(x1), _empty(x1)]
    res = []
    for w, buf in zip((w1, w2, w3), douts):
        if buf is None:
            res.append(_empty(x1))
        elif w.shape[0] != n:
            res.append(buf.sum(0, keepdim=True).to(w.dtype))
        else:
            res.append(buf)
    return [dx1, dx2] + res


# ----------------------------------------------------------------------------------------------
# grid_product
# ----------------------------------------------------------------------------------------------
def _grid_product_fake(x1, x2, w1, w2, w3, d1, d2, d3, to_grid1, to_grid2, from_grid):
    return x1.new_empty(x1.shape[0], x1.shape[1], from_grid.shape[1])


@_define("grid_product", _grid_product_fake)
def grid_product(x1: Tensor, x2: Tensor, w1: Optional[Tensor], w2: Optional[Tensor], w3: Optional[Tensor],
                 d1: Optional[Tensor], d2: Optional[Tensor], d3: Optional[Tensor], to_grid1: Tensor,
                 to_grid2: Tensor, from_grid: Tensor) -> Tensor:
    """``w3e * proj((w1e x1) (*) (w2e x2))``: ``x1 [N, C, I1]``, ``x2 [N|1, C|1, I2]``, ``w [N|1, K, C]``."""
    return _gp_forward(x1, x2, w1, w2, w3, d1, d2, d3, to_grid1, to_grid2, from_grid)


def _grid_product_backward_fake(grad, x1, x2, w1, w2, w3, d1, d2, d3, to_grid1, to_grid2, from_grid,
                                need_x1, need_x2, need_w1, need_w2, need_w3):
    outs = []
    for t, nd in ((x1, need_x1), (x2, need_x2), (w1, need_w1), (w2, need_w2), (w3, need_w3)):
        outs.append(t.new_empty(t.shape) if (nd and t is not None) else x1.new_empty(0))
    return tuple(outs)


@_define("grid_product_backward", _grid_product_backward_fake)
def grid_product_backward(grad: Tensor, x1: Tensor, x2: Tensor, w1: Optional[Tensor], w2: Optional[Tensor],
                          w3: Optional[Tensor], d1: Optional[Tensor], d2: Optional[Tensor],
                          d3: Optional[Tensor], to_grid1: Tensor, to_grid2: Tensor, from_grid: Tensor,
                          need_x1: bool, need_x2: bool, need_w1: bool, need_w2: bool,
                          need_w3: bool) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Fused gradients of ``grid_product`` (empty tensors for those not requested)."""
    need = (need_x1, need_x2, need_w1 and w1 is not None, need_w2 and w2 is not None, need_w3 and w3 is not None)
    return tuple(_gp_backward(grad, x1, x2, w1, w2, w3, d1, d2, d3, to_grid1, to_grid2, from_grid, need))


def _gp_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _gp_bwd(ctx, grad):
    saved = ctx.saved_tensors
    needs = ctx.needs_input_grad
    _no_table_grads(needs[8:], "grid_product")
    outs = torch.ops.gaunt_triton.grid_product_backward(grad, *saved, *[bool(b) for b in needs[:5]])
    return tuple(o if nd else None for o, nd in zip(outs, needs[:5])) + (None,) * 6


# ----------------------------------------------------------------------------------------------
# conv_product (packed per-edge weights)
# ----------------------------------------------------------------------------------------------
def _conv_fake(x1, sh, weight, k1, k2, d1, d2, d3, to_grid1, to_grid2, from_grid):
    return x1.new_empty(x1.shape[0], x1.shape[1], from_grid.shape[1])


@_define("conv_product", _conv_fake)
def conv_product(x1: Tensor, sh: Tensor, weight: Tensor, k1: int, k2: int, d1: Tensor, d2: Tensor, d3: Tensor,
                 to_grid1: Tensor, to_grid2: Tensor, from_grid: Tensor) -> Tensor:
    """MACE convolution ``x1 [E, C, I1]``, ``sh [E, I2]``, ``weight [E, K1+K2+K3, C]`` -> ``[E, C, Io]``."""
    _wcheck(weight, 3)
    return _gp_forward(x1, sh.unsqueeze(1), None, None, None, d1, d2, d3, to_grid1, to_grid2, from_grid,
                       packed=(weight, k1, k2))


def _conv_backward_fake(grad, x1, sh, weight, k1, k2, d1, d2, d3, to_grid1, to_grid2, from_grid,
                        need_x1, need_sh, need_w):
    return (x1.new_empty(x1.shape) if need_x1 else x1.new_empty(0),
            sh.new_empty(sh.shape) if need_sh else x1.new_empty(0),
            weight.new_empty(weight.shape) if need_w else x1.new_empty(0))


@_define("conv_product_backward", _conv_backward_fake)
def conv_product_backward(grad: Tensor, x1: Tensor, sh: Tensor, weight: Tensor, k1: int, k2: int, d1: Tensor,
                          d2: Tensor, d3: Tensor, to_grid1: Tensor, to_grid2: Tensor, from_grid: Tensor, need_x1: bool,
                          need_sh: bool, need_w: bool) -> Tuple[Tensor, Tensor, Tensor]:
    """Fused gradients of ``conv_product``."""
    dx1, dx2, dw, _, _ = _gp_backward(grad, x1, sh.unsqueeze(1), None, None, None, d1, d2, d3, to_grid1, to_grid2,
                                      from_grid, (need_x1, need_sh, need_w, need_w, need_w),
                                      packed=(weight, k1, k2))
    if need_sh:
        dx2 = dx2.reshape(sh.shape)
    return dx1, dx2, dw


def _conv_bwd(ctx, grad):
    x1, sh, weight, d1, d2, d3, y1, y2, f = ctx.saved_tensors
    needs = ctx.needs_input_grad
    _no_table_grads(needs[8:], "conv_product")
    outs = torch.ops.gaunt_triton.conv_product_backward(grad, x1, sh, weight, ctx.k1, ctx.k2, d1, d2, d3, y1, y2,
                                                        f, bool(needs[0]), bool(needs[1]), bool(needs[2]))
    return (outs[0] if needs[0] else None, outs[1] if needs[1] else None, outs[2] if needs[2] else None) + \
        (None,) * (len(needs) - 3)


def _conv_setup(ctx, inputs, output):
    x1, sh, weight, k1, k2, d1, d2, d3, y1, y2, f = inputs
    ctx.k1, ctx.k2 = k1, k2
    ctx.save_for_backward(x1, sh, weight, d1, d2, d3, y1, y2, f)


# ----------------------------------------------------------------------------------------------
# many_body_product
# ----------------------------------------------------------------------------------------------
def _mb_common(x, w_in, w_out, d_in, d_out, to_grid, from_grids):
    nu = from_grids.shape[0]
    if not 1 <= nu <= K.MAX_CORRELATION:
        raise ValueError(f"gaunt_triton::many_body_product: correlation {nu} not in 1..{K.MAX_CORRELATION}")
    if w_in.dim() != 4 or w_out.dim() != 4 or w_in.shape[1] < nu or w_out.shape[1] < nu:
        raise ValueError(f"gaunt_triton::many_body_product: w_in/w_out must be [N|1, {nu}, K, C], got "
                         f"{list(w_in.shape)} and {list(w_out.shape)}")
    cdt = compute_dtype(x.dtype)
    yp, fp, sz = power_tables(to_grid, from_grids, cdt)
    i, io = to_grid.shape[0], from_grids.shape[2]
    dgi, sci = degree_gather(d_in, i, cdt, x)
    dgo, sco = degree_gather(d_out, io, cdt, x)
    gk = dict(dgi_ptr=dgi, sci_ptr=sci, dgo_ptr=dgo, sco_ptr=sco)
    return nu, cdt, yp, fp, gk, dict(IP=sz["IP"], IOP=sz["IOP"], PP=sz["PP"],
                                          BLOCK_P=K.BLOCK_P), (i, io)


def _many_body_fake(x, w_in, w_out, d_in, d_out, to_grid, from_grids):
    return x.new_empty(x.shape[0], x.shape[1], from_grids.shape[2])


@_define("many_body_product", _many_body_fake)
def many_body_product(x: Tensor, w_in: Tensor, w_out: Tensor, d_in: Tensor, d_out: Tensor, to_grid: Tensor,
                      from_grids: Tensor) -> Tensor:
    """``sum_nu w_out[nu] * proj_nu(prod_{k<=nu} (w_in[k] x) @ Y)``: ``x [N, C, I]``, ``w [N|1, NU, K, C]``."""
    x = _lastc(x)
    nu, cdt, yp, fp, gk, sz, (i, io) = _mb_common(x, w_in, w_out, d_in, d_out, to_grid, from_grids)
    n, c = x.shape[0], x.shape[1]
    out = x.new_empty(n, c, io)
    block_r, block_c = K.tile_shape(c, K.BLOCK_M_MANY_BODY_FWD)
    if n > 0 and c > 0:
        _launch(mb_fwd_kernel, (triton.cdiv(n, block_r), triton.cdiv(c, block_c)),
                x_ptr=x, win_ptr=w_in, wout_ptr=w_out, **gk, y_ptr=yp, f_ptr=fp, out_ptr=out,
                N=n, C=c, I=i, IO=io, K=w_in.shape[2], KO=w_out.shape[2],
                s_xn=x.stride(0), s_xc=x.stride(1),
                s_in=_s(w_in, 0), s_iv=w_in.stride(1), s_ik=w_in.stride(2), s_ic=w_in.stride(3),
                s_on_w=_s(w_out, 0), s_ov=w_out.stride(1), s_ok=w_out.stride(2), s_oc_w=w_out.stride(3),
                s_on=out.stride(0), s_oc=out.stride(1),
                NU=nu, BLOCK_R=block_r, BLOCK_C=block_c, **sz,
                num_warps=K.num_warps_many_body(sz["IP"], sz["IOP"], nu))
    return out


def _many_body_backward_fake(grad, x, w_in, w_out, d_in, d_out, to_grid, from_grids, need_x, need_win, need_wout):
    return (x.new_empty(x.shape) if need_x else x.new_empty(0),
            w_in.new_empty(w_in.shape) if need_win else x.new_empty(0),
            w_out.new_empty(w_out.shape) if need_wout else x.new_empty(0))


@_define("many_body_product_backward", _many_body_backward_fake)
def many_body_product_backward(grad: Tensor, x: Tensor, w_in: Tensor, w_out: Tensor, d_in: Tensor, d_out: Tensor,
                               to_grid: Tensor, from_grids: Tensor, need_x: bool, need_win: bool,
                               need_wout: bool) -> Tuple[Tensor, Tensor, Tensor]:
    """Fused gradients of ``many_body_product`` w.r.t. x, w_in and w_out."""
    grad, x = _lastc(grad), _lastc(x)
    nu, cdt, yp, fp, gk, sz, (i, io) = _mb_common(x, w_in, w_out, d_in, d_out, to_grid, from_grids)
    n, c = x.shape[0], x.shape[1]
    dx = x.new_empty(x.shape) if need_x else _empty(x)
    win_rows = w_in.shape[0] == n
    wout_rows = w_out.shape[0] == n
    dwin = (w_in.new_empty((n,) + tuple(w_in.shape[1:]), dtype=w_in.dtype if win_rows else cdt)
            if need_win else _empty(x))
    dwout = (w_out.new_empty((n,) + tuple(w_out.shape[1:]), dtype=w_out.dtype if wout_rows else cdt)
             if need_wout else _empty(x))

    def st(t, d):
        return t.stride(d) if t.numel() else 0
    block_r, block_c = K.tile_shape(c, K.BLOCK_M_MANY_BODY_BWD)
    if n > 0 and c > 0:
        _launch(mb_bwd_kernel, (triton.cdiv(n, block_r), triton.cdiv(c, block_c)),
                go_ptr=grad, x_ptr=x, win_ptr=w_in, wout_ptr=w_out, **gk, y_ptr=yp, f_ptr=fp,
                dx_ptr=dx if need_x else x, dwin_ptr=dwin if need_win else x, dwout_ptr=dwout if need_wout else x,
                N=n, C=c, I=i, IO=io, K=w_in.shape[2], KO=w_out.shape[2],
                s_gn=grad.stride(0), s_gc=grad.stride(1), s_xn=x.stride(0), s_xc=x.stride(1),
                s_in=_s(w_in, 0), s_iv=w_in.stride(1), s_ik=w_in.stride(2), s_ic=w_in.stride(3),
                s_on_w=_s(w_out, 0), s_ov=w_out.stride(1), s_ok=w_out.stride(2), s_oc_w=w_out.stride(3),
                s_dxn=st(dx, 0), s_dxc=st(dx, 1),
                s_din=st(dwin, 0), s_div=st(dwin, 1), s_dik=st(dwin, 2), s_dic=st(dwin, 3),
                s_don=st(dwout, 0), s_dov=st(dwout, 1), s_dok=st(dwout, 2), s_doc=st(dwout, 3),
                NU=nu, NEED_DX=need_x, NEED_DWIN=need_win, NEED_DWOUT=need_wout,
                BLOCK_R=block_r, BLOCK_C=block_c, **sz,
                num_warps=K.num_warps_many_body(sz["IP"], sz["IOP"], nu))
    elif n == 0:
        for t in (dx, dwin, dwout):
            if t.numel():
                t.zero_()
    if need_win and w_in.shape[1] > nu:
        dwin[:, nu:] = 0
    if need_wout and w_out.shape[1] > nu:
        dwout[:, nu:] = 0
    if need_win and not win_rows:
        dwin = dwin.sum(0, keepdim=True).to(w_in.dtype)
    if need_wout and not wout_rows:
        dwout = dwout.sum(0, keepdim=True).to(w_out.dtype)
    return dx, dwin, dwout


def _mb_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _mb_bwd(ctx, grad):
    x, w_in, w_out, d_in, d_out, y, fs = ctx.saved_tensors
    needs = ctx.needs_input_grad
    _no_table_grads(needs[5:], "many_body_product")
    outs = torch.ops.gaunt_triton.many_body_product_backward(grad, x, w_in, w_out, d_in, d_out, y, fs,
                                                             bool(needs[0]), bool(needs[1]), bool(needs[2]))
    return tuple(o if nd else None for o, nd in zip(outs, needs[:3])) + (None,) * 4


# ----------------------------------------------------------------------------------------------
# conv_message: gather -> convolution -> scatter-sum, fused
# ----------------------------------------------------------------------------------------------
def _csr(index: Tensor, num_segments: int):
    """``(perm, seg)``: edges sorted (stably) by ``index`` and the segment starts ``[num_segments + 1]``."""
    perm = torch.argsort(index, stable=True)
    seg = torch.searchsorted(index.index_select(0, perm),
                             torch.arange(num_segments + 1, device=index.device, dtype=index.dtype))
    return perm, seg


def _message_fake(x, sh, weight, edge_index, num_nodes, k1, k2, d1, d2, d3, to_grid1, to_grid2, from_grid,
                  deterministic):
    return x.new_empty(num_nodes, x.shape[1], from_grid.shape[1])


@_define("conv_message", _message_fake)
def conv_message(x: Tensor, sh: Tensor, weight: Tensor, edge_index: Tensor, num_nodes: int, k1: int, k2: int,
                 d1: Tensor, d2: Tensor, d3: Tensor, to_grid1: Tensor, to_grid2: Tensor, from_grid: Tensor,
                 deterministic: bool) -> Tensor:
    """``out[v] = sum_{e: dst[e]=v} conv(x[src[e]], sh[e], weight[e])``, ``edge_index [2, E]`` = (src, dst)."""
    _wcheck(weight, 3)
    src = edge_index[0].contiguous()
    dst = edge_index[1].contiguous()
    if not deterministic:
        return _gp_forward(x, sh.unsqueeze(1), None, None, None, d1, d2, d3, to_grid1, to_grid2, from_grid,
                           packed=(weight, k1, k2), message=(src, dst), n_out=num_nodes)
    x, sh = _lastc(x), _lastc(sh)
    cdt, (y1p, y2p, fp, gk), sz, (i1, i2, io) = _gp_common(x, sh, None, None, None, d1, d2, d3,
                                                                     to_grid1, to_grid2, from_grid)
    c = x.shape[1]
    out = x.new_empty(num_nodes, c, io)
    perm, seg = _csr(dst, num_nodes)
    block_e, block_c = K.tile_shape(c, K.BLOCK_M_SEGMENT)
    kk = weight.shape[1]
    if num_nodes > 0 and c > 0:
        _launch(msg_fwd_segment_kernel, (num_nodes, triton.cdiv(c, block_c)),
                x1_ptr=x, sh_ptr=sh, w_ptr=weight, **gk, y1_ptr=y1p, y2_ptr=y2p,
                f_ptr=fp, out_ptr=out, src_ptr=src, perm_ptr=perm, seg_ptr=seg,
                C=c, I1=i1, I2=i2, IO=io, K1=k1, K2=k2, K3=kk - k1 - k2,
                s_x1n=x.stride(0), s_x1c=x.stride(1), s_shn=sh.stride(0),
                s_wn=weight.stride(0), s_wk=weight.stride(1), s_wc=weight.stride(2),
                s_on=out.stride(0), s_oc=out.stride(1),
                BLOCK_E=block_e, BLOCK_C=block_c, **sz,
                num_warps=K.num_warps_for(sz["I1P"], sz["I2P"], sz["IOP"]))
    return out


def _message_backward_fake(grad, x, sh, weight, edge_index, num_nodes, k1, k2, d1, d2, d3, to_grid1, to_grid2,
                           from_grid, deterministic, need_x, need_sh, need_w):
    return (x.new_empty(x.shape) if need_x else x.new_empty(0),
            sh.new_empty(sh.shape) if need_sh else x.new_empty(0),
            weight.new_empty(weight.shape) if need_w else x.new_empty(0))


@_define("conv_message_backward", _message_backward_fake)
def conv_message_backward(grad: Tensor, x: Tensor, sh: Tensor, weight: Tensor, edge_index: Tensor, num_nodes: int,
                          k1: int, k2: int, d1: Tensor, d2: Tensor, d3: Tensor, to_grid1: Tensor, to_grid2: Tensor,
                          from_grid: Tensor, deterministic: bool, need_x: bool, need_sh: bool,
                          need_w: bool) -> Tuple[Tensor, Tensor, Tensor]:
    """Fused gradients of ``conv_message``: atomics into ``dx[src]``, or (deterministic) one program per
    sender summing its outgoing edges in a fixed order."""
    src = edge_index[0].contiguous()
    dst = edge_index[1].contiguous()
    if not deterministic:
        dx, dsh, dw, _, _ = _gp_backward(grad, x, sh.unsqueeze(1), None, None, None, d1, d2, d3, to_grid1,
                                         to_grid2, from_grid, (need_x, need_sh, need_w, need_w, need_w),
                                         packed=(weight, k1, k2), message=(src, dst))
        if need_sh:
            dsh = dsh.reshape(sh.shape)
        return dx, dsh, dw
    grad, x, sh = _lastc(grad), _lastc(x), _lastc(sh)
    cdt, (y1p, y2p, fp, gk), sz, (i1, i2, io) = _gp_common(x, sh, None, None, None, d1, d2, d3,
                                                                     to_grid1, to_grid2, from_grid)
    c = x.shape[1]
    e = sh.shape[0]
    n_nodes = x.shape[0]
    block_e, block_c = K.tile_shape(c, K.BLOCK_M_SEGMENT_BWD)
    ncb = triton.cdiv(c, block_c)
    perm, seg = _csr(src, n_nodes)
    dx = x.new_empty(x.shape) if need_x else _empty(x)
    # an edge whose sender has no program (none: every node has one) would leave dsh/dw unset: zero-init
    dsh = torch.zeros((ncb, e, i2), dtype=cdt, device=x.device) if need_sh else _empty(x)
    dw = weight.new_empty(weight.shape) if need_w else _empty(x)
    kk = weight.shape[1]

    def st(t, d):
        return t.stride(d) if t.numel() else 0
    if n_nodes > 0 and c > 0:
        _launch(msg_bwd_segment_kernel, (n_nodes, ncb),
                go_ptr=grad, x1_ptr=x, sh_ptr=sh, w_ptr=weight, **gk,
                y1_ptr=y1p, y2_ptr=y2p, f_ptr=fp,
                dx1_ptr=dx if need_x else x, dsh_ptr=dsh if need_sh else x, dw_ptr=dw if need_w else x,
                dst_ptr=dst, perm_ptr=perm, seg_ptr=seg,
                C=c, I1=i1, I2=i2, IO=io, K1=k1, K2=k2, K3=kk - k1 - k2,
                s_gn=grad.stride(0), s_gc=grad.stride(1), s_x1n=x.stride(0), s_x1c=x.stride(1),
                s_shn=sh.stride(0), s_wn=weight.stride(0), s_wk=weight.stride(1), s_wc=weight.stride(2),
                s_d1n=st(dx, 0), s_d1c=st(dx, 1), s_dsb=st(dsh, 0), s_dsn=st(dsh, 1),
                s_dwn=st(dw, 0), s_dwk=st(dw, 1), s_dwc=st(dw, 2),
                NEED_DX1=need_x, NEED_DSH=need_sh, NEED_DW=need_w,
                BLOCK_E=block_e, BLOCK_C=block_c, **sz,
                num_warps=K.num_warps_for(sz["I1P"], sz["I2P"], sz["IOP"]))
    if need_sh:
        dsh = dsh.sum(0).to(sh.dtype)
    return dx, dsh, dw


def _message_setup(ctx, inputs, output):
    x, sh, weight, edge_index, num_nodes, k1, k2, d1, d2, d3, y1, y2, f, deterministic = inputs
    ctx.num_nodes, ctx.k1, ctx.k2, ctx.deterministic = num_nodes, k1, k2, deterministic
    ctx.save_for_backward(x, sh, weight, edge_index, d1, d2, d3, y1, y2, f)


def _message_bwd(ctx, grad):
    x, sh, weight, edge_index, d1, d2, d3, y1, y2, f = ctx.saved_tensors
    needs = ctx.needs_input_grad
    _no_table_grads(needs[10:13], "conv_message")
    outs = torch.ops.gaunt_triton.conv_message_backward(
        grad, x, sh, weight, edge_index, ctx.num_nodes, ctx.k1, ctx.k2, d1, d2, d3, y1, y2, f, ctx.deterministic,
        bool(needs[0]), bool(needs[1]), bool(needs[2]))
    return (outs[0] if needs[0] else None, outs[1] if needs[1] else None, outs[2] if needs[2] else None) + \
        (None,) * (len(needs) - 3)


# ----------------------------------------------------------------------------------------------
# double backward: the VJP of every *_backward op
# ----------------------------------------------------------------------------------------------
def _degree_sum(t: Tensor, d: Tensor, k: int) -> Tensor:
    """``t [N, C, I]``, slots ``d [I]`` -> ``[N, K, C]`` (sum over the coefficients of each degree slot)."""
    return t.new_zeros(t.shape[0], t.shape[1], k).index_add(2, d, t).transpose(1, 2)


def _product_first_order(grad, x1, x2, w1, w2, w3, d1, d2, d3, y1, y2, f):
    """The first-order gradients of ``grid_product`` written with ``grid_product`` itself (tables
    transposed), so that differentiating them again runs the fused kernels:
    ``d out / d a`` for cotangent ``h`` is the Gaunt product ``((h F^T) * (b Y2)) Y1^T``. Returns
    ``(dx1, dx2, dw1, dw2, dw3)`` shaped like the inputs; tensors of size ``[N, C, I]``, never ``P``."""
    gp = torch.ops.gaunt_triton.grid_product
    w1e = expand_weight(w1, d1) if w1 is not None else None
    w2e = expand_weight(w2, d2) if w2 is not None else None
    w3e = expand_weight(w3, d3) if w3 is not None else None
    a = x1 if w1e is None else x1 * w1e
    b = x2 if w2e is None else x2 * w2e
    h = grad if w3e is None else grad * w3e
    ga = gp(h, b, None, None, None, None, None, None, f.t(), y2, y1.t())
    gb = gp(h, a, None, None, None, None, None, None, f.t(), y1, y2.t())
    dx1 = ga if w1e is None else ga * w1e
    dx2 = (gb if w2e is None else gb * w2e).sum_to_size(x2.shape)
    dw1 = _degree_sum(ga * x1, d1, w1.shape[1]).sum_to_size(w1.shape) if w1 is not None else None
    dw2 = _degree_sum(gb * x2.expand_as(gb), d2, w2.shape[1]).sum_to_size(w2.shape) if w2 is not None else None
    if w3 is not None:
        raw = gp(a, b, None, None, None, None, None, None, y1, y2, f)
        dw3 = _degree_sum(grad * raw, d3, w3.shape[1]).sum_to_size(w3.shape)
    else:
        dw3 = None
    return dx1, dx2, dw1, dw2, dw3


def _conv_first_order(grad, x1, sh, weight, k1, k2, d1, d2, d3, y1, y2, f):
    """``(dx1, dsh, dweight)`` of ``conv_product`` through :func:`_product_first_order` (fused, differentiable)."""
    dx1, dx2, dw1, dw2, dw3 = _product_first_order(grad, x1, sh.unsqueeze(1), weight[:, :k1], weight[:, k1:k1 + k2],
                                                   weight[:, k1 + k2:], d1, d2, d3, y1, y2, f)
    return dx1, dx2.reshape(sh.shape), torch.cat([dw1, dw2, dw3], dim=1)


_WARNED_REFERENCE = set()


def _reference_first_order(ref, first_positions, name):
    def first_order(g, leaves):
        if name not in _WARNED_REFERENCE:
            _WARNED_REFERENCE.add(name)
            warnings.warn(f"gaunt_triton::{name}: second-order gradients run through the PyTorch reference "
                          f"(unfused, the [rows, C, P] grid materialised); first-order gradients are fused",
                          RuntimeWarning, stacklevel=2)
        out = ref(*leaves)
        return torch.autograd.grad(out, [leaves[p] for p in first_positions], g, create_graph=True, allow_unused=True)
    return first_order


def _composite_first_order(fn):
    def first_order(g, leaves):
        return fn(g, *leaves)
    return first_order


class _NoHigherOrder(torch.autograd.Function):
    """Passes second-order gradients through, linked to the tensors they depend on, and refuses to be
    differentiated once more (third order) instead of silently dropping terms."""

    @staticmethod
    def forward(ctx, n_values: int, *args):
        return tuple(v.clone() for v in args[:n_values])

    @staticmethod
    def backward(ctx, *grads):
        raise NotImplementedError("gaunt_triton: third- and higher-order derivatives through the Triton Gaunt ops are "
                                  "not supported (first and second order are); run this computation with "
                                  "GAUNT_BACKEND=torch / backend='torch'")


def _double_backward(first_order, n_fwd_args: int, diff_positions, ctx, ggrads):
    """VJP of a ``*_backward`` op (inputs: grad, the forward op's arguments, flags): the first-order
    gradients are recomputed as a differentiable function of independent copies of (grad, inputs)
    and differentiated once; the outer autograd engine chains the partial derivatives through the
    inputs' own histories (so a cotangent that depends on the inputs, as in force training, is
    counted once)."""
    args = list(ctx.saved_tensors)
    grad = args[0]
    fwd = args[1:1 + n_fwd_args]
    for pos, val in ctx.extra.items():
        fwd[pos] = val
    needs = ctx.needs_input_grad
    create = torch.is_grad_enabled()
    with torch.enable_grad():
        leaves = [t.detach().requires_grad_() if (p in diff_positions and isinstance(t, Tensor)) else t
                  for p, t in enumerate(fwd)]
        g = grad.detach().requires_grad_()
        firsts = first_order(g, leaves)
        outs, cots = [], []
        for fst, gg in zip(firsts, ggrads):
            if fst is not None and fst.requires_grad and gg is not None and gg.numel() and gg.shape == fst.shape:
                outs.append(fst)
                cots.append(gg.detach())
        targets_idx = [i for i in range(1 + n_fwd_args) if needs[i] and (i == 0 or (i - 1) in diff_positions)]
        result = [None] * len(needs)
        if outs and targets_idx:
            targets = [g if i == 0 else leaves[i - 1] for i in targets_idx]
            sec = torch.autograd.grad(outs, targets, cots, allow_unused=True)
            for i, s in zip(targets_idx, sec):
                result[i] = s
    if create:
        idx = [i for i, r in enumerate(result) if r is not None]
        links = [t for t in [grad] + [fwd[p] for p in sorted(diff_positions)] + list(ggrads)
                 if isinstance(t, Tensor) and t.requires_grad]
        if idx and links:
            linked = _NoHigherOrder.apply(len(idx), *[result[i] for i in idx], *links)
            for i, v in zip(idx, linked):
                result[i] = v
    return tuple(result)


def _make_bwd_autograd(first_order, forward: str, differentiable: Tuple[str, ...]):
    """setup_context/backward pair for ``forward``'s ``*_backward`` op (inputs: grad, ``forward``'s arguments,
    flags), the positions taken from ``forward``'s signature by name: its tensor arguments are saved, the
    others kept on ctx; ``differentiable`` names the arguments second-order gradients flow to."""
    params = list(inspect.signature(_BODIES[forward]).parameters.values())
    n_fwd_args = len(params)
    tensor_positions = {p for p, q in enumerate(params) if q.annotation in (Tensor, Optional[Tensor])}
    diff_positions = {p for p, q in enumerate(params) if q.name in differentiable}
    if len(diff_positions) != len(differentiable) or not diff_positions <= tensor_positions:
        raise RuntimeError(f"gaunt_triton::{forward}: {differentiable} are not all tensor arguments of its schema")

    def setup(ctx, inputs, output):
        tensors = [inputs[0]]
        extra = {}
        for p in range(n_fwd_args):
            v = inputs[1 + p]
            if p in tensor_positions:
                tensors.append(v)
            else:
                tensors.append(None)
                extra[p] = v
        ctx.extra = extra
        ctx.save_for_backward(*tensors)

    def backward(ctx, *ggrads):
        if any(ctx.needs_input_grad[1 + p] for p in tensor_positions if p not in diff_positions):
            raise NotImplementedError("gaunt_triton: gradients with respect to the tables are not implemented "
                                      "(they are constants of the layer)")
        return _double_backward(first_order, n_fwd_args, diff_positions, ctx, ggrads)
    return setup, backward


def _register_autograd():
    lib = torch.library
    lib.register_autograd(f"{NAMESPACE}::grid_product", _gp_bwd, setup_context=_gp_setup)
    lib.register_autograd(f"{NAMESPACE}::conv_product", _conv_bwd, setup_context=_conv_setup)
    lib.register_autograd(f"{NAMESPACE}::many_body_product", _mb_bwd, setup_context=_mb_setup)
    lib.register_autograd(f"{NAMESPACE}::conv_message", _message_bwd, setup_context=_message_setup)
    second_order = (  # (forward op, its differentiable first-order gradients, the arguments they flow to)
        ("grid_product", _composite_first_order(_product_first_order), ("x1", "x2", "w1", "w2", "w3")),
        ("conv_product", _composite_first_order(_conv_first_order), ("x1", "sh", "weight")),
        ("many_body_product", _reference_first_order(many_body_ref, (0, 1, 2), "many_body_product"),
         ("x", "w_in", "w_out")),
        ("conv_message", _reference_first_order(conv_message_ref, (0, 1, 2), "conv_message"),
         ("x", "sh", "weight")),
    )
    for forward, first_order, differentiable in second_order:
        setup, backward = _make_bwd_autograd(first_order, forward, differentiable)
        lib.register_autograd(f"{NAMESPACE}::{forward}_backward", backward, setup_context=setup)


_register_autograd()
