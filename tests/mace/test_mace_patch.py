"""The patch machinery (base, loader, ``gaunt_plugins.patch``) and what the MACE patch changes."""
from __future__ import annotations

import argparse
import types

import pytest

import mace  # noqa: F401
from conftest import parse_train_args

from gaunt_plugins.patches.base import FrameworkPatch, MissingTargetError, UnsupportedVersionError
from gaunt_plugins.patches.loader import apply_patches, available_patches, revert_patches
from gaunt_plugins.patches.mace import MacePatch


# ---------------------------------------------------------------------------- base class
_target = types.ModuleType("_gaunt_test_target")
_target.value = 1
_target.table = {"a": 1}


class _Holder:
    @staticmethod
    def f():
        return "original"


class _TestPatch(FrameworkPatch):
    name = "_test"
    distribution = "torch"
    supported = ">=2"

    def _apply(self):
        self._replace(_target, "value", 2)
        self._replace(_target, "added", 3)
        self._replace(_target.table, "a", 10)
        self._replace(_target.table, "b", 20)
        self._replace(_Holder, "f", staticmethod(lambda: "patched"))


def test_replace_and_revert_restore_exactly():
    original_f = _Holder.__dict__["f"]
    patch = _TestPatch()
    assert patch.apply() is True and patch.applied and _TestPatch().applied
    assert (_target.value, _target.added, _target.table, _Holder.f()) == (2, 3, {"a": 10, "b": 20}, "patched")
    with pytest.warns(RuntimeWarning, match="already applied"):
        assert _TestPatch().apply() is False
    assert _TestPatch().revert() is True and not patch.applied
    assert _target.value == 1 and not hasattr(_target, "added") and _target.table == {"a": 1}
    assert _Holder.__dict__["f"] is original_f
    with pytest.warns(RuntimeWarning, match="not applied"):
        assert patch.revert() is False


def test_version_check_names_the_needed_version():
    class TooNew(_TestPatch):
        supported = "<1.0"

    with pytest.raises(UnsupportedVersionError, match=r"supports torch<1\.0; installed is torch=="):
        TooNew().apply()
    assert not TooNew().applied and _target.value == 1

    class Missing(_TestPatch):
        distribution = "no-such-distribution-xyz"

    with pytest.raises(MissingTargetError):
        Missing().check_version()


def test_a_failing_apply_leaves_nothing_behind():
    class Broken(_TestPatch):
        def _apply(self):
            self._replace(_target, "value", 99)
            raise RuntimeError("half-way")

    with pytest.raises(RuntimeError, match="half-way"):
        Broken().apply()
    assert _target.value == 1 and not Broken().applied


# ---------------------------------------------------------------------------- loader
def test_entry_points_list_mace():
    patches = available_patches()
    assert patches["mace"] is MacePatch
    assert MacePatch.distribution == "mace-torch"


def test_loader_is_forgiving(monkeypatch, caplog):
    import logging

    caplog.set_level(logging.INFO, logger="gaunt_plugins.patches")
    monkeypatch.setenv("GAUNT_PLUGINS_DISABLED", "mace")
    assert apply_patches(["mace", "no-such-framework"]) == {}
    assert not MacePatch().applied
    assert "disabled by GAUNT_PLUGINS_DISABLED" in caplog.text
    assert "no-such-framework" in caplog.text

    monkeypatch.delenv("GAUNT_PLUGINS_DISABLED")
    monkeypatch.setattr(MacePatch, "supported", "<0.1")
    assert apply_patches(["mace"]) == {}
    assert "supports mace-torch<0.1" in caplog.text
    monkeypatch.undo()

    applied = apply_patches(["mace"])
    try:
        assert list(applied) == ["mace"] and MacePatch().applied
        assert apply_patches(["mace"])["mace"] is applied["mace"]  # already applied: left alone
    finally:
        assert revert_patches(["mace"]) == ["mace"]
    assert not MacePatch().applied


