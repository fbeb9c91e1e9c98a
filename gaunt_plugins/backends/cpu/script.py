"""What the layers need to call the ``torch.ops.gaunt`` operators, in eager mode, under TorchScript and
``torch.compile``.

TorchScript-able helpers that derive the kernels' offset tables from the layers' gather buffers (so models saved
before the operators existed run them unchanged), the kernels' stack limits as constants, and
:func:`compile_ops_ready`, which ``torch.compile`` evaluates once per trace.
"""
from __future__ import annotations

import torch

from .limits import kernel_limits

__all__ = ["gather_offsets", "scatter_offsets", "compile_ops_ready", "script_ops_ready", "CONV_MAXP", "CONV_MAXI",
           "CONV_MAXK2", "MB_MAXP", "MB_MAXI", "MB_MAXNU", "GP_MAXP", "GP_MAXI"]

CONV_MAXP = kernel_limits("conv.c")["MAXP"]
CONV_MAXI = kernel_limits("conv.c")["MAXI"]
CONV_MAXK2 = kernel_limits("conv.c")["MAXK2"]
MB_MAXP = kernel_limits("many_body.c")["MAXP"]
MB_MAXI = kernel_limits("many_body.c")["MAXI"]
MB_MAXNU = kernel_limits("many_body.c")["MAXNU"]
GP_MAXP = kernel_limits("grid_product.c")["MAXP"]
GP_MAXI = kernel_limits("grid_product.c")["MAXI"]


def gather_offsets(index: torch.Tensor, absent: int, lanes: int) -> torch.Tensor:
    """A gather ``index [lanes * width]`` into a flat row extended by one zero (index ``absent``) as the kernels'
    offsets ``[lanes, width]`` (-1 where absent)."""
    return torch.where(index == absent, torch.full_like(index, -1), index).view(lanes, -1)


def scatter_offsets(index_out: torch.Tensor, lanes: int, width: int) -> torch.Tensor:
    """The inverse of the flat output gather ``index_out [Do]`` (from ``[lanes * width]``): ``[lanes, width]``
    offsets into a flat output row, -1 where a dense coefficient is not emitted."""
    offsets = torch.full([lanes * width], -1, dtype=torch.long, device=index_out.device)
    positions = torch.arange(index_out.shape[0], dtype=torch.long, device=index_out.device)
    return offsets.index_put((index_out,), positions).view(lanes, width)


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
