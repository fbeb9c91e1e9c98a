"""Writing a converted model or checkpoint: never over the input or an existing file unless asked,
and never a half-written file (a temporary file in the same folder, renamed when complete)."""

from __future__ import annotations

import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Union

import torch

__all__ = ["check_output", "save_atomically", "is_torchscript_archive"]

PathLike = Union[str, os.PathLike]


def check_output(src: PathLike, dst: PathLike, force: bool) -> None:
    """Raise ``FileExistsError`` when ``dst`` is ``src`` or exists, unless ``force``."""
    src, dst = Path(src), Path(dst)
    if force or not dst.exists():
        return
    if src.exists() and os.path.samefile(src, dst):
        raise FileExistsError(f"{dst} is the input: writing there would replace the original model; give another "
                              "output path (or --force to replace the input)")
    raise FileExistsError(f"{dst} exists: give another output path (or --force to overwrite it)")


def save_atomically(obj: Any, dst: PathLike) -> Path:
    """``torch.save(obj)`` to a temporary file beside ``dst``, then renamed to ``dst``."""
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=str(dst.parent))
    os.close(handle)
    try:
        torch.save(obj, tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # as a plain open() would create it (mkstemp makes it private)
        os.replace(tmp, dst)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return dst


def is_torchscript_archive(path: PathLike) -> bool:
    """Whether ``path`` was written by ``torch.jit.save`` (its zip holds compiled ``code/``), not by
    ``torch.save``."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (OSError, zipfile.BadZipFile):
        return False
    return any(n.endswith("/constants.pkl") or "/code/" in n for n in names)
