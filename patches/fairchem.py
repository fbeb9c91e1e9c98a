"""The fairchem-core patch: ``tensor_product: gaunt`` in EquiformerV2 model configs.

fairchem-core 1.x builds every model through ``registry.get_model_class(name)(**section)`` (the
trainer's ``load_model``, ``HydraModel`` for ``backbone:`` and ``heads:``, ``OCPCalculator`` through
the trainer). The patch wraps ``Registry.get_model_class`` so that

- ``equiformer_v2_backbone`` and ``equiformer_v2`` (and their full dotted paths) return a selector
  that builds the stock class unchanged, or the Gaunt variant when the section has
  ``tensor_product: gaunt``;
- ``equiformer_v2_gaunt_backbone`` and ``equiformer_v2_gaunt`` name the Gaunt classes;
- every other name resolves to its class behind a guard: a subclass whose constructor refuses
  ``tensor_product``/``gaunt_*`` keys with an error naming the model and the supported ones (fairchem
  itself says ``unexpected keyword``, or ignores them), and otherwise returns an instance of the class
  itself, built as before. Classes whose constructor names ``tensor_product`` are returned as they are.

Nothing of fairchem is imported by :meth:`FairchemPatch.apply`: if ``fairchem.core.common.registry``
is not imported yet, a one-shot post-import hook patches it the moment it is (so ``gaunt-run`` can
apply every patch at interpreter start without paying for fairchem's imports in a MACE run). The
Gaunt model classes are imported only when a config asks for them.

The Gaunt classes need no patch at all when named by dotted path
(``gaunt_plugins.adapters.equiformer_v2.GauntEquiformerV2Backbone``).

EquiformerV2 exists only in fairchem-core 1.x (1.10.0 is the last release with it; 2.0 removed it):
on 2.x :meth:`FairchemPatch.check_version` raises :class:`UnsupportedVersionError` saying so.
"""
from __future__ import annotations

import importlib.abc
import importlib.util
import inspect
import logging
import sys
from typing import Any, Callable, Dict, Optional, Tuple

from .base import FrameworkPatch, MissingTargetError, UnsupportedVersionError

__all__ = ["FairchemPatch", "require_equiformer_v2", "NEEDED_VERSION", "REGISTRY_MODULE"]

logger = logging.getLogger("gaunt_plugins.patches")

NEEDED_VERSION = "1.10.0"
REGISTRY_MODULE = "fairchem.core.common.registry"
UTILS_MODULE = "fairchem.core.common.utils"

# name in a fairchem config -> the attribute of gaunt_plugins.adapters.equiformer_v2 to return
_STOCK_SELECTORS = {
    "equiformer_v2_backbone": "EquiformerV2BackboneSelector",
    "fairchem.core.models.equiformer_v2.equiformer_v2.EquiformerV2Backbone": "EquiformerV2BackboneSelector",
    "equiformer_v2": "EquiformerV2Selector",
    "fairchem.core.models.equiformer_v2.equiformer_v2_deprecated.EquiformerV2": "EquiformerV2Selector",
}
# registry names the patch adds (the dotted paths of these classes work without it)
_GAUNT_NAMES = {
    "equiformer_v2_gaunt_backbone": "GauntEquiformerV2Backbone",
    "equiformer_v2_gaunt": "GauntEquiformerV2",
}


class FairchemPatch(FrameworkPatch):
    """Selects the Gaunt EquiformerV2 from fairchem-core 1.10 configs (see the module docstring)."""

    name = "fairchem"
    distribution = "fairchem-core"
    supported = ">=1.10,<2"
    _hook: Optional["_PostImportHook"] = None
    _utils_hook: Optional["_PostImportHook"] = None

    def check_version(self) -> str:
        try:
            return super().check_version()
        except UnsupportedVersionError as exc:
            raise UnsupportedVersionError(
                f"{exc}. The Gaunt EquiformerV2 adapter needs fairchem-core {NEEDED_VERSION} "
                f"(pip install fairchem-core=={NEEDED_VERSION}): EquiformerV2 was removed from "
                f"fairchem-core in 2.0"
            ) from None

    # ------------------------------------------------------------------ apply / revert
    def _apply(self) -> None:
        module = sys.modules.get(REGISTRY_MODULE)
        if module is not None:
            self._patch_registry(module)
        else:
            hook = _PostImportHook(REGISTRY_MODULE, self._on_registry_import)
            sys.meta_path.insert(0, hook)
            type(self)._hook = hook
        utils = sys.modules.get(UTILS_MODULE)
        if utils is not None and hasattr(utils, "_import_local_file"):
            self._patch_setup_imports(utils)
        else:
            hook = _PostImportHook(UTILS_MODULE, self._on_utils_import)
            sys.meta_path.insert(0, hook)
            type(self)._utils_hook = hook

    def _revert(self) -> None:
        for attr in ("_hook", "_utils_hook"):
            hook = getattr(type(self), attr)
            if hook is not None:
                hook.disarm()
                setattr(type(self), attr, None)

    def _on_utils_import(self, module: Any) -> None:
        type(self)._utils_hook = None
        self._patch_setup_imports(module)

    def _patch_setup_imports(self, utils: Any) -> None:
        """fairchem's ``setup_imports`` (run by its trainer) imports every model file fairchem ships and
        stops at the first one whose optional dependency is missing (``torch_sparse`` for DimeNet++ and
        GemNet, or ``scipy.special.sph_harm``, removed in scipy 1.17), although the config needs none of
        them. Skip such a file with a log line instead; every file that imports is registered as before."""
        original = utils._import_local_file

        def _import_local_file(path, *, project_root):
            try:
                return original(path, project_root=project_root)
            except ImportError as exc:
                logger.warning("gaunt-plugins: skipped fairchem module %s (%s: %s)", path, type(exc).__name__, exc)
                return None

        _import_local_file.__wrapped__ = original
        self._replace(utils, "_import_local_file", _import_local_file)

    def _on_registry_import(self, module: Any) -> None:
        # the hook is disarmed by revert(), so reaching here means the patch is applied
        type(self)._hook = None
        self._patch_registry(module)

    def _patch_registry(self, module: Any) -> None:
        registry_cls = module.Registry
        original = registry_cls.__dict__["get_model_class"]
        original_fn = original.__func__

        def get_model_class(cls, name: str):
            target = _STOCK_SELECTORS.get(name) or _GAUNT_NAMES.get(name)
            if target is None:
                return _guarded(name, original_fn(cls, name))
            from gaunt_plugins.adapters import equiformer_v2 as adapter

            return getattr(adapter, target)

        get_model_class.__doc__ = original_fn.__doc__
        get_model_class.__wrapped__ = original_fn
        get_model_class.__gaunt_plugins__ = True
        self._replace(registry_cls, "get_model_class", classmethod(get_model_class))
        logger.debug("gaunt-plugins: fairchem Registry.get_model_class wrapped")


