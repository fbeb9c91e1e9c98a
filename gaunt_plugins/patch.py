"""``gaunt_plugins.patch("mace")``: patch a framework from Python, idempotently and undoably.

>>> import gaunt_plugins
>>> gaunt_plugins.patch("mace")        # doctest: +SKIP
<MacePatch mace-torch>=0.3.16,<0.4 (applied)>
>>> gaunt_plugins.unpatch("mace")      # doctest: +SKIP

Unlike the forgiving loader used by ``gaunt-run`` and the automatic hook, these raise: an unknown
target (``KeyError``), a target that is not installed (``ImportError``) or an unsupported version
(:class:`gaunt_plugins.patches.base.UnsupportedVersionError`). Patching twice warns and does
nothing; unpatching what is not patched warns and does nothing.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

from gaunt_plugins.patches.base import FrameworkPatch, UnsupportedVersionError
from gaunt_plugins.patches.loader import available_patches, get_patch

__all__ = ["patch", "unpatch", "patched", "is_patched", "available_patches", "UnsupportedVersionError"]


def patch(target: str) -> FrameworkPatch:
    """Apply the patch registered as ``target`` (an entry point of group ``gaunt_plugins.patches``).

    Returns the patch object; its ``applied`` property is then True.
    """
    instance = get_patch(target)()
    instance.apply()
    return instance


def unpatch(target: str) -> FrameworkPatch:
    """Revert :func:`patch` exactly (every replaced attribute gets its original object back)."""
    instance = get_patch(target)()
    instance.revert()
    return instance


def is_patched(target: str) -> bool:
    """Whether ``target`` is currently patched."""
    return get_patch(target)().applied


@contextlib.contextmanager
def patched(target: str) -> Iterator[FrameworkPatch]:
    """``with patched("mace"): ...``: patch for the block; leave a patch that was already there."""
    instance = get_patch(target)()
    was_applied = instance.applied
    if not was_applied:
        instance.apply()
    try:
        yield instance
    finally:
        if not was_applied and instance.applied:
            instance.revert()
