"""GauntTensorProduct: channel-wise Gaunt product of two features with per-degree weights."""
from __future__ import annotations

from typing import Optional

import torch

from .._e3nn import compile_mode
from ..backends import registry, torch_ops
from ..irreps import channel_irreps, dense_to_flat_index, flat_to_dense_index, output_irreps
from ..math.gaunt import gaunt_path_allowed
from ._layout import dense_to_flat, flat_to_dense
from ._tables import product_grid_buffers, resolve_method

__all__ = ["GauntTensorProduct"]


@compile_mode("script")
class GauntTensorProduct(torch.nn.Module):
    """``out[c] = w3[c] * proj( (w1[c] * x1[c]) (*) (w2[c] * x2[c]) )`` for each channel ``c``.

    ``x1 [..., irreps_in1.dim]`` and ``x2 [..., irreps_in2.dim]`` (e3nn ``mul_ir`` layout; both
    ``C x (degrees)``) -> ``[..., irreps_out.dim]``. Weights are per channel and per degree:
    ``[K1 + K2 + Ko, C]`` (degree-major) with ``K*`` the number of degrees of each side, stored
    internally (``internal_weights=True``) or passed as ``weight [weight_numel]`` (shared) or
    ``[..., weight_numel]`` (per sample, ``shared_weights=False``), as in e3nn.

    Compared with a Clebsch-Gordan (e3nn) channel-wise product: only paths with
    ``l1 + l2 + l3`` even exist (e.g. no ``1o x 1o -> 1e`` cross product), the product is symmetric
    in its arguments, and the path weight factorises as ``w1[l1] w2[l2] w3[l3]``.
    ``irreps_out`` defaults to every reachable degree up to ``max(L1, L2)``; outputs start at about
    unit variance for unit-variance inputs (``normalize=True``).
    """

    def __init__(self, irreps_in1, irreps_in2, irreps_out=None, internal_weights: bool = True,
                 shared_weights: Optional[bool] = None, normalize: bool = True, method: str = "auto"):
        super().__init__()
        f1 = channel_irreps(irreps_in1, "irreps_in1")
        f2 = channel_irreps(irreps_in2, "irreps_in2", mul=f1.mul)
        twist = f1.twist * f2.twist
        if irreps_out is None:
            lo = max(f1.lmax, f2.lmax)
            degrees = [c for c in range(lo + 1)
                       if any(gaunt_path_allowed(a, b, c) for a in f1.degrees for b in f2.degrees)]
            irreps_out = output_irreps(f1.mul, degrees, twist)
        fo = channel_irreps(irreps_out, "irreps_out", mul=f1.mul)
        if shared_weights is None:
            shared_weights = internal_weights
        if internal_weights and not shared_weights:
            raise ValueError("GauntTensorProduct: internal_weights=True needs shared_weights=True")
        self.method = resolve_method(method, "GauntTensorProduct")
        self.irreps_in1, self.irreps_in2, self.irreps_out = f1.irreps, f2.irreps, fo.irreps
        self.channels = f1.mul
        self.k1, self.k2, self.k3 = f1.num_degrees, f2.num_degrees, fo.num_degrees
        self.width1, self.width2, self.width_out = (f1.lmax + 1) ** 2, (f2.lmax + 1) ** 2, (fo.lmax + 1) ** 2
        self.dim_in1, self.dim_in2, self.dim_out = f1.dim, f2.dim, fo.dim
        self.weight_numel = (self.k1 + self.k2 + self.k3) * self.channels
        self.internal_weights = internal_weights
        self.shared_weights = shared_weights
        y1, y2, proj = product_grid_buffers(f1, f2, fo, normalize, "GauntTensorProduct irreps_out")
        dtype = torch.get_default_dtype()
        self.register_buffer("to_grid1", y1.to(dtype))
        self.register_buffer("to_grid2", y2.to(dtype))
        self.register_buffer("from_grid", proj.to(dtype))
        self.register_buffer("index_in1", flat_to_dense_index(f1))
        self.register_buffer("index_in2", flat_to_dense_index(f2))
        self.register_buffer("index_out", dense_to_flat_index(fo))
        self.register_buffer("deg1", f1.degree_slots())
        self.register_buffer("deg2", f2.degree_slots())
        self.register_buffer("deg3", fo.degree_slots())
        if internal_weights:
            self.weight = torch.nn.Parameter(torch.ones(self.k1 + self.k2 + self.k3, self.channels))
        else:
            self.register_buffer("weight", torch.zeros(0))

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}({self.irreps_in1} x {self.irreps_in2} -> {self.irreps_out} | "
                f"{self.weight_numel} weights, method={self.method})")

    def forward(self, x1: torch.Tensor, x2: torch.Tensor, weight: Optional[torch.Tensor] = None) -> torch.Tensor:
        if x1.shape[-1] != self.dim_in1 or x2.shape[-1] != self.dim_in2:
            raise ValueError(f"GauntTensorProduct: expected x1 [..., {self.dim_in1}] and x2 [..., "
                             f"{self.dim_in2}], got {list(x1.shape)} and {list(x2.shape)}")
        if x1.shape[:-1] != x2.shape[:-1]:
            raise ValueError(f"GauntTensorProduct: x1 {list(x1.shape)} and x2 {list(x2.shape)} need the same "
                             f"leading dimensions")
        if self.internal_weights:
            w = self.weight
        else:
            if weight is None:
                raise ValueError("GauntTensorProduct: internal_weights=False needs a weight argument")
            w = weight
        dtype = x1.dtype
        compute = torch.float64 if dtype == torch.float64 else torch.float32
        n = x1.numel() // self.dim_in1
        a = flat_to_dense(x1.reshape(n, self.dim_in1).to(compute), self.index_in1, self.channels, self.width1)
        b = flat_to_dense(x2.reshape(n, self.dim_in2).to(compute), self.index_in2, self.channels, self.width2)
        w = w.to(compute)
        kk = self.k1 + self.k2 + self.k3
        if self.shared_weights:
            if w.numel() != self.weight_numel:
                raise ValueError(f"GauntTensorProduct: weight needs {self.weight_numel} elements, got {w.numel()}")
            w = w.reshape(kk, self.channels)
        else:
            if w.shape[-1] != self.weight_numel:
                raise ValueError(f"GauntTensorProduct: weight needs [..., {self.weight_numel}], got {list(w.shape)}")
            w = w.reshape(n, kk, self.channels)
        w1 = w[..., : self.k1, :]
        w2 = w[..., self.k1 : self.k1 + self.k2, :]
        w3 = w[..., self.k1 + self.k2 :, :]
        args = (a, b, w1, w2, w3, self.deg1, self.deg2, self.deg3, self.to_grid1.to(compute),
                self.to_grid2.to(compute), self.from_grid.to(compute))
        if torch.jit.is_scripting():
            out = torch_ops.weighted_product(*args)
        else:
            out = registry.weighted_product(*args)
        shape = list(x1.shape[:-1])
        shape.append(self.dim_out)
        return dense_to_flat(out, self.index_out).reshape(shape).to(dtype)
