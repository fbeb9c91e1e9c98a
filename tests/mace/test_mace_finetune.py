"""Fine-tuning from a Gaunt foundation model: MACE's element subsetting carries the Gaunt blocks over, and
``mace_run_train --foundation_model gaunt.model`` trains."""
from __future__ import annotations

import subprocess

import pytest

import mace  # noqa: F401
import numpy as np
import torch

from conftest import E0S, acac_batch, tiny_config, venv_bin

FOUNDATION_Z = [1, 6, 7, 8]  # one element (N) more than the acac data, so fine-tuning drops a row
E0_N = -1484.0


def gaunt_foundation(targets=("conv", "product"), conv_products=2, product_chains=2, seed=0, heads=None,
                     correlation=2, odd_chains=0):
    """A tiny Gaunt ScaleShiftMACE of elements H, C, N, O, built directly, with every weight moved away from
    its initial value (so a weight that is not carried over shows)."""
    from e3nn import o3
    from mace import modules

    from gaunt_plugins.adapters.mace_blocks import gaunt_construction
    from gaunt_plugins.adapters.mace_config import GauntOptions

    torch.manual_seed(seed)
    energies = {**E0S, 7: E0_N}
    options = GauntOptions(targets=frozenset(targets), conv_products=conv_products, product_chains=product_chains,
                           product_odd_chains=odd_chains)
    with gaunt_construction(options):
        model = modules.ScaleShiftMACE(
            r_max=4.0, num_bessel=6, num_polynomial_cutoff=5, max_ell=2,
            interaction_cls=modules.interaction_classes["RealAgnosticResidualInteractionBlock"],
            interaction_cls_first=modules.interaction_classes["RealAgnosticResidualInteractionBlock"],
            num_interactions=2, num_elements=len(FOUNDATION_Z), hidden_irreps=o3.Irreps("8x0e+8x1o"),
            MLP_irreps=o3.Irreps("8x0e"),
            atomic_energies=np.array([[energies[z] for z in FOUNDATION_Z]] * len(heads or [0])),
            avg_num_neighbors=8.0, atomic_numbers=FOUNDATION_Z, correlation=correlation, heads=heads,
            gate=torch.nn.functional.silu, atomic_inter_scale=[1.3] * len(heads or [0]),
            atomic_inter_shift=[0.1] * len(heads or [0]), radial_MLP=[16, 16],
        )
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def _energy_forces(model, batch):
    out = model(dict(batch), training=False, compute_force=True)
    return out["energy"].detach(), out["forces"].detach()


@pytest.mark.parametrize("correlation, odd_chains", [(2, 0), (3, 0), (3, 1)])
def test_element_subset_of_a_gaunt_foundation_predicts_what_the_foundation_predicts(float64, mace_patched,
                                                                                      correlation, odd_chains):
    """MACE's ``load_foundations_elements`` (patched) on a model rebuilt from a Gaunt foundation for fewer
    elements: every weight, the Gaunt many-body weights included, is carried over for the kept elements, so
    on configurations of those elements the new model gives the foundation's energies and forces (to float64
    rounding of the rescaled embeddings)."""
    from mace import modules
    from mace.tools import model_script_utils
    from mace.tools.scripts_utils import extract_config_mace_model
    from mace.tools.utils import AtomicNumberTable

    from gaunt_plugins.adapters.mace_blocks import GauntProductBasisBlock, gaunt_construction
    from gaunt_plugins.adapters.mace_finetune import foundation_options

    foundation = gaunt_foundation(correlation=correlation, odd_chains=odd_chains)
    options = foundation_options(foundation)
    assert (sorted(options.targets), options.conv_products, options.product_chains) == (["conv", "product"], 2, 2)
    assert options.product_odd_chains == odd_chains
    assert (foundation.products[0].symmetric_contractions.odd_paths is not None) == bool(odd_chains)
    table = AtomicNumberTable([1, 6, 8])
    cfg = extract_config_mace_model(foundation)
    cfg.update(atomic_numbers=table.zs, num_elements=3, atomic_energies=np.array([E0S[z] for z in table.zs]))
    with gaunt_construction(options):
        model = modules.ScaleShiftMACE(**cfg)
    assert all(isinstance(p, GauntProductBasisBlock) for p in model.products)

    model = model_script_utils.load_foundations_elements(model, foundation, table, load_readout=True, max_L=1,
                                                         default_dtype=torch.float64)
    kept = [FOUNDATION_Z.index(z) for z in table.zs]
    for new, old in zip(model.products, foundation.products):
        assert torch.equal(new.symmetric_contractions.weights_in, old.symmetric_contractions.weights_in[kept])
        assert torch.equal(new.symmetric_contractions.weights_out, old.symmetric_contractions.weights_out[kept])
        if odd_chains and new.symmetric_contractions.odd_paths is not None:
            for name in ("weights_in", "weights_out"):
                assert torch.equal(getattr(new.symmetric_contractions.odd_paths, name),
                                   getattr(old.symmetric_contractions.odd_paths, name)[kept])
    energy, forces = _energy_forces(model, acac_batch(3))
    energy_f, forces_f = _energy_forces(foundation, acac_batch(3, zs=FOUNDATION_Z))
    assert torch.allclose(energy, energy_f, rtol=0, atol=1e-9 * energy_f.abs().max())
    assert torch.allclose(forces, forces_f, rtol=0, atol=1e-9 * forces_f.abs().max())


