"""EquiformerV2 (fairchem-core 1.10) with the Gaunt self-mix sub-layer in every transformer block.

Two model classes, usable by full dotted path in any fairchem YAML with no patching at all:

- :class:`GauntEquiformerV2Backbone` (``gaunt_plugins.adapters.equiformer_v2.GauntEquiformerV2Backbone``),
  the hydra backbone; fairchem's stock EquiformerV2 heads (``equiformerV2_scalar_head``,
  ``equiformerV2_rank1_head``, ``equiformer_v2_energy_head``, ...) work with it unchanged.
- :class:`GauntEquiformerV2` (``gaunt_plugins.adapters.equiformer_v2.GauntEquiformerV2``), the flat
  deprecated ``equiformer_v2`` model with its own energy and force blocks.

Both take the stock constructor's keyword arguments plus ``tensor_product: gaunt`` (optional here),
``gaunt_method`` and ``gaunt_zero_init`` (see :mod:`.equiformer_v2_config`). Once
:class:`gaunt_plugins.patches.fairchem.FairchemPatch` is applied they are also reachable by registry
name (``equiformer_v2_gaunt_backbone``, ``equiformer_v2_gaunt``), and ``tensor_product: gaunt`` on
the stock names (``equiformer_v2_backbone``, ``equiformer_v2``) selects them.

Every block becomes a :class:`GauntTransBlockV2`: fairchem's ``TransBlockV2`` (attention and
feed-forward sub-layers, untouched) followed by a third residual sub-layer, ``x + drop(mix(x))``
with ``mix`` the :class:`~gaunt_plugins.adapters.equiformer_v2_selfmix.GauntSelfMix` (its own
equivariant norm of the block's ``norm_type``, per-degree per-channel input weights, exact Gaunt
product truncated to lmax, per-degree linear). The stock parameters are built first, with the same
random draws as the stock class, so the parameter names of a stock checkpoint are a subset of the
Gaunt model's (``blocks.<i>.gaunt_mix.*`` are the only new ones).
"""
from __future__ import annotations

from typing import Any, Dict, Tuple

from gaunt_plugins.patches.fairchem import require_equiformer_v2

require_equiformer_v2()  # clear error on fairchem-core 2.x (no EquiformerV2) or when it is missing

import e3nn  # noqa: E402,F401  (fairchem's EquiformerV2 refuses to build unless e3nn is imported)
import torch  # noqa: E402
from fairchem.core.models.equiformer_v2.equiformer_v2 import EquiformerV2Backbone  # noqa: E402
from fairchem.core.models.equiformer_v2.equiformer_v2_deprecated import EquiformerV2  # noqa: E402
from fairchem.core.models.equiformer_v2.layer_norm import get_normalization_layer  # noqa: E402
from fairchem.core.models.equiformer_v2.transformer_block import TransBlockV2  # noqa: E402

from .equiformer_v2_config import (  # noqa: E402
    GAUNT,
    GauntConfigError,
    GauntOptions,
    check_gaunt_supported,
    split_gaunt_kwargs,
    wants_gaunt,
)
from .equiformer_v2_selfmix import GauntSelfMix  # noqa: E402

__all__ = [
    "GauntTransBlockV2",
    "GauntEquiformerV2Backbone",
    "GauntEquiformerV2",
    "EquiformerV2BackboneSelector",
    "EquiformerV2Selector",
    "GauntSelfMix",
    "GauntConfigError",
]


class GauntTransBlockV2(TransBlockV2):
    """fairchem's ``TransBlockV2`` plus the Gaunt self-mix residual sub-layer at its end.

    Built from a constructed stock block with :meth:`from_block` (the stock sub-modules are reused
    as they are, so their parameters keep their names and values).
    """

    gaunt_mix: GauntSelfMix

    @classmethod
    def from_block(cls, block: TransBlockV2, gaunt_mix: GauntSelfMix) -> "GauntTransBlockV2":
        new = cls.__new__(cls)
        for key, value in block.__dict__.items():
            # copy the module's own dicts (_modules, _parameters, _buffers, hooks) so the new block
            # does not alias the old one's bookkeeping; the sub-modules themselves are shared
            new.__dict__[key] = type(value)(value) if isinstance(value, dict) else value
        new.gaunt_mix = gaunt_mix
        return new

    def forward(
        self,
        x,  # SO3_Embedding
        atomic_numbers,
        edge_distance,
        edge_index,
        batch,  # for GraphDropPath
        node_offset: int = 0,
    ):
        out = super().forward(x, atomic_numbers, edge_distance, edge_index, batch, node_offset)
        branch = self.gaunt_mix(out.embedding)
        if self.drop_path is not None:
            branch = self.drop_path(branch, batch)
        if self.proj_drop is not None:
            branch = self.proj_drop(branch, batch)
        out.embedding = out.embedding + branch
        return out


