"""GauntOddPaths: the order-3 couplings through odd intermediate paths, as nested Poisson brackets on a grid."""
from __future__ import annotations

import math

import numpy as np
import torch

from ..irreps import ChannelIrreps
from ..math.s2_grid import bracket_degree, bracket_grid_tables

__all__ = ["GauntOddPaths"]


def _columns(degrees) -> list:
    """Positions of the compact ``sum_l (2l+1)`` columns of ``degrees`` in the full ``(L+1)^2`` layout."""
    return [l * l + i for l in degrees for i in range(2 * l + 1)]


def _degree_of_columns(degrees) -> list:
    """For each compact column, the index of its degree in ``degrees``."""
    return [k for k, l in enumerate(degrees) for _ in range(2 * l + 1)]


def _raw_brackets(x: np.ndarray, grad_in: np.ndarray, project_h: np.ndarray, grad_h: np.ndarray,
                  project_out: np.ndarray) -> np.ndarray:
    """``proj({{x, x'}, x''})`` in float64 for rows of three functions ``x [3, R, K]`` (the normalisation probe)."""
    g = [np.einsum("rk,kdp->rdp", xi, grad_in) for xi in x]
    h = g[0][:, 0] * g[1][:, 1] - g[0][:, 1] * g[1][:, 0]
    gh = np.einsum("rp,pk,kdq->rdq", h, project_h, grad_h, optimize=True)
    return (gh[:, 0] * g[2][:, 1] - gh[:, 1] * g[2][:, 0]) @ project_out


