"""Folders and files that only this user can write, for what the launcher and the CPU kernels keep on disk.

A folder is *private* when it is a real directory (not a symlink, never followed through one), owned
by this user, and writable by nobody else; :func:`private_dir` creates it 0700 whatever the umask, or
checks (and, with ``tighten``, sets to 0700) one that exists, and raises :class:`NotPrivate`
naming the problem when it is anything else. Files are written atomically (a temporary file in the
same folder, then ``os.replace``) with mode 0600, and read back only after ``fstat`` on the opened,
never-followed file shows the same three properties.
"""
from __future__ import annotations

import errno
import os
import stat
import tempfile
from pathlib import Path
from typing import Union

__all__ = ["NotPrivate", "private_dir", "fresh_private_dir", "read_private_file", "write_private_file"]

PathLike = Union[str, "os.PathLike[str]"]

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_BINARY = getattr(os, "O_BINARY", 0)


class NotPrivate(OSError):
    """A path that exists but is not this user's private folder or file (the message says why)."""


def _uid():
    return os.getuid() if hasattr(os, "getuid") else None


def _problem(st: os.stat_result, directory: bool) -> Union[str, None]:
    """Why ``st`` (from ``lstat``/``fstat``) is not a private folder (``directory``) or file, or ``None``."""
    if stat.S_ISLNK(st.st_mode):
        return "is a symlink"
    if not (stat.S_ISDIR(st.st_mode) if directory else stat.S_ISREG(st.st_mode)):
        return "is not a directory" if directory else "is not a regular file"
    uid = _uid()
    if uid is not None and st.st_uid != uid:
        return f"is owned by uid {st.st_uid}, not by this user (uid {uid})"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"is writable by group or others (mode {stat.S_IMODE(st.st_mode):04o})"
    return None


def _open_nofollow(path: Path, flags: int) -> int:
    """``os.open`` that refuses a symlink at ``path`` itself (``NotPrivate``)."""
    try:
        return os.open(path, flags | _NOFOLLOW | _BINARY)
    except OSError as exc:
        st = _lstat(path)
        if st is not None and stat.S_ISLNK(st.st_mode):
            raise NotPrivate(f"{path} is a symlink") from None
        if isinstance(exc, NotADirectoryError):
            raise NotPrivate(f"{path} is not a directory") from None
        raise


def _lstat(path: Path):
    try:
        return os.lstat(path)
    except OSError:
        return None


def private_dir(path: PathLike, tighten: bool = True) -> Path:
    """``path`` as a private folder: created with mode 0700 (its missing parents with the usual mode)
    if it does not exist; an existing one is accepted if it is a directory, not a symlink, owned by
    this user and writable by nobody else, and then (with ``tighten``) set to 0700.
    ``NotPrivate`` (why) for anything else; ``OSError`` when it cannot be created."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except FileExistsError:  # the parent is a file
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(path.parent)) from None
    created = False
    try:
        os.mkdir(path, 0o700)
        created = True
    except FileExistsError:
        pass
    fd = _open_nofollow(path, os.O_RDONLY | _DIRECTORY)
    try:
        st = os.fstat(fd)
        lst = os.lstat(path)
        if (lst.st_dev, lst.st_ino) != (st.st_dev, st.st_ino):
            raise NotPrivate(f"{path} changed while it was being checked")
        problem = _problem(lst, directory=True)
        if problem is not None:
            raise NotPrivate(f"{path} {problem}")
        if (created or tighten) and stat.S_IMODE(st.st_mode) != 0o700 and hasattr(os, "fchmod"):
            os.fchmod(fd, 0o700)  # mkdir's mode is masked by the umask; an own old folder is tightened
    finally:
        os.close(fd)
    return path


def fresh_private_dir(prefix: str, parent: Union[PathLike, None] = None) -> Path:
    """A new folder with an unpredictable name (``tempfile.mkdtemp``: mode 0700, never an existing path)."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir=None if parent is None else str(parent)))


def read_private_file(path: PathLike) -> bytes:
    """The content of ``path`` if it is a regular file (not a symlink), owned by this user and writable
    by nobody else; ``NotPrivate`` (why) otherwise, ``FileNotFoundError`` if there is none."""
    path = Path(path)
    fd = _open_nofollow(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))  # a FIFO must not block the open
    try:
        problem = _problem(os.fstat(fd), directory=False)
        if problem is not None:
            raise NotPrivate(f"{path} {problem}")
        chunks = []
        while True:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
    finally:
        os.close(fd)


def write_private_file(path: PathLike, data: bytes, mode: int = 0o600) -> Path:
    """Write ``data`` to ``path`` atomically (a temporary file in the same folder, then ``os.replace``),
    with ``mode`` whatever the umask. Readers never see half a file; a symlink at ``path`` is replaced,
    not followed."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            if hasattr(os, "fchmod"):
                os.fchmod(handle.fileno(), mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path
