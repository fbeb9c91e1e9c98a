"""batch_from_atoms: ASE atoms collated into the batch an on-the-fly-graph EquiformerV2 reads."""
from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("fairchem.core")

from eqv2_testing import emt_structures  # noqa: E402
from gaunt_plugins.adapters.equiformer_v2_data import batch_from_atoms  # noqa: E402


def test_batch_holds_each_structure_with_its_tags_and_no_edges():
    atoms = emt_structures(3, seed=4)
    batch = batch_from_atoms(atoms, device="cpu")
    assert batch.natoms.tolist() == [len(a) for a in atoms]
    assert batch.batch.tolist() == [i for i, a in enumerate(atoms) for _ in range(len(a))]
    assert batch.atomic_numbers.tolist() == [int(z) for a in atoms for z in a.get_atomic_numbers()]
    want_pos = np.concatenate([a.get_positions(wrap=True) for a in atoms])
    np.testing.assert_allclose(batch.pos.numpy(), want_pos, atol=1e-5)
    np.testing.assert_allclose(batch.cell.numpy(), np.stack([a.get_cell()[:] for a in atoms]), atol=1e-5)
    assert batch.pbc.tolist() == [bool(p) for a in atoms for p in a.pbc]  # concatenated: [3 * structures]
    assert batch.tags.dtype == torch.long
    assert batch.tags.tolist() == [int(t) for a in atoms for t in a.get_tags()]
    assert set(batch.tags.tolist()) == {0, 1, 2}  # the slab layers and the adsorbate: tags really vary
    assert batch.fixed.dtype == torch.long and not batch.fixed.any()
    assert "edge_index" not in batch.keys()
