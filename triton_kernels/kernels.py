"""The fused Gaunt kernels (Triton).

Notation. A *pair* is one (row, channel) of a dense channel-wise feature ``x [rows, C, I]``; every
channel of every row is an independent spherical function, so the kernels tile the pairs as the
M dimension of small matrix products with the precomputed tables:

    a = (w1e * x1) @ Y1      [M, P]   to the grid              (w1e: per-degree weights expanded
    b = (w2e * x2) @ Y2      [M, P]                             to the coefficients by slot)
    out = w3e * ((a * b) @ F)  [M, Io]  pointwise product, projection back

The grid dimension P is walked in chunks of ``BLOCK_P`` (flash-attention style): one chunk of
``a``/``b`` exists at a time, in registers, and is projected and accumulated immediately, so the
``[rows, C, P]`` grid intermediate is never written anywhere. Backward kernels recompute the chunk
instead of saving it.

Tables arrive padded (``constants.padded``): ``Y [IP, PP]``, ``F [PP, IOP]`` with zero rows and
columns, so padded lanes contribute exactly zero and the inner loop needs no masks. Per-degree
weights are gathered through ``deg [IP]`` (int32 degree slot of each coefficient) and
``scale [IP]`` (1, 0 on padding). Feature loads are masked (ragged rows, channels
and coefficient widths).

Accumulation: float64 inputs compute in float64; float32 in float32 with IEEE dots (no TF32,
unless ``constants.FP32_DOT_PRECISION`` says otherwise); float16/bfloat16 inputs are converted
to float32 on load (the tables are float32) and the result is cast back on store.
"""
from __future__ import annotations

import triton
import triton.language as tl

from .constants import FP32_DOT_PRECISION

_FP32_PREC = tl.constexpr(FP32_DOT_PRECISION)

__all__ = [
    "gp_fwd_kernel",
    "gp_bwd_kernel",
    "msg_fwd_segment_kernel",
    "msg_bwd_segment_kernel",
    "mb_fwd_kernel",
    "mb_bwd_kernel",
]


# ----------------------------------------------------------------------------------------------
# small helpers (inlined by the compiler)
# ----------------------------------------------------------------------------------------------
@triton.jit
def _mm(a, b):
    """``a @ b`` accumulated in the operands' precision (float32: ``FP32_DOT_PRECISION``, IEEE by default)."""
    if a.dtype == tl.float64:
        return tl.dot(a, b, out_dtype=tl.float64)
    else:
        return tl.dot(a, b, input_precision=_FP32_PREC)


