"""Small problem builders shared by the Triton tests (tables from gaunt_plugins.math, random data)."""
from __future__ import annotations

import torch

from gaunt_plugins.math import grid_tables, power_grid_tables


def degrees(lmax: int) -> torch.Tensor:
    """Degree slot of each coefficient of a dense ``(lmax+1)^2`` feature (slot = degree)."""
    return torch.cat([torch.full((2 * l + 1,), l, dtype=torch.long) for l in range(lmax + 1)])


def product_tables(l1: int, l2: int, lo: int, dtype=torch.float32, device="cpu"):
    return tuple(torch.from_numpy(a).to(dtype=dtype, device=device) for a in grid_tables(l1, l2, lo))


def power_tables(l_in: int, nu: int, lo: int, dtype=torch.float32, device="cpu"):
    """``to_grid [I, P]`` and ``from_grids [nu, P, Io]`` (a different scale per power, like the layer's
    per-power normalisation, so a mix-up of powers shows)."""
    y, f = (torch.from_numpy(a).to(dtype=dtype, device=device) for a in power_grid_tables(l_in, nu, lo))
    return y, torch.stack([f * (0.5 + 0.25 * k) for k in range(nu)])


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max(1, max |b|) in float64."""
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    if b.numel() == 0:
        return 0.0
    return ((a - b).abs().max() / b.abs().max().clamp_min(1.0)).item()


def value_and_grads(fn, inputs, seed: int = 1):
    """``[out, d out/d inputs...]`` for a random cotangent (the same for every backend)."""
    leaves = [t.detach().clone().requires_grad_(t.is_floating_point()) for t in inputs]
    out = fn(*leaves)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    g = g.to(dtype=out.dtype, device=out.device)
    wrt = [t for t in leaves if t.requires_grad]
    grads = torch.autograd.grad(out, wrt, g, allow_unused=True)
    return [out.detach()] + [x if x is None else x.detach() for x in grads]
