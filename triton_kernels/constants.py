"""Block sizes, padding rules and limits of the Gaunt Triton kernels, each with its reason.

All of these are first guesses made without a GPU to tune on: they
respect the hard constraints (``tl.dot`` operand dimensions >= 16, ``tl.arange`` sizes powers of
two) and keep the per-program register footprint of the backward kernels bounded, but the
numbers themselves have not been autotuned on an H100 yet. Change them here, nowhere else.
"""
from __future__ import annotations

import os

__all__ = [
    "FP32_DOT_PRECISION",
    "MIN_DOT",
    "BLOCK_P",
    "BLOCK_M_FWD",
    "BLOCK_M_BWD",
    "BLOCK_M_MANY_BODY_FWD",
    "BLOCK_M_MANY_BODY_BWD",
    "BLOCK_M_SEGMENT",
    "BLOCK_M_SEGMENT_BWD",
    "MAX_BLOCK_C",
    "MAX_PADDED_WIDTH",
    "MAX_CORRELATION",
    "next_pow2",
    "padded",
    "grid_padded",
    "num_warps_for",
    "num_warps_many_body",
    "tile_shape",
]

FP32_DOT_PRECISION = os.environ.get("GAUNT_TRITON_FP32_DOT", "ieee")
"""``tl.dot`` input precision for float32 features (read once, at import). ``"ieee"`` (default):
exact float32 products on the CUDA cores (float32 accumulates exactly).
``"tf32x3"``: three TF32 tensor-core products per dot, about float32 accuracy (~1e-6 relative) at
tensor-core throughput; ``"tf32"``: ~1e-3 relative, fastest. The dots are small (K = 16..64), so
which one wins on an H100 is to be measured (``benchmarks/gpu_ops.py``); set the variable
``GAUNT_TRITON_FP32_DOT`` before importing ``gaunt_plugins.triton_kernels`` to try one."""
if FP32_DOT_PRECISION not in ("ieee", "tf32x3", "tf32"):
    raise ValueError(f"GAUNT_TRITON_FP32_DOT={FP32_DOT_PRECISION!r}: choose ieee, tf32x3 or tf32")

MIN_DOT = 16
"""Smallest ``tl.dot`` operand dimension. The GPU compiler rejects dot tiles under 16 (the MMA
instruction shapes); the interpreter accepts them, so every width that feeds a ``tl.dot``
(coefficients ``I``, weight slots ``K``, output ``Io``, rows ``M``) is padded up to at least this,
with zero rows/columns in the padded tables so the padding never contributes."""

BLOCK_P = 32
"""Grid points per step of the loop over the quadrature grid. The per-row ``[M, P]`` grid values
exist only one ``BLOCK_P`` chunk at a time (flash-attention style: to grid, multiply, project,
accumulate), so registers stay bounded for any L (P = 28 at L=2 up to ~190 at L=6 and 300+ for
the nu=3 power grids). 32 is the smallest power of two >= 16 that keeps the number of loop
iterations low for the common L <= 4 (P <= 91: <= 3 iterations)."""

BLOCK_M_FWD = 64
"""(row, channel) pairs per program in the forward product kernels: the M dimension of every
``tl.dot``. 64 pairs x (I <= 32 inputs, BLOCK_P = 32 grid values, Io <= 32 accumulators) is well
inside 4 warps' registers; larger M did not need to be considered without a GPU to measure on."""

BLOCK_M_BWD = 32
"""Pairs per program in the backward product kernels: they carry three accumulators (projected
output for the w3 gradient, dx1, dx2) and four grid-sized chunks, about twice the live state of
the forward, so half the rows. Evidence (``ptxas -v``, sm_90, conv L=2 C=128): 64 pairs used 255
registers and spilled 448 bytes; 32 pairs fit in 175 registers without spills."""

BLOCK_M_MANY_BODY_FWD = 64
"""Pairs per program in the many-body forward: nu accumulators of width Io (Io is small in MACE,
0e+1o -> 16 after padding), same budget as the product forward."""

