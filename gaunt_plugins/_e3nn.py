"""Import e3nn safely on new torch.

e3nn 0.4.4 (mace-torch's pin) calls ``torch.load`` on its own constants at import time, which
fails under torch's ``weights_only`` default unless ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1``. The
variable is set only for the duration of that import and restored afterwards, so the user's
``torch.load`` behaviour is left as they had it.
"""
from __future__ import annotations

import os

_VAR = "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"
_previous = os.environ.get(_VAR)
os.environ[_VAR] = "1"
try:
    import e3nn  # noqa: E402
    from e3nn import o3  # noqa: E402
    from e3nn.util.jit import compile_mode  # noqa: E402
finally:
    if _previous is None:
        os.environ.pop(_VAR, None)
    else:
        os.environ[_VAR] = _previous

E3NN_VERSION = e3nn.__version__

__all__ = ["o3", "compile_mode", "E3NN_VERSION"]
