"""Execution backends of the Gaunt operations and the dispatch between them.

- ``torch`` (:mod:`.torch_ops`): the reference, every device and dtype, TorchScript-able.
- ``triton`` (:mod:`.triton_backend`): fused kernels, CUDA only, imported lazily.

``weighted_product``, ``conv_product``, ``many_body_product`` here take the arguments of their
:mod:`.torch_ops` namesakes plus ``backend=None|"auto"|"torch"|"triton"``; ``conv_message`` is the
fused MACE message step (gather, convolution, scatter-sum). ``auto`` runs PyTorch (with the C kernels on
CPU; on CUDA the reference, measured faster per training step than the Triton kernels); ``GAUNT_BACKEND`` or :func:`set_backend` force one; a forced ``triton`` that cannot serve
a call raises ``ValueError`` with the reason instead of falling back. :func:`select_backend` returns
the backend that will run, :func:`last_backend` the one that ran.
"""
from . import torch_ops
from .registry import (
    BACKEND_CHOICES,
    BACKEND_ENV,
    TorchBackend,
    TritonBackend,
    available_backends,
    backend_setting,
    conv_message,
    conv_product,
    get_backend,
    last_backend,
    last_executor,
    many_body_product,
    select_backend,
    set_backend,
    use_backend,
    weighted_product,
)

__all__ = [
    "torch_ops",
    "BACKEND_CHOICES",
    "BACKEND_ENV",
    "TorchBackend",
    "TritonBackend",
    "available_backends",
    "backend_setting",
    "conv_message",
    "conv_product",
    "get_backend",
    "last_backend",
    "last_executor",
    "many_body_product",
    "select_backend",
    "set_backend",
    "use_backend",
    "weighted_product",
]
