"""``gaunt_product_odd_chains``: the odd-path brackets of the many-body product as a MACE setting (parser,
model, restart record, fine-tuning)."""
from __future__ import annotations

import argparse

import pytest
import torch

from conftest import acac_batch, parse_train_args, tiny_model

from gaunt_plugins.adapters.mace_blocks import GauntProductBasisBlock, gauntify_model
from gaunt_plugins.adapters.mace_config import GauntOptions, GauntSettingsError, options_from_args

pytestmark = pytest.mark.e3nn044


def test_the_yaml_key_and_the_flag_reach_every_many_body_layer(tmp_path, mace_patched):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("tensor_product: gaunt\ngaunt_product_odd_chains: 2\n")
    assert options_from_args(parse_train_args(["--config", str(cfg)])).product_odd_chains == 2
    options = options_from_args(parse_train_args(["--tensor_product", "gaunt", "--gaunt_product_odd_chains", "1"]))
    assert options.product_odd_chains == 1
    assert options_from_args(parse_train_args(["--tensor_product", "gaunt"])).product_odd_chains is None  # default
    model, _ = gauntify_model(tiny_model(), options)
    blocks = [b for b in model.products if isinstance(b, GauntProductBasisBlock)]
    assert blocks and all(b.symmetric_contractions.odd_chains == 1 for b in blocks)
    assert blocks[0].symmetric_contractions.odd_paths.chains == 1
    default, _ = gauntify_model(tiny_model(), GauntOptions())
    assert all(b.symmetric_contractions.odd_paths is None for b in default.products)


def test_a_model_with_odd_paths_starts_as_the_model_without_and_trains_them(float64):
    """The brackets start at zero output weight (same energies as without), and the energy's gradient
    reaches their output weights."""
    gauntify_model(tiny_model(), GauntOptions())  # the first build fills caches that draw random numbers
    torch.manual_seed(3)
    plain, _ = gauntify_model(tiny_model(), GauntOptions())
    with_odd, _ = gauntify_model(tiny_model(), GauntOptions(product_odd_chains=1))
    state = {k: v for k, v in with_odd.state_dict().items() if ".odd_paths." not in k}
    plain.load_state_dict(state)
    batch = acac_batch(2)
    e_odd = with_odd(dict(batch), training=True, compute_force=True)
    e_plain = plain(dict(batch), training=False, compute_force=True)
    assert torch.allclose(e_odd["energy"], e_plain["energy"], rtol=1e-12, atol=1e-12)
    assert torch.allclose(e_odd["forces"], e_plain["forces"], rtol=1e-10, atol=1e-12)
    # a force loss reaches the brackets' output weights (second derivatives through the brackets)
    e_odd["forces"].square().sum().backward()
    odd = [b.symmetric_contractions.odd_paths for b in with_odd.products]
    assert odd[0] is not None and odd[-1] is None  # the last product's outputs are scalars: no brackets there
    assert odd[0].weights_out.grad is not None and odd[0].weights_out.grad.abs().max() > 0


@pytest.mark.parametrize("value", ["-1", "x", "1.5", "17"])
def test_a_bad_odd_chain_count_is_refused_naming_the_allowed_range(value, capsys, mace_patched):
    with pytest.raises(SystemExit):
        parse_train_args(["--tensor_product", "gaunt", "--gaunt_product_odd_chains", value])
    assert "gaunt_product_odd_chains: expected a whole number from 0 to 16" in capsys.readouterr().err
    with pytest.raises(GauntSettingsError, match="gaunt_product_odd_chains: expected a whole number from 0 to 16"):
        GauntOptions(product_odd_chains=value)


def test_odd_chains_without_tensor_product_gaunt_are_refused(mace_patched):
    with pytest.raises(GauntSettingsError, match="gaunt_product_odd_chains is set but tensor_product is e3nn"):
        options_from_args(parse_train_args(["--gaunt_product_odd_chains", "1"]))


