"""The public functional op: :func:`gaunt_product`."""
from __future__ import annotations

import math
import numbers

import torch


from .backends import registry, torch_ops
from .backends.cpu.script import compile_ops_ready, grid_product_fits, operator_device, operator_executor
from .math.fourier import MAX_FOURIER_DEGREE
from .math.s2_grid import MAX_DEGREE
from .plans import functional_plan

__all__ = ["gaunt_product", "METHODS", "degree_of"]

METHODS = ("auto", "grid", "fourier")


def degree_of(width: int, name: str) -> int:
    """``L`` such that ``width == (L+1)^2``; ``ValueError`` naming ``name`` otherwise."""
    l = math.isqrt(width) - 1
    if width < 1 or (l + 1) ** 2 != width:
        raise ValueError(f"{name}: last dimension {width} is not (L+1)^2 for any degree L "
                         f"(expected 1, 4, 9, 16, ... spherical-harmonic coefficients)")
    return l


def _compute_dtype(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.dtype, torch.dtype]:
    out = torch.promote_types(a.dtype, b.dtype)
    if not out.is_floating_point:
        raise ValueError(f"gaunt_product: inputs must be floating point, got {a.dtype} and {b.dtype}")
    return (torch.float64 if out == torch.float64 else torch.float32), out


def gaunt_product(x1: torch.Tensor, x2: torch.Tensor, lmax_out: int, method: str = "auto") -> torch.Tensor:
    """Gaunt product: the orthonormal real-SH coefficients of the pointwise product of two spherical functions.

    Args:
        x1: ``[..., (L1+1)^2]`` coefficients of ``f1 = sum_lm x1[lm] Y_lm`` in e3nn's real-SH order
            (l-major, ``m = -l..l``), orthonormal ("integral") normalisation.
        x2: ``[..., (L2+1)^2]``; leading dimensions broadcast with ``x1``.
        lmax_out: largest output degree ``Lo`` (a whole number, at most 64); degrees above ``L1 + L2`` come
            out zero.
        method: ``"grid"`` (quadrature on the Gauss-Legendre x uniform grid exact for degree
            ``L1 + L2 + Lo``), ``"fourier"`` (the paper's 2D Fourier path with FFTs), or ``"auto"``
            (the grid, which is the faster on CPU and GPU for every measured L). Both are exact.

    Returns:
        ``[broadcast(...), (Lo+1)^2]`` coefficients of ``proj_{<=Lo}(f1 * f2)``. float32 and float64
        are computed in their own precision; half and bfloat16 inputs are accumulated in float32
        and the result is cast back to the inputs' type. Differentiable (autograd) in both methods.
        Runs where :mod:`gaunt_plugins.backends.registry` says (the CPU kernels, Triton on CUDA, or the PyTorch
        reference; the 2D Fourier path only on the reference).

    Example:
        >>> x = torch.zeros(4); x[0] = 1 / (4 * math.pi) ** 0.5 * (4 * math.pi) ** 0.5  # f = sqrt(4 pi) Y_00 = 1
        >>> y = torch.randn(9, dtype=torch.float64)
        >>> bool(torch.allclose(gaunt_product(x.double() / (4 * math.pi) ** 0.5, y, 2), y / (4 * math.pi) ** 0.5))
        True
    """
    if not isinstance(x1, torch.Tensor) or not isinstance(x2, torch.Tensor):
        raise TypeError("gaunt_product: x1 and x2 must be tensors")
    if method not in METHODS:
        raise ValueError(f"gaunt_product: unknown method {method!r}; choose one of {METHODS}")
    if x1.device != x2.device:
        raise ValueError(f"gaunt_product: x1 is on {x1.device} but x2 is on {x2.device}; put both on one device")
    if x1.dim() == 0 or x2.dim() == 0:
        raise ValueError("gaunt_product: inputs need a last dimension of (L+1)^2 coefficients")
    l1 = degree_of(x1.shape[-1], "x1")
    l2 = degree_of(x2.shape[-1], "x2")
    if isinstance(lmax_out, bool) or not isinstance(lmax_out, numbers.Integral):
        raise ValueError(f"gaunt_product: lmax_out must be a whole number (a degree), got {lmax_out!r}")
    lo = int(lmax_out)
    if lo < 0:
        raise ValueError(f"gaunt_product: lmax_out must be >= 0, got {lmax_out}")
    if lo > MAX_DEGREE:
        raise ValueError(f"gaunt_product: lmax_out = {lo} is past the largest degree with tables ({MAX_DEGREE}); "
                         f"degrees above L1 + L2 = {l1 + l2} are zero anyway")
    try:
        shape = torch.broadcast_shapes(x1.shape[:-1], x2.shape[:-1])
    except RuntimeError as exc:
        raise ValueError(f"gaunt_product: leading dimensions {tuple(x1.shape[:-1])} and {tuple(x2.shape[:-1])} "
                         f"do not broadcast") from exc
    if method == "auto":
        method = "grid"
    if method == "grid" and l1 + l2 + min(lo, l1 + l2) > MAX_DEGREE:
        raise ValueError(f"gaunt_product: product degree L1+L2+Lo = {l1 + l2 + min(lo, l1 + l2)} has no grid table "
                         f"(largest supported {MAX_DEGREE})")
    if method == "fourier" and max(l1, l2, lo) > MAX_FOURIER_DEGREE:
        raise ValueError(f"gaunt_product: degree {max(l1, l2, lo)} has no 2D Fourier table "
                         f"(largest supported {MAX_FOURIER_DEGREE})")
    compute, result = _compute_dtype(x1, x2)
    if math.prod(shape) == 0:
        return x1.new_zeros(tuple(shape) + ((lo + 1) ** 2,), dtype=result)
    plan = functional_plan(l1, l2, lo, method)
    a, b = x1.to(compute), x2.to(compute)
    out = _run(plan, a, b)
    if plan.pad:
        out = torch.nn.functional.pad(out, (0, plan.pad))
    return out.to(result)