@triton.jit
def _tile(N, C, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """This program's ``BLOCK_R x BLOCK_C`` block of (row, channel) pairs, flattened: ``row`` (int64), ``ch``
    and ``valid`` ``[BLOCK_R * BLOCK_C]`` (grid axis 0 walks rows, axis 1 channels)."""
    m = tl.arange(0, BLOCK_R * BLOCK_C)
    row = tl.program_id(0) * BLOCK_R + m // BLOCK_C
    ch = tl.program_id(1) * BLOCK_C + m % BLOCK_C
    valid = (row < N) & (ch < C)
    return row.to(tl.int64), ch, valid


@triton.jit
def _segment(seg_ptr, node, BLOCK_E: tl.constexpr, BLOCK_C: tl.constexpr):
    """For this program's (node, channel block): the edge slot and channel of each of its ``BLOCK_E * BLOCK_C``
    pairs, and the node's edge range ``[start, end)`` in the sorted edge list."""
    m = tl.arange(0, BLOCK_E * BLOCK_C)
    ch = tl.program_id(1) * BLOCK_C + m % BLOCK_C
    return m // BLOCK_C, ch, tl.load(seg_ptr + node), tl.load(seg_ptr + node + 1)


@triton.jit
def _segment_edges(perm_ptr, s0, slot, end, ch, C):
    """The edges of the chunk starting at sorted position ``s0`` (``valid``: pair in range, ``e``: edge index)."""
    pos = s0 + slot
    valid = (pos < end) & (ch < C)
    return valid, tl.load(perm_ptr + pos, mask=pos < end, other=0).to(tl.int64)


@triton.jit
def _load_rows(ptr, row, ch, valid, s_n, s_c, width, WP: tl.constexpr):
    """``[M, WP]`` tile of ``ptr[row, ch, :width]`` (zeros outside), last-dim stride 1."""
    i = tl.arange(0, WP)
    offs = row[:, None] * s_n + ch[:, None] * s_c + i[None, :]
    return tl.load(ptr + offs, mask=valid[:, None] & (i[None, :] < width), other=0.0)


@triton.jit
def _store_rows(ptr, val, row, ch, valid, s_n, s_c, width, WP: tl.constexpr):
    i = tl.arange(0, WP)
    offs = row[:, None] * s_n + ch[:, None] * s_c + i[None, :]
    tl.store(ptr + offs, val.to(ptr.dtype.element_ty), mask=valid[:, None] & (i[None, :] < width))


@triton.jit
def _atomic_rows(ptr, val, row, ch, valid, s_n, s_c, width, WP: tl.constexpr):
    i = tl.arange(0, WP)
    offs = row[:, None] * s_n + ch[:, None] * s_c + i[None, :]
    tl.atomic_add(ptr + offs, val.to(ptr.dtype.element_ty), mask=valid[:, None] & (i[None, :] < width))


@triton.jit
def _expand(w_ptr, d_ptr, s_ptr, wrow, ch, valid, s_n, s_k, s_c, IP: tl.constexpr):
    """Per-degree weights expanded to the coefficients: ``w[wrow, deg[i], ch] * scale[i]`` ``[M, IP]``.

    ``deg [IP]`` (int32) is the degree slot of each coefficient and ``scale [IP]`` 1 on the coefficients,
    0 on padding. A gather, not a product: for a
    fixed coefficient consecutive pairs read consecutive channels, so the loads coalesce and the
    repeated slots hit L1.
    """
    i = tl.arange(0, IP)
    d = tl.load(d_ptr + i)
    sc = tl.load(s_ptr + i)
    w = tl.load(w_ptr + wrow[:, None] * s_n + d[None, :] * s_k + ch[:, None] * s_c,
                mask=valid[:, None] & (sc[None, :] != 0), other=0.0)
    return w.to(sc.dtype) * sc[None, :]


@triton.jit
def _store_degree_sum(ptr, t, d_ptr, s_ptr, row, ch, valid, s_n, s_k, s_c, KC: tl.constexpr, IP: tl.constexpr):
    """``ptr[row, k, ch] = sum_{i: deg[i] = k} scale[i] t[:, i]`` for ``k < KC`` (the weight gradient)."""
    i = tl.arange(0, IP)
    d = tl.load(d_ptr + i)
    ts = t * tl.load(s_ptr + i)[None, :]
    for k in tl.static_range(KC):
        v = tl.sum(tl.where(d[None, :] == k, ts, 0.0), axis=1)
        tl.store(ptr + row * s_n + k * s_k + ch * s_c, v.to(ptr.dtype.element_ty), mask=valid)


@triton.jit
def _fwd_chain(a, b, y1_ptr, y2_ptr, f_ptr, BM: tl.constexpr, I1P: tl.constexpr, I2P: tl.constexpr,
               IOP: tl.constexpr, BLOCK_P: tl.constexpr, PP: tl.constexpr):
    """``((a @ Y1) * (b @ Y2)) @ F`` with the grid walked in ``BLOCK_P`` chunks held in registers."""
    i1 = tl.arange(0, I1P)
    i2 = tl.arange(0, I2P)
    o = tl.arange(0, IOP)
    p = tl.arange(0, BLOCK_P)
    acc = tl.zeros((BM, IOP), dtype=a.dtype)
    for p0 in range(0, PP, BLOCK_P):
        g1 = _mm(a, tl.load(y1_ptr + i1[:, None] * PP + (p0 + p)[None, :]))
        g2 = _mm(b, tl.load(y2_ptr + i2[:, None] * PP + (p0 + p)[None, :]))
        acc += _mm(g1 * g2, tl.load(f_ptr + (p0 + p)[:, None] * IOP + o[None, :]))
    return acc


@triton.jit
def _bwd_chain(a, b, h, y1_ptr, y2_ptr, f_ptr, BM: tl.constexpr, I1P: tl.constexpr, I2P: tl.constexpr,
               IOP: tl.constexpr, BLOCK_P: tl.constexpr, PP: tl.constexpr,
               NEED_RAW: tl.constexpr, NEED_DA: tl.constexpr, NEED_DB: tl.constexpr):
    """Adjoint of ``_fwd_chain`` for the output cotangent ``h`` (already times w3e).

    Returns ``raw = ((a Y1) * (b Y2)) F`` (for the w3 gradient), ``da = ((h F^T) * (b Y2)) Y1^T`` and
    ``db = ((h F^T) * (a Y1)) Y2^T``; the grid chunks are recomputed, never stored.
    """
    i1 = tl.arange(0, I1P)
    i2 = tl.arange(0, I2P)
    o = tl.arange(0, IOP)
    p = tl.arange(0, BLOCK_P)
    raw = tl.zeros((BM, IOP), dtype=a.dtype)
    da = tl.zeros((BM, I1P), dtype=a.dtype)
    db = tl.zeros((BM, I2P), dtype=a.dtype)
    for p0 in range(0, PP, BLOCK_P):
        pp = p0 + p
        g1 = _mm(a, tl.load(y1_ptr + i1[:, None] * PP + pp[None, :]))
        g2 = _mm(b, tl.load(y2_ptr + i2[:, None] * PP + pp[None, :]))
        if NEED_RAW:
            raw += _mm(g1 * g2, tl.load(f_ptr + pp[:, None] * IOP + o[None, :]))
        dg = _mm(h, tl.load(f_ptr + pp[None, :] * IOP + o[:, None]))
        if NEED_DA:
            da += _mm(dg * g2, tl.load(y1_ptr + i1[None, :] * PP + pp[:, None]))
        if NEED_DB:
            db += _mm(dg * g1, tl.load(y2_ptr + i2[None, :] * PP + pp[:, None]))
    return raw, da, db


# ----------------------------------------------------------------------------------------------
# channel-wise product / convolution (one kernel family, flags select the variant)
# ----------------------------------------------------------------------------------------------
@triton.jit(do_not_specialize=["N", "N_OUT"])
def gp_fwd_kernel(
    x1_ptr, x2_ptr, w1_ptr, w2_ptr, w3_ptr, dg1_ptr, sc1_ptr, dg2_ptr, sc2_ptr, dg3_ptr, sc3_ptr, y1_ptr, y2_ptr, f_ptr, out_ptr,
    src_ptr, dst_ptr,
    N, N_OUT, C, I1, I2, IO, K1: tl.constexpr, K2: tl.constexpr, K3: tl.constexpr,
    s_x1n, s_x1c, s_x2n, s_x2c,
    s_w1n, s_w1k, s_w1c, s_w2n, s_w2k, s_w2c, s_w3n, s_w3k, s_w3c,
    s_on, s_oc,
    HAS_W1: tl.constexpr, HAS_W2: tl.constexpr, HAS_W3: tl.constexpr, MESSAGE: tl.constexpr,
    W_PACKED: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
    I1P: tl.constexpr, I2P: tl.constexpr, IOP: tl.constexpr,
    BLOCK_P: tl.constexpr, PP: tl.constexpr,
):
    """``out[n, c] = w3e * proj((w1e x1[n, c]) (*) (w2e x2[n, c]))`` for a block of rows x channels.

    ``x2`` may broadcast over channels (``s_x2c = 0``: the edge harmonics of a convolution) or rows;
    weights ``[N|1, K, C]`` (``s_wn = 0`` when shared); ``W_PACKED``: the three weights are consecutive
    degree slots of one tensor ``w1_ptr [N, K1+K2+K3, C]`` (MACE's per-edge weights). With ``MESSAGE`` the rows are edges: ``x1`` is
    gathered at ``src[e]`` and the result is atomically added to ``out[dst[e]]`` (fused message
    passing, order of the float additions not fixed).
    """
    BM: tl.constexpr = BLOCK_R * BLOCK_C
    row, ch, valid = _tile(N, C, BLOCK_R, BLOCK_C)
    cdt = y1_ptr.dtype.element_ty
    if W_PACKED:
        pw2 = w1_ptr + K1 * s_w1k
        pw3 = w1_ptr + (K1 + K2) * s_w1k
    else:
        pw2 = w2_ptr
        pw3 = w3_ptr
    if MESSAGE:
        xrow = tl.load(src_ptr + row, mask=row < N, other=0).to(tl.int64)
    else:
        xrow = row
    a = _load_rows(x1_ptr, xrow, ch, valid, s_x1n, s_x1c, I1, I1P).to(cdt)
    if HAS_W1:
        a = a * _expand(w1_ptr, dg1_ptr, sc1_ptr, row, ch, valid, s_w1n, s_w1k, s_w1c, I1P)
    b = _load_rows(x2_ptr, row, ch, valid, s_x2n, s_x2c, I2, I2P).to(cdt)
    if HAS_W2:
        b = b * _expand(pw2, dg2_ptr, sc2_ptr, row, ch, valid, s_w2n, s_w2k, s_w2c, I2P)
    out = _fwd_chain(a, b, y1_ptr, y2_ptr, f_ptr, BM, I1P, I2P, IOP, BLOCK_P, PP)
    if HAS_W3:
        out = out * _expand(pw3, dg3_ptr, sc3_ptr, row, ch, valid, s_w3n, s_w3k, s_w3c, IOP)
    if MESSAGE:
        orow = tl.load(dst_ptr + row, mask=row < N, other=0).to(tl.int64)
        _atomic_rows(out_ptr, out, orow, ch, valid, s_on, s_oc, IO, IOP)
    else:
        _store_rows(out_ptr, out, row, ch, valid, s_on, s_oc, IO, IOP)


@triton.jit(do_not_specialize=["N"])
def gp_bwd_kernel(
    go_ptr, x1_ptr, x2_ptr, w1_ptr, w2_ptr, w3_ptr, dg1_ptr, sc1_ptr, dg2_ptr, sc2_ptr, dg3_ptr, sc3_ptr, y1_ptr, y2_ptr, f_ptr,
    dx1_ptr, dx2_ptr, dw1_ptr, dw2_ptr, dw3_ptr, src_ptr, dst_ptr,
    N, C, I1, I2, IO, K1: tl.constexpr, K2: tl.constexpr, K3: tl.constexpr,
    s_gn, s_gc, s_x1n, s_x1c, s_x2n, s_x2c,
    s_w1n, s_w1k, s_w1c, s_w2n, s_w2k, s_w2c, s_w3n, s_w3k, s_w3c,
    s_d1n, s_d1c, s_d2b, s_d2n, s_d2c,
    s_e1n, s_e1k, s_e1c, s_e2n, s_e2k, s_e2c, s_e3n, s_e3k, s_e3c,
    HAS_W1: tl.constexpr, HAS_W2: tl.constexpr, HAS_W3: tl.constexpr, MESSAGE: tl.constexpr,
    X2_BCAST: tl.constexpr, W_PACKED: tl.constexpr,
    NEED_DX1: tl.constexpr, NEED_DX2: tl.constexpr, NEED_DW1: tl.constexpr, NEED_DW2: tl.constexpr,
    NEED_DW3: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
    I1P: tl.constexpr, I2P: tl.constexpr, IOP: tl.constexpr,
    BLOCK_P: tl.constexpr, PP: tl.constexpr,
):
    """Gradients of ``gp_fwd_kernel`` w.r.t. x1, x2 and the three weights, fused.

    Per-row outputs: ``dx1 [N, C, I1]`` (with ``MESSAGE``: atomically added at ``src[e]``), the weight
    gradients per row ``[N, K, C]`` (the caller sums rows of a shared weight) and ``dx2`` either per
    pair ``[N, C, I2]`` or, when ``x2`` broadcasts over channels (``X2_BCAST``), summed over this
    program's channel block into ``dx2[pid_c, N, I2]`` (the caller sums the channel blocks: no atomics,
    deterministic). ``W_PACKED``: weights and their gradients are one tensor each (see the forward).
    """
    BM: tl.constexpr = BLOCK_R * BLOCK_C
    row, ch, valid = _tile(N, C, BLOCK_R, BLOCK_C)
    cdt = y1_ptr.dtype.element_ty
    if W_PACKED:
        pw2 = w1_ptr + K1 * s_w1k
        pw3 = w1_ptr + (K1 + K2) * s_w1k
        pe2 = dw1_ptr + K1 * s_e1k
        pe3 = dw1_ptr + (K1 + K2) * s_e1k
    else:
        pw2 = w2_ptr
        pw3 = w3_ptr
        pe2 = dw2_ptr
        pe3 = dw3_ptr
    if MESSAGE:
        xrow = tl.load(src_ptr + row, mask=row < N, other=0).to(tl.int64)
        grow = tl.load(dst_ptr + row, mask=row < N, other=0).to(tl.int64)
    else:
        xrow = row
        grow = row
    x1 = _load_rows(x1_ptr, xrow, ch, valid, s_x1n, s_x1c, I1, I1P).to(cdt)
    a = x1
    if HAS_W1:
        w1e = _expand(w1_ptr, dg1_ptr, sc1_ptr, row, ch, valid, s_w1n, s_w1k, s_w1c, I1P)
        a = x1 * w1e
    x2 = _load_rows(x2_ptr, row, ch, valid, s_x2n, s_x2c, I2, I2P).to(cdt)
    b = x2
    if HAS_W2:
        w2e = _expand(pw2, dg2_ptr, sc2_ptr, row, ch, valid, s_w2n, s_w2k, s_w2c, I2P)
        b = x2 * w2e
    go = _load_rows(go_ptr, grow, ch, valid, s_gn, s_gc, IO, IOP).to(cdt)
    h = go
    if HAS_W3:
        h = go * _expand(pw3, dg3_ptr, sc3_ptr, row, ch, valid, s_w3n, s_w3k, s_w3c, IOP)
    raw, da, db = _bwd_chain(a, b, h, y1_ptr, y2_ptr, f_ptr, BM, I1P, I2P, IOP, BLOCK_P, PP,
                             NEED_DW3, NEED_DX1 or NEED_DW1, NEED_DX2 or NEED_DW2)
    if NEED_DX1:
        d1 = da
        if HAS_W1:
            d1 = da * w1e
        if MESSAGE:
            _atomic_rows(dx1_ptr, d1, xrow, ch, valid, s_d1n, s_d1c, I1, I1P)
        else:
            _store_rows(dx1_ptr, d1, row, ch, valid, s_d1n, s_d1c, I1, I1P)
    if NEED_DW1:
        _store_degree_sum(dw1_ptr, da * x1, dg1_ptr, sc1_ptr, row, ch, valid, s_e1n, s_e1k, s_e1c, K1, I1P)
    if NEED_DX2:
        d2 = db
        if HAS_W2:
            d2 = db * w2e
        if X2_BCAST:
            d2 = tl.where(valid[:, None], d2, 0.0)
            d2r = tl.sum(tl.reshape(d2, (BLOCK_R, BLOCK_C, I2P)), axis=1)
            rr = (tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)).to(tl.int64)
            j = tl.arange(0, I2P)
            tl.store(dx2_ptr + tl.program_id(1) * s_d2b + rr[:, None] * s_d2n + j[None, :],
                     d2r.to(dx2_ptr.dtype.element_ty), mask=(rr[:, None] < N) & (j[None, :] < I2))
        else:
            _store_rows(dx2_ptr, d2, row, ch, valid, s_d2n, s_d2c, I2, I2P)
    if NEED_DW2:
        _store_degree_sum(pe2, db * x2, dg2_ptr, sc2_ptr, row, ch, valid, s_e2n, s_e2k, s_e2c, K2, I2P)
    if NEED_DW3:
        _store_degree_sum(pe3, go * raw, dg3_ptr, sc3_ptr, row, ch, valid, s_e3n, s_e3k, s_e3c, K3, IOP)


