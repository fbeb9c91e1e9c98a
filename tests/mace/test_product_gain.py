"""``gaunt_product_gain``: the many-body weight gain as a MACE setting (parser, model, restart record,
fine-tuning)."""
from __future__ import annotations

import argparse

import pytest
import torch

from conftest import acac_batch, parse_train_args, tiny_model

from gaunt_plugins.adapters.mace_blocks import GauntProductBasisBlock, gauntify_model
from gaunt_plugins.adapters.mace_config import GauntOptions, GauntSettingsError, options_from_args
from gaunt_plugins.layers.many_body import DEFAULT_WEIGHT_GAIN

pytestmark = pytest.mark.e3nn044


def test_the_yaml_key_and_the_flag_reach_every_many_body_layer(tmp_path, mace_patched):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("tensor_product: gaunt\ngaunt_product_gain: 2.5\n")
    assert options_from_args(parse_train_args(["--config", str(cfg)])).product_gain == 2.5
    options = options_from_args(parse_train_args(["--tensor_product", "gaunt", "--gaunt_product_gain", "4"]))
    assert options.product_gain == 4.0
    assert options_from_args(parse_train_args(["--tensor_product", "gaunt"])).product_gain is None  # the layer's default
    model, _ = gauntify_model(tiny_model(), options)
    blocks = [b for b in model.products if isinstance(b, GauntProductBasisBlock)]
    assert blocks and all(float(b.symmetric_contractions.weight_gain) == 4.0 for b in blocks)
    default, _ = gauntify_model(tiny_model(), GauntOptions())
    assert all(float(b.symmetric_contractions.weight_gain) == DEFAULT_WEIGHT_GAIN for b in default.products)


def test_the_gain_changes_the_parameters_not_the_initial_function(float64):
    """The parameters hold ``w / gain``: with one seed two gains build the same function."""
    gauntify_model(tiny_model(), GauntOptions())  # the first build fills caches that draw random numbers
    energies = []
    for gain in (1.0, 4.0):
        torch.manual_seed(3)
        model, _ = gauntify_model(tiny_model(), GauntOptions(product_gain=gain))
        energies.append(model(acac_batch(2), training=False, compute_force=False)["energy"].detach())
        weights = model.products[0].symmetric_contractions.weights_in.detach()
        if gain == 1.0:
            base = weights
        else:
            assert torch.allclose(weights * gain, base, rtol=1e-12, atol=0)
    assert torch.allclose(energies[0], energies[1], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("value", ["0", "-1", "x", "nan", "inf", "2000"])
def test_a_bad_gain_is_refused_naming_the_allowed_range(value, capsys, mace_patched):
    with pytest.raises(SystemExit):
        parse_train_args(["--tensor_product", "gaunt", "--gaunt_product_gain", value])
    assert "gaunt_product_gain: expected a number greater than 0 and at most 1024" in capsys.readouterr().err
    with pytest.raises(GauntSettingsError, match="gaunt_product_gain: expected a number greater than 0"):
        GauntOptions(product_gain=value)


def test_a_gain_without_tensor_product_gaunt_is_refused(mace_patched):
    with pytest.raises(GauntSettingsError, match="gaunt_product_gain is set but tensor_product is e3nn"):
        options_from_args(parse_train_args(["--gaunt_product_gain", "4"]))


def test_a_restart_record_names_a_gain_other_than_the_default():
    """A restart across gains is refused like one across chains: the record differs only when the gain does."""
    from gaunt_plugins.patches.mace_restart import run_settings

    plain = run_settings(argparse.Namespace(tensor_product="gaunt"))
    assert run_settings(argparse.Namespace(tensor_product="gaunt", gaunt_product_gain=DEFAULT_WEIGHT_GAIN)) == plain
    assert run_settings(argparse.Namespace(tensor_product="gaunt", gaunt_product_gain=2.0)) == dict(
        plain, gaunt_product_gain=2.0)


def test_fine_tuning_keeps_the_foundation_gain_and_refuses_another(float64):
    from gaunt_plugins.adapters.mace_finetune import resolve_settings

    foundation, _ = gauntify_model(tiny_model(), GauntOptions(product_gain=2.0))

    def settings(**given):
        args = argparse.Namespace(tensor_product=None, gaunt_targets=None, gaunt_method=None,
                                  gaunt_conv_products=None, gaunt_product_chains=None, gaunt_product_gain=None)
        vars(args).update(given)
        resolve_settings(args, foundation)
        return args

    assert settings().gaunt_product_gain == 2.0
    assert settings(gaunt_product_gain="2").gaunt_product_gain == 2.0
    with pytest.raises(GauntSettingsError, match="gaunt_product_gain: 4.0, but .* with 2.0 as its weight gain"):
        settings(gaunt_product_gain=4.0)