def test_fine_tuning_settings_follow_the_foundation_and_conflicts_are_refused(float64):
    """The fine-tuned run takes the foundation's Gaunt settings (without ``tensor_product`` too); asking for
    e3nn blocks, fewer targets or other counts than the foundation's blocks is refused naming the key."""
    import argparse

    from gaunt_plugins.adapters.mace_config import GauntSettingsError
    from gaunt_plugins.adapters.mace_finetune import resolve_settings

    foundation = gaunt_foundation(targets=("product",), product_chains=2)

    def settings(**given):
        args = argparse.Namespace(**{k: None for k in ("tensor_product", "gaunt_targets", "gaunt_method",
                                                       "gaunt_conv_products", "gaunt_product_chains")})
        vars(args).update(given)
        resolve_settings(args, foundation)
        return args

    args = settings()
    assert (args.tensor_product, args.gaunt_targets, args.gaunt_product_chains) == ("gaunt", ["product"], 2)
    args = settings(tensor_product="gaunt", gaunt_targets=["conv", "product"], gaunt_conv_products=3)
    assert (args.gaunt_targets, args.gaunt_conv_products, args.gaunt_product_chains) == (["conv", "product"], 3, 2)
    for given, key in ((dict(tensor_product="e3nn"), "tensor_product: e3nn"),
                       (dict(tensor_product="gaunt", gaunt_targets=["conv"]), "gaunt_targets"),
                       (dict(tensor_product="gaunt", gaunt_product_chains=1), "gaunt_product_chains: 1")):
        with pytest.raises(GauntSettingsError, match=key) as info:
            settings(**given)
        assert "products.0, products.1" in str(info.value)


def test_single_head_copy_of_a_multi_head_gaunt_foundation_keeps_its_gaunt_blocks(float64, mace_patched):
    """MACE's ``remove_pt_head`` (used by ``mace_run_train`` on a multi-head foundation model) rebuilds the model
    from its extracted config: patched, the copy has the Gaunt product blocks and the same many-body weights."""
    import mace.cli.run_train

    from gaunt_plugins.adapters.mace_blocks import GauntProductBasisBlock

    foundation = gaunt_foundation(heads=["pt_head", "mine"])
    single = mace.cli.run_train.remove_pt_head(foundation, "mine")
    assert single.heads == ["mine"]
    for new, old in zip(single.products, foundation.products):
        assert isinstance(new, GauntProductBasisBlock)
        assert torch.equal(new.symmetric_contractions.weights_out, old.symmetric_contractions.weights_out)


@pytest.mark.slow
@pytest.mark.parametrize("tensor_product", ["gaunt", None])
def test_mace_run_train_fine_tunes_a_gaunt_foundation_model(acac_subset, tmp_path, tensor_product, float64):
    """``mace_run_train`` with a Gaunt ``foundation_model`` of more elements than the data (with and without
    ``tensor_product: gaunt``): it trains, and the fine-tuned model has the foundation's Gaunt blocks for the
    data's elements."""
    from mace.tools.scripts_utils import extract_config_mace_model

    from gaunt_plugins.adapters.mace_blocks import GauntProductBasisBlock, GauntRealAgnosticResidualInteractionBlock
    from gaunt_plugins.patches.launcher import hook_environment

    torch.save(gaunt_foundation(), tmp_path / "foundation.model")
    (tmp_path / "cfg.yaml").write_text(tiny_config(
        acac_subset, "ft", foundation_model=str(tmp_path / "foundation.model"), tensor_product=tensor_product,
        max_num_epochs=1, lr=0.001))
    env = hook_environment()
    env.setdefault("OMP_NUM_THREADS", "1")
    proc = subprocess.run([venv_bin("mace_run_train"), "--config", "cfg.yaml"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    log = next((tmp_path / "logs").glob("ft_run-*.log")).read_text()
    assert "the foundation model's Gaunt blocks are kept" in log
    tuned = torch.load(tmp_path / "ft.model", weights_only=False)
    assert all(isinstance(b, GauntRealAgnosticResidualInteractionBlock) for b in tuned.interactions)
    assert all(isinstance(p, GauntProductBasisBlock) and p.symmetric_contractions.num_elements == 3
               and p.symmetric_contractions.chains == 2 for p in tuned.products)
    assert all(b.conv_tp.products == 2 for b in tuned.interactions[1:])
    assert [int(z) for z in tuned.atomic_numbers] == [1, 6, 8]
    assert extract_config_mace_model(tuned)["correlation"] == 2
    energy = tuned(acac_batch(2), training=False)["energy"]
    assert torch.isfinite(energy).all()