# ----------------------------------------------------------------------------------------------
# deterministic fused message passing: one program per (node, channel block), CSR segments
# ----------------------------------------------------------------------------------------------
@triton.jit
def msg_fwd_segment_kernel(
    x1_ptr, sh_ptr, w_ptr, dg1_ptr, sc1_ptr, dg2_ptr, sc2_ptr, dg3_ptr, sc3_ptr, y1_ptr, y2_ptr, f_ptr, out_ptr,
    src_ptr, perm_ptr, seg_ptr,
    C, I1, I2, IO, K1: tl.constexpr, K2: tl.constexpr, K3: tl.constexpr,
    s_x1n, s_x1c, s_shn, s_wn, s_wk, s_wc, s_on, s_oc,
    BLOCK_E: tl.constexpr, BLOCK_C: tl.constexpr,
    I1P: tl.constexpr, I2P: tl.constexpr, IOP: tl.constexpr,
    BLOCK_P: tl.constexpr, PP: tl.constexpr,
):
    """``out[v] = sum over edges e into v (in sorted order) of conv(x1[src[e]], sh[e], w[e])``.

    The incoming edges of node ``v`` are ``perm[seg[v]:seg[v+1]]`` (edges sorted by receiver); the
    sum runs in registers in a fixed order and is stored once: bit-reproducible, no atomics.
    """
    v = tl.program_id(0).to(tl.int64)
    BM: tl.constexpr = BLOCK_E * BLOCK_C
    slot, ch, start, end = _segment(seg_ptr, v, BLOCK_E, BLOCK_C)
    cdt = y1_ptr.dtype.element_ty
    acc = tl.zeros((BLOCK_C, IOP), dtype=cdt)
    for s0 in range(start, end, BLOCK_E):
        valid, e = _segment_edges(perm_ptr, s0, slot, end, ch, C)
        xrow = tl.load(src_ptr + e, mask=s0 + slot < end, other=0).to(tl.int64)
        a = _load_rows(x1_ptr, xrow, ch, valid, s_x1n, s_x1c, I1, I1P).to(cdt)
        a = a * _expand(w_ptr, dg1_ptr, sc1_ptr, e, ch, valid, s_wn, s_wk, s_wc, I1P)
        b = _load_rows(sh_ptr, e, ch, valid, s_shn, 0, I2, I2P).to(cdt)
        b = b * _expand(w_ptr + K1 * s_wk, dg2_ptr, sc2_ptr, e, ch, valid, s_wn, s_wk, s_wc, I2P)
        t = _fwd_chain(a, b, y1_ptr, y2_ptr, f_ptr, BM, I1P, I2P, IOP, BLOCK_P, PP)
        t = t * _expand(w_ptr + (K1 + K2) * s_wk, dg3_ptr, sc3_ptr, e, ch, valid, s_wn, s_wk, s_wc, IOP)
        t = tl.where(valid[:, None], t, 0.0)
        acc += tl.sum(tl.reshape(t, (BLOCK_E, BLOCK_C, IOP)), axis=0)
    cc = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    o = tl.arange(0, IOP)
    tl.store(out_ptr + v * s_on + cc[:, None] * s_oc + o[None, :], acc.to(out_ptr.dtype.element_ty),
             mask=(cc[:, None] < C) & (o[None, :] < IO))


