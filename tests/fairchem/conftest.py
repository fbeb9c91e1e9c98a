"""Fixtures for the EquiformerV2 adapter tests: fairchem's registry with and without the Gaunt patch.

Helpers (configs, data, predictions) are in eqv2_testing.py.
"""
from __future__ import annotations

import pytest


@pytest.fixture
def patched():
    """The fairchem patch applied during the test (a patch that was already there is left as it was)."""
    import gaunt_plugins

    with gaunt_plugins.patched("fairchem") as patch:
        yield patch


@pytest.fixture
def unpatched():
    """fairchem as shipped during the test (a patch that was there is applied again afterwards)."""
    from gaunt_plugins.patches.fairchem import FairchemPatch

    patch = FairchemPatch()
    was_applied = patch.applied
    if was_applied:
        patch.revert()
    yield patch
    if was_applied and not patch.applied:
        patch.apply()