_GUARDS: Dict[Tuple[str, type], type] = {}
_GUARD_METACLASSES: Dict[type, type] = {}


def _guard_metaclass(meta: type) -> type:
    """``meta`` (the guarded class's metaclass) with ``isinstance(obj, guard)`` meaning
    ``isinstance(obj, guarded class)``: the guard's instances are the guarded class's own."""
    found = _GUARD_METACLASSES.get(meta)
    if found is None:
        def __instancecheck__(cls, obj: Any) -> bool:
            return isinstance(obj, cls.__gaunt_plugins_guards__)

        found = type(f"Guarded{meta.__name__}", (meta,), {"__instancecheck__": __instancecheck__,
                                                            "__module__": __name__})
        _GUARD_METACLASSES[meta] = found
    return found


def _takes_tensor_product(model_cls: type) -> bool:
    """Whether ``model_cls`` serves ``tensor_product`` itself: a Gaunt class, or a constructor that
    names the keyword."""
    if getattr(model_cls, "tensor_product", None) == "gaunt":
        return True
    try:
        return "tensor_product" in inspect.signature(model_cls.__init__).parameters
    except (TypeError, ValueError):
        return False


def _guarded(name: str, model_cls: Any) -> Any:
    """``model_cls`` behind a guard against ``tensor_product``/``gaunt_*`` keys (one class per name,
    made once); what it builds is an instance of ``model_cls`` itself."""
    if not isinstance(model_cls, type) or _takes_tensor_product(model_cls):
        return model_cls
    guard = _GUARDS.get((name, model_cls))
    if guard is not None:
        return guard
    hydra = name == "hydra" or model_cls.__name__ == "HydraModel"

    def __new__(guard_cls, *args: Any, **kwargs: Any):
        from gaunt_plugins.adapters.equiformer_v2_config import check_no_gaunt_keys

        check_no_gaunt_keys(name, kwargs, hydra=hydra)
        # an instance of model_cls, not of the guard: Python then does not run __init__ again
        return model_cls(*args, **kwargs)

    namespace = {"__new__": __new__, "__module__": model_cls.__module__, "__qualname__": model_cls.__qualname__,
                 "__doc__": model_cls.__doc__, "__gaunt_plugins_guards__": model_cls}
    try:
        guard = _guard_metaclass(type(model_cls))(model_cls.__name__, (model_cls,), namespace)
    except TypeError:  # a class that cannot be subclassed: returned as it is
        return model_cls
    _GUARDS[(name, model_cls)] = guard
    return guard


def require_equiformer_v2() -> str:
    """Raise a clear error unless a fairchem-core with EquiformerV2 (1.10.x) is installed.

    Used by :mod:`gaunt_plugins.adapters.equiformer_v2` at import, so the dotted-path route (no
    patch) reports the needed version too. Returns the installed version.
    """
    try:
        return FairchemPatch().check_version()
    except MissingTargetError as exc:
        raise MissingTargetError(
            f"{exc}. The Gaunt EquiformerV2 adapter needs fairchem-core {NEEDED_VERSION}"
        ) from None


class _PostImportHook(importlib.abc.MetaPathFinder):
    """Runs ``callback(module)`` once, right after ``fullname`` is first imported, then removes itself."""

    def __init__(self, fullname: str, callback: Callable[[Any], None]) -> None:
        self.fullname = fullname
        self.callback: Optional[Callable[[Any], None]] = callback
        self._busy = False

    def disarm(self) -> None:
        self.callback = None
        try:
            sys.meta_path.remove(self)
        except ValueError:
            pass

    def find_spec(self, fullname, path=None, target=None):
        if fullname != self.fullname or self._busy or self.callback is None:
            return None
        self._busy = True
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            self._busy = False
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        spec.loader = _CallbackLoader(spec.loader, self)
        return spec

    def fire(self, module: Any) -> None:
        callback = self.callback
        self.disarm()
        if callback is not None:
            callback(module)


class _CallbackLoader(importlib.abc.Loader):
    def __init__(self, loader: Any, hook: _PostImportHook) -> None:
        self.loader = loader
        self.hook = hook

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        # the module sees its real loader, not this wrapper
        module.__loader__ = self.loader
        if getattr(module, "__spec__", None) is not None:
            module.__spec__.loader = self.loader
        self.loader.exec_module(module)
        self.hook.fire(module)

    def __getattr__(self, name: str) -> Any:  # get_source, get_code, is_package, ...
        return getattr(self.loader, name)