@triton.jit
def msg_bwd_segment_kernel(
    go_ptr, x1_ptr, sh_ptr, w_ptr, dg1_ptr, sc1_ptr, dg2_ptr, sc2_ptr, dg3_ptr, sc3_ptr, y1_ptr, y2_ptr, f_ptr,
    dx1_ptr, dsh_ptr, dw_ptr, dst_ptr, perm_ptr, seg_ptr,
    C, I1, I2, IO, K1: tl.constexpr, K2: tl.constexpr, K3: tl.constexpr,
    s_gn, s_gc, s_x1n, s_x1c, s_shn, s_wn, s_wk, s_wc,
    s_d1n, s_d1c, s_dsb, s_dsn, s_dwn, s_dwk, s_dwc,
    NEED_DX1: tl.constexpr, NEED_DSH: tl.constexpr, NEED_DW: tl.constexpr,
    BLOCK_E: tl.constexpr, BLOCK_C: tl.constexpr,
    I1P: tl.constexpr, I2P: tl.constexpr, IOP: tl.constexpr,
    BLOCK_P: tl.constexpr, PP: tl.constexpr,
):
    """Backward of the message op, one program per (sender node, channel block).

    The outgoing edges of node ``u`` are ``perm[seg[u]:seg[u+1]]`` (edges sorted by sender). ``dx1[u]``
    is summed over them in registers (fixed order, stored once); the per-edge gradients (``dw [E, K, C]``,
    ``dsh`` per channel block ``[NCB, E, I2]``) are written by the one program that owns the edge.
    """
    u = tl.program_id(0).to(tl.int64)
    pid_c = tl.program_id(1)
    BM: tl.constexpr = BLOCK_E * BLOCK_C
    slot, ch, start, end = _segment(seg_ptr, u, BLOCK_E, BLOCK_C)
    cdt = y1_ptr.dtype.element_ty
    acc = tl.zeros((BLOCK_C, I1P), dtype=cdt)
    xrow = tl.zeros((BM,), dtype=tl.int64) + u
    for s0 in range(start, end, BLOCK_E):
        valid, e = _segment_edges(perm_ptr, s0, slot, end, ch, C)
        grow = tl.load(dst_ptr + e, mask=s0 + slot < end, other=0).to(tl.int64)
        x1 = _load_rows(x1_ptr, xrow, ch, valid, s_x1n, s_x1c, I1, I1P).to(cdt)
        w1e = _expand(w_ptr, dg1_ptr, sc1_ptr, e, ch, valid, s_wn, s_wk, s_wc, I1P)
        a = x1 * w1e
        x2 = _load_rows(sh_ptr, e, ch, valid, s_shn, 0, I2, I2P).to(cdt)
        w2e = _expand(w_ptr + K1 * s_wk, dg2_ptr, sc2_ptr, e, ch, valid, s_wn, s_wk, s_wc, I2P)
        b = x2 * w2e
        go = _load_rows(go_ptr, grow, ch, valid, s_gn, s_gc, IO, IOP).to(cdt)
        h = go * _expand(w_ptr + (K1 + K2) * s_wk, dg3_ptr, sc3_ptr, e, ch, valid, s_wn, s_wk, s_wc, IOP)
        raw, da, db = _bwd_chain(a, b, h, y1_ptr, y2_ptr, f_ptr, BM, I1P, I2P, IOP, BLOCK_P, PP,
                                 NEED_DW, NEED_DX1 or NEED_DW, NEED_DSH or NEED_DW)
        if NEED_DX1:
            d1 = tl.where(valid[:, None], da * w1e, 0.0)
            acc += tl.sum(tl.reshape(d1, (BLOCK_E, BLOCK_C, I1P)), axis=0)
        if NEED_DW:
            _store_degree_sum(dw_ptr, da * x1, dg1_ptr, sc1_ptr, e, ch, valid, s_dwn, s_dwk, s_dwc, K1, I1P)
            _store_degree_sum(dw_ptr + K1 * s_dwk, db * x2, dg2_ptr, sc2_ptr, e, ch, valid, s_dwn, s_dwk, s_dwc, K2, I2P)
            _store_degree_sum(dw_ptr + (K1 + K2) * s_dwk, go * raw, dg3_ptr, sc3_ptr, e, ch, valid, s_dwn, s_dwk, s_dwc, K3, IOP)
        if NEED_DSH:
            d2 = tl.where(valid[:, None], db * w2e, 0.0)
            d2r = tl.sum(tl.reshape(d2, (BLOCK_E, BLOCK_C, I2P)), axis=1)
            epos = s0 + tl.arange(0, BLOCK_E)
            ee = tl.load(perm_ptr + epos, mask=epos < end, other=0).to(tl.int64)
            j = tl.arange(0, I2P)
            tl.store(dsh_ptr + pid_c * s_dsb + ee[:, None] * s_dsn + j[None, :],
                     d2r.to(dsh_ptr.dtype.element_ty), mask=(epos[:, None] < end) & (j[None, :] < I2))
    if NEED_DX1:
        cc = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
        i = tl.arange(0, I1P)
        tl.store(dx1_ptr + u * s_d1n + cc[:, None] * s_d1c + i[None, :], acc.to(dx1_ptr.dtype.element_ty),
                 mask=(cc[:, None] < C) & (i[None, :] < I1))