BLOCK_M_MANY_BODY_BWD = 32
"""Pairs per program in the many-body backward: nu input-gradient accumulators plus nu running
products and their adjoints per grid chunk. With 8 warps (``num_warps_many_body``) nu = 3, L = 3
fits in 184 registers without spills (``ptxas -v``, sm_90); with 4 warps it spilled."""

BLOCK_M_SEGMENT = 64
"""(edge slot, channel) pairs per step of the deterministic (CSR segment) message kernels: one
program owns one node and a channel block and walks its edges ``BLOCK_M_SEGMENT // BLOCK_C`` at a
time, so a node with few edges wastes at most one partial step."""

BLOCK_M_SEGMENT_BWD = 32
"""Pairs per step of the deterministic message backward: the backward state (see ``BLOCK_M_BWD``)
plus the per-node dx accumulator; 64 spilled 180 bytes (``ptxas -v``, sm_90, L=2, C=128)."""

MAX_BLOCK_C = 64
"""Channels per program at most: with C = 128 two programs share a row block, which doubles the
parallelism at the small edge counts of inference while keeping loads of the [C, I] rows
contiguous (the channel stride is I, so a block of channels is one contiguous span)."""

MAX_PADDED_WIDTH = 128
"""Largest padded coefficient width served (I, Io <= 128, i.e. L <= 10): the [M, I] and [M, Io]
accumulators live in registers for the whole program; past 128 they spill. ``validate`` refuses
wider features with this reason. In float64 the limit is 64 (L <= 7): at 128 the forward product's
dot tiles asked for 344,064 bytes of shared memory on an H200, whose blocks have 232,448."""

MAX_CORRELATION = 4
"""Largest many-body correlation order: the kernels keep one accumulator per power explicitly
(Triton has no lists of tensors), written out for nu = 1..4. MACE uses 2..3."""

_NUM_WARPS_SMALL = 4
_NUM_WARPS_LARGE = 8


def next_pow2(n: int) -> int:
    """Smallest power of two >= ``max(n, 1)``."""
    n = max(int(n), 1)
    return 1 << (n - 1).bit_length()


def padded(n: int) -> int:
    """Width used inside the kernels for a dimension of size ``n`` that feeds a ``tl.dot``:
    a power of two (``tl.arange``) and at least ``MIN_DOT`` (the MMA shapes)."""
    return max(MIN_DOT, next_pow2(n))


def grid_padded(p: int) -> int:
    """Number of grid points after padding to a whole number of ``BLOCK_P`` chunks."""
    return max(BLOCK_P, -(-int(p) // BLOCK_P) * BLOCK_P)


def num_warps_for(*widths: int) -> int:
    """4 warps while every padded width is 16 (L <= 3); 8 beyond, where the [M, width] tiles per
    program double and 4 warps spill registers (``ptxas -v`` for sm_90: the L=4 forward at 64
    pairs per program used 255 registers and spilled with 4 warps, 80 registers with 8)."""
    return _NUM_WARPS_LARGE if max(widths) > 16 else _NUM_WARPS_SMALL


def num_warps_many_body(ip: int, iop: int, nu: int) -> int:
    """The many-body kernels hold ``nu`` weighted inputs and ``nu`` accumulators per pair: from
    nu = 3 on, 4 warps spill at L = 3 (ptxas, sm_90), so they take 8."""
    return _NUM_WARPS_LARGE if (nu >= 3 or max(ip, iop) > 16) else _NUM_WARPS_SMALL


def tile_shape(channels: int, block_m: int) -> tuple[int, int]:
    """``(BLOCK_R, BLOCK_C)``: rows x channels per program with ``BLOCK_R * BLOCK_C == block_m``
    (or more when the channel block alone exceeds it). ``BLOCK_C`` is the channel count rounded
    to a power of two, capped at ``MAX_BLOCK_C`` and at ``block_m``; small channel counts take several rows per
    program so that the dot's M dimension never drops under ``MIN_DOT``."""
    block_c = min(next_pow2(channels), MAX_BLOCK_C, block_m)
    block_r = max(1, block_m // block_c)
    return block_r, block_c
