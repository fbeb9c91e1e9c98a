"""benchmarks/energy_gap_diagnostics.py: its readout statistics are what the energy sees, and its fits reach a
target the fitted architecture can express."""
import sys
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))

import energy_gap_diagnostics as egd  # noqa: E402


def test_the_layers_readout_energies_add_up_to_the_models_energy_and_a_model_against_itself_has_ratios_1(small_mace):
    batch, model = small_mace
    stats = egd.readout_statistics(model, batch)
    energy = model(batch, training=False, compute_force=False)["energy"].detach()
    e0 = batch["node_attrs"] @ torch.tensor([egd.E0S[z] for z in egd.Z])
    e0 = e0.new_zeros(energy.shape).index_add(0, batch["batch"], e0)
    layers = sum(torch.tensor(row["energies"]) for row in stats)
    torch.testing.assert_close(layers + e0, energy, rtol=0, atol=1e-9)
    again = egd.readout_statistics(egd._copy_model(model), batch)
    for row in egd.ratios(again, stats):
        assert all(abs(v - 1.0) < 1e-12 for v in row.values()), row
    twin = egd.gaunt_twin(model, 0)  # the many-body layer differs, so its features do
    assert all(type(p.symmetric_contractions) is egd.GauntManyBody for p in twin.products)
    assert abs(egd.ratios(egd.readout_statistics(twin, batch), stats)[0]["prod0e"] - 1.0) > 1e-3


def test_homogeneous_parts_split_a_polynomial_by_order(float64):
    x = torch.randn(5, 3)
    parts = egd.homogeneous_parts(lambda v: 2 * v - 3 * v ** 2 + 0.5 * v ** 3, x, 3)
    for got, want in zip(parts, (2 * x, -3 * x ** 2, 0.5 * x ** 3)):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


def test_a_many_body_layers_own_output_is_fitted_by_the_same_architecture(float64):
    irreps = "2x0e+2x1o+2x2e"
    torch.manual_seed(3)
    source = egd.GauntManyBody(irreps, irreps, 2, 2, chains=1, weight_gain=1.0)
    x = torch.randn(40, 2, 9)
    attrs = torch.nn.functional.one_hot(torch.arange(40) % 2, 2).to(x.dtype)
    with torch.no_grad():
        target = source(x, attrs)
    assert egd.fit_many_body(x, attrs, target, irreps, irreps, 2, 1, 2, 100) < 1e-6
    # a target outside the class (a random function of the atoms) keeps a residual
    assert egd.fit_many_body(x, attrs, torch.randn_like(target), irreps, irreps, 2, 1, 1, 20) > 0.1
