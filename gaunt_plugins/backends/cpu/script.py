"""What the layers need to call the ``torch.ops.gaunt`` operators, in eager mode, under TorchScript and
``torch.compile``.

The kernels' stack limits as constants, :func:`script_ops_ready` (whether the operators serve this process) and
:func:`compile_ops_ready`, which ``torch.compile`` evaluates once per trace.
"""
from __future__ import annotations

import torch

from .limits import kernel_limits

__all__ = ["compile_ops_ready", "script_ops_ready", "CONV_MAXP", "CONV_MAXI",
           "CONV_MAXK2", "MB_MAXP", "MB_MAXI", "MB_MAXNU", "GP_MAXP", "GP_MAXI"]

CONV_MAXP = kernel_limits("conv.c")["MAXP"]
CONV_MAXI = kernel_limits("conv.c")["MAXI"]
CONV_MAXK2 = kernel_limits("conv.c")["MAXK2"]
MB_MAXP = kernel_limits("many_body.c")["MAXP"]
MB_MAXI = kernel_limits("many_body.c")["MAXI"]
MB_MAXNU = kernel_limits("many_body.c")["MAXNU"]
GP_MAXP = kernel_limits("grid_product.c")["MAXP"]
GP_MAXI = kernel_limits("grid_product.c")["MAXI"]


def script_ops_ready() -> bool:
    """Whether the layers call the operators on CPU (a model scripted now, and every eager call): the backend
    setting is ``auto`` and they are registered (built on first use; one warning when they cannot be)."""
    from .. import registry
    from .library import load_ops

    return registry.backend_setting() == "auto" and load_ops()


@torch.compiler.assume_constant_result
def compile_ops_ready() -> bool:
    """:func:`script_ops_ready`, evaluated once when ``torch.compile`` traces a layer."""
    return script_ops_ready()