# ---------------------------------------------------------------------------- gaunt_plugins.patch
def test_patch_is_idempotent_and_undoable():
    import mace.cli.run_train
    import mace.modules
    import mace.tools
    import mace.tools.model_script_utils

    from gaunt_plugins.patch import is_patched, patch, unpatch

    before = (mace.tools.build_default_arg_parser, mace.cli.run_train.configure_model,
              mace.tools.model_script_utils.configure_model, dict(mace.modules.interaction_classes))
    p = patch("mace")
    try:
        assert p.applied and is_patched("mace")
        assert "GauntRealAgnosticResidualInteractionBlock" in mace.modules.interaction_classes
        assert mace.cli.run_train.configure_model is not before[1]
        with pytest.warns(RuntimeWarning, match="already applied"):
            patch("mace")
    finally:
        unpatch("mace")
    after = (mace.tools.build_default_arg_parser, mace.cli.run_train.configure_model,
             mace.tools.model_script_utils.configure_model, dict(mace.modules.interaction_classes))
    assert after[0] is before[0] and after[1] is before[1] and after[2] is before[2]
    assert after[3] == before[3]
    assert not is_patched("mace")
    with pytest.raises(KeyError, match="no gaunt-plugins patch named 'nope'"):
        patch("nope")


def test_gaunt_plugins_exports_patch():
    import gaunt_plugins

    if not hasattr(gaunt_plugins, "unpatch"):
        pytest.skip("gaunt_plugins/__init__.py does not re-export patch/unpatch yet")
    assert callable(gaunt_plugins.patch) and callable(gaunt_plugins.unpatch)


# ---------------------------------------------------------------------------- the MACE parser
def test_stock_parser_rejects_the_key_and_patched_parser_accepts_it(tmp_path, capsys):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("tensor_product: gaunt\ngaunt_targets: [conv, product]\ngaunt_method: grid\n"
                   "gaunt_conv_products: 3\ngaunt_product_chains: 2\n")
    with pytest.raises(SystemExit):
        parse_train_args(["--config", str(cfg)])
    assert "unrecognized arguments" in capsys.readouterr().err

    from gaunt_plugins.patch import patched

    with patched("mace"):
        args = parse_train_args(["--config", str(cfg)])
        assert (args.tensor_product, args.gaunt_method) == ("gaunt", "grid")
        from gaunt_plugins.adapters.mace_config import options_from_args

        with pytest.warns(FutureWarning, match="gaunt_method: grid has no effect"):
            options = options_from_args(args)
        assert options.targets == frozenset({"conv", "product"})
        assert args.gaunt_conv_products == 3 and options.conv_products == 3
        assert args.gaunt_product_chains == 2 and options.product_chains == 2
        with pytest.raises(SystemExit):
            parse_train_args(["--tensor_product", "gaunt", "--gaunt_conv_products", "2.5"])
        err = capsys.readouterr().err
        assert "gaunt_conv_products: expected 'paths'" in err and "or a whole number from 1 to" in err
        args = parse_train_args(["--tensor_product", "GAUNT", "--gaunt_targets", "conv"])
        assert options_from_args(args).targets == frozenset({"conv"})
        assert options_from_args(parse_train_args([])) is None  # default: stock MACE
        args = parse_train_args(["--interaction", "GauntRealAgnosticResidualInteractionBlock"])
        assert args.interaction == "GauntRealAgnosticResidualInteractionBlock"
        with pytest.raises(SystemExit):
            parse_train_args(["--tensor_product", "cuda-magic"])
        assert "invalid choice: 'cuda-magic'" in capsys.readouterr().err


