"""The PyTorch backend: the three Gaunt operations as plain, TorchScript-able tensor code.

These functions are the reference semantics of every backend (the Triton kernels are tested
against them). They take *dense channel-wise* tensors and precomputed tables:

- ``x [..., C, I]`` with ``I = (L+1)^2`` coefficients in e3nn's flat SH order;
- ``to_grid [I, P]`` harmonics at the ``P`` quadrature nodes, ``from_grid [P, Io]`` harmonics
  times quadrature weights (times a per-output-degree normalisation, folded in by the layer);
- per-degree weights indexed through ``deg [I]`` (the degree slot of every coefficient).

Weight layouts are degree-major, channel-minor: ``[..., K, C]``.
"""
from __future__ import annotations

import torch

__all__ = [
    "flat_to_dense",
    "dense_to_flat",
    "grid_product",
    "fourier_product",
    "weighted_product",
    "conv_product",
    "many_body_product",
]


def flat_to_dense(x: torch.Tensor, index: torch.Tensor, lanes: int, width: int) -> torch.Tensor:
    """e3nn's flat layout ``x [B, dim]`` -> channel-wise ``[B, lanes, width]``, zeros where the feature lacks a
    degree (``index [lanes * width]`` gathers from ``x`` extended by one zero column)."""
    padded = torch.cat([x, x.new_zeros(x.shape[0], 1)], dim=1)
    return padded.index_select(1, index).view(x.shape[0], lanes, width)


