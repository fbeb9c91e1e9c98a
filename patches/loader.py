"""Find framework patches through the ``gaunt_plugins.patches`` entry-point group and apply them.

The loader is forgiving, like OpenTelemetry's auto-instrumentation: a target framework that is
not installed, or installed in a version a patch does not support, is skipped with a log line,
and one failing patch does not stop the others. ``GAUNT_PLUGINS_DISABLED=mace,fairchem``
(comma-separated entry-point names, or ``all``) disables patches.

>>> from gaunt_plugins.patches.loader import available_patches
>>> sorted(available_patches())  # doctest: +SKIP
['fairchem', 'mace']
"""

from __future__ import annotations

import logging
from typing import Dict, Iterable, List, Optional, Type

from .autopatch import DISABLED_ENV, ENTRY_POINT_GROUP, disabled_patches, entry_points
from .base import FrameworkPatch, MissingTargetError, UnsupportedVersionError

__all__ = [
    "ENTRY_POINT_GROUP",
    "DISABLED_ENV",
    "available_patches",
    "get_patch",
    "disabled_patches",
    "apply_patches",
    "revert_patches",
]

logger = logging.getLogger("gaunt_plugins.patches")

# Instances of the patches applied through this module (so revert_patches() can undo them).
_applied: Dict[str, FrameworkPatch] = {}


def available_patches() -> Dict[str, Type[FrameworkPatch]]:
    """``{name: patch class}`` for every entry point of the group that imports.

    An entry point whose module fails to import is skipped with a log line (it is reported again
    by :func:`get_patch` when asked for by name).
    """
    found: Dict[str, Type[FrameworkPatch]] = {}
    for ep in entry_points():
        if ep.name in found:
            continue
        try:
            cls = ep.load()
        except Exception as exc:  # a broken or half-installed plugin must not break the others
            logger.warning("gaunt-plugins: cannot load patch %r (%s): %s", ep.name, ep.value, exc)
            continue
        found[ep.name] = cls
    return found


def get_patch(name: str) -> Type[FrameworkPatch]:
    """The patch class registered as ``name``; raises KeyError listing the known names."""
    for ep in entry_points():
        if ep.name == name:
            return ep.load()
    known = sorted(ep.name for ep in entry_points())
    raise KeyError(f"no gaunt-plugins patch named {name!r}; known: {known}")


def apply_patches(names: Optional[Iterable[str]] = None) -> Dict[str, FrameworkPatch]:
    """Apply the named patches (default: every available one), skipping what cannot apply.

    Skipped, each with a log line: names disabled by ``GAUNT_PLUGINS_DISABLED``, names with no
    entry point, targets not installed, unsupported target versions, and patches that raise.
    Already-applied patches are left as they are (no warning). Returns ``{name: patch}`` of the
    patches that are applied after the call.
    """
    disabled = disabled_patches()
    if names is None:
        candidates = [ep.name for ep in entry_points()]
    else:
        candidates = [names] if isinstance(names, str) else list(names)
    result: Dict[str, FrameworkPatch] = {}
    for name in dict.fromkeys(candidates):
        if "all" in disabled or name.lower() in disabled:
            log = logger.info if names is None else logger.warning  # asked for by name: say why it is not applied
            log("gaunt-plugins: patch %r disabled by %s=%s: not applied", name, DISABLED_ENV,
                ",".join(disabled))
            continue
        try:
            cls = get_patch(name)
            patch = _applied.get(name) or cls()
            if not patch.applied:
                patch.apply()
        except KeyError as exc:
            logger.warning("gaunt-plugins: skipping %r: %s", name, exc.args[0])
            continue
        except (MissingTargetError, ModuleNotFoundError) as exc:
            logger.info("gaunt-plugins: skipping %r: %s", name, exc)
            continue
        except UnsupportedVersionError as exc:
            logger.warning("gaunt-plugins: skipping %r: %s", name, exc)
            continue
        except Exception as exc:
            logger.warning("gaunt-plugins: patch %r failed and was skipped: %r", name, exc)
            continue
        _applied[name] = patch
        result[name] = patch
    return result


def revert_patches(names: Optional[Iterable[str]] = None) -> List[str]:
    """Revert patches applied through :func:`apply_patches` (default: all). Returns the names."""
    if names is None:
        targets = list(_applied)
    else:
        targets = [names] if isinstance(names, str) else list(names)
    reverted = []
    for name in reversed(targets):
        patch = _applied.pop(name, None)
        if patch is None or not patch.applied:
            continue
        try:
            patch.revert()
        except Exception as exc:
            logger.warning("gaunt-plugins: reverting %r failed: %r", name, exc)
            continue
        reverted.append(name)
    return reverted