def test_odd_chains_with_correlation_two_are_refused(float64):
    with pytest.raises(ValueError, match="odd_chains needs correlation >= 3"):
        gauntify_model(tiny_model(correlation=2), GauntOptions(product_odd_chains=1))


def test_a_restart_record_names_odd_chains_when_there_are_any():
    """A restart across odd-chain counts is refused like one across chains: the record differs only then."""
    from gaunt_plugins.patches.mace_restart import run_settings

    plain = run_settings(argparse.Namespace(tensor_product="gaunt", max_ell=2))
    assert run_settings(argparse.Namespace(tensor_product="gaunt", max_ell=2, gaunt_product_odd_chains=0)) == plain
    assert run_settings(argparse.Namespace(tensor_product="gaunt", max_ell=2, gaunt_product_odd_chains=1)) == dict(
        plain, gaunt_product_odd_chains=1)


def test_the_default_chains_follow_the_input_degree():
    """Unset, the many-body product has one chain below max_ell 3 and two chains plus one odd-path chain from 3
    (none at correlation 2); a key that is set wins, and the other key keeps its default."""
    from gaunt_plugins.adapters.mace_config import default_product_chains

    assert default_product_chains(1, 3) == default_product_chains(2, 3) == (1, 0)
    assert default_product_chains(3, 3) == default_product_chains(4, 5) == (2, 1)
    assert default_product_chains(3, 2) == (2, 0)
    assert GauntOptions().chains_for(3, 3) == (2, 1)
    assert GauntOptions(product_chains=1).chains_for(3, 3) == (1, 1)
    assert GauntOptions(product_odd_chains=0).chains_for(3, 3) == (2, 0)


def test_a_max_ell_3_model_gets_two_chains_and_an_odd_path_chain_and_its_restart_record_says_so(float64):
    from gaunt_plugins.patches.mace_restart import run_settings

    wide, _ = gauntify_model(tiny_model(hidden="4x0e+4x1o", max_ell=3), GauntOptions())
    layers = [b.symmetric_contractions for b in wide.products]
    assert [(m.chains, m.odd_chains) for m in layers] == [(2, 1), (2, 1)]
    assert layers[0].odd_paths is not None and layers[-1].odd_paths is None  # scalar outputs: no brackets
    narrow, _ = gauntify_model(tiny_model(hidden="4x0e+4x1o", max_ell=2), GauntOptions())
    assert [(b.symmetric_contractions.chains, b.symmetric_contractions.odd_chains) for b in narrow.products] == [
        (1, 0), (1, 0)]
    record = run_settings(argparse.Namespace(tensor_product="gaunt", max_ell=3, correlation=3))
    assert (record["gaunt_product_chains"], record["gaunt_product_odd_chains"]) == (2, 1)
    record = run_settings(argparse.Namespace(tensor_product="gaunt", max_ell=2, correlation=3))
    assert "gaunt_product_chains" not in record and "gaunt_product_odd_chains" not in record


def test_fine_tuning_keeps_the_foundation_odd_chains_and_refuses_another(float64):
    from gaunt_plugins.adapters.mace_finetune import foundation_options, resolve_settings

    foundation, _ = gauntify_model(tiny_model(), GauntOptions(product_odd_chains=1))
    assert foundation_options(foundation).product_odd_chains == 1

    def settings(**given):
        args = argparse.Namespace(tensor_product=None, gaunt_targets=None, gaunt_method=None,
                                  gaunt_conv_products=None, gaunt_product_chains=None, gaunt_product_gain=None,
                                  gaunt_product_odd_chains=None)
        vars(args).update(given)
        resolve_settings(args, foundation)
        return args

    assert settings().gaunt_product_odd_chains == 1
    assert settings(gaunt_product_odd_chains="1").gaunt_product_odd_chains == 1
    with pytest.raises(GauntSettingsError, match="gaunt_product_odd_chains: 2, but .* with 1 odd-path chains"):
        settings(gaunt_product_odd_chains=2)
