"""The one place that decides what runs a Gaunt product, and the backend setting that steers it.

The layers and :func:`gaunt_plugins.gaunt_product` take one route in eager mode, under TorchScript and under
``torch.compile`` alike (:mod:`gaunt_plugins.layers._planned`):

1. ``auto`` (the default) and float32/float64 CPU or CUDA tensors: the ``torch.ops.gaunt`` operators
   (:mod:`.cpu.library`), where they are registered and the product is within the C kernels' limits. PyTorch's
   dispatcher chooses by device: on CPU the C kernels with their autograd, on CUDA the composed reference (ATen
   operations that autograd records; on an H200 the reference trained MACE faster per step than the Triton
   kernels, ``benchmarks/results/gpu_h200``); under ``torch.compile`` their fake implementation gives shapes.
   Convolutions of scalar node features run coefficient-wise (a degree-0 factor is a scaling) on any device.
2. Otherwise the dense ops below (``weighted_product``, ``conv_product``, ``many_body_product``,
   ``conv_message``: the :mod:`.torch_ops` signatures plus ``backend=``), which select, first match wins: the
   call's ``backend=`` (``"torch"`` or ``"triton"``); :func:`set_backend` / :func:`use_backend`; the environment
   variable ``GAUNT_BACKEND`` (``torch`` | ``triton`` | ``auto``); else the PyTorch reference.

``torch`` forced means the PyTorch reference on every device: no C or Triton kernel. A forced ``triton`` never
falls back: when the kernels cannot serve a call, ``ValueError`` says why and what forced it. Meta tensors (shape
inference) run the reference under every setting.
:func:`last_backend` and :func:`last_executor` name what ran the latest eager call of each op.
"""
from __future__ import annotations

import contextlib
import os
from typing import Dict, Iterator, List, Optional, Sequence, Union

import torch

from . import torch_ops
from .cpu.script import compile_ops_ready, grid_product_fits, operator_device, weighted_grid_product
from .triton_backend import TritonBackend

__all__ = [
    "BACKEND_ENV",
    "BACKEND_CHOICES",
    "TorchBackend",
    "TritonBackend",
    "get_backend",
    "backend_setting",
    "set_backend",
    "use_backend",
    "select_backend",
    "last_backend",
    "last_executor",
    "record",
    "forced_refusal",
    "weighted_product",
    "conv_product",
    "many_body_product",
    "conv_message",
]

BACKEND_ENV = "GAUNT_BACKEND"
BACKEND_CHOICES = ("auto", "torch", "triton")


class TorchBackend:
    """The PyTorch backend: the reference (:mod:`.torch_ops`) on every device and dtype. With ``kernels=True``
    (what ``auto`` runs) the dense ``weighted_product`` calls the grid-product operator
    (``torch.ops.gaunt.grid_product``) on float32/float64 CPU and CUDA tensors where it is registered."""

    name = "torch"

    def __init__(self, kernels: bool = False):
        self.kernels = kernels

    def unavailable_reason(self) -> Optional[str]:
        return None

    def validate(self, op: str, tensors, **info) -> None:
        return None

    def weighted_product(self, x1, x2, w1, w2, w3, deg1, deg2, deg3, to_grid1, to_grid2, from_grid):
        if self.kernels and operator_device(x1) and x1.dtype in (torch.float32, torch.float64) \
                and compile_ops_ready() \
                and grid_product_fits(to_grid1.shape[1], (x1.shape[-1], x2.shape[-1], from_grid.shape[1])):
            return weighted_grid_product(x1, x2, w1, w2, w3, deg1, deg2, deg3, to_grid1, to_grid2, from_grid)
        return torch_ops.weighted_product(x1, x2, w1, w2, w3, deg1, deg2, deg3, to_grid1, to_grid2, from_grid)

    def conv_product(self, *args):
        return torch_ops.conv_product(*args)

    def many_body_product(self, x, w_in, w_out, deg_in, deg_out, to_grid, from_grids):
        return torch_ops.many_body_product(x, w_in, w_out, deg_in, deg_out, to_grid, from_grids)

    def conv_message(self, x, sh, weight, edge_index, num_nodes, k1, k2, deg1, deg2, deg3, to_grid1, to_grid2,
                     from_grid, deterministic: bool = False):
        """Gather, :meth:`conv_product` (unfused: per-edge messages materialised), scatter-sum."""
        src, dst = edge_index[0], edge_index[1]
        msg = self.conv_product(x.index_select(0, src), sh, weight, k1, k2, deg1, deg2, deg3, to_grid1, to_grid2,
                                from_grid)
        if deterministic and msg.is_cuda:
            # segment sums over receiver-sorted edges: a fixed order (index_add_ uses atomics on CUDA)
            perm = torch.argsort(dst, stable=True)
            counts = torch.bincount(dst, minlength=int(num_nodes))
            return torch.segment_reduce(msg.index_select(0, perm), "sum", lengths=counts, axis=0, unsafe=True)
        out = msg.new_zeros((int(num_nodes),) + tuple(msg.shape[1:]))
        return out.index_add(0, dst, msg)


