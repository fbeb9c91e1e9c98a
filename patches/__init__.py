"""Framework patches (installed as ``gaunt_plugins.patches``).

- :mod:`.base`: :class:`FrameworkPatch`, the idempotent, reversible, version-checked patch base.
- :mod:`.loader`: entry-point discovery (group ``gaunt_plugins.patches``) and forgiving application.
- :mod:`.launcher`: ``gaunt-run <command> ...`` and the opt-in automatic hook.
- one module per framework: :mod:`.mace`, :mod:`.fairchem`.

Importing this package imports no framework.
"""

from .base import FrameworkPatch, MissingTargetError, UnsupportedVersionError
from .loader import apply_patches, available_patches, get_patch, revert_patches

__all__ = [
    "FrameworkPatch",
    "MissingTargetError",
    "UnsupportedVersionError",
    "apply_patches",
    "available_patches",
    "get_patch",
    "revert_patches",
]
