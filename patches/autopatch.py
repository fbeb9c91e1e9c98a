"""Opt-in automatic patching at interpreter start, for the stock commands and their subprocesses.

With ``GAUNT_PLUGINS_AUTOPATCH=1`` in the environment, a hook that runs at interpreter start (the
``sitecustomize.py`` that ``gaunt-run`` puts first on ``PYTHONPATH``, or the ``.pth`` file written
by ``gaunt-run --install-hook``) calls :func:`install`. Nothing is imported eagerly: install
registers a post-import hook, and the first time a framework's top-level module finishes importing
(``mace``, ``fairchem``: the entry-point names of group ``gaunt_plugins.patches``) its patch is
applied through the forgiving loader. So ``mace_run_train --config cfg.yaml`` with
``tensor_product: gaunt`` in the YAML works unchanged, in the command itself and in every process
it starts (``torchrun`` workers included), while a Python process that never imports MACE pays
nothing but reading the entry points.

This module imports only the standard library at import time (not even ``gaunt_plugins``, whose
``__init__`` imports torch): the hooks load it by file path, so an interpreter that never imports a
framework starts as fast as without the hook. The patches themselves are imported on the trigger.

Variables: ``GAUNT_PLUGINS_AUTOPATCH`` (``1``/``true``/``yes``/``on`` to enable),
``GAUNT_PLUGINS_PATCHES`` (optional comma-separated subset of patch names),
``GAUNT_PLUGINS_DISABLED`` (names to skip, see :mod:`.loader`). A disabled patch is not applied, and when
its framework is imported the hook says so on stderr (one warning line naming the variable), so that
the framework's own error about an unknown option (MACE's ``unrecognized arguments: --tensor_product``)
is not the only thing the user sees.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import logging
import os
import sys
import threading
from importlib import metadata
from typing import Callable, List, Optional, Set

__all__ = [
    "AUTOPATCH_ENV",
    "PATCHES_ENV",
    "DISABLED_ENV",
    "ENTRY_POINT_GROUP",
    "entry_points",
    "disabled_patches",
    "enabled",
    "install",
    "uninstall",
    "installed",
    "from_hook",
]

AUTOPATCH_ENV = "GAUNT_PLUGINS_AUTOPATCH"
PATCHES_ENV = "GAUNT_PLUGINS_PATCHES"
DISABLED_ENV = "GAUNT_PLUGINS_DISABLED"
ENTRY_POINT_GROUP = "gaunt_plugins.patches"
_TRUE = ("1", "true", "yes", "on")

logger = logging.getLogger("gaunt_plugins.patches")


def entry_points():
    """The entry points of group ``gaunt_plugins.patches`` (not loaded)."""
    eps = metadata.entry_points()
    if hasattr(eps, "select"):
        return list(eps.select(group=ENTRY_POINT_GROUP))
    return list(eps.get(ENTRY_POINT_GROUP, []))  # Python < 3.10


def disabled_patches() -> List[str]:
    """Names listed in ``GAUNT_PLUGINS_DISABLED`` (``["all"]`` disables every patch)."""
    value = os.environ.get(DISABLED_ENV, "")
    return [n.strip().lower() for n in value.split(",") if n.strip()]


def enabled(environ=None) -> bool:
    """Whether ``GAUNT_PLUGINS_AUTOPATCH`` asks for automatic patching."""
    environ = os.environ if environ is None else environ
    return environ.get(AUTOPATCH_ENV, "").strip().lower() in _TRUE


def _wanted_names() -> Optional[List[str]]:
    value = os.environ.get(PATCHES_ENV, "").strip()
    if not value:
        return None
    return [n.strip() for n in value.split(",") if n.strip()]


class _NotifyingLoader(importlib.abc.Loader):
    """Runs the real loader, then the callback (the module is complete by then)."""

    def __init__(self, loader, callback: Callable[[str], None]):
        self._loader = loader
        self._callback = callback

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        # the module should see its real loader, not this wrapper
        module.__loader__ = self._loader
        if getattr(module, "__spec__", None) is not None:
            module.__spec__.loader = self._loader
        self._loader.exec_module(module)
        self._callback(module.__name__)

    def __getattr__(self, name):
        return getattr(self._loader, name)


class _NamespaceExec(importlib.abc.Loader):
    """What importing a namespace package executes: nothing (Python < 3.11 fallback)."""

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        pass


def _namespace_loader(spec):
    """The loader the import system gives a namespace package (whose spec carries none)."""
    try:
        from importlib.machinery import NamespaceLoader  # Python >= 3.11

        return NamespaceLoader(spec.name, spec.submodule_search_locations, importlib.machinery.PathFinder._get_spec)
    except (ImportError, AttributeError, TypeError):
        return _NamespaceExec()


class _PostImportFinder(importlib.abc.MetaPathFinder):
    """A meta-path finder that finds nothing itself; it wraps the loader of watched modules."""

    gaunt_plugins_autopatch = True  # recognised across copies of this module (package / by path)

    def __init__(self):
        self.watched: Set[str] = set()  # top-level modules = names of the patches they trigger
        self.disabled: Set[str] = set()  # top-level modules whose patch is disabled: a notice on import
        self._busy = set()
        self._lock = threading.RLock()

    def find_spec(self, fullname, path=None, target=None):
        if (fullname not in self.watched and fullname not in self.disabled) or fullname in self._busy:
            return None
        with self._lock:
            self._busy.add(fullname)
            try:
                spec = importlib.util.find_spec(fullname)
            except Exception:  # let the normal machinery report it
                return None
            finally:
                self._busy.discard(fullname)
        if spec is None:
            return None
        loader = spec.loader
        if loader is None and spec.submodule_search_locations is not None:
            loader = _namespace_loader(spec)  # a namespace package, such as fairchem
        if loader is None or not hasattr(loader, "exec_module"):
            return None
        spec.loader = _NotifyingLoader(loader, self._fire)
        return spec

    def _fire(self, module_name: str) -> None:
        with self._lock:
            fire = module_name in self.watched
            notice = module_name in self.disabled
            self.watched.discard(module_name)
            self.disabled.discard(module_name)
        if fire:
            _apply([module_name])
        if notice:
            _notice_disabled(module_name)
        if not self.watched and not self.disabled:
            _remove_finder()


def _apply(names: List[str]) -> None:
    from gaunt_plugins.patches.loader import apply_patches

    try:
        apply_patches(names)
    except Exception as exc:  # never break the user's import
        logger.warning("gaunt-plugins: automatic patching of %s failed: %r", names, exc)


def _notice_disabled(name: str) -> None:
    """One warning line: the patch ``name`` is disabled by ``GAUNT_PLUGINS_DISABLED``."""
    logger.warning("gaunt-plugins: the %r patch is disabled by %s=%s: %s runs unpatched, without the "
                   "gaunt-plugins options (e.g. tensor_product: gaunt)", name, DISABLED_ENV,
                   os.environ.get(DISABLED_ENV, ""), name)


def _remove_finder() -> None:
    finder = _active_finder()
    if finder is not None:
        sys.meta_path.remove(finder)


def _active_finder():
    """The post-import finder on ``sys.meta_path``, whichever copy of this module installed it."""
    for finder in sys.meta_path:
        if getattr(finder, "gaunt_plugins_autopatch", False):
            return finder
    return None


def installed() -> bool:
    """Whether the post-import hook is waiting for a framework import."""
    return _active_finder() is not None


def install(names: Optional[List[str]] = None) -> List[str]:
    """Apply each patch when its framework is imported (now, if it already is).

    ``names`` defaults to ``GAUNT_PLUGINS_PATCHES`` or every entry point of the group. Entry
    points are read but not loaded: the patch modules are imported only when their framework is.
    The trigger of a patch is its entry-point name, the framework's top-level module (``mace``,
    ``fairchem``). Returns the names being watched or applied.
    """
    wanted = names if names is not None else _wanted_names()
    disabled = disabled_patches()
    chosen, off = [], []
    for ep in entry_points():
        if wanted is not None and ep.name not in wanted:
            continue
        if ep.name in chosen or ep.name in off:
            continue
        (off if "all" in disabled or ep.name.lower() in disabled else chosen).append(ep.name)
    now = [n for n in chosen if n in sys.modules]
    later = [n for n in chosen if n not in sys.modules]
    if now:
        _apply(now)
    for name in off:
        if name in sys.modules:
            _notice_disabled(name)
    later_off = [n for n in off if n not in sys.modules]
    if later or later_off:
        finder = _active_finder()
        if finder is None:
            finder = _PostImportFinder()
            sys.meta_path.insert(0, finder)
        finder.watched.update(later)
        if not hasattr(finder, "disabled"):  # a finder installed by an older copy of this module
            finder.disabled = set()
        finder.disabled.update(later_off)
    return chosen


def uninstall() -> None:
    """Stop watching for framework imports (patches already applied stay applied)."""
    _remove_finder()


def from_hook() -> None:
    """Entry for the ``sitecustomize.py`` / ``.pth`` hooks: install if enabled, never raise."""
    if not enabled():
        return
    try:
        install()
    except Exception as exc:  # pragma: no cover - a broken install must not break python
        sys.stderr.write(f"gaunt-plugins: automatic patching disabled: {exc!r}\n")
