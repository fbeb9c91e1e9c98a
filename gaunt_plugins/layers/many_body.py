"""GauntManyBody: the many-body (power) product that replaces MACE's SymmetricContraction."""
from __future__ import annotations

import weakref
from typing import Dict

import torch

from .._e3nn import compile_mode
from ..backends import registry, torch_ops
from ..irreps import ChannelIrreps, channel_irreps, dense_to_flat_index
from ._layout import dense_to_flat, flat_offsets
from ._tables import power_grid_buffers, resolve_method

__all__ = ["GauntManyBody"]


def _compact_to_dense_index(feat: ChannelIrreps) -> torch.Tensor:
    """Gather index ``[(lmax+1)^2]`` from MACE's compact ``[C, sum_l (2l+1)]`` (degrees present
    only) extended by one zero column to the dense ``[C, (lmax+1)^2]``."""
    width = sum(2 * l + 1 for l in feat.degrees)
    idx = torch.full(((feat.lmax + 1) ** 2,), width, dtype=torch.long)
    offset = 0
    for l in feat.degrees:
        idx[l * l:(l + 1) ** 2] = torch.arange(offset, offset + 2 * l + 1)
        offset += 2 * l + 1
    return idx


@compile_mode("script")
class GauntManyBody(torch.nn.Module):
    """Element-dependent many-body product of correlation order ``nu_max`` (MACE's product basis).

    ``forward(x [N, C, sum_l (2l+1)], node_attrs [N, num_elements]) -> [N, irreps_out.dim]``; ``x`` holds
    the ``C`` channels of ``irreps_in`` (``C x (degrees)``), ``node_attrs`` is the element one-hot. With
    ``f_k[c] = sum_l w_in[z, k, l, c] x[c, l]`` (the function of channel ``c`` reweighted per degree):

        B[c, lo] = sum_{nu=1..nu_max} w_out[z, nu, lo, c] * proj_lo( f_1[c] * ... * f_nu[c] )

    computed by pointwise powers on the grid exact for degree ``nu_max L + Lo``.

    Compared with MACE's ``SymmetricContraction`` (a full symmetric tensor basis per element): the
    couplings are restricted to Gaunt paths (even ``l1+l2+l3`` at every step, so no pseudotensor
    outputs from natural inputs) and factorised per degree, with ``O(nu_max (K + Ko) C)`` weights per
    element instead of one per basis function.
    """

    def __init__(self, irreps_in, irreps_out, correlation: int, num_elements: int, normalize: bool = True,
                 method: str = "auto"):
        super().__init__()
        if int(correlation) < 1:
            raise ValueError(f"GauntManyBody: correlation must be >= 1, got {correlation}")
        if int(num_elements) < 1:
            raise ValueError(f"GauntManyBody: num_elements must be >= 1, got {num_elements}")
        fi = channel_irreps(irreps_in, "irreps_in")
        fo = channel_irreps(irreps_out, "irreps_out", mul=fi.mul)
        self.method = resolve_method(method, "GauntManyBody")
        self.irreps_in, self.irreps_out = fi.irreps, fo.irreps
        self.contraction_degree = int(correlation)
        self.correlation = int(correlation)
        self.num_elements = int(num_elements)
        self.channels = fi.mul
        self.k_in, self.k_out = fi.num_degrees, fo.num_degrees
        self.width_in = (fi.lmax + 1) ** 2
        self.compact_in = sum(2 * l + 1 for l in fi.degrees)
        self.dim_out = fo.dim
        to_grid, from_grids = power_grid_buffers(fi, fo, self.correlation, normalize, "GauntManyBody irreps_out")
        dtype = torch.get_default_dtype()
        self.register_buffer("to_grid", to_grid.to(dtype))
        self.register_buffer("from_grids", from_grids.to(dtype))
        self.register_buffer("index_in", _compact_to_dense_index(fi))
        self.register_buffer("index_out", dense_to_flat_index(fo))
        self.register_buffer("deg_in", fi.degree_slots())
        self.register_buffer("deg_out", fo.degree_slots())
        self.weights_in = torch.nn.Parameter(torch.ones(num_elements, self.correlation, self.k_in, self.channels))
        # the linear term starts at unit scale, the higher powers smaller (as in MACE's symmetric
        # contraction, whose linear coupling has one basis function and the higher ones many)
        scale = torch.full((self.correlation, 1, 1), self.correlation ** -0.5)
        scale[0] = 1.0
        self.weights_out = torch.nn.Parameter(
            torch.randn(num_elements, self.correlation, self.k_out, self.channels) * scale)

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}({self.irreps_in} -> {self.irreps_out} | correlation={self.correlation}, "
                f"{self.num_elements} elements, method={self.method})")

    def forward(self, x: torch.Tensor, node_attrs: torch.Tensor) -> torch.Tensor:
        if x.dim() != 3 or x.shape[1] != self.channels or x.shape[2] != self.compact_in:
            raise ValueError(f"GauntManyBody: x must be [N, {self.channels}, {self.compact_in}], got {list(x.shape)}")
        if node_attrs.dim() != 2 or node_attrs.shape[0] != x.shape[0] or node_attrs.shape[1] != self.num_elements:
            raise ValueError(f"GauntManyBody: node_attrs must be [N={x.shape[0]}, {self.num_elements}], "
                             f"got {list(node_attrs.shape)}")
        dtype = x.dtype
        compute = torch.float64 if dtype == torch.float64 else torch.float32
        n = x.shape[0]
        attrs = node_attrs.to(compute)
        w_in = torch.matmul(attrs, self.weights_in.to(compute).reshape(self.num_elements, -1))
        w_out = torch.matmul(attrs, self.weights_out.to(compute).reshape(self.num_elements, -1))
        w_in = w_in.view(n, self.correlation, self.k_in, self.channels)
        w_out = w_out.view(n, self.correlation, self.k_out, self.channels)
        if not torch.jit.is_scripting():
            if _fused_serves(x):
                return self._fused(x.to(compute), w_in, w_out).to(dtype)
        return self._composed(x.to(compute), w_in, w_out).to(dtype)

    def _composed(self, x: torch.Tensor, w_in: torch.Tensor, w_out: torch.Tensor) -> torch.Tensor:
        """The product from differentiable tensor ops: ``x [N, C, Ic]``, per-node weights."""
        compute = x.dtype
        n = x.shape[0]
        xc = x
        if self.compact_in != self.width_in:
            xc = torch.cat([xc, xc.new_zeros(n, self.channels, 1)], dim=2).index_select(2, self.index_in)
        args = (xc, w_in, w_out, self.deg_in, self.deg_out, self.to_grid.to(compute), self.from_grids.to(compute))
        if torch.jit.is_scripting():
            out = torch_ops.many_body_product(*args)
        else:
            out = registry.many_body_product(*args)
        return dense_to_flat(out, self.index_out)

    @torch.jit.unused
    def _fused(self, x: torch.Tensor, w_in: torch.Tensor, w_out: torch.Tensor) -> torch.Tensor:
        from ..backends.cpu.many_body import many_body_fused

        return many_body_fused(_plan(self, x.dtype), x, w_in, w_out)