# ----------------------------------------------------------------------------------------------
# many-body (power) product, correlation NU <= 4
# ----------------------------------------------------------------------------------------------
@triton.jit(do_not_specialize=["N"])
def mb_fwd_kernel(
    x_ptr, win_ptr, wout_ptr, dgi_ptr, sci_ptr, dgo_ptr, sco_ptr, y_ptr, f_ptr, out_ptr,
    N, C, I, IO, K: tl.constexpr, KO: tl.constexpr,
    s_xn, s_xc, s_in, s_iv, s_ik, s_ic, s_on_w, s_ov, s_ok, s_oc_w, s_on, s_oc,
    NU: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
    IP: tl.constexpr, IOP: tl.constexpr,
    BLOCK_P: tl.constexpr, PP: tl.constexpr,
):
    """``out = sum_nu w_out[nu] * proj_nu(prod_{k<=nu} (w_in[k] x) @ Y)`` with running products per
    grid chunk; ``F [NU, PP, IOP]`` holds one projection per power (its normalisation folded in)."""
    BM: tl.constexpr = BLOCK_R * BLOCK_C
    row, ch, valid = _tile(N, C, BLOCK_R, BLOCK_C)
    cdt = y_ptr.dtype.element_ty
    x = _load_rows(x_ptr, row, ch, valid, s_xn, s_xc, I, IP).to(cdt)
    i = tl.arange(0, IP)
    o = tl.arange(0, IOP)
    p = tl.arange(0, BLOCK_P)
    FS: tl.constexpr = PP * IOP
    xw1 = x * _expand(win_ptr, dgi_ptr, sci_ptr, row, ch, valid, s_in, s_ik, s_ic, IP)
    acc1 = tl.zeros((BM, IOP), dtype=cdt)
    acc2 = tl.zeros((BM, IOP), dtype=cdt)
    acc3 = tl.zeros((BM, IOP), dtype=cdt)
    acc4 = tl.zeros((BM, IOP), dtype=cdt)
    if NU >= 2:
        xw2 = x * _expand(win_ptr + s_iv, dgi_ptr, sci_ptr, row, ch, valid, s_in, s_ik, s_ic, IP)
    if NU >= 3:
        xw3 = x * _expand(win_ptr + 2 * s_iv, dgi_ptr, sci_ptr, row, ch, valid, s_in, s_ik, s_ic, IP)
    if NU >= 4:
        xw4 = x * _expand(win_ptr + 3 * s_iv, dgi_ptr, sci_ptr, row, ch, valid, s_in, s_ik, s_ic, IP)
    for p0 in range(0, PP, BLOCK_P):
        pp = p0 + p
        yc = tl.load(y_ptr + i[:, None] * PP + pp[None, :])
        fo = pp[:, None] * IOP + o[None, :]
        r = _mm(xw1, yc)
        acc1 += _mm(r, tl.load(f_ptr + fo))
        if NU >= 2:
            r = r * _mm(xw2, yc)
            acc2 += _mm(r, tl.load(f_ptr + FS + fo))
        if NU >= 3:
            r = r * _mm(xw3, yc)
            acc3 += _mm(r, tl.load(f_ptr + 2 * FS + fo))
        if NU >= 4:
            r = r * _mm(xw4, yc)
            acc4 += _mm(r, tl.load(f_ptr + 3 * FS + fo))
    out = acc1 * _expand(wout_ptr, dgo_ptr, sco_ptr, row, ch, valid, s_on_w, s_ok, s_oc_w, IOP)
    if NU >= 2:
        out += acc2 * _expand(wout_ptr + s_ov, dgo_ptr, sco_ptr, row, ch, valid, s_on_w, s_ok, s_oc_w, IOP)
    if NU >= 3:
        out += acc3 * _expand(wout_ptr + 2 * s_ov, dgo_ptr, sco_ptr, row, ch, valid, s_on_w, s_ok, s_oc_w, IOP)
    if NU >= 4:
        out += acc4 * _expand(wout_ptr + 3 * s_ov, dgo_ptr, sco_ptr, row, ch, valid, s_on_w, s_ok, s_oc_w, IOP)
    _store_rows(out_ptr, out, row, ch, valid, s_on, s_oc, IO, IOP)