@pytest.mark.parametrize(
    "extra, message",
    [
        (dict(hidden_irreps="8x0e+8x0o+8x1o+8x1e"), "pseudotensor"),
        (dict(enable_cueq=True), "--enable_cueq"),
        (dict(enable_oeq=True), "--enable_oeq"),
        (dict(gaunt_targets=["conv", "edges"]), "unknown target"),
        (dict(tensor_product="cuda-magic"), "unknown value 'cuda-magic'"),
        (dict(gaunt_conv_products=0), "gaunt_conv_products: expected 'paths' .* or a whole number from 1 to"),
        (dict(gaunt_product_chains="two"), "gaunt_product_chains: expected a whole number from 1 to"),
    ],
)
def test_configure_model_errors(extra, message):
    """The errors come before MACE builds anything (the original is never called)."""
    from gaunt_plugins.patches.mace import _wrap_configure_model

    def original(*args, **kwargs):  # pragma: no cover - must not run
        raise AssertionError("configure_model ran")

    args = argparse.Namespace(tensor_product="gaunt", gaunt_targets=["conv", "product"],
                              hidden_irreps="8x0e+8x1o", enable_cueq=False, enable_oeq=False, only_cueq=False)
    for key, value in extra.items():
        setattr(args, key, value)
    with pytest.raises(ValueError, match=message):
        _wrap_configure_model(original)(args, None, None)


def test_an_empty_tensor_product_in_the_yaml_is_refused_naming_the_allowed_values(tmp_path, capsys, mace_patched):
    """``tensor_product:`` with no value: the config parser drops empty keys, so without a check the run would
    train upstream MACE without a word."""
    cfg = tmp_path / "cfg.yaml"
    for key, allowed in (("tensor_product", "one of ['e3nn', 'gaunt']"), ("gaunt_targets", "a list of")):
        cfg.write_text(f"tensor_product: gaunt\n{key}:\n")
        with pytest.raises(SystemExit) as info:
            parse_train_args(["--config", str(cfg)])
        assert info.value.code == 2
        err = capsys.readouterr().err
        assert f"{key} is empty in {cfg}: give {allowed}" in err


def test_gaunt_keys_without_tensor_product_gaunt_are_refused_naming_the_key(mace_patched):
    """``gaunt_*`` keys without ``tensor_product: gaunt`` are refused (as the EquiformerV2 adapter does), not
    ignored; without them the run is stock MACE."""
    from gaunt_plugins.adapters.mace_config import GauntSettingsError, options_from_args

    for argv, key in ((["--gaunt_targets", "conv"], "gaunt_targets"),
                      (["--tensor_product", "e3nn", "--gaunt_conv_products", "2"], "gaunt_conv_products"),
                      (["--gaunt_method", "grid"], "gaunt_method")):
        with pytest.raises(GauntSettingsError, match=f"{key} is set but tensor_product is e3nn") as info:
            options_from_args(parse_train_args(argv))
        assert "Add `tensor_product: gaunt`" in str(info.value)
    assert options_from_args(parse_train_args([])) is None


@pytest.mark.parametrize("key", ["gaunt_conv_products", "gaunt_product_chains"])
def test_product_counts_have_a_documented_maximum(key, capsys, mace_patched):
    """``--gaunt_conv_products 100000000`` is refused at parsing with the allowed range (it used to reach a
    tens-of-gigabytes allocation)."""
    from gaunt_plugins.adapters import mace_config

    top = {"gaunt_conv_products": mace_config.MAX_CONV_PRODUCTS,
           "gaunt_product_chains": mace_config.MAX_PRODUCT_CHAINS}[key]
    assert getattr(parse_train_args(["--tensor_product", "gaunt", f"--{key}", str(top)]), key) == top
    with pytest.raises(SystemExit):
        parse_train_args(["--tensor_product", "gaunt", f"--{key}", "100000000"])
    err = capsys.readouterr().err
    assert f"{key}: expected " in err and f"a whole number from 1 to {top}" in err


def test_configure_model_without_the_key_is_untouched():
    from gaunt_plugins.patches.mace import _wrap_configure_model

    sentinel = object()
    calls = []

    def original(*args, **kwargs):
        calls.append((args, kwargs))
        return sentinel, {}

    wrapped = _wrap_configure_model(original)
    for args in (argparse.Namespace(), argparse.Namespace(tensor_product="e3nn")):
        model, _ = wrapped(args, 1, 2, heads=3)
        assert model is sentinel
    assert calls == [((argparse.Namespace(), 1, 2), {"heads": 3}),
                     ((argparse.Namespace(tensor_product="e3nn"), 1, 2), {"heads": 3})]