_PLANS: "weakref.WeakKeyDictionary[GauntManyBody, Dict]" = weakref.WeakKeyDictionary()


def _fused_serves(x: torch.Tensor) -> bool:
    """Eager CPU calls with the CPU kernels built and no backend forced to Triton."""
    if x.device.type != "cpu" or torch.compiler.is_compiling() or registry.backend_setting() == "triton":
        return False
    from ..backends.cpu import cpu_kernels_available

    return cpu_kernels_available()


def _plan(layer: GauntManyBody, dtype: torch.dtype):
    """The kernel form of ``layer`` for ``dtype``, cached per layer, rebuilt when its buffers move."""
    from ..backends.cpu.many_body import ManyBodyPlan

    key = (dtype, layer.to_grid.data_ptr(), layer.from_grids.data_ptr())
    cache = _PLANS.setdefault(layer, {})
    if key not in cache:
        c = layer.channels
        idx_in = layer.index_in.clone()
        idx_in[idx_in == layer.compact_in] = -1
        width_out = layer.from_grids.shape[2]
        idxo = flat_offsets(layer.index_out, c, width_out)
        t = layer.to_grid.to(dtype).contiguous()
        pj = layer.from_grids.to(dtype).contiguous()
        tables = (t.t().contiguous(), pj.transpose(1, 2).contiguous(), t, pj)
        cache.clear()
        cache[key] = ManyBodyPlan(c, layer.width_in, layer.k_in, layer.k_out, layer.correlation, layer.dim_out,
                                  idx_in.contiguous(), idxo,
                                  layer.deg_in.contiguous(), layer.deg_out.contiguous(), tables, layer._composed)
    return cache[key]
