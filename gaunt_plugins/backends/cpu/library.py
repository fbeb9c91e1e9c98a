"""The Gaunt products as PyTorch operators (``ops.cpp``: ``torch.ops.gaunt.conv``, ``message``, ``many_body``,
``grid_product`` and their backwards), built on first use and loaded with ``torch.ops.load_library``.

Eager calls, TorchScript (MACE's ``_compiled.model``), ``torch.compile`` and C++ hosts all reach the kernels
through these operators: on CPU tensors the C kernels, on CUDA tensors the composed reference (ATen operations,
registered for the CUDA and AutogradCUDA dispatch keys). The library is one shared object: ``ops.cpp``
compiled against this torch, linked with the C kernels compiled with the flags of :mod:`.build`. It is cached
under :mod:`.build`'s rules (a private folder; a cached file is loaded only if it is this user's, writable by
nobody else and matches the digest recorded when it was built; an unusable cache costs one warning and a build
in a private temporary folder). Its name hashes the sources, the compilers, their flags and the torch version,
so a library built against another torch is never loaded. ``GAUNT_CPU_KERNELS=0`` disables it (on every
device); when it cannot be built, the layers run the PyTorch reference (one warning says why).

``python -m gaunt_plugins.backends.cpu.library`` builds it if needed and prints its path: what a C++ host loads
before a scripted Gaunt model (``torch.ops.load_library(path)``, or ``LD_PRELOAD`` for LAMMPS).
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Optional

from . import build

__all__ = ["ops_available", "ops_unavailable_reason", "library_path", "load_ops"]

_CPP = Path(__file__).with_name("ops.cpp")
_CXX_FLAGS = ["-O2", "-fPIC", "-shared", "-std=c++20"]


def _cxx() -> Optional[str]:
    return os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")


def _torch_flags() -> tuple[list[str], list[str]]:
    """``(compile flags, link flags)`` for this torch: its headers and C++ ABI, its libraries."""
    import torch
    from torch.utils.cpp_extension import include_paths, library_paths

    return ([f"-I{p}" for p in include_paths()] + [f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}"],
            [f"-L{p}" for p in library_paths()] + ["-lc10", "-ltorch_cpu", "-ltorch"])


def _library_name(cc: str, cflags: list[str], cxx: str, cxxflags: list[str]) -> str:
    import torch

    sources = b"".join(src.read_bytes() for src in [_CPP] + build._SOURCES + build._HEADERS)
    key = "\n".join([cc, *cflags, cxx, *cxxflags, torch.__version__]).encode()
    return f"gaunt_ops_{hashlib.sha256(sources + key).hexdigest()[:16]}.so"


def _run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise build._BuildFailed(proc.stderr.strip()[-1500:])


def _compile(cc: str, cflags: list[str], cxx: str, out: Path) -> None:
    """The C kernels to objects beside ``out`` (the flags of :mod:`.build`), then ``ops.cpp`` linked with them."""
    objects = []
    for src in build._SOURCES:
        obj = out.with_name(src.stem + ".o")
        _run([cc, *[f for f in cflags if f != "-shared"], "-c", "-o", str(obj), str(src)])
        objects.append(str(obj))
    includes, libs = _torch_flags()
    _run([cxx, *_CXX_FLAGS, *includes, "-o", str(out), str(_CPP), *objects, *libs])


def _load_into_torch(path: str) -> str:
    import torch

    torch.ops.load_library(path)
    return path


@lru_cache(maxsize=None)
def _load() -> tuple[Optional[Path], Optional[str]]:
    """``(cached path or None, None)`` once the operators are registered, else ``(None, why not)``."""
    if os.environ.get("GAUNT_CPU_KERNELS", "1") == "0":
        return None, "disabled by GAUNT_CPU_KERNELS=0"
    import torch

    loaded = [Path(p) for p in torch.ops.loaded_libraries if Path(p).name.startswith("gaunt_ops_")]
    if loaded:  # already loaded in this process (by the host): registering it twice would fail
        from . import fake  # noqa: F401

        return loaded[0], None
    cc, cxx = build._compiler(), _cxx()
    if cc is None or cxx is None:
        return None, "no C/C++ compiler found (gcc and g++, or set CC and CXX)"
    cflags = build._BASE_FLAGS + build._cpu_flags()
    name = _library_name(cc, cflags, cxx, _CXX_FLAGS)
    try:
        _, path = build.cached_library(
            name, lambda folder, install: build.build_into(folder, name, install,
                                                           lambda out: _compile(cc, cflags, cxx, out),
                                                           _load_into_torch, "CPU operators"),
            _load_into_torch, "CPU operators")
    except build._BuildFailed as exc:
        return None, f"building the CPU operators failed: {exc}"
    except OSError as exc:
        return None, f"the CPU operators could neither be cached nor built in a temporary folder: {exc}"
    from . import fake  # noqa: F401  (shapes for torch.compile and the meta device)

    return path, None


_WARNED = []


def load_ops() -> bool:
    """Build (once) and register the ``torch.ops.gaunt`` operators; ``False`` (and one warning) when they cannot
    be: the layers then run the PyTorch reference."""
    reason = _load()[1]
    if reason is not None and not _WARNED and "GAUNT_CPU_KERNELS=0" not in reason:
        _WARNED.append(reason)
        warnings.warn(f"gaunt_plugins: the Gaunt products run the PyTorch reference: {reason}",
                      RuntimeWarning)
    return reason is None


def ops_available() -> bool:
    """Whether the operators are registered (building them on the first call)."""
    return load_ops()


def ops_unavailable_reason() -> Optional[str]:
    load_ops()
    return _load()[1]


def library_path() -> Optional[Path]:
    """The cached library's path (``None`` when it is unavailable or only in a temporary folder)."""
    load_ops()
    return _load()[0]


def load_cached_ops() -> None:
    """Register the operators if this user's cache already holds the library built for this torch and these
    sources (no build, no warning): what lets ``torch.jit.load`` read a scripted Gaunt model after ``import
    gaunt_plugins``. Building stays for the first scripting (:func:`load_ops`)."""
    if os.environ.get("GAUNT_CPU_KERNELS", "1") == "0" or _load.cache_info().currsize:
        return
    cc, cxx = build._compiler(), _cxx()
    if cc is None or cxx is None:
        return
    try:
        folder = build._cache_dir()
        name = _library_name(cc, build._BASE_FLAGS + build._cpu_flags(), cxx, _CXX_FLAGS)
        if not (folder / name).is_file():
            return
        lib, _ = build._cached(build.private_dir(folder, tighten=False), name, _load_into_torch)
    except OSError:
        return
    if lib is not None:
        _load.cache_clear()
        _load()  # finds the library just loaded (and registers the operators' shapes)


def main() -> int:
    if not load_ops():
        print(f"gaunt_plugins CPU operators unavailable: {_load()[1]}", file=sys.stderr)
        return 1
    path = _load()[0]
    if path is None:
        print("gaunt_plugins CPU operators: built in a temporary folder only (the cache cannot be used; set "
              "GAUNT_PLUGINS_CACHE to a folder of yours)", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
