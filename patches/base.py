"""The base class of every framework patch: version check, idempotent and reversible apply.

A patch replaces attributes of a framework's modules (classes in a registry dict, a function
imported by name, a parser builder) with the plugin's versions. Every replacement goes through
:meth:`FrameworkPatch._replace`, which records the original value (or its absence) so that
:meth:`FrameworkPatch.revert` restores the modules exactly as they were, in reverse order.

Subclasses set three class attributes and implement :meth:`_apply`::

    class MacePatch(FrameworkPatch):
        name = "mace"                    # the entry-point name in group gaunt_plugins.patches
        distribution = "mace-torch"      # the installed distribution whose version is checked
        supported = ">=0.3.16,<0.4"      # a PEP 440 version specifier set

        def _apply(self):
            import mace.modules
            self._replace(mace.modules, "interaction_classes", {...})

``apply()`` checks the version first (raising :class:`UnsupportedVersionError`), then runs
``_apply``; a failure half-way reverts whatever was already replaced and re-raises. A second
``apply()`` warns and does nothing; ``revert()`` on an unapplied patch warns and does nothing.
The applied state is kept per class, so ``MacePatch().apply()`` and ``MacePatch().revert()`` from
two different call sites agree on whether MACE is patched.
"""

from __future__ import annotations

import logging
import threading
import warnings
from importlib import metadata
from typing import Any, ClassVar, List, Tuple

from packaging.specifiers import SpecifierSet
from packaging.version import Version

__all__ = ["FrameworkPatch", "UnsupportedVersionError", "MissingTargetError"]

logger = logging.getLogger("gaunt_plugins.patches")

_MISSING = object()  # marks an attribute that did not exist before _replace created it


class UnsupportedVersionError(ValueError):
    """The installed target framework is not a version this patch supports."""


class MissingTargetError(ImportError):
    """The target framework's distribution is not installed."""


def _version_ok(version: str, spec: str) -> bool:
    """Whether ``version`` satisfies the PEP 440 specifier set ``spec`` (e.g. ">=0.3.16,<0.4")."""
    return Version(version) in SpecifierSet(spec, prereleases=True)


class FrameworkPatch:
    """One framework's patch. Subclass it; see the module docstring."""

    name: ClassVar[str] = ""
    distribution: ClassVar[str] = ""
    supported: ClassVar[str] = ""

    # Per-subclass state, created lazily in _state(): a list of (obj, attr, original) records.
    _records: ClassVar[List[Tuple[Any, str, Any]]]
    _is_applied: ClassVar[bool]
    _lock: ClassVar[threading.RLock] = threading.RLock()

    # ------------------------------------------------------------------ state, per subclass
    @classmethod
    def _state(cls) -> None:
        if "_records" not in cls.__dict__:
            cls._records = []
            cls._is_applied = False

    @property
    def applied(self) -> bool:
        """Whether this framework is currently patched (shared by all instances of the class)."""
        type(self)._state()
        return type(self)._is_applied

    # ------------------------------------------------------------------ version
    @classmethod
    def installed_version(cls) -> str:
        """The installed version of ``distribution``; :class:`MissingTargetError` if absent."""
        try:
            return metadata.version(cls.distribution)
        except metadata.PackageNotFoundError as exc:
            raise MissingTargetError(
                f"gaunt-plugins patch {cls.name!r} needs {cls.distribution}{cls.supported}, "
                f"which is not installed"
            ) from exc

    def check_version(self) -> str:
        """Return the installed version, or raise :class:`UnsupportedVersionError` naming the
        version needed (or :class:`MissingTargetError` when the target is not installed)."""
        version = self.installed_version()
        if self.supported and not _version_ok(version, self.supported):
            raise UnsupportedVersionError(
                f"gaunt-plugins patch {self.name!r} supports {self.distribution}{self.supported}; "
                f"installed is {self.distribution}=={version}"
            )
        return version

    # ------------------------------------------------------------------ apply / revert
    def apply(self) -> bool:
        """Patch the framework. Returns True if this call patched it, False if it already was."""
        cls = type(self)
        with cls._lock:
            cls._state()
            if cls._is_applied:
                warnings.warn(
                    f"gaunt-plugins patch {self.name!r} is already applied; nothing done",
                    RuntimeWarning,
                    stacklevel=2,
                )
                return False
            version = self.check_version()
            try:
                self._apply()
            except BaseException:
                self._restore_all()
                raise
            cls._is_applied = True
            logger.info("gaunt-plugins: patched %s %s", self.distribution, version)
            return True

    def revert(self) -> bool:
        """Undo :meth:`apply` exactly. Returns True if this call reverted it."""
        cls = type(self)
        with cls._lock:
            cls._state()
            if not cls._is_applied:
                warnings.warn(
                    f"gaunt-plugins patch {self.name!r} is not applied; nothing to revert",
                    RuntimeWarning,
                    stacklevel=2,
                )
                return False
            try:
                self._revert()
            finally:
                self._restore_all()
                cls._is_applied = False
            logger.info("gaunt-plugins: reverted the %s patch", self.distribution)
            return True

    # ------------------------------------------------------------------ for subclasses
    def _apply(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _revert(self) -> None:
        """Extra undo work beyond the recorded replacements (optional; runs before them)."""

    def _replace(self, obj: Any, attr: str, new: Any) -> Any:
        """Set ``obj.attr = new`` (or ``obj[attr] = new`` for a dict), remembering the original.

        Returns the original value (``None`` if there was none). :meth:`revert` puts every
        original back in reverse order, deleting attributes/keys that did not exist before.
        """
        cls = type(self)
        cls._state()
        if isinstance(obj, dict):
            original = obj.get(attr, _MISSING)
            obj[attr] = new
        else:
            original = obj.__dict__.get(attr, _MISSING) if hasattr(obj, "__dict__") else _MISSING
            if original is _MISSING and hasattr(obj, attr) and not hasattr(obj, "__dict__"):
                original = getattr(obj, attr)
            setattr(obj, attr, new)
        cls._records.append((obj, attr, original))
        return None if original is _MISSING else original

    def _restore_all(self) -> None:
        cls = type(self)
        errors = []
        while cls._records:
            obj, attr, original = cls._records.pop()
            try:
                if isinstance(obj, dict):
                    if original is _MISSING:
                        obj.pop(attr, None)
                    else:
                        obj[attr] = original
                elif original is _MISSING:
                    if attr in getattr(obj, "__dict__", {}):
                        delattr(obj, attr)
                else:
                    setattr(obj, attr, original)
            except Exception as exc:  # keep restoring the rest
                errors.append(f"{obj!r}.{attr}: {exc}")
        if errors:
            raise RuntimeError("gaunt-plugins: could not restore " + "; ".join(errors))

    def __repr__(self) -> str:
        state = "applied" if self.applied else "not applied"
        return f"<{type(self).__name__} {self.distribution}{self.supported} ({state})>"