@triton.jit
def _mb_store_dwin(dwin_ptr, d, x, dgi_ptr, sci_ptr, row, ch, valid, s_dn, s_dk, s_dc, K: tl.constexpr,
                   IP: tl.constexpr):
    _store_degree_sum(dwin_ptr, d * x, dgi_ptr, sci_ptr, row, ch, valid, s_dn, s_dk, s_dc, K, IP)


@triton.jit(do_not_specialize=["N"])
def mb_bwd_kernel(
    go_ptr, x_ptr, win_ptr, wout_ptr, dgi_ptr, sci_ptr, dgo_ptr, sco_ptr, y_ptr, f_ptr, dx_ptr, dwin_ptr, dwout_ptr,
    N, C, I, IO, K: tl.constexpr, KO: tl.constexpr,
    s_gn, s_gc, s_xn, s_xc, s_in, s_iv, s_ik, s_ic, s_on_w, s_ov, s_ok, s_oc_w,
    s_dxn, s_dxc, s_din, s_div, s_dik, s_dic, s_don, s_dov, s_dok, s_doc,
    NU: tl.constexpr, NEED_DX: tl.constexpr, NEED_DWIN: tl.constexpr, NEED_DWOUT: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
    IP: tl.constexpr, IOP: tl.constexpr,
    BLOCK_P: tl.constexpr, PP: tl.constexpr,
):
    """Gradients of ``mb_fwd_kernel`` w.r.t. x, w_in and w_out (per row; the caller sums shared rows).

    With ``r_nu = f_1 ... f_nu`` and ``dr_nu = (go w_out[nu]) F_nu^T`` the adjoint of each factor is
    accumulated backwards without division: ``G = dr_NU; df_k = G r_{k-1}; G = G f_k + dr_{k-1}``.
    """
    BM: tl.constexpr = BLOCK_R * BLOCK_C
    row, ch, valid = _tile(N, C, BLOCK_R, BLOCK_C)
    cdt = y_ptr.dtype.element_ty
    i = tl.arange(0, IP)
    o = tl.arange(0, IOP)
    p = tl.arange(0, BLOCK_P)
    FS: tl.constexpr = PP * IOP
    x = _load_rows(x_ptr, row, ch, valid, s_xn, s_xc, I, IP).to(cdt)
    go = _load_rows(go_ptr, row, ch, valid, s_gn, s_gc, IO, IOP).to(cdt)
    we1 = _expand(win_ptr, dgi_ptr, sci_ptr, row, ch, valid, s_in, s_ik, s_ic, IP)
    xw1 = x * we1
    h1 = go * _expand(wout_ptr, dgo_ptr, sco_ptr, row, ch, valid, s_on_w, s_ok, s_oc_w, IOP)
    if NU >= 2:
        we2 = _expand(win_ptr + s_iv, dgi_ptr, sci_ptr, row, ch, valid, s_in, s_ik, s_ic, IP)
        xw2 = x * we2
        h2 = go * _expand(wout_ptr + s_ov, dgo_ptr, sco_ptr, row, ch, valid, s_on_w, s_ok, s_oc_w, IOP)
    if NU >= 3:
        we3 = _expand(win_ptr + 2 * s_iv, dgi_ptr, sci_ptr, row, ch, valid, s_in, s_ik, s_ic, IP)
        xw3 = x * we3
        h3 = go * _expand(wout_ptr + 2 * s_ov, dgo_ptr, sco_ptr, row, ch, valid, s_on_w, s_ok, s_oc_w, IOP)
    if NU >= 4:
        we4 = _expand(win_ptr + 3 * s_iv, dgi_ptr, sci_ptr, row, ch, valid, s_in, s_ik, s_ic, IP)
        xw4 = x * we4
        h4 = go * _expand(wout_ptr + 3 * s_ov, dgo_ptr, sco_ptr, row, ch, valid, s_on_w, s_ok, s_oc_w, IOP)
    raw1 = tl.zeros((BM, IOP), dtype=cdt)
    raw2 = tl.zeros((BM, IOP), dtype=cdt)
    raw3 = tl.zeros((BM, IOP), dtype=cdt)
    raw4 = tl.zeros((BM, IOP), dtype=cdt)
    d1 = tl.zeros((BM, IP), dtype=cdt)
    d2 = tl.zeros((BM, IP), dtype=cdt)
    d3 = tl.zeros((BM, IP), dtype=cdt)
    d4 = tl.zeros((BM, IP), dtype=cdt)
    for p0 in range(0, PP, BLOCK_P):
        pp = p0 + p
        yc = tl.load(y_ptr + i[:, None] * PP + pp[None, :])
        yt = tl.load(y_ptr + i[None, :] * PP + pp[:, None])
        fo = pp[:, None] * IOP + o[None, :]
        ft = pp[None, :] * IOP + o[:, None]
        f1 = _mm(xw1, yc)
        r1 = f1
        dr1 = _mm(h1, tl.load(f_ptr + ft))
        if NEED_DWOUT:
            raw1 += _mm(r1, tl.load(f_ptr + fo))
        if NU >= 2:
            f2 = _mm(xw2, yc)
            r2 = r1 * f2
            dr2 = _mm(h2, tl.load(f_ptr + FS + ft))
            if NEED_DWOUT:
                raw2 += _mm(r2, tl.load(f_ptr + FS + fo))
        if NU >= 3:
            f3 = _mm(xw3, yc)
            r3 = r2 * f3
            dr3 = _mm(h3, tl.load(f_ptr + 2 * FS + ft))
            if NEED_DWOUT:
                raw3 += _mm(r3, tl.load(f_ptr + 2 * FS + fo))
        if NU >= 4:
            f4 = _mm(xw4, yc)
            r4 = r3 * f4
            dr4 = _mm(h4, tl.load(f_ptr + 3 * FS + ft))
            if NEED_DWOUT:
                raw4 += _mm(r4, tl.load(f_ptr + 3 * FS + fo))
        if NEED_DX or NEED_DWIN:
            if NU == 1:
                d1 += _mm(dr1, yt)
            if NU == 2:
                d2 += _mm(dr2 * f1, yt)
                d1 += _mm(dr2 * f2 + dr1, yt)
            if NU == 3:
                d3 += _mm(dr3 * r2, yt)
                g = dr3 * f3 + dr2
                d2 += _mm(g * f1, yt)
                d1 += _mm(g * f2 + dr1, yt)
            if NU == 4:
                d4 += _mm(dr4 * r3, yt)
                g = dr4 * f4 + dr3
                d3 += _mm(g * r2, yt)
                g = g * f3 + dr2
                d2 += _mm(g * f1, yt)
                d1 += _mm(g * f2 + dr1, yt)
    if NEED_DX:
        dx = d1 * we1
        if NU >= 2:
            dx += d2 * we2
        if NU >= 3:
            dx += d3 * we3
        if NU >= 4:
            dx += d4 * we4
        _store_rows(dx_ptr, dx, row, ch, valid, s_dxn, s_dxc, I, IP)
    if NEED_DWIN:
        _mb_store_dwin(dwin_ptr, d1, x, dgi_ptr, sci_ptr, row, ch, valid, s_din, s_dik, s_dic, K, IP)
        if NU >= 2:
            _mb_store_dwin(dwin_ptr + s_div, d2, x, dgi_ptr, sci_ptr, row, ch, valid, s_din, s_dik, s_dic, K, IP)
        if NU >= 3:
            _mb_store_dwin(dwin_ptr + 2 * s_div, d3, x, dgi_ptr, sci_ptr, row, ch, valid, s_din, s_dik, s_dic, K, IP)
        if NU >= 4:
            _mb_store_dwin(dwin_ptr + 3 * s_div, d4, x, dgi_ptr, sci_ptr, row, ch, valid, s_din, s_dik, s_dic, K, IP)
    if NEED_DWOUT:
        _store_degree_sum(dwout_ptr, go * raw1, dgo_ptr, sco_ptr, row, ch, valid, s_don, s_dok, s_doc, KO, IOP)
        if NU >= 2:
            _store_degree_sum(dwout_ptr + s_dov, go * raw2, dgo_ptr, sco_ptr, row, ch, valid, s_don, s_dok, s_doc, KO, IOP)
        if NU >= 3:
            _store_degree_sum(dwout_ptr + 2 * s_dov, go * raw3, dgo_ptr, sco_ptr, row, ch, valid, s_don, s_dok, s_doc, KO, IOP)
        if NU >= 4:
            _store_degree_sum(dwout_ptr + 3 * s_dov, go * raw4, dgo_ptr, sco_ptr, row, ch, valid, s_don, s_dok, s_doc, KO, IOP)