def _run(plan, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``proj((a @ Y1) * (b @ Y2))`` on the plan's tables: the route of :mod:`gaunt_plugins.backends.registry`
    (the 2D Fourier path on the reference only)."""
    t = plan.tensors.get(a.dtype, a.device)
    setting = registry.backend_setting()
    if plan.method != "grid":
        if setting == "triton":
            raise registry.forced_refusal("triton backend: the 2D Fourier method has no Triton kernel (method='grid' "
                                          "has)")
        registry.record("gaunt_product", "torch", "torch-reference-fourier")
        return torch_ops.fourier_product(a, b, t["to_fourier1"], t["to_fourier2"], t["from_fourier"], plan.torus)
    y1, y2, f = t["to_grid1"], t["to_grid2"], t["from_grid"]
    if setting == "triton":
        rows = registry.select_backend("gaunt_product", dict(x1=a, x2=b), widths=dict(
            x1=a.shape[-1], x2=b.shape[-1], out=f.shape[1])).grid_rows
        registry.record("gaunt_product", "triton", "triton")
    elif (setting == "auto" and operator_device(a) and compile_ops_ready()
          and grid_product_fits(y1.shape[1], plan.widths)):
        rows = torch.ops.gaunt.grid_product
        registry.record("gaunt_product", "torch", operator_executor(a))
    else:
        registry.record("gaunt_product", "torch", "torch-reference")
        return torch_ops.grid_product(a, b, y1, y2, f)
    lead = torch.broadcast_shapes(a.shape[:-1], b.shape[:-1])
    u = a.expand(lead + a.shape[-1:]).reshape(-1, a.shape[-1])
    v = b.expand(lead + b.shape[-1:]).reshape(-1, b.shape[-1])
    out = rows(u, v, y1, y2, f)
    return out.reshape(lead + out.shape[-1:])
