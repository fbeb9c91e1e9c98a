"""FairchemPatch: registry routing, idempotent apply/revert, lazy hook, version errors."""
from __future__ import annotations

import subprocess
import sys
import textwrap
import warnings

import pytest

pytest.importorskip("fairchem.core")

from gaunt_plugins.patches import base as patch_base  # noqa: E402
from gaunt_plugins.patches.fairchem import FairchemPatch, require_equiformer_v2  # noqa: E402


def _registry():
    from fairchem.core.common.registry import Registry, registry

    return Registry, registry


def test_patch_is_in_the_entry_point_group():
    from importlib import metadata

    eps = metadata.entry_points()
    group = eps.select(group="gaunt_plugins.patches") if hasattr(eps, "select") else eps["gaunt_plugins.patches"]
    (ep,) = [e for e in group if e.name == "fairchem"]
    assert ep.load() is FairchemPatch
    assert FairchemPatch.name == "fairchem"
    assert FairchemPatch.distribution == "fairchem-core"


def test_names_resolve_only_when_patched(unpatched):
    _, registry = _registry()
    from fairchem.core.models.equiformer_v2.equiformer_v2 import EquiformerV2Backbone

    assert registry.get_model_class("equiformer_v2_backbone") is EquiformerV2Backbone
    with pytest.raises(RuntimeError, match="equiformer_v2_gaunt_backbone"):
        registry.get_model_class("equiformer_v2_gaunt_backbone")
    # the dotted path needs no patch at all
    from gaunt_plugins.adapters.equiformer_v2 import GauntEquiformerV2Backbone

    assert (
        registry.get_model_class("gaunt_plugins.adapters.equiformer_v2.GauntEquiformerV2Backbone")
        is GauntEquiformerV2Backbone
    )


def test_patched_registry_routes_names(patched):
    Registry, registry = _registry()
    from gaunt_plugins.adapters import equiformer_v2 as adapter

    assert registry.get_model_class("equiformer_v2_gaunt_backbone") is adapter.GauntEquiformerV2Backbone
    assert registry.get_model_class("equiformer_v2_gaunt") is adapter.GauntEquiformerV2
    assert registry.get_model_class("equiformer_v2_backbone") is adapter.EquiformerV2BackboneSelector
    assert registry.get_model_class("equiformer_v2") is adapter.EquiformerV2Selector
    # every other name resolves to its class behind a guard (one per name), which builds the class itself
    from fairchem.core.models.base import HydraModel

    from eqv2_testing import build_model, hydra_model_config

    hydra = registry.get_model_class("hydra")
    assert Registry.get_model_class("hydra") is hydra and issubclass(hydra, HydraModel)
    assert (hydra.__name__, hydra.__module__) == (HydraModel.__name__, HydraModel.__module__)
    model = build_model(hydra_model_config("equiformer_v2_backbone"))
    assert type(model) is HydraModel and isinstance(model, hydra)


def test_apply_revert_idempotent_and_exact(unpatched):
    Registry, _ = _registry()
    original = Registry.__dict__["get_model_class"]
    patch = FairchemPatch()
    assert patch.apply() is True
    wrapped = Registry.__dict__["get_model_class"]
    assert wrapped is not original
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert patch.apply() is False
    assert any("already applied" in str(w.message) for w in caught)
    assert Registry.__dict__["get_model_class"] is wrapped  # not wrapped twice
    assert patch.revert() is True
    assert Registry.__dict__["get_model_class"] is original
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        assert patch.revert() is False
    assert Registry.__dict__["get_model_class"] is original