class GauntOddPaths(torch.nn.Module):
    """``B[c, lo] = sum_k w_out[z, lo, k C + c] proj_lo({{f_1, f_2}, f_3})[k C + c]``, ``f_j[k C + c] = sum_l
    w_in[z, j, l, k C + c] x[c, l]``: ``chains`` element-dependent nested brackets per channel.

    ``{f, g}(r) = r . (grad f x grad g)`` (surface gradients) forms the couplings ``l1 x l2 -> l3`` with ``l1 + l2
    + l3`` odd, which a product of spherical functions cannot; the nested bracket is trilinear with two odd
    steps, so its parity is that of ``f_1 f_2 f_3``: it adds to a correlation-3 many-body product the part of
    MACE's symmetric contraction that couples through odd intermediate paths (``(1 x 2 -> 2) x 1 -> 2``).

    The degree-0 part of a bracket vanishes (``{h, f}`` is a divergence: its integral over the sphere is 0), so
    the term has no scalar output: its ``0e`` columns are exactly 0, and an output with degree 0 alone is refused.

    ``forward(x [N, C, sum_l (2l+1)], attrs [N, num_elements], gain) -> [N, C x out degrees]`` (flat ``mul_ir``).
    Weights ``weights_in [num_elements, 3, K, chains C]`` (start near 1, apart per factor: ``{f, f} = 0``),
    ``weights_out [num_elements, Ko, chains C]`` (start at 0: a layer gains the term without changing its
    initial function), both multiplied by ``gain`` in ``forward`` (the parameters hold ``w / weight_gain``).
    The tables are scaled so that unit-variance inputs with unit weights give unit-RMS brackets (degrees >= 1).
    Computed by dense matmuls on a grid exact for every projection.
    """

    def __init__(self, fi: ChannelIrreps, fo: ChannelIrreps, num_elements: int, chains: int,
                 weight_gain: float = 1.0):
        super().__init__()
        if max(fi.degrees) < 1 or max(fo.degrees) < 1:
            raise ValueError(f"GauntOddPaths: {fi.irreps} -> {fo.irreps}: nested brackets need degrees >= 1 in and "
                             f"out (those of constants vanish, and so does their degree-0 part)")
        self.channels = fi.mul
        self.chains = int(chains)
        self.num_elements = int(num_elements)
        self.k_in, self.k_out = len(fi.degrees), len(fo.degrees)
        l_in, lo = max(fi.degrees), max(fo.degrees)
        grad_in, project_h, grad_h, project_out = bracket_grid_tables(l_in, lo)
        cols_in, cols_out = _columns(fi.degrees), _columns(fo.degrees)
        grad_in, project_out = grad_in[cols_in], project_out[:, cols_out].copy()
        project_out[:, [j for j, col in enumerate(cols_out) if col == 0]] = 0.0  # degree 0: exactly 0
        # unit-RMS brackets (degrees >= 1) for unit-variance inputs and unit weights (a fixed probe: deterministic)
        probe = np.random.default_rng(0).standard_normal((3, 256, len(cols_in)))
        raw = _raw_brackets(probe, grad_in, project_h, grad_h, project_out)[:, [j for j, col in enumerate(cols_out)
                                                                                  if col > 0]]
        scale = 1.0 / math.sqrt(float(np.mean(raw ** 2)))
        points = grad_in.shape[-1]
        dtype = torch.get_default_dtype()
        device = torch.empty(0).device
        as_buffer = lambda a: torch.tensor(np.ascontiguousarray(a), dtype=dtype, device=device)  # noqa: E731
        self.register_buffer("grad_in", as_buffer(grad_in.reshape(len(cols_in), 2 * points)))
        self.register_buffer("project_h", as_buffer(project_h))
        self.register_buffer("grad_h", as_buffer(grad_h.reshape(grad_h.shape[0], 2 * points)))
        self.register_buffer("project_out", as_buffer(project_out * scale))
        self.register_buffer("degree_in", torch.tensor(_degree_of_columns(fi.degrees), device=device))
        self.register_buffer("degree_out", torch.tensor(_degree_of_columns(fo.degrees), device=device))
        # flat mul_ir position -> (channel, compact output column) in [C, Koc]
        flat = [c * len(cols_out) + start + m
                for l, start in zip(fo.degrees, np.cumsum([0] + [2 * l + 1 for l in fo.degrees]))
                for c in range(fo.mul) for m in range(2 * l + 1)]
        self.register_buffer("flat_index", torch.tensor(flat, device=device))
        self.points = points
        self.inner_degree = bracket_degree(l_in)
        lanes = self.chains * self.channels
        start = 1.0 + 0.5 * torch.randn(num_elements, 3, self.k_in, lanes)
        self.weights_in = torch.nn.Parameter(start / float(weight_gain))
        self.weights_out = torch.nn.Parameter(torch.zeros(num_elements, self.k_out, lanes))

    def _gradients(self, a: torch.Tensor) -> torch.Tensor:
        """``[N, lanes, Kc]`` coefficients -> ``[N, lanes, 2, P]`` tangent gradients on the grid."""
        return torch.matmul(a, self.grad_in.to(a.dtype)).unflatten(-1, (2, self.points))

    def forward(self, x: torch.Tensor, attrs: torch.Tensor, gain: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        lanes = self.chains * self.channels
        w_in = torch.matmul(attrs, self.weights_in.to(x.dtype).reshape(self.num_elements, -1)) * gain
        w_in = w_in.view(n, 3, self.k_in, lanes)[:, :, self.degree_in, :]  # [N, 3, Kc, lanes]
        w_out = torch.matmul(attrs, self.weights_out.to(x.dtype).reshape(self.num_elements, -1)) * gain
        w_out = w_out.view(n, self.k_out, lanes)[:, self.degree_out, :]  # [N, Koc, lanes]
        xl = x.repeat(1, self.chains, 1) if self.chains > 1 else x  # [N, lanes, Kc]
        g1 = self._gradients(xl * w_in[:, 0].transpose(1, 2))
        g2 = self._gradients(xl * w_in[:, 1].transpose(1, 2))
        g3 = self._gradients(xl * w_in[:, 2].transpose(1, 2))
        inner = g1[:, :, 0] * g2[:, :, 1] - g1[:, :, 1] * g2[:, :, 0]  # [N, lanes, P]
        gh = torch.matmul(torch.matmul(inner, self.project_h.to(x.dtype)), self.grad_h.to(x.dtype))
        gh = gh.unflatten(-1, (2, self.points))
        outer = gh[:, :, 0] * g3[:, :, 1] - gh[:, :, 1] * g3[:, :, 0]
        out = torch.matmul(outer, self.project_out.to(x.dtype)) * w_out.transpose(1, 2)  # [N, lanes, Koc]
        if self.chains > 1:
            out = out.view(n, self.chains, self.channels, out.shape[-1]).sum(1)
        return out.reshape(n, -1)[:, self.flat_index]
