"""Test helpers for users and for this project: random rotations, equivariance checks."""
from __future__ import annotations

from typing import Callable, Sequence

import torch

from ._e3nn import o3
from .math import s2_product_grid

__all__ = ["random_rotation", "wigner_d", "equivariance_error"]


def random_rotation(dtype: torch.dtype = torch.float64, generator: torch.Generator | None = None) -> torch.Tensor:
    """A uniformly random rotation matrix ``[3, 3]`` built in float64 (orthogonal to 1e-15), on the default
    device; ``generator`` draws it (on the generator's own device)."""
    device = generator.device if generator is not None else None  # a CPU generator draws on the CPU
    q = torch.randn(4, dtype=torch.float64, generator=generator, device=device)
    q = q / q.norm()
    a, b, c, d = q
    rot = torch.stack([
        torch.stack([a * a + b * b - c * c - d * d, 2 * (b * c - a * d), 2 * (b * d + a * c)]),
        torch.stack([2 * (b * c + a * d), a * a - b * b + c * c - d * d, 2 * (c * d - a * b)]),
        torch.stack([2 * (b * d - a * c), 2 * (c * d + a * b), a * a - b * b - c * c + d * d]),
    ])
    return rot.to(device=torch.get_default_device(), dtype=dtype)


def wigner_d(irreps, rot: torch.Tensor, exact: bool = True) -> torch.Tensor:
    """Block-diagonal Wigner D ``[irreps.dim, irreps.dim]`` of a proper rotation ``rot``, in e3nn's basis.

    ``exact=True`` projects e3nn's own harmonics, ``D_l = integral Y_l(R r) Y_l(r)^T``, on the product
    grid exact for degree ``2 l`` (accurate to ~1e-15 in float64). ``exact=False`` returns e3nn's
    ``Irreps.D_from_matrix``, which is only accurate to ~1e-6 even in float64 (e3nn 0.4-0.5).
    """
    irreps = o3.Irreps(irreps)
    if not exact:
        return irreps.D_from_matrix(rot.double()).to(rot.dtype)
    lmax = max(ir.l for _, ir in irreps)
    xyz, w = s2_product_grid(2 * lmax)
    pts = torch.from_numpy(xyz)
    y = o3.spherical_harmonics(list(range(lmax + 1)), pts, True, normalization="integral")
    yr = o3.spherical_harmonics(list(range(lmax + 1)), pts @ rot.double().T, True, normalization="integral")
    full = (yr * torch.from_numpy(w)[:, None]).T @ y
    blocks = []
    for mul, ir in irreps:
        sl = slice(ir.l * ir.l, (ir.l + 1) ** 2)
        blocks += [full[sl, sl]] * mul
    return torch.block_diag(*blocks).to(rot.dtype)


def equivariance_error(fn: Callable[..., torch.Tensor], inputs: Sequence[torch.Tensor], irreps_in: Sequence,
                       irreps_out, rot: torch.Tensor) -> float:
    """Relative error ``|f(D x) - D f(x)| / |f(x)|``; ``irreps_in[i] is None`` marks an invariant input."""
    rotated = [x if ir is None else x @ wigner_d(ir, rot).to(x.dtype).T for x, ir in zip(inputs, irreps_in)]
    out = fn(*inputs)
    lhs = fn(*rotated)
    rhs = out @ wigner_d(irreps_out, rot).to(out.dtype).T
    return ((lhs - rhs).abs().max() / out.abs().max().clamp_min(1e-30)).item()
