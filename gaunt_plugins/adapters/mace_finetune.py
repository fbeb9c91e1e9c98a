"""Fine-tuning from a Gaunt foundation model (``mace_run_train --foundation_model gaunt.model``).

MACE fine-tunes by rebuilding the foundation's architecture (``extract_config_mace_model``) for the
elements of the new data, then copying the foundation's weights into it with
``mace.tools.finetuning_utils.load_foundations_elements``, which keeps the rows of the retained elements
(``indices = [foundation index of z for z in the new table]``). For a foundation with Gaunt blocks:

- :func:`foundation_options`: the :class:`~.mace_config.GauntOptions` that rebuild its Gaunt blocks
  (targets, products per channel, chains), used with :func:`~.mace_blocks.gaunt_construction` while MACE
  builds the model, so the new model has the same blocks;
- :func:`resolve_settings`: the run's settings made those of the foundation's blocks (kept as they are);
  a setting that asks for something else is refused, naming the key;
- :func:`load_foundations_elements`: MACE's function on the blocks it knows (the Gaunt interactions are
  MACE's classes with another convolution: they are handled as MACE's), and for each Gaunt many-body
  product the rows of the retained elements of ``weights_in [S, nu, K_in, P C]`` and
  ``weights_out [S, nu, K_out, P C]`` and ``scalar_bias [S, C]`` (one-hot selected, so no rescaling), its
  ``weight_gain`` and its ``linear``.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any, Iterator, List, Optional

import torch

from ..layers import GauntPathConvolution
from .mace_blocks import GAUNT_INTERACTIONS, GauntProductBasisBlock, is_gaunt_model
from .mace_config import (
    DEFAULT_CONV_PRODUCTS,
    GAUNT_TARGETS,
    PATH_CONV,
    GauntOptions,
    GauntSettingsError,
    parse_conv_products,
    parse_gain,
    parse_targets,
    parse_whole_number,
)

__all__ = ["foundation_options", "resolve_settings", "load_foundations_elements", "gaunt_blocks_of"]

logger = logging.getLogger("gaunt_plugins.mace")

_STOCK_OF = {gaunt: stock for stock, gaunt in GAUNT_INTERACTIONS.items()}


def gaunt_blocks_of(model: torch.nn.Module) -> List[str]:
    """``["interactions.0", "products.1", ...]``: the Gaunt blocks of a MACE model."""
    names = [f"interactions.{i}" for i, b in enumerate(model.interactions) if type(b) in _STOCK_OF]
    return names + [f"products.{i}" for i, b in enumerate(model.products) if isinstance(b, GauntProductBasisBlock)]


def foundation_options(foundation: torch.nn.Module) -> Optional[GauntOptions]:
    """The options that rebuild the Gaunt blocks of ``foundation`` (``None``: it has none).

    ``conv_products``: ``paths`` for per-path convolutions, else the products per channel of its
    convolutions of non-scalar node features (the scalar first interaction always has one); ``product_chains``: the chains of its many-body products; ``product_gain``: their weight gain.
    """
    targets, products, chains, gains, odd = set(), set(), set(), set(), set()
    for block in getattr(foundation, "interactions", ()):
        if type(block) in _STOCK_OF:
            targets.add("conv")
            if isinstance(block.conv_tp, GauntPathConvolution):
                products.add(PATH_CONV)
            elif any(ir.l > 0 for _, ir in block.conv_tp.irreps_in1):
                products.add(int(block.conv_tp.products))
    for block in getattr(foundation, "products", ()):
        if isinstance(block, GauntProductBasisBlock):
            targets.add("product")
            chains.add(int(block.symmetric_contractions.chains))
            gains.add(float(block.symmetric_contractions.weight_gain))
            odd.add(int(getattr(block.symmetric_contractions, "odd_chains", 0)))
    if not targets:
        return None
    if len(products) > 1 or len(chains) > 1 or len(gains) > 1 or len(odd) > 1:
        raise GauntSettingsError(
            f"the foundation model's Gaunt blocks differ in their products per channel {sorted(map(str, products))}, "
            f"chains {sorted(chains)}, weight gains {sorted(gains)} or odd-path chains {sorted(odd)}: fine-tuning "
            "rebuilds every block with one setting")
    return GauntOptions(targets=frozenset(targets), conv_products=products.pop() if products else DEFAULT_CONV_PRODUCTS,
                        product_chains=chains.pop() if chains else None,
                        product_gain=gains.pop() if gains else None,
                        product_odd_chains=odd.pop() if odd else None)


def resolve_settings(args: Any, foundation: torch.nn.Module,
                     source: str = "the foundation model") -> Optional[GauntOptions]:
    """Make ``args`` (``mace_run_train``'s namespace) describe the model fine-tuned from ``foundation``.

    A Gaunt block of the foundation cannot become MACE's e3nn block again, so the fine-tuned model keeps
    them: without ``tensor_product`` the run becomes ``tensor_product: gaunt`` with the foundation's targets;
    with ``tensor_product: gaunt`` the targets are the union of the requested and the foundation's. Raises
    :class:`~.mace_config.GauntSettingsError` for ``tensor_product: e3nn``, for explicit ``gaunt_targets``
    that leave out a target the foundation has, and for an explicit ``gaunt_conv_products`` /
    ``gaunt_product_chains`` / ``gaunt_product_gain`` / ``gaunt_product_odd_chains`` other than the foundation's. Returns the foundation's options (``None``, and
    ``args`` untouched, for a foundation without Gaunt blocks).
    """
    found = foundation_options(foundation)
    if found is None:
        return None
    blocks = ", ".join(gaunt_blocks_of(foundation))
    keep = (f"{source} has Gaunt blocks ({blocks}), which fine-tuning keeps (a Gaunt block cannot be turned "
            f"back into MACE's e3nn block)")
    tp = getattr(args, "tensor_product", None)
    if tp is not None and str(tp).strip().lower() == "e3nn":
        raise GauntSettingsError(f"tensor_product: e3nn, but {keep}: remove tensor_product or set it to gaunt, or "
                                 "fine-tune from an e3nn foundation model")
    requested = getattr(args, "gaunt_targets", None)
    if requested is not None:
        missing = sorted(found.targets - parse_targets(requested))
        if missing:
            raise GauntSettingsError(f"gaunt_targets: {sorted(parse_targets(requested))}, but {keep}: add "
                                     f"{', '.join(missing)} to gaunt_targets or remove the key")
        targets = parse_targets(requested) | found.targets
    elif tp is None:
        targets = found.targets
    else:  # tensor_product: gaunt with the default targets, and the foundation's
        targets = parse_targets(None) | found.targets
    for key, target, value, name, parse in (
            ("gaunt_conv_products", "conv", found.conv_products, "products per channel", parse_conv_products),
            ("gaunt_product_chains", "product", found.product_chains, "chains per channel",
             lambda v: parse_whole_number(v, "gaunt_product_chains")),
            ("gaunt_product_gain", "product", found.product_gain, "as its weight gain", parse_gain),
            ("gaunt_product_odd_chains", "product", found.product_odd_chains, "odd-path chains per channel",
             lambda v: parse_whole_number(v, "gaunt_product_odd_chains"))):
        given = getattr(args, key, None)
        if given is not None:
            given = parse(given)  # each key compared as its parser reads it ("2" and 2, "4" and 4.0 agree)
        if target in found.targets and given is not None and given != value:
            raise GauntSettingsError(f"{key}: {given}, but {keep}, with {value} {name}: set {key}: {value} or "
                                     "remove the key")
        if target in found.targets:
            setattr(args, key, value)
    args.tensor_product = "gaunt"
    args.gaunt_targets = [t for t in GAUNT_TARGETS if t in targets]
    return found


@contextlib.contextmanager
def _as_mace_sees_them(model: torch.nn.Module, foundation: torch.nn.Module) -> Iterator[None]:
    """While active: the Gaunt interactions of both models carry the class of the MACE block they stand for
    (MACE's loader chooses how to subset ``skip_tp`` by class name), and ``model`` has no product blocks
    (MACE's loader would read symmetric-contraction weights from them). Everything is restored on exit."""
    swapped = []
    products = model._modules["products"]  # pylint: disable=protected-access
    try:
        for m in (model, foundation):
            for block in m.interactions:
                stock = _STOCK_OF.get(type(block))
                if stock is not None:
                    swapped.append((block, type(block)))
                    block.__class__ = stock
        model._modules["products"] = torch.nn.ModuleList()  # pylint: disable=protected-access
        yield
    finally:
        model._modules["products"] = products  # pylint: disable=protected-access
        for block, cls in swapped:
            block.__class__ = cls


def _element_rows(foundation: torch.nn.Module, table) -> List[int]:
    from mace.tools.utils import AtomicNumberTable

    z_table = AtomicNumberTable([int(z) for z in foundation.atomic_numbers])
    missing = [z for z in table.zs if z not in z_table.zs]
    if missing:
        raise GauntSettingsError(f"the foundation model has no weights for element(s) {missing} (it knows "
                                 f"{z_table.zs}): fine-tune it on data of its elements")
    return [z_table.z_to_index(z) for z in table.zs]


def _check_same_blocks(model: torch.nn.Module, foundation: torch.nn.Module) -> None:
    mine, theirs = gaunt_blocks_of(model), gaunt_blocks_of(foundation)
    if mine != theirs:
        raise GauntSettingsError(
            f"fine-tuning: the model has Gaunt blocks [{', '.join(mine)}] and the foundation model "
            f"[{', '.join(theirs)}]; their weights do not carry over block by block")


def _copy_gaunt_products(model: torch.nn.Module, foundation: torch.nn.Module, rows: List[int]) -> None:
    for i, (new, old) in enumerate(zip(model.products, foundation.products)):
        if not isinstance(new, GauntProductBasisBlock):
            continue
        picked = [0] if getattr(new, "use_agnostic_product", False) else rows
        sc_new, sc_old = new.symmetric_contractions, old.symmetric_contractions
        with torch.no_grad():
            for name in ("weights_in", "weights_out"):
                source = getattr(sc_old, name)[picked]
                target = getattr(sc_new, name)
                if source.shape != target.shape:
                    raise GauntSettingsError(
                        f"fine-tuning: products.{i}.symmetric_contractions.{name} of the foundation model has shape "
                        f"{list(getattr(sc_old, name).shape)}, this model's {list(target.shape)}")
                target.copy_(source)
            sc_new.weight_gain.copy_(sc_old.weight_gain)
            odd_new, odd_old = getattr(sc_new, "odd_paths", None), getattr(sc_old, "odd_paths", None)
            if odd_new is not None and odd_old is not None:
                for name in ("weights_in", "weights_out"):
                    getattr(odd_new, name).copy_(getattr(odd_old, name)[picked])
            bias_old, bias_new = getattr(sc_old, "scalar_bias", None), getattr(sc_new, "scalar_bias", None)
            if bias_new is not None:  # a foundation saved without the bias had none: zero
                bias_new.copy_(bias_old[picked] if bias_old is not None else torch.zeros_like(bias_new))
            new.linear.weight.copy_(old.linear.weight)


def load_foundations_elements(original, model: torch.nn.Module, model_foundations: torch.nn.Module, table,
                              *args, **kwargs) -> torch.nn.Module:
    """MACE's ``load_foundations_elements`` (``original``, same arguments) for models with Gaunt blocks.

    ``model`` must have the Gaunt blocks of ``model_foundations`` (:func:`foundation_options` builds it so);
    the weights of MACE's blocks are copied by MACE, those of the Gaunt many-body products here, for the
    elements of ``table``. Models without Gaunt blocks go to ``original`` unchanged.
    """
    if not (is_gaunt_model(model) or is_gaunt_model(model_foundations)):
        return original(model, model_foundations, table, *args, **kwargs)
    _check_same_blocks(model, model_foundations)
    rows = _element_rows(model_foundations, table)
    with _as_mace_sees_them(model, model_foundations):
        result = original(model, model_foundations, table, *args, **kwargs)
    dtype = next(result.parameters()).dtype
    _copy_gaunt_products(result, model_foundations, rows)
    result.to(dtype)
    logger.info("gaunt-plugins: Gaunt blocks %s loaded from the foundation model for elements %s",
                ", ".join(gaunt_blocks_of(result)), [int(z) for z in table.zs])
    return result
