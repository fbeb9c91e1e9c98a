"""What the layers need to call the ``torch.ops.gaunt`` operators, in eager mode, under TorchScript and
``torch.compile``.

The kernels' stack limits as constants (and :func:`grid_product_fits`), the weighted product on the grid-product
operator (:func:`weighted_grid_product`), :func:`script_ops_ready` (whether the operators serve this process),
:func:`compile_ops_ready`, which ``torch.compile`` evaluates once per trace, and :func:`operator_device`: the
devices the operators serve (CPU: the C kernels; CUDA: the composed reference, ATen operations).
"""
from __future__ import annotations

import torch

from .limits import kernel_limits

__all__ = ["compile_ops_ready", "script_ops_ready", "operator_device", "operator_executor", "grid_product_fits",
           "weighted_grid_product", "CONV_MAXP", "CONV_MAXI", "CONV_MAXK2", "MB_MAXP", "MB_MAXI", "MB_MAXNU",
           "GP_MAXP", "GP_MAXI"]

CONV_MAXP = kernel_limits("conv.c")["MAXP"]
CONV_MAXI = kernel_limits("conv.c")["MAXI"]
CONV_MAXK2 = kernel_limits("conv.c")["MAXK2"]
MB_MAXP = kernel_limits("many_body.c")["MAXP"]
MB_MAXI = kernel_limits("many_body.c")["MAXI"]
MB_MAXNU = kernel_limits("many_body.c")["MAXNU"]
GP_MAXP = kernel_limits("grid_product.c")["MAXP"]
GP_MAXI = kernel_limits("grid_product.c")["MAXI"]


def grid_product_fits(points: int, widths) -> bool:
    """Whether a grid product of ``points`` grid points and these coefficient widths is within ``grid_product.c``'s
    stack limits."""
    return points <= GP_MAXP and max(widths) <= GP_MAXI


def weighted_grid_product(x1: torch.Tensor, x2: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, w3: torch.Tensor,
                          deg1: torch.Tensor, deg2: torch.Tensor, deg3: torch.Tensor, to_grid1: torch.Tensor,
                          to_grid2: torch.Tensor, from_grid: torch.Tensor) -> torch.Tensor:
    """:func:`..torch_ops.weighted_product` (``x1 [N, C, I1]``, ``x2 [N, C, I2]``, weights ``[*, K, C]`` ->
    ``[N, C, Io]``) with its grid product as ``torch.ops.gaunt.grid_product`` on ``[N C, I]`` rows."""
    n, c = x1.shape[0], x1.shape[1]
    a = x1 * w1.transpose(-1, -2).index_select(-1, deg1)
    b = x2 * w2.transpose(-1, -2).index_select(-1, deg2)
    out = torch.ops.gaunt.grid_product(a.reshape(n * c, -1), b.reshape(n * c, -1), to_grid1, to_grid2, from_grid)
    return out.view(n, c, -1) * w3.transpose(-1, -2).index_select(-1, deg3)


def operator_device(t: torch.Tensor) -> bool:
    """Whether the operators have an implementation for ``t``'s device: CPU (the C kernels) or CUDA (the composed
    reference). TorchScript-able."""
    return t.device.type == "cpu" or t.device.type == "cuda"


def operator_executor(t: torch.Tensor) -> str:
    """What the operators run on ``t``'s device, as :func:`gaunt_plugins.backends.last_executor` names it."""
    return "cpu-kernels" if t.device.type == "cpu" else "cuda-composed-reference"


def script_ops_ready() -> bool:
    """Whether the layers call the operators (a model scripted now, and every eager call): the backend
    setting is ``auto`` and they are registered (built on first use; one warning when they cannot be)."""
    from .. import registry
    from .library import load_ops

    return registry.backend_setting() == "auto" and load_ops()


@torch.compiler.assume_constant_result
def compile_ops_ready() -> bool:
    """:func:`script_ops_ready`, evaluated once when ``torch.compile`` traces a layer."""
    return script_ops_ready()
