"""The Triton backend: fused kernels from :mod:`gaunt_plugins.triton_kernels`, imported lazily.

Nothing here imports Triton at module import time: ``unavailable_reason`` only looks for the package, and
the kernels (``gaunt_plugins.triton_kernels``, which imports Triton and registers the
``torch.ops.gaunt_triton`` ops) are loaded the first time the backend actually validates or runs.
``validate(op, ...)`` raises a ``ValueError`` that says why the kernels cannot serve a call (no
Triton, wrong device, dtype, a width or correlation past the kernels' limits); the registry uses
it to refuse a forced ``triton`` selection.
"""
from __future__ import annotations

import importlib.util
import os
from typing import Dict, Optional

import torch

__all__ = ["TritonBackend", "SUPPORTED_DTYPES"]

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

# mirrored from gaunt_plugins.triton_kernels.constants (kept here so that validate() needs no Triton)
_MAX_PADDED_WIDTH = 128
_MAX_CORRELATION = 4
# float64 dot tiles of padded width 128 asked for 344,064 bytes of shared memory on an H200 (limit 232,448)
_MAX_PADDED_WIDTH_FLOAT64 = 64


@torch.compiler.assume_constant_result
def _triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


@torch.compiler.assume_constant_result
def _cuda_available() -> bool:
    return torch.cuda.is_available()


@torch.compiler.assume_constant_result
def _capability_major(index: int) -> int:
    return torch.cuda.get_device_capability(index)[0]


def _padded(n: int) -> int:
    n = max(int(n), 1)
    return max(16, 1 << (n - 1).bit_length())