def dense_to_flat(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Channel-wise ``x [B, lanes, width]`` -> e3nn's flat ``[B, dim]`` through the gather ``index [dim]``."""
    return x.reshape(x.shape[0], -1).index_select(1, index)


def grid_product(x1: torch.Tensor, x2: torch.Tensor, to_grid1: torch.Tensor, to_grid2: torch.Tensor,
                 from_grid: torch.Tensor) -> torch.Tensor:
    """``proj((x1 @ Y1) * (x2 @ Y2))``: ``x1 [..., I1]``, ``x2 [..., I2]`` (broadcast) -> ``[..., Io]``."""
    return torch.matmul(torch.matmul(x1, to_grid1) * torch.matmul(x2, to_grid2), from_grid)


def fourier_product(x1: torch.Tensor, x2: torch.Tensor, to_fourier1: torch.Tensor, to_fourier2: torch.Tensor,
                    from_fourier: torch.Tensor, n: int) -> torch.Tensor:
    """The paper's 2D Fourier path with FFTs on an ``n x n`` torus.

    ``to_fourier* [I, n*(n//2+1)]`` (complex) place each harmonic's Fourier coefficients at
    ``(u mod n, v >= 0)`` (the half spectrum of a real function); ``irfft2`` gives the values on
    the torus, their product is transformed back with ``rfft2`` and ``from_fourier
    [n*(n//2+1), Io]`` (complex) projects the half spectrum onto the harmonics. With
    ``n = 2 (L1 + L2) + 1`` no frequency of the product wraps around, so the result is exact.
    """
    h = n // 2 + 1
    f1 = torch.matmul(x1.to(to_fourier1.dtype), to_fourier1)
    f2 = torch.matmul(x2.to(to_fourier2.dtype), to_fourier2)
    v1 = torch.fft.irfft2(f1.reshape(f1.shape[:-1] + (n, h)), s=(n, n), norm="forward")
    v2 = torch.fft.irfft2(f2.reshape(f2.shape[:-1] + (n, h)), s=(n, n), norm="forward")
    g = torch.fft.rfft2(v1 * v2, norm="forward")
    g = g.reshape(g.shape[:-2] + (n * h,))
    return torch.matmul(g, from_fourier).real


def weighted_product(x1: torch.Tensor, x2: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, w3: torch.Tensor,
                     deg1: torch.Tensor, deg2: torch.Tensor, deg3: torch.Tensor, to_grid1: torch.Tensor,
                     to_grid2: torch.Tensor, from_grid: torch.Tensor) -> torch.Tensor:
    """Channel-wise product with per-channel, per-degree weights on both inputs and the output.

    ``x1 [N, C, I1]``, ``x2 [N, C, I2]``; ``w1 [*, K1, C]``, ``w2 [*, K2, C]``, ``w3 [*, K3, C]``
    (``*`` = nothing for shared weights, or ``N``); ``deg* [I*]`` degree slots. Returns ``[N, C, Io]``:
    ``w3 * proj((w1 * x1) @ Y1 * (w2 * x2) @ Y2)``.
    """
    a = x1 * w1.transpose(-1, -2).index_select(-1, deg1)
    b = x2 * w2.transpose(-1, -2).index_select(-1, deg2)
    out = grid_product(a, b, to_grid1, to_grid2, from_grid)
    return out * w3.transpose(-1, -2).index_select(-1, deg3)


def conv_product(x1: torch.Tensor, sh: torch.Tensor, weight: torch.Tensor, k1: int, k2: int, deg1: torch.Tensor,
                 deg2: torch.Tensor, deg3: torch.Tensor, to_grid1: torch.Tensor, to_grid2: torch.Tensor,
                 from_grid: torch.Tensor) -> torch.Tensor:
    """Gaunt convolution: node features times edge harmonics with per-edge weights.

    ``x1 [E, C, I1]`` (sender features), ``sh [E, I2]`` (edge harmonics), ``weight [E, K1+K2+K3, C]``
    (degree-major: the ``k1`` input-1 degrees, the ``k2`` harmonic degrees, the output degrees), ``deg1 [I1]``,
    ``deg2 [I2]``, ``deg3 [Io]`` degree slots.
    Returns ``[E, C, Io]`` = ``w3 * proj( ((w1 * x1) @ Y1) * sum_l2 w2[l2] (sh_l2 @ Y2) )``.
    The harmonic side goes to the grid once per degree (``[E, K2, P]``), not once per channel.
    """
    w1 = weight[:, :k1]
    w2 = weight[:, k1:k1 + k2]
    w3 = weight[:, k1 + k2:]
    a = torch.matmul(x1 * w1.transpose(1, 2).index_select(2, deg1), to_grid1)  # [E, C, P]
    mask2 = (deg2.unsqueeze(0) == torch.arange(k2, device=deg2.device).unsqueeze(1)).to(sh.dtype)  # [K2, I2]
    s = torch.matmul(sh.unsqueeze(1) * mask2, to_grid2)  # [E, K2, P]
    b = torch.bmm(w2.transpose(1, 2), s)  # [E, C, P]
    return torch.matmul(a * b, from_grid) * w3.transpose(1, 2).index_select(2, deg3)


def many_body_product(x: torch.Tensor, w_in: torch.Tensor, w_out: torch.Tensor, deg_in: torch.Tensor,
                      deg_out: torch.Tensor, to_grid: torch.Tensor, from_grids: torch.Tensor) -> torch.Tensor:
    """Many-body (power) product of correlation ``nu_max = from_grids.shape[0]``.

    ``x [N, C, I]``; per-node weights ``w_in [N, nu_max, K, C]`` and ``w_out [N, nu_max, Ko, C]``
    (already contracted with the element one-hot); ``to_grid [I, P]``; ``from_grids [nu_max, P, Io]``,
    slice ``nu-1`` projecting the ``nu``-fold term (its normalisation folded in, zero for a term
    that cannot reach the output; all on the grid exact for the largest ``nu``). Returns
    ``[N, C, Io]`` = ``sum_nu w_out[nu] * proj_nu( prod_{k<=nu} (w_in[k] * x) @ Y )``.
    """
    nu_max = from_grids.shape[0]
    f = torch.matmul(x * w_in[:, 0].transpose(1, 2).index_select(2, deg_in), to_grid)  # [N, C, P]
    running = f
    out = torch.matmul(running, from_grids[0]) * w_out[:, 0].transpose(1, 2).index_select(2, deg_out)
    for nu in range(1, nu_max):
        f = torch.matmul(x * w_in[:, nu].transpose(1, 2).index_select(2, deg_in), to_grid)
        running = running * f
        out = out + torch.matmul(running, from_grids[nu]) * w_out[:, nu].transpose(1, 2).index_select(2, deg_out)
    return out
