"""Which executor runs a plan: one dispatch for every Gaunt op (layers and :func:`gaunt_plugins.gaunt_product`).

:func:`executor_for` is called once per (layer, device, dtype, setting) and its result cached by the caller.
The backend setting is resolved as for the dense ops of :mod:`.registry` (the call's ``backend=``, then
:func:`~.registry.set_backend`, then ``$GAUNT_BACKEND``, then ``auto``):

- ``triton`` (forced): the Triton executor, or ``ValueError`` saying why it cannot serve (never a fallback);
- ``torch`` (forced): the PyTorch reference, on every device (no C kernel, no Triton);
- ``auto``: CUDA -> the PyTorch reference (on an H200 it trained MACE 1.3x faster per step than the Triton
  kernels, whose backward takes 6x their forward: ``benchmarks/results/gpu_h200``); CPU -> for a convolution
  of scalar node features the coefficient-wise executor (a degree-0 factor is a scaling), else the CPU
  kernels where they serve the plan (float32/float64, eager, within the kernels' limits), else the
  reference.

:func:`refusals` lists, for a plan, why each executor that would not run it cannot.
"""
from __future__ import annotations

from typing import Dict, Optional

import torch

from . import registry
from .cpu.executors import cpu_executor, cpu_refusal
from .executors import Executor, GatherScatterMessage, ScalarNodeConv
from .reference import reference_executor

__all__ = ["executor_for", "refusals", "scalar_node_executor", "KINDS"]

KINDS = ("product", "conv", "message", "many_body", "functional")
_OP_NAMES = {"product": "weighted_product", "conv": "conv_product", "message": "conv_message",
             "many_body": "many_body_product", "functional": "gaunt_product"}


def scalar_node_executor(kind: str, plan, device: torch.device, dtype: torch.dtype,
                         deterministic: bool = False) -> Optional[Executor]:
    """For a convolution of scalar node features (a degree-0 factor is a scaling, not a grid product): the
    coefficient-wise executor; ``None`` for every other plan."""
    if kind not in ("conv", "message") or plan.in1.degrees != (0,):
        return None
    conv = ScalarNodeConv(plan, plan.tensors.get(dtype, device))
    if kind == "conv":
        return conv
    return GatherScatterMessage(conv, "torch", conv.name, deterministic)


def _auto_executor(kind: str, plan, device: torch.device, dtype: torch.dtype, deterministic: bool) -> Executor:
    """Outside Triton: the fastest PyTorch or C executor that serves the plan here."""
    scalar = scalar_node_executor(kind, plan, device, dtype, deterministic)
    if scalar is not None:
        return scalar
    reference = reference_executor(kind, plan, device, dtype, deterministic)
    if cpu_refusal(kind, plan, device, dtype) is None:
        return cpu_executor(kind, plan, dtype, reference)
    return reference


def executor_for(kind: str, plan, device: torch.device, dtype: torch.dtype, backend: Optional[str] = None,
                 deterministic: bool = False) -> Executor:
    """The executor of ``kind`` for ``plan`` on ``device`` in the compute ``dtype`` (see the module docstring)."""
    if kind not in KINDS:
        raise ValueError(f"unknown Gaunt executor kind {kind!r}; one of {KINDS}")
    op = _OP_NAMES[kind]
    device = torch.device(device)
    if backend is not None:
        registry._check_choice(backend, f"{op}(backend=...)")
    choice = backend if backend not in (None, "auto") else registry.backend_setting()
    if device.type == "meta":  # shape inference: no values, so no kernel; the reference under every setting
        return reference_executor(kind, plan, device, dtype, deterministic)
    triton = registry.get_backend("triton")
    if choice == "triton":
        reason = triton.plan_refusal(kind, plan, device, dtype)
        if reason is not None:
            source = (f"backend={backend!r}" if backend not in (None, "auto")
                      else ("set_backend()" if registry._SETTING[0] is not None else f"{registry.BACKEND_ENV}=triton"))
            raise ValueError(f"{reason} [{source} forces it; use 'auto' or 'torch' to run elsewhere]")
        return triton.plan_executor(kind, plan, device, dtype, deterministic)
    if choice == "torch":
        return reference_executor(kind, plan, device, dtype, deterministic)
    elif choice != "auto":
        raise ValueError(f"{op}: backend {choice!r} serves no Gaunt plans; choose 'auto', 'torch' or 'triton'")
    return _auto_executor(kind, plan, device, dtype, deterministic)


def refusals(kind: str, plan, device: torch.device, dtype: torch.dtype) -> Dict[str, Optional[str]]:
    """``{executor name: None if it can run kind of plan here, else why not}``."""
    device = torch.device(device)
    return {"triton": registry.get_backend("triton").plan_refusal(kind, plan, device, dtype),
            "cpu-kernels": cpu_refusal(kind, plan, device, dtype),
            "torch-reference": None}


def record(kind: str, executor: Executor) -> None:
    """Note what ran ``kind`` (eager calls): :func:`~.registry.last_backend` / :func:`~.registry.last_executor`."""
    if not torch.compiler.is_compiling():
        registry._LAST[_OP_NAMES[kind]] = executor.backend
        registry._LAST_EXECUTOR[_OP_NAMES[kind]] = executor.name
