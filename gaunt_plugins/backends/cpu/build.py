"""The compilers, flags and private cache the C kernels (``grid_product.c``, ``conv.c``, ``many_body.c``) are built
with; :mod:`.library` links them into the ``torch.ops.gaunt`` operators.

A library is cached under ``$GAUNT_PLUGINS_CACHE`` (default ``~/.cache/gaunt_plugins``), named by its builder
with a hash of the sources, the compilers, their flags and the CPU's instruction-set flags, so a cache shared
between machines never loads code the CPU cannot run. The cache folder is private
(:mod:`gaunt_plugins._private_files`: created 0700; used only if it is this user's, writable by nobody
else, and not a symlink); a cached library is loaded only if it is this user's, writable by nobody else,
and its SHA-256 equals the digest written beside it (``<name>.so.sha256``) when it was built; otherwise
it is rebuilt and replaced atomically. A cache that cannot be used (a location that cannot be created or
written, a folder of another user's or that others can write) costs one warning and a build in a
private temporary folder, removed once the library is loaded. Set
``GAUNT_CPU_KERNELS=0`` to disable the kernels (the layers then use the plain PyTorch path).
:func:`cached_library` and :func:`build_into` hold these rules; this module needs only the standard library.
"""
from __future__ import annotations

import hashlib
import os
import platform
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Callable, Optional

from ..._private_files import fresh_private_dir, private_dir, read_private_file, write_private_file

__all__ = ["cached_library", "build_into"]

_SOURCES = [Path(__file__).with_name(name) for name in ("grid_product.c", "conv.c", "many_body.c")]
_HEADERS = [Path(__file__).with_name("simd_apply.h")]
# No -ffast-math: with GCC < 13 a shared library built with it turns on flush-to-zero for the
# whole process. These flags are the ones the reductions need to vectorise.
_BASE_FLAGS = ["-O3", "-fPIC", "-shared", "-std=c99", "-fno-math-errno", "-fassociative-math",
               "-fno-signed-zeros", "-fno-trapping-math"]


def _cpu_flags() -> list[str]:
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags.update(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    if platform.machine() in ("x86_64", "AMD64") and {"avx2", "fma"} <= flags:
        return ["-mavx2", "-mfma"]
    return []


def _cache_dir() -> Path:
    """``$GAUNT_PLUGINS_CACHE``, else ``~/.cache/gaunt_plugins``; ``OSError`` when there is no home."""
    if os.environ.get("GAUNT_PLUGINS_CACHE"):
        return Path(os.environ["GAUNT_PLUGINS_CACHE"])
    try:
        return Path.home() / ".cache" / "gaunt_plugins"
    except (RuntimeError, KeyError) as exc:
        raise OSError(f"no home directory for the default cache ({exc})") from None


def _compiler() -> Optional[str]:
    return os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc") or shutil.which("clang")


_DIGEST_SUFFIX = ".sha256"


class _BuildFailed(Exception):
    """The compiler failed; the message is its error output."""


def build_into(folder: Path, name: str, install: bool, compile_to: Callable[[Path], None],
               loader: Callable[[str], object], what: str) -> tuple[object, Optional[Path]]:
    """``compile_to(path)`` in a private temporary folder inside ``folder``, load that file with ``loader``, and
    (``install``) move it to ``folder/name`` with its digest beside it: the library loaded is the one built here,
    whatever a concurrent builder (another DDP worker) puts in the cache meanwhile. Returns ``(what loader
    returned, the cached path or None)``; :class:`_BuildFailed` when compiling or loading fails."""
    installed = None
    with tempfile.TemporaryDirectory(dir=folder, prefix=".build-") as tmp:
        out = Path(tmp) / name
        compile_to(out)
        os.chmod(out, 0o700)  # the linker's mode follows the umask (0777 under umask 000)
        digest = hashlib.sha256(read_private_file(out)).hexdigest()
        try:
            lib = loader(str(out))
        except (OSError, RuntimeError) as exc:
            raise _BuildFailed(f"the library built cannot be loaded: {exc}") from None
        if install:
            try:  # the digest first: a reader never pairs the new library with an old digest
                write_private_file(folder / (name + _DIGEST_SUFFIX), digest.encode())
                os.replace(out, folder / name)  # atomic: other processes never see half a file
                installed = folder / name
            except OSError as exc:
                warnings.warn(f"gaunt_plugins {what}: built and loaded, but not cached: {exc}", RuntimeWarning)
    return lib, installed


def _cached(folder: Path, name: str, loader: Callable[[str], object]) -> tuple[Optional[object], Optional[str]]:
    """The cached library (loaded with ``loader``) if it is this user's, writable by nobody else, and its SHA-256
    equals the digest recorded when this user built it; else ``(None, why not)`` (``None``: there is none)."""
    path = folder / name
    try:
        data = read_private_file(path)
    except FileNotFoundError:
        return None, None
    except OSError as exc:
        return None, str(exc)
    try:
        recorded = read_private_file(folder / (name + _DIGEST_SUFFIX)).decode("ascii", "replace").strip()
    except FileNotFoundError:
        return None, None  # what an interrupted build or an older version leaves: rebuilt silently
    except OSError as exc:
        return None, f"its recorded digest cannot be used: {exc}"
    if hashlib.sha256(data).hexdigest() != recorded:
        return None, f"{path} does not match the digest recorded when it was built (truncated or replaced)"
    try:
        return loader(str(path)), None
    except (OSError, RuntimeError) as exc:
        return None, f"{path} cannot be loaded: {exc}"


def cached_library(name: str, build: Callable[[Path, bool], tuple[object, Optional[Path]]],
                   loader: Callable[[str], object], what: str) -> tuple[object, Optional[Path]]:
    """Load ``name`` from the private cache with ``loader``, or ``build(folder, install=True)`` it there; when the
    cache cannot be used (cannot be created or written, not this user's, writable by others) ``build(tmp,
    install=False)`` in a private temporary folder for this process (removed once loaded), with one warning saying
    why. ``build`` returns what :func:`build_into` returns, and so does this: ``(the loaded library, its cached
    path or None)``."""
    folder = None
    try:
        folder = _cache_dir()
        folder = private_dir(folder, tighten=False)
        lib, refused = _cached(folder, name, loader)
        if lib is not None:
            return lib, folder / name
        if refused is not None:
            warnings.warn(f"gaunt_plugins {what}: not loading the cached library: {refused}; rebuilding it",
                          RuntimeWarning)
        return build(folder, True)
    except OSError as exc:
        where = f" {folder}" if folder is not None else ""
        warnings.warn(f"gaunt_plugins {what}: the cache{where} cannot be used ({exc}); building them in a "
                      "private temporary folder for this process (set GAUNT_PLUGINS_CACHE to a folder of yours "
                      "to keep them)", RuntimeWarning)
    tmp = fresh_private_dir(prefix="gaunt_plugins_kernels_")
    try:
        return build(tmp, False)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