# ---------------------------------------------------------------------------- automatic hook
def test_subprocess_hook_is_lazy_and_patches_on_import(tmp_path):
    """With the launcher's environment a Python child imports nothing heavy at start-up (not even
    torch) and is patched the moment it imports MACE."""
    import subprocess
    import sys

    from gaunt_plugins.patches.launcher import hook_environment

    env = hook_environment()
    code = ("import sys; print('TORCH', 'torch' in sys.modules, 'GAUNT', 'gaunt_plugins' in sys.modules); "
            "import mace.modules; "
            "print('PATCHED', 'GauntRealAgnosticInteractionBlock' in mace.modules.interaction_classes)")
    proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=600)
    assert "TORCH False GAUNT False" in proc.stdout, proc.stdout + proc.stderr
    assert "PATCHED True" in proc.stdout, proc.stdout + proc.stderr
    assert "gaunt-plugins hook" not in proc.stderr, proc.stderr


def test_hook_fires_for_namespace_packages(tmp_path):
    """A framework whose top-level module is a namespace package (fairchem is one) is patched when
    it is imported: a stand-in distribution registers a patch for the namespace package ``nsdemo``."""
    import subprocess
    import sys

    from gaunt_plugins.patches.launcher import hook_environment

    (tmp_path / "nsdemo").mkdir()  # no __init__.py: a namespace package
    (tmp_path / "nsdemo" / "sub.py").write_text("VALUE = 1\n")
    (tmp_path / "gp_fake_patch.py").write_text(
        "import sys\n"
        "from gaunt_plugins.patches.base import FrameworkPatch\n"
        "class FakePatch(FrameworkPatch):\n"
        "    name = 'nsdemo'\n    distribution = 'gp-fake-framework'\n    supported = '>=1.0'\n"
        "    def _apply(self):\n"
        "        self._replace(sys.modules['nsdemo'], 'PATCHED', True)\n"
    )
    info = tmp_path / "gp_fake_framework-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: gp-fake-framework\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[gaunt_plugins.patches]\nnsdemo = gp_fake_patch:FakePatch\n")
    env = hook_environment(names=["nsdemo"])
    env["PYTHONPATH"] = env["PYTHONPATH"] + ":" + str(tmp_path)
    code = "import nsdemo, nsdemo.sub; print('PATCHED', getattr(nsdemo, 'PATCHED', False), nsdemo.sub.VALUE)"
    proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=600)
    assert "PATCHED True 1" in proc.stdout, proc.stdout + proc.stderr


def test_restart_check_accepts_a_checkpoint_written_before_the_many_body_gain():
    """A checkpoint of a Gaunt model saved before ``GauntManyBody.weight_gain`` existed lacks that buffer:
    the restart check lets it through (the layer loads it with gain 1), but still names a missing weight."""
    import torch
    from gaunt_plugins import GauntManyBody
    from gaunt_plugins.patches.mace_restart import _tensor_differences

    model = torch.nn.ModuleDict({"product": GauntManyBody("4x0e+4x1o", "4x0e", 2, 3)})
    current = model.state_dict()
    old = {k: v for k, v in current.items() if not k.endswith("weight_gain")}
    assert len(old) == len(current) - 1
    assert _tensor_differences(old, current) == []
    model.load_state_dict(old)
    assert model["product"].weight_gain.item() == 1.0
    no_weights = {k: v for k, v in old.items() if not k.endswith("weights_in")}
    assert _tensor_differences(no_weights, current) == ["product.weights_in is missing from the checkpoint"]


def test_gaunt_method_is_accepted_with_a_warning_and_changes_nothing(mace_patched):
    """Configs written for versions with ``gaunt_method`` still run: the key warns that it has no effect (both
    values ran the grid) and the options are those without it."""
    from gaunt_plugins.adapters.mace_config import options_from_args

    with pytest.warns(FutureWarning, match="remove the key"):
        with_key = options_from_args(parse_train_args(["--tensor_product", "gaunt", "--gaunt_method", "auto"]))
    assert with_key == options_from_args(parse_train_args(["--tensor_product", "gaunt"]))
