"""fairchem-core 1.x input batches built from ASE atoms, for EquiformerV2 models that build their graph
on the fly (``otf_graph: true``).

fairchem is imported when a batch is built, not when this module is imported.
"""
from __future__ import annotations

from typing import Iterable, Optional, Union

import torch

__all__ = ["batch_from_atoms"]


def batch_from_atoms(atoms_list: Iterable, device: Optional[Union[str, torch.device]] = None):
    """One fairchem batch (a torch_geometric ``Batch``) of the given ``ase.Atoms``, collated as the
    OCP trainer collates them.

    For ``S`` structures of ``N`` atoms in all: ``pos [N, 3]`` (wrapped into the cell), ``cell [S, 3, 3]``,
    ``atomic_numbers [N]``, ``natoms [S]``, ``pbc [3 S]``, ``batch [N]``, ``tags [N]``
    (``atoms.get_tags()``, long) and ``fixed [N]`` (all zero, long: every atom free). No edges: the
    model computes them from its own ``max_radius``/``max_neighbors``.
    ``device``: where the batch is moved (``None``: left on the CPU).
    """
    from fairchem.core.datasets import data_list_collater
    from fairchem.core.preprocessing import AtomsToGraphs

    a2g = AtomsToGraphs(r_edges=False, r_pbc=True)
    data = []
    for atoms in atoms_list:
        d = a2g.convert(atoms)
        d.tags = torch.as_tensor(atoms.get_tags(), dtype=torch.long)
        d.fixed = torch.zeros(len(atoms), dtype=torch.long)
        data.append(d)
    batch = data_list_collater(data, otf_graph=True)
    return batch if device is None else batch.to(device)
