"""What the Gaunt layers share: a plan rebuilt from their irreps, its tables as buffers, one route per call.

A layer keeps the plan of its product (:mod:`gaunt_plugins.plans`; derived state, rebuilt on demand, never
pickled or deep-copied) and registers the plan's tables as buffers. Every call, eager, scripted or compiled,
takes the same route on those buffers (:mod:`gaunt_plugins.backends.registry`): the ``torch.ops.gaunt``
operators on CPU and CUDA tensors where they serve, else the dense ops of the backend setting. After a dtype or device
change the buffers are refilled from the plan's float64 masters, so ``.double()`` on a layer built under a
float32 default computes from float64 tables, not from float32-rounded ones. Layers can be built and run on
the ``meta`` device (shapes only): the PyTorch reference runs there.
"""
from __future__ import annotations

import numbers
from typing import Callable, Dict, List, Tuple

import torch

from ..backends import registry
from ..backends.cpu.script import compile_ops_ready, operator_device, operator_executor, script_ops_ready

__all__ = ["PlannedModule", "LAYER_METHODS", "layer_method", "check_floating", "whole_number", "pickled_normalize"]

LAYER_METHODS = ("auto", "grid")
"""The layers compute on the quadrature grid (the faster method in every measurement); ``"auto"`` means the
grid. The 2D Fourier path is :func:`gaunt_plugins.gaunt_product`'s ``method="fourier"``."""

_TRANSIENT = ("_plan",)


def layer_method(method: str, layer: str) -> str:
    """Validate a layer's ``method`` argument: always the grid."""
    if method not in LAYER_METHODS:
        raise ValueError(f"{layer}: unknown method {method!r}; layers support {LAYER_METHODS} "
                         f"(method='fourier' is available in gaunt_plugins.gaunt_product)")
    return "grid"


def whole_number(value, name: str, layer: str, minimum: int = 1) -> int:
    """``value`` as an ``int`` if it is a whole number ``>= minimum`` (not a bool, not a float); ``ValueError``
    naming the argument otherwise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{layer}: {name} must be a whole number, got {value!r}")
    if value < minimum:
        raise ValueError(f"{layer}: {name} must be >= {minimum}, got {value}")
    return int(value)


def check_floating(layer: str, tensors: List[torch.Tensor]) -> None:
    """The error :func:`gaunt_plugins.gaunt_product` gives for non-floating inputs (TorchScript-able)."""
    for t in tensors:
        if not t.is_floating_point():
            raise ValueError(f"{layer}: inputs must be floating point, got {t.dtype}")


def pickled_normalize(state: dict, table: str, normalized_plan: Callable[[dict], object]) -> bool:
    """Whether a layer pickled before ``normalize`` was an attribute had its normalisation folded into its
    tables: its buffer ``table`` equals the one of ``normalized_plan(state)`` (at the buffer's precision)."""
    buf = state.get("_buffers", {}).get(table)
    if buf is None:
        return True
    exact = normalized_plan(state).tensors.get(torch.float64, torch.device("cpu"))[table]
    return bool(torch.allclose(buf.detach().cpu().double(), exact, rtol=1e-5, atol=1e-7))


class PlannedModule(torch.nn.Module):
    """Base of the Gaunt layers. Subclasses define ``_build_plan()`` and ``_TABLES`` (their floating buffers,
    named as in the plan's tensors)."""

    _TABLES: Tuple[str, ...] = ()
    _DERIVED: Tuple[str, ...] = ()
    """Index tables the kernels read, held as non-persistent buffers (not in state dicts): rebuilt from the plan
    after a device move and for layers pickled before they existed (:meth:`_register_derived`)."""
    __jit_unused_properties__ = ["plan"]
    __constants__ = ["_kernel_ops"]
    _kernel_ops = False
    """Whether the scripted forward calls the ``torch.ops.gaunt`` operators on CPU and CUDA tensors (they are
    registered and the plan is within the C kernels' limits): set when the layer is scripted
    (:meth:`__prepare_scriptable__`), a constant of the script."""

    def __prepare_scriptable__(self):
        """Before ``torch.jit.script``: the operators are registered (built on first use) so that the script can
        call them, or the script runs the PyTorch reference (the backend setting ``torch``, or no operators)."""
        self._kernel_ops = script_ops_ready() and self._fits_kernels()
        return self

    @torch.jit.unused
    def _fits_kernels(self) -> bool:
        """Whether the plan is within the CPU kernels' stack limits."""
        return False

    def _build_plan(self):
        raise NotImplementedError

    def _register_plan_buffers(self, tables: Dict[str, torch.Tensor], names: Tuple[str, ...]) -> None:
        """Register ``tables[name]`` as buffers on the current default device (so a layer built under
        ``with torch.device("meta"):`` is wholly on ``meta``, for shape inference; ``to_empty`` then refills
        the tables from the plan, see :meth:`_apply`)."""
        device = torch.empty(0).device
        for name in names:
            self.register_buffer(name, tables[name].to(device=device, copy=True))

    def _register_derived(self) -> None:
        """Register the plan's :attr:`_DERIVED` tables as non-persistent buffers beside the others."""
        reference = next(iter(self._buffers.values()), None)
        device = reference.device if reference is not None else torch.empty(0).device
        tables = self.plan.tensors.get(torch.float64, torch.device("cpu"))
        for name in self._DERIVED:
            self.register_buffer(name, tables[name].to(device=device, copy=True), persistent=False)

    @property
    def plan(self):
        """The layer's plan (cached; rebuilt from the irreps after unpickling)."""
        plan = self.__dict__.get("_plan")
        if plan is None:
            plan = self._build_plan()
            self.__dict__["_plan"] = plan
        return plan

    @torch.jit.unused
    def _auto_setting(self) -> bool:
        """Whether the backend setting is ``auto`` (eager and ``torch.compile``)."""
        return registry.backend_setting() == "auto"

    @torch.jit.unused
    def _kernels_serve(self, x: torch.Tensor) -> bool:
        """Eager and ``torch.compile``: whether the ``torch.ops.gaunt`` operators run this call (``auto``, CPU or
        CUDA tensors, the operators registered, the plan within the C kernels' limits)."""
        return operator_device(x) and compile_ops_ready() and self._fits_kernels()

    @torch.jit.unused
    def _note(self, op: str, executor: str) -> None:
        """Record what ran ``op`` (:func:`gaunt_plugins.backends.last_executor`)."""
        registry.record(op, "torch", executor)

    @torch.jit.unused
    def _note_operator(self, op: str, x: torch.Tensor) -> None:
        """Record that the ``torch.ops.gaunt`` operators ran ``op`` on ``x``'s device."""
        registry.record(op, "torch", operator_executor(x))

    def __getstate__(self):
        state = dict(self.__dict__)
        for key in _TRANSIENT:
            state.pop(key, None)
        return state

    def _apply(self, fn, recurse: bool = True):
        module = super()._apply(fn, recurse)
        masters = self.plan.tensors.get(torch.float64, torch.device("cpu"))
        for name in self._TABLES:
            buf = self._buffers.get(name)
            if buf is not None and buf.is_floating_point():
                exact = masters[name].to(device=buf.device, dtype=buf.dtype)
                if buf.device.type == "meta" or not torch.equal(exact, buf):  # meta tensors hold no values
                    self._buffers[name] = exact
        for name in self._DERIVED:
            buf = self._buffers.get(name)
            if buf is not None:
                self._buffers[name] = masters[name].to(device=buf.device)
        return module
