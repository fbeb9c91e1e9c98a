"""GauntConvolution: node features times edge spherical harmonics, per-edge weights (MACE's conv_tp)."""
from __future__ import annotations

import numbers
import weakref
from typing import Dict

import torch

from .._e3nn import compile_mode
from ..backends import registry, torch_ops
from ..irreps import channel_irreps, dense_to_flat_index, flat_to_dense_index, output_irreps
from ..math.gaunt import gaunt_path_allowed
from ._layout import dense_to_flat, flat_offsets, flat_to_dense
from ._tables import product_grid_buffers, resolve_method

__all__ = ["GauntConvolution"]


@compile_mode("script")
class GauntConvolution(torch.nn.Module):
    """Gaunt equivariant convolution, a drop-in for MACE's ``conv_tp``.

    ``forward(x1 [E, irreps_in1.dim], x2 [E, irreps_in2.dim], weight [E, weight_numel]) -> [E, irreps_out.dim]``:
    ``x1`` are the sender's node features ``C x (degrees)`` (e3nn ``mul_ir``), ``x2`` the edge's spherical
    harmonics ``1x0e + 1x1o + ...``, ``weight`` the per-edge output of a radial MLP, viewed as
    ``[E, K1 + K2 + Ko, P C]`` (degree-major: one weight per product and channel for each node-feature
    degree, each harmonic degree and each output degree; product-major within a degree). With ``P =
    products`` independent products per channel, for product ``k`` and channel ``c``:

        out[k, c] = w_out[lo] * proj_lo( sum_l1 (b + w1[l1]) x1[c, l1] (*) sum_l2 (b + w2[l2]) Y_l2(r_ij) )

    (weights indexed ``[k, c]``; ``b = weight_offset``). The output is ``P C x (degrees of irreps_out)``,
    product-major within each degree (copy ``k`` of channel ``c`` is channel ``k C + c``).

    ``weight_offset = 1`` makes a path weight ``(1 + w1) (1 + w2) w_out`` linear in the radial MLP's output
    at initialisation (MACE's ``uvu`` path weight is the MLP output itself), so the convolution starts at
    MACE's scale; it still vanishes wherever ``w_out`` does (at the cutoff). ``weight_offset = 0`` is the plain
    product ``w1 w2 w_out``. The harmonic side goes to the grid once per degree and edge, not per channel.

    Compared with MACE's ``uvu`` Clebsch-Gordan convolution: the paths with ``l1 + l2 + l3`` odd are
    missing (with natural-parity hidden irreps MACE keeps none of them anyway), and each product's path
    weight factorises over the degrees. The sum of ``P`` such products is a rank-``P`` decomposition of the
    per-path weights: ``P = 3`` reproduces arbitrary ``uvu`` path weights for node degrees and harmonic
    degrees up to 3, ``P = 1`` does not (``weight_numel = P C (K1 + K2 + Ko)`` instead of one weight per
    path and channel). ``irreps_out`` (``C x ...``) defaults to every reachable degree up to ``L1 + L2``.
    """

    def __init__(self, irreps_in1, irreps_in2, irreps_out=None, normalize: bool = True, method: str = "auto",
                 products: int = 1, weight_offset: float = 1.0):
        super().__init__()
        products = _positive_int(products, "products")
        f1 = channel_irreps(irreps_in1, "irreps_in1 (node features)")
        f2 = channel_irreps(irreps_in2, "irreps_in2 (edge spherical harmonics)", mul=1)
        twist = f1.twist * f2.twist
        if irreps_out is None:
            degrees = [c for c in range(f1.lmax + f2.lmax + 1)
                       if any(gaunt_path_allowed(a, b, c) for a in f1.degrees for b in f2.degrees)]
            irreps_out = output_irreps(f1.mul, degrees, twist)
        fo = channel_irreps(irreps_out, "irreps_out", mul=f1.mul)
        self.method = resolve_method(method, "GauntConvolution")
        self.products = products
        self.weight_offset = float(weight_offset)
        fo = channel_irreps(output_irreps(products * f1.mul, fo.degrees, fo.twist), "irreps_out")
        self.irreps_in1, self.irreps_in2, self.irreps_out = f1.irreps, f2.irreps, fo.irreps
        self.channels = f1.mul
        self.k1, self.k2, self.k3 = f1.num_degrees, f2.num_degrees, fo.num_degrees
        self.width1, self.width2 = (f1.lmax + 1) ** 2, (f2.lmax + 1) ** 2
        self.dim_in1, self.dim_in2, self.dim_out = f1.dim, f2.dim, fo.dim
        self.weight_numel = (self.k1 + self.k2 + self.k3) * products * self.channels
        y1, y2, proj = product_grid_buffers(f1, f2, fo, normalize, "GauntConvolution irreps_out")
        dtype = torch.get_default_dtype()
        self.register_buffer("to_grid1", y1.to(dtype))
        self.register_buffer("to_grid2", y2.to(dtype))
        self.register_buffer("from_grid", proj.to(dtype))
        self.register_buffer("deg_mask2", f2.degree_mask().to(dtype))
        # every product reads the same node features: the gather repeats the channels
        self.register_buffer("index_in1", flat_to_dense_index(f1).view(f1.mul, -1).repeat(products, 1).reshape(-1))
        self.register_buffer("index_in2", flat_to_dense_index(f2))
        self.register_buffer("index_out", dense_to_flat_index(fo))
        self.register_buffer("deg1", f1.degree_slots())
        self.register_buffer("deg3", fo.degree_slots())

    def __setstate__(self, state) -> None:
        # models pickled before products / weight_offset existed computed one plain product per channel
        state.setdefault("products", 1)
        state.setdefault("weight_offset", 0.0)
        super().__setstate__(state)

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}({self.irreps_in1} x {self.irreps_in2} -> {self.irreps_out} | "
                f"{self.products} product(s) per channel, weight offset {self.weight_offset:g}, "
                f"{self.weight_numel} weights per edge, method={self.method})")

    def forward(self, x1: torch.Tensor, x2: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        if x1.dim() != 2 or x1.shape[1] != self.dim_in1:
            raise ValueError(f"GauntConvolution: x1 must be [E, {self.dim_in1}], got {list(x1.shape)}")
        if x2.dim() != 2 or x2.shape[1] != self.dim_in2 or x2.shape[0] != x1.shape[0]:
            raise ValueError(f"GauntConvolution: x2 must be [E={x1.shape[0]}, {self.dim_in2}], got {list(x2.shape)}")
        if weight.dim() != 2 or weight.shape[1] != self.weight_numel or weight.shape[0] != x1.shape[0]:
            raise ValueError(f"GauntConvolution: weight must be [E={x1.shape[0]}, {self.weight_numel}], "
                             f"got {list(weight.shape)}")
        dtype = x1.dtype
        compute = torch.float64 if dtype == torch.float64 else torch.float32
        e = x1.shape[0]
        if self.weight_offset != 0.0:
            n_in = (self.k1 + self.k2) * self.products * self.channels
            weight = torch.cat([weight[:, :n_in] + self.weight_offset, weight[:, n_in:]], dim=1)
        sh = flat_to_dense(x2.to(compute), self.index_in2, 1, self.width2).view(e, self.width2)
        if not torch.jit.is_scripting():
            if _fused_conv_serves(self, x1):
                return self._fused(x1.to(compute), sh, weight.to(compute)).to(dtype)
        return self._composed(x1.to(compute), sh, weight.to(compute)).to(dtype)

    def _composed(self, x1: torch.Tensor, sh: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """The convolution from differentiable tensor ops: ``x1 [E, D1]``, dense ``sh [E, I2]``."""
        compute = x1.dtype
        e = x1.shape[0]
        lanes = self.products * self.channels
        a = flat_to_dense(x1, self.index_in1, lanes, self.width1)
        w = weight.view(e, self.k1 + self.k2 + self.k3, lanes)
        args = (a, sh, w, self.k1, self.deg1, self.deg_mask2.to(compute), self.deg3, self.to_grid1.to(compute),
                self.to_grid2.to(compute), self.from_grid.to(compute))
        if torch.jit.is_scripting():
            out = torch_ops.conv_product(*args)
        else:
            out = registry.conv_product(*args)
        return dense_to_flat(out, self.index_out)

    @torch.jit.unused
    def _fused(self, x1: torch.Tensor, sh: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        from ..backends.cpu.conv import conv_fused

        return conv_fused(_conv_plan(self, x1.dtype), x1, sh, weight)


def _positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"GauntConvolution: {name} must be a whole number >= 1, got {value!r}")
    return int(value)


_PLANS: "weakref.WeakKeyDictionary[GauntConvolution, Dict]" = weakref.WeakKeyDictionary()


def _fused_conv_serves(layer: GauntConvolution, x1: torch.Tensor) -> bool:
    """Eager CPU calls with the CPU kernels built, no backend forced to Triton, and a layer within the
    kernel's stack limits (conv.c: MAXP grid points, MAXI coefficients, MAXK2 harmonic degrees).

    Derived from the layer's buffers only, so models pickled by any version of this layer keep loading.
    """
    if x1.device.type != "cpu" or x1.dtype not in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        return False
    widths = (layer.to_grid1.shape[0], layer.to_grid2.shape[0], layer.from_grid.shape[1])
    if layer.to_grid1.shape[1] > 1024 or max(widths) > 512 or layer.deg_mask2.shape[0] > 16:
        return False
    if torch.compiler.is_compiling() or registry.backend_setting() == "triton":
        return False
    from ..backends.cpu import cpu_kernels_available

    return cpu_kernels_available()


def _conv_plan(layer: GauntConvolution, dtype: torch.dtype):
    """The kernel form of ``layer`` for ``dtype``, cached per layer, rebuilt when its buffers move."""
    from ..backends.cpu.conv import ConvPlan

    key = (dtype, layer.to_grid1.data_ptr(), layer.from_grid.data_ptr())
    cache = _PLANS.setdefault(layer, {})
    if key not in cache:
        c, width1 = layer.products * layer.channels, layer.width1
        dim1 = layer.dim_in1
        idx1 = layer.index_in1.view(c, width1).clone()
        idx1[idx1 == dim1] = -1
        width_out = layer.from_grid.shape[1]
        idxo = flat_offsets(layer.index_out, c, width_out)
        a, b, p = (t.to(dtype).contiguous() for t in (layer.to_grid1, layer.to_grid2, layer.from_grid))
        tables = (a.t().contiguous(), b.t().contiguous(), p.t().contiguous(), a, b, p)
        cache.clear()
        deg2 = layer.deg_mask2.argmax(0).to(torch.long)  # the degree slot of each harmonic coefficient
        cache[key] = ConvPlan(c, layer.k1, layer.k2, layer.k3, layer.dim_out, idx1.contiguous(),
                              idxo, layer.deg1.contiguous(), deg2.contiguous(),
                              layer.deg3.contiguous(), tables, layer._composed)
    return cache[key]