def _install_selfmix(model: torch.nn.Module, lmax: int, opts: GauntOptions) -> None:
    """Turn every ``model.blocks[i]`` into a :class:`GauntTransBlockV2` with a fresh self-mix."""
    for i, block in enumerate(model.blocks):
        if isinstance(block, GauntTransBlockV2):
            continue
        norm = get_normalization_layer(model.norm_type, lmax=lmax, num_channels=model.sphere_channels)
        mix = GauntSelfMix(
            lmax,
            model.sphere_channels,
            norm=norm,
            method=opts.method,
            zero_init=opts.zero_init,
            weight_init=model.weight_init,
            normalize=opts.normalize,
        )
        model.blocks[i] = GauntTransBlockV2.from_block(block, mix)


class _GauntSelfMixModel:
    """What both Gaunt models add to their stock EquiformerV2 base (listed after this class).

    ``__init__`` splits off the ``tensor_product``/``gaunt_*`` keys, builds the stock model from
    the rest (same random draws as the stock class), then installs the self-mix in every block;
    ``no_weight_decay`` adds the self-mix's biases and per-degree input weights to the stock set
    (its norm is one of fairchem's norm classes, already listed by the stock method).
    """

    tensor_product = GAUNT

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if args:
            raise TypeError(
                f"{type(self).__name__} takes keyword arguments only (as fairchem passes its YAML model section)"
            )
        stock_kwargs, opts = split_gaunt_kwargs(kwargs)
        lmax = check_gaunt_supported(stock_kwargs.get("lmax_list"), stock_kwargs.get("mmax_list"))
        super().__init__(**stock_kwargs)
        self.gaunt_options = opts
        _install_selfmix(self, lmax, opts)

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        selfmix = {
            name
            for name, _ in self.named_parameters()
            if ".gaunt_mix." in name and name.rsplit(".", 1)[-1] in ("bias", "input_weight1", "input_weight2")
        }
        return set(super().no_weight_decay()) | selfmix


class GauntEquiformerV2Backbone(_GauntSelfMixModel, EquiformerV2Backbone):
    """EquiformerV2 hydra backbone with the Gaunt self-mix in every block.

    Keyword arguments: those of fairchem's ``EquiformerV2Backbone`` plus ``tensor_product``
    (``"gaunt"`` or absent), ``gaunt_method`` (``"auto"``, ``"grid"``, ``"fourier"``),
    ``gaunt_zero_init`` and ``gaunt_normalize`` (bools). Output: the stock ``{"node_embedding", "graph"}`` dict.
    """


class GauntEquiformerV2(_GauntSelfMixModel, EquiformerV2):
    """The flat (deprecated) EquiformerV2 with the Gaunt self-mix in every block.

    Keyword arguments as :class:`GauntEquiformerV2Backbone`. Output: ``{"energy", "forces"}``.
    """


def _select(stock_cls: type, gaunt_cls: type, args: Tuple[Any, ...], kwargs: Dict[str, Any]):
    if wants_gaunt(kwargs):
        return gaunt_cls(*args, **kwargs)
    kwargs = {k: v for k, v in kwargs.items() if k != "tensor_product"}
    return stock_cls(*args, **kwargs)


class EquiformerV2BackboneSelector(EquiformerV2Backbone):
    """What the patched registry returns for ``equiformer_v2_backbone``.

    Calling it builds the stock :class:`EquiformerV2Backbone` (the very same class and object as
    without the patch) unless the section says ``tensor_product: gaunt``, in which case it builds a
    :class:`GauntEquiformerV2Backbone`. It never has instances of its own.
    """

    def __new__(cls, *args: Any, **kwargs: Any):
        return _select(EquiformerV2Backbone, GauntEquiformerV2Backbone, args, kwargs)


class EquiformerV2Selector(EquiformerV2):
    """What the patched registry returns for ``equiformer_v2``: stock or :class:`GauntEquiformerV2`."""

    def __new__(cls, *args: Any, **kwargs: Any):
        return _select(EquiformerV2, GauntEquiformerV2, args, kwargs)