_BACKENDS: Dict[str, object] = {"torch": TorchBackend(), "triton": TritonBackend()}
_AUTO_TORCH = TorchBackend(kernels=True)  # what "auto" runs
_SETTING: List[Optional[str]] = [None]
_LAST: Dict[str, str] = {}
_LAST_EXECUTOR: Dict[str, str] = {}


def get_backend(name: str):
    if name not in _BACKENDS:
        raise ValueError(f"unknown Gaunt backend {name!r}; choose one of {sorted(_BACKENDS)} (or 'auto')")
    return _BACKENDS[name]


def _check_choice(name: str, where: str) -> str:
    if name not in BACKEND_CHOICES and name not in _BACKENDS:
        raise ValueError(f"{where}: unknown Gaunt backend {name!r}; choose one of "
                         f"{sorted(set(BACKEND_CHOICES) | set(_BACKENDS))}")
    return name


def backend_setting() -> str:
    """The process-wide setting: :func:`set_backend`, else ``$GAUNT_BACKEND``, else ``"auto"``."""
    if _SETTING[0] is not None:
        return _SETTING[0]
    env = os.environ.get(BACKEND_ENV, "").strip().lower()
    return _check_choice(env, f"${BACKEND_ENV}") if env else "auto"


def set_backend(name: Optional[str]) -> None:
    """Force ``"torch"`` or ``"triton"`` for every call without its own ``backend=``; ``"auto"``
    selects by device; ``None`` returns to ``$GAUNT_BACKEND``."""
    _SETTING[0] = None if name is None else _check_choice(name, "set_backend")


@contextlib.contextmanager
def use_backend(name: Optional[str]) -> Iterator[None]:
    """``with use_backend("torch"): ...`` — :func:`set_backend` for the duration of the block."""
    prev = _SETTING[0]
    set_backend(name)
    try:
        yield
    finally:
        _SETTING[0] = prev


def last_backend(op: Optional[str] = None) -> Union[None, str, Dict[str, str]]:
    """The backend that ran the latest eager call of ``op`` (or all ops)."""
    return dict(_LAST) if op is None else _LAST.get(op)


def last_executor(op: Optional[str] = None) -> Union[None, str, Dict[str, str]]:
    """What ran the latest eager layer call of ``op`` (or all ops): ``"cpu-kernels"``, ``"cuda-composed-reference"``
    (the operators on CUDA), ``"torch-scalar-nodes"``, ``"torch-reference"``, ``"triton"``."""
    return dict(_LAST_EXECUTOR) if op is None else _LAST_EXECUTOR.get(op)


def record(op: str, backend: str, executor: str) -> None:
    """Note what ran the latest eager call of ``op`` (nothing while ``torch.compile`` traces)."""
    if not torch.compiler.is_compiling():
        _LAST[op] = backend
        _LAST_EXECUTOR[op] = executor


def forced_refusal(reason: str, backend: Optional[str] = None) -> ValueError:
    """The error for a forced backend that cannot serve a call: ``reason`` and what forced it (the call's
    ``backend=``, :func:`set_backend` or ``$GAUNT_BACKEND``)."""
    choice = backend if backend not in (None, "auto") else backend_setting()
    source = (f"backend={backend!r}" if backend not in (None, "auto")
              else ("set_backend()" if _SETTING[0] is not None else f"{BACKEND_ENV}={choice}"))
    return ValueError(f"{reason} [{source} forces it; use 'auto' or 'torch' to run elsewhere]")


def select_backend(op: str, tensors: Dict[str, Optional[torch.Tensor]], backend: Optional[str] = None, **info):
    """The backend object that will run ``op`` on ``tensors`` (see the module docstring for the order)."""
    if backend is not None:
        _check_choice(backend, f"{op}(backend=...)")
    choice = backend if backend not in (None, "auto") else backend_setting()
    if any(t is not None and t.device.type == "meta" for t in tensors.values()):
        chosen = _BACKENDS["torch"]  # shape inference: meta tensors hold no values, so no kernel runs on them
    elif choice != "auto":
        chosen = get_backend(choice)
        try:
            chosen.validate(op, tensors, **info)
        except ValueError as exc:
            raise forced_refusal(str(exc), backend) from exc
    else:
        chosen = _AUTO_TORCH
    record(op, chosen.name, "triton" if chosen.name == "triton" else "torch-reference")
    return chosen