def test_lazy_hook_patches_fairchem_imported_after_apply():
    """apply() before fairchem is imported imports nothing; the registry is patched on import."""
    code = textwrap.dedent(
        """
        import sys
        from gaunt_plugins.patches.fairchem import FairchemPatch
        p = FairchemPatch()
        p.apply()
        assert "fairchem.core.common.registry" not in sys.modules, "apply() imported fairchem"
        assert not any(m.startswith("fairchem") for m in sys.modules), sorted(m for m in sys.modules if m.startswith("fairchem"))[:5]
        from fairchem.core.common.registry import registry
        cls = registry.get_model_class("equiformer_v2_gaunt_backbone")
        assert cls.__name__ == "GauntEquiformerV2Backbone", cls
        assert registry.get_model_class("equiformer_v2_backbone").__name__ == "EquiformerV2BackboneSelector"
        p.revert()
        assert registry.get_model_class("equiformer_v2_backbone").__name__ == "EquiformerV2Backbone"
        # revert before import: the hook is removed and fairchem stays stock
        print("OK")
        """
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "OK" in res.stdout


def test_revert_before_import_removes_the_hook():
    code = textwrap.dedent(
        """
        import sys
        from gaunt_plugins.patches.fairchem import FairchemPatch, _PostImportHook
        p = FairchemPatch()
        p.apply()
        assert any(isinstance(f, _PostImportHook) for f in sys.meta_path)
        p.revert()
        assert not any(isinstance(f, _PostImportHook) for f in sys.meta_path)
        from fairchem.core.common.registry import registry
        import fairchem.core.common.utils as utils
        # both hooks are gone: the registry and setup_imports' importer are fairchem's own
        assert not hasattr(utils._import_local_file, "__wrapped__")
        import fairchem.core.models.equiformer_v2.equiformer_v2  # registers the stock names
        assert registry.get_model_class("equiformer_v2_backbone").__name__ == "EquiformerV2Backbone"
        print("OK")
        """
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]


def test_fairchem_2x_is_refused_with_the_needed_version(monkeypatch, unpatched):
    monkeypatch.setattr(patch_base.metadata, "version", lambda dist: "2.3.0")
    with pytest.raises(patch_base.UnsupportedVersionError, match=r"1\.10\.0") as info:
        FairchemPatch().apply()
    assert "removed" in str(info.value) and "2.3.0" in str(info.value)
    with pytest.raises(patch_base.UnsupportedVersionError, match=r"fairchem-core 1\.10\.0"):
        require_equiformer_v2()
    assert not FairchemPatch().applied


def test_missing_fairchem_is_reported(monkeypatch):
    def missing(dist):
        raise patch_base.metadata.PackageNotFoundError(dist)

    monkeypatch.setattr(patch_base.metadata, "version", missing)
    with pytest.raises(patch_base.MissingTargetError, match=r"1\.10\.0"):
        require_equiformer_v2()


def test_adapter_import_refuses_fairchem_2x():
    """The dotted-path route (no patch) reports the needed version too, at import."""
    code = textwrap.dedent(
        """
        import importlib.metadata as md
        real = md.version
        md.version = lambda d: "2.1.0" if d == "fairchem-core" else real(d)
        try:
            import gaunt_plugins.adapters.equiformer_v2
        except ValueError as e:
            print("ERR", e)
        """
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert "ERR" in res.stdout and "1.10.0" in res.stdout and "2.1.0" in res.stdout, res.stdout + res.stderr[-2000:]


def test_autopatch_hook_patches_fairchem_in_a_fresh_interpreter(tmp_path):
    """What DDP workers spawned under `gaunt-run` rely on: GAUNT_PLUGINS_AUTOPATCH=1 plus the
    launcher's sitecustomize directory patch fairchem when a fresh interpreter imports it."""
    import os

    launcher = pytest.importorskip("gaunt_plugins.patches.launcher")
    hook_dir = launcher.subprocess_hook_dir()
    env = dict(os.environ)
    env["GAUNT_PLUGINS_AUTOPATCH"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(hook_dir), env.get("PYTHONPATH", "")) if p)
    code = textwrap.dedent(
        """
        from fairchem.core.common.registry import registry
        import fairchem.core.models.equiformer_v2.equiformer_v2  # noqa: F401 (registers the stock name)
        print(registry.get_model_class("equiformer_v2_backbone").__name__)
        """
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip().splitlines()[-1] == "EquiformerV2BackboneSelector", res.stdout + res.stderr[-2000:]


SUPPORTED = ("equiformer_v2_backbone", "equiformer_v2 (flat)", "equiformer_v2_gaunt_backbone", "equiformer_v2_gaunt")


def test_gaunt_keys_on_other_fairchem_models_name_the_model_and_the_supported_ones(patched):
    """`tensor_product: gaunt` (or a gaunt_* key, or an empty `tensor_product:`) on a fairchem model that
    is not an EquiformerV2 is refused before anything is built, naming the model and the supported ones
    (fairchem alone says `unexpected keyword argument`); on a hydra model's top level the error says
    the key belongs in its backbone section."""
    import fairchem.core.models.escn.escn  # noqa: F401  (registers escn_backbone whatever ran before)
    import fairchem.core.models.schnet  # noqa: F401
    from gaunt_plugins.adapters.equiformer_v2_config import GauntConfigError

    from eqv2_testing import build_model, hydra_model_config

    cases = [
        (hydra_model_config("escn_backbone", tensor_product="gaunt"), "'escn_backbone'", "`tensor_product: gaunt`"),
        ({"name": "schnet", "tensor_product": "gaunt"}, "'schnet'", "remove it for 'schnet'"),
        ({"name": "schnet", "gaunt_method": "grid"}, "'schnet'", "`gaunt_method: grid`"),
        ({"name": "schnet", "tensor_product": None}, "'schnet'", "`tensor_product:` (empty)"),
        ({**hydra_model_config("equiformer_v2_backbone"), "tensor_product": "gaunt"}, "'hydra'", "`backbone:` section"),
    ]
    for config, model, detail in cases:
        with pytest.raises(GauntConfigError) as info:
            build_model(config)
        message = str(info.value)
        assert model in message and detail in message, message
        assert all(name in message for name in SUPPORTED), message


def test_empty_tensor_product_is_an_error_naming_the_value(patched):
    """An empty `tensor_product:` on an EquiformerV2 (stock name, Gaunt name, dotted path; flat or
    backbone) is an error naming `gaunt`, not a silent stock model."""
    from gaunt_plugins.adapters.equiformer_v2_config import GauntConfigError, wants_gaunt

    from eqv2_testing import GAUNT_BACKBONE_PATH, build_model, flat_model_config, hydra_model_config

    for empty in (None, "", "  "):
        with pytest.raises(GauntConfigError, match=r"`tensor_product:` is empty; write `tensor_product: gaunt`"):
            wants_gaunt({"tensor_product": empty})
        for config in (hydra_model_config("equiformer_v2_backbone", tensor_product=empty),
                       hydra_model_config(GAUNT_BACKBONE_PATH, tensor_product=empty),
                       flat_model_config("equiformer_v2", tensor_product=empty),
                       flat_model_config("equiformer_v2_gaunt", tensor_product=empty)):
            with pytest.raises(GauntConfigError, match="is empty"):
                build_model(config)
    assert wants_gaunt({}) is False and wants_gaunt({"tensor_product": "gaunt"}) is True
