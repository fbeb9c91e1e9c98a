"""Where a Gaunt product runs (:mod:`.registry`: the one route and the backend setting that steers it).

- the ``torch.ops.gaunt`` operators (:mod:`.cpu`), for eager calls, TorchScript, ``torch.compile`` and C++ hosts
  alike: the C kernels on float32/float64 CPU tensors, the composed reference (ATen operations) on CUDA tensors;
- ``torch`` (:mod:`.torch_ops`): the reference, every device and dtype, TorchScript-able;
- ``triton`` (:mod:`.triton_backend`): fused kernels, CUDA only, imported lazily, run where forced.

``weighted_product``, ``conv_product``, ``many_body_product`` here take the arguments of their :mod:`.torch_ops`
namesakes plus ``backend=None|"auto"|"torch"|"triton"``; ``conv_message`` is the MACE message step (gather,
convolution, scatter-sum). ``GAUNT_BACKEND`` or :func:`set_backend` force a backend; a forced ``triton`` that
cannot serve a call raises ``ValueError`` with the reason instead of falling back. :func:`last_backend` and
:func:`last_executor` name what ran the latest eager call of each op.
"""
from . import torch_ops
from .registry import (
    BACKEND_CHOICES,
    BACKEND_ENV,
    TorchBackend,
    TritonBackend,
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