def _width(t: torch.Tensor) -> int:
    return int(t.shape[-1])


# -------------------------------------------------------------------------------------------------
# dispatching ops: the torch_ops signatures plus backend=
# -------------------------------------------------------------------------------------------------
def weighted_product(x1: torch.Tensor, x2: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, w3: torch.Tensor,
                     deg1: torch.Tensor, deg2: torch.Tensor, deg3: torch.Tensor, to_grid1: torch.Tensor,
                     to_grid2: torch.Tensor, from_grid: torch.Tensor, backend: Optional[str] = None) -> torch.Tensor:
    """:func:`torch_ops.weighted_product` on the selected backend."""
    b = select_backend("weighted_product", dict(x1=x1, x2=x2, w1=w1, w2=w2, w3=w3, deg1=deg1, deg2=deg2,
                                                deg3=deg3, to_grid1=to_grid1, to_grid2=to_grid2,
                                                from_grid=from_grid), backend,
                       widths=dict(x1=_width(x1), x2=_width(x2), out=_width(from_grid)))
    return b.weighted_product(x1, x2, w1, w2, w3, deg1, deg2, deg3, to_grid1, to_grid2, from_grid)


def conv_product(x1: torch.Tensor, sh: torch.Tensor, weight: torch.Tensor, k1: int, k2: int, deg1: torch.Tensor,
                 deg2: torch.Tensor, deg3: torch.Tensor, to_grid1: torch.Tensor, to_grid2: torch.Tensor,
                 from_grid: torch.Tensor, backend: Optional[str] = None) -> torch.Tensor:
    """:func:`torch_ops.conv_product` on the selected backend."""
    b = select_backend("conv_product", dict(x1=x1, sh=sh, weight=weight, deg1=deg1, deg2=deg2,
                                            deg3=deg3, to_grid1=to_grid1, to_grid2=to_grid2, from_grid=from_grid),
                       backend, widths=dict(x1=_width(x1), sh=_width(sh), out=_width(from_grid)))
    return b.conv_product(x1, sh, weight, k1, k2, deg1, deg2, deg3, to_grid1, to_grid2, from_grid)


def many_body_product(x: torch.Tensor, w_in: torch.Tensor, w_out: torch.Tensor, deg_in: torch.Tensor,
                      deg_out: torch.Tensor, to_grid: torch.Tensor,
                      from_grids: Union[torch.Tensor, Sequence[torch.Tensor]],
                      backend: Optional[str] = None) -> torch.Tensor:
    """:func:`torch_ops.many_body_product` on the selected backend (``from_grids``: ``[nu, P, Io]`` or a list)."""
    fs = from_grids if isinstance(from_grids, torch.Tensor) else torch.stack(list(from_grids))
    b = select_backend("many_body_product", dict(x=x, w_in=w_in, w_out=w_out, deg_in=deg_in, deg_out=deg_out,
                                                 to_grid=to_grid, from_grids=fs), backend,
                       widths=dict(x=_width(x), out=_width(fs)), correlation=int(fs.shape[0]))
    return b.many_body_product(x, w_in, w_out, deg_in, deg_out, to_grid, fs)


def conv_message(x: torch.Tensor, sh: torch.Tensor, weight: torch.Tensor, edge_index: torch.Tensor,
                 num_nodes: int, k1: int, k2: int, deg1: torch.Tensor, deg2: torch.Tensor, deg3: torch.Tensor,
                 to_grid1: torch.Tensor, to_grid2: torch.Tensor, from_grid: torch.Tensor,
                 deterministic: bool = False, backend: Optional[str] = None) -> torch.Tensor:
    """MACE message step ``out[v] = sum_{e: dst[e]=v} conv_product(x[src[e]], sh[e], weight[e])`` ->
    ``[num_nodes, C, Io]``; fused into one kernel on the Triton backend (``deterministic=True``: fixed
    summation order, bit-reproducible)."""
    b = select_backend("conv_message", dict(x=x, sh=sh, weight=weight, edge_index=edge_index, deg1=deg1,
                                            deg2=deg2, deg3=deg3, to_grid1=to_grid1, to_grid2=to_grid2,
                                            from_grid=from_grid), backend,
                       widths=dict(x=_width(x), sh=_width(sh), out=_width(from_grid)))
    return b.conv_message(x, sh, weight, edge_index, num_nodes, k1, k2, deg1, deg2, deg3, to_grid1, to_grid2,
                          from_grid, deterministic=deterministic)