class TritonBackend:
    """Fused Triton kernels (CUDA; or the CPU interpreter with ``TRITON_INTERPRET=1``);
    :meth:`unavailable_reason` says why they cannot run here, :meth:`validate` why they cannot serve a call."""

    name = "triton"

    def __init__(self) -> None:
        self._kernels = None
        self._import_error: Optional[str] = None

    # -- capability ---------------------------------------------------------------------------
    @staticmethod
    def interpret() -> bool:
        """``TRITON_INTERPRET=1``: kernels run in Triton's CPU interpreter (tests only, slow)."""
        return os.environ.get("TRITON_INTERPRET", "0") == "1"

    @staticmethod
    def triton_installed() -> bool:
        return _triton_installed()

    def unavailable_reason(self) -> Optional[str]:
        if not self.triton_installed():
            return "Triton is not installed (pip install 'gaunt-plugins[triton]')"
        if self._import_error is not None:
            return self._import_error
        if not (_cuda_available() or self.interpret()):
            return "no CUDA device (Triton kernels need one; TRITON_INTERPRET=1 runs them on CPU, slowly)"
        return None

    def kernels(self):
        """The ``gaunt_plugins.triton_kernels`` module (imported on first use)."""
        if self._kernels is None:
            if not self.triton_installed():
                raise ValueError("triton backend: Triton is not installed (pip install 'gaunt-plugins[triton]')")
            try:
                from gaunt_plugins import triton_kernels
                self._kernels = triton_kernels
            except Exception as exc:  # pragma: no cover - depends on the installation
                self._import_error = f"importing gaunt_plugins.triton_kernels failed: {exc!r}"
                raise ValueError(f"triton backend: {self._import_error}") from exc
        return self._kernels

    # -- validation ---------------------------------------------------------------------------
    def validate(self, op: str, tensors: Dict[str, Optional[torch.Tensor]], *, widths: Dict[str, int] = None,
                 correlation: Optional[int] = None) -> None:
        """Raise ``ValueError`` saying why the kernels cannot serve ``op`` on these tensors."""
        where = f"triton backend cannot run {op}"
        if not self.triton_installed():
            raise ValueError(f"{where}: Triton is not installed (pip install 'gaunt-plugins[triton]')")
        present = {k: t for k, t in tensors.items() if t is not None}
        devices = {t.device for t in present.values()}
        if len(devices) > 1:
            raise ValueError(f"{where}: tensors are on several devices "
                             f"({', '.join(f'{k}: {t.device}' for k, t in present.items())})")
        device = next(iter(devices)) if devices else torch.device("cpu")
        if device.type != "cuda" and not (device.type == "cpu" and self.interpret()):
            raise ValueError(f"{where}: tensors are on {device}; the kernels need CUDA tensors "
                             f"(TRITON_INTERPRET=1 runs them on CPU in Triton's interpreter, for tests)")
        if device.type == "cuda" and not _cuda_available():
            raise ValueError(f"{where}: CUDA is not available")
        feats = []
        for k, t in present.items():
            is_feature = k.startswith(("x", "sh", "w", "weight", "grad"))
            if (is_feature or t.is_floating_point()) and t.dtype not in SUPPORTED_DTYPES:
                raise ValueError(f"{where}: {k} has dtype {t.dtype}; supported: float16, bfloat16, float32, float64")
            if is_feature:
                feats.append(t)
        dtypes = {t.dtype for t in feats}
        if len(dtypes) > 1:
            raise ValueError(f"{where}: features and weights have mixed dtypes "
                             f"({', '.join(f'{k}: {t.dtype}' for k, t in present.items() if t.is_floating_point())})")
        if device.type == "cuda" and torch.bfloat16 in dtypes:
            major = _capability_major(device.index if device.index is not None else torch.cuda.current_device())
            if major < 8:
                raise ValueError(f"{where}: bfloat16 needs compute capability >= 8.0; this GPU is {major}.x")
        for k, w in (widths or {}).items():
            if _padded(w) > _MAX_PADDED_WIDTH:
                raise ValueError(f"{where}: {k} has {w} coefficients; the kernels keep per-row accumulators of "
                                 f"at most {_MAX_PADDED_WIDTH} coefficients in registers (L <= 10)")
        if torch.float64 in dtypes:
            wide = {k: w for k, w in (widths or {}).items() if _padded(w) > _MAX_PADDED_WIDTH_FLOAT64}
            if wide:
                k, w = next(iter(wide.items()))
                raise ValueError(f"{where}: {k} has {w} coefficients; in float64 the kernels serve at most "
                                 f"{_MAX_PADDED_WIDTH_FLOAT64} (L <= 7): wider float64 tiles need more shared "
                                 f"memory than a GPU block has (336 KiB at 128 on an H200, which has 227 KiB)")
        if correlation is not None and not 1 <= correlation <= _MAX_CORRELATION:
            raise ValueError(f"{where}: correlation {correlation} is outside 1..{_MAX_CORRELATION} "
                             f"(one register accumulator per power is written out in the kernel)")
        ei = present.get("edge_index")
        if ei is not None and (ei.dtype not in (torch.int32, torch.int64) or ei.dim() != 2 or ei.shape[0] != 2):
            raise ValueError(f"{where}: edge_index must be an int32/int64 tensor [2, E], got "
                             f"{ei.dtype} {list(ei.shape)}")
        self.kernels()

    # -- ops (same signatures as torch_ops) ---------------------------------------------------
    def weighted_product(self, *args):
        return self.kernels().weighted_product(*args)

    def conv_product(self, *args):
        return self.kernels().conv_product(*args)

    def many_body_product(self, *args):
        return self.kernels().many_body_product(*args)

    def conv_message(self, *args, deterministic: bool = False):
        return self.kernels().conv_message(*args, deterministic=deterministic)

    def grid_rows(self, u: torch.Tensor, v: torch.Tensor, to_grid1, to_grid2, from_grid) -> torch.Tensor:
        """``((u @ Y1) * (v @ Y2)) @ F`` for equal rows ``u [R, I1]``, ``v [R, I2]``: the unweighted grid product."""
        self.kernels()
        out = torch.ops.gaunt_triton.grid_product(u.unsqueeze(1), v.unsqueeze(1), None, None, None, None, None, None,
                                                  to_grid1, to_grid2, from_grid)
        return out.squeeze(1)
