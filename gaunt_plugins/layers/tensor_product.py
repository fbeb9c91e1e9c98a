"""GauntTensorProduct: channel-wise Gaunt product of two features with per-degree weights."""
from __future__ import annotations

from typing import Optional

import torch

from .._e3nn import compile_mode
from ..backends import registry, torch_ops
from ..backends.cpu.script import grid_product_fits, operator_device, weighted_grid_product
from ..backends.torch_ops import dense_to_flat, flat_to_dense
from ..irreps import channel_irreps, output_irreps
from ..math.gaunt import gaunt_path_allowed
from ..plans import product_plan
from ._planned import PlannedModule, check_floating, layer_method, pickled_normalize

__all__ = ["GauntTensorProduct"]


@compile_mode("script")
class GauntTensorProduct(PlannedModule):
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

    _TABLES = ("to_grid1", "to_grid2", "from_grid")

    def __init__(self, irreps_in1, irreps_in2, irreps_out=None, internal_weights: bool = True,
                 shared_weights: Optional[bool] = None, normalize: bool = True, method: str = "auto"):
        super().__init__()
        f1 = channel_irreps(irreps_in1, "irreps_in1")
        f2 = channel_irreps(irreps_in2, "irreps_in2", mul=f1.mul)
        if irreps_out is None:
            lo = max(f1.lmax, f2.lmax)
            degrees = [c for c in range(lo + 1)
                       if any(gaunt_path_allowed(a, b, c) for a in f1.degrees for b in f2.degrees)]
            irreps_out = output_irreps(f1.mul, degrees, f1.twist * f2.twist)
        fo = channel_irreps(irreps_out, "irreps_out", mul=f1.mul)
        if shared_weights is None:
            shared_weights = internal_weights
        if internal_weights and not shared_weights:
            raise ValueError("GauntTensorProduct: internal_weights=True needs shared_weights=True")
        self.method = layer_method(method, "GauntTensorProduct")
        self.normalize = bool(normalize)
        plan = product_plan(str(f1.irreps), str(f2.irreps), str(fo.irreps), self.normalize)
        self.__dict__["_plan"] = plan
        self.irreps_in1, self.irreps_in2, self.irreps_out = f1.irreps, f2.irreps, fo.irreps
        self.channels = f1.mul
        self.k1, self.k2, self.k3 = plan.num_degrees
        self.width1, self.width2, self.width_out = plan.widths
        self.dim_in1, self.dim_in2, self.dim_out = f1.dim, f2.dim, fo.dim
        self.weight_numel = (self.k1 + self.k2 + self.k3) * self.channels
        self.internal_weights = internal_weights
        self.shared_weights = shared_weights
        t = plan.tensors.get(torch.get_default_dtype(), torch.device("cpu"))
        self._register_plan_buffers(t, ("to_grid1", "to_grid2", "from_grid", "index_in1", "index_in2", "index_out",
                                        "deg1", "deg2", "deg3"))
        if internal_weights:
            self.weight = torch.nn.Parameter(torch.ones(self.k1 + self.k2 + self.k3, self.channels))
        else:
            self.register_buffer("weight", torch.zeros(0))

    def _build_plan(self):
        return product_plan(str(self.irreps_in1), str(self.irreps_in2), str(self.irreps_out), self.normalize)

    def __setstate__(self, state) -> None:
        state.setdefault("normalize", pickled_normalize(state, "from_grid", _normalized_plan))
        super().__setstate__(state)

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
        check_floating("GauntTensorProduct", [x1, x2])
        dtype = x1.dtype
        compute = torch.float64 if dtype == torch.float64 else torch.float32
        n = x1.numel() // self.dim_in1
        lead = list(x1.shape[:-1])
        kk = self.k1 + self.k2 + self.k3
        if self.shared_weights:
            if w.numel() != self.weight_numel:
                raise ValueError(f"GauntTensorProduct: shared weight needs {self.weight_numel} elements "
                                 f"([{kk}, {self.channels}] degree-major), got {list(w.shape)}")
            w = w.reshape(kk, self.channels)
        else:
            if w.shape[-1] != self.weight_numel or list(w.shape[:-1]) != lead:
                raise ValueError(f"GauntTensorProduct: per-sample weight must be {lead + [self.weight_numel]} "
                                 f"(the leading dimensions of x1, then weight_numel), got {list(w.shape)}")
            w = w.reshape(n, kk, self.channels)
        w = w.to(compute)
        a = x1.reshape(n, self.dim_in1).to(compute)
        b = x2.reshape(n, self.dim_in2).to(compute)
        w1 = w[..., : self.k1, :]
        w2 = w[..., self.k1 : self.k1 + self.k2, :]
        w3 = w[..., self.k1 + self.k2 :, :]
        if n == 0:
            out = a.new_zeros(0, self.dim_out)
        else:
            out = self._compute(a, b, w1, w2, w3)
        lead.append(self.dim_out)
        return out.reshape(lead).to(dtype)

    def _compute(self, a: torch.Tensor, b: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor,
                 w3: torch.Tensor) -> torch.Tensor:
        """The one route of every call (eager, TorchScript, ``torch.compile``; :mod:`gaunt_plugins.backends.registry`):
        the weighted product with its grid product as ``torch.ops.gaunt.grid_product`` on CPU and CUDA tensors
        where that serves, else the dense op of the backend setting (scripted: the reference)."""
        compute = a.dtype
        ad = flat_to_dense(a, self.index_in1, self.channels, self.width1)
        bd = flat_to_dense(b, self.index_in2, self.channels, self.width2)
        y1, y2, f = self.to_grid1.to(compute), self.to_grid2.to(compute), self.from_grid.to(compute)
        if torch.jit.is_scripting():
            if self._kernel_ops:  # a constant of the script: without the operators this branch is not compiled
                if operator_device(a):
                    return self._kernel_forward(ad, bd, w1, w2, w3, y1, y2, f)
            out = torch_ops.weighted_product(ad, bd, w1, w2, w3, self.deg1, self.deg2, self.deg3, y1, y2, f)
        elif self._kernels_serve(a):
            self._note_operator("weighted_product", a)
            return self._kernel_forward(ad, bd, w1, w2, w3, y1, y2, f)
        else:
            out = registry.weighted_product(ad, bd, w1, w2, w3, self.deg1, self.deg2, self.deg3, y1, y2, f)
        return dense_to_flat(out, self.index_out)

    @torch.jit.unused
    def _fits_kernels(self) -> bool:
        """Whether the plan is within ``grid_product.c``'s stack limits (float32 or float64 here)."""
        return grid_product_fits(self.to_grid1.shape[1], (self.width1, self.width2, self.width_out))

    def _kernel_forward(self, ad: torch.Tensor, bd: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor,
                        w3: torch.Tensor, y1: torch.Tensor, y2: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        """The weighted product with its grid product as ``torch.ops.gaunt.grid_product`` on ``[N C, I]`` rows."""
        out = weighted_grid_product(ad, bd, w1, w2, w3, self.deg1, self.deg2, self.deg3, y1, y2, f)
        return dense_to_flat(out, self.index_out)


def _normalized_plan(state: dict):
    return product_plan(str(state["irreps_in1"]), str(state["irreps_in2"]), str(state["irreps_out"]), True)
