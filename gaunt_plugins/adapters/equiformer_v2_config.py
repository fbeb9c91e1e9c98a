"""Config translation for the EquiformerV2 adapter: the keys a fairchem model section may carry.

A fairchem-core 1.x model section (the flat ``model:`` of the deprecated ``equiformer_v2``, or the
``backbone:`` of a hydra model) selects the Gaunt variant with one key::

    tensor_product: gaunt          # absent: the stock model, unchanged
    gaunt_method: auto             # optional: auto | grid | fourier (gaunt_plugins.gaunt_product)
    gaunt_zero_init: false         # optional: start the self-mix output at zero
    gaunt_normalize: true          # optional: divide the product by its RMS per degree (see GauntSelfMix)

An empty ``tensor_product:`` is an error, as is either key on a fairchem model that is not an
EquiformerV2 (:func:`check_no_gaunt_keys`). Everything else is passed to fairchem's constructor
untouched. This module does not import
fairchem, so the converter and the patch can read configs cheaply.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, MutableMapping, Optional, Tuple

__all__ = [
    "TENSOR_PRODUCT_KEY",
    "GAUNT",
    "GAUNT_OPTION_KEYS",
    "STOCK_BACKBONE_NAMES",
    "STOCK_FLAT_NAMES",
    "GAUNT_BACKBONE_NAME",
    "GAUNT_FLAT_NAME",
    "GAUNT_BACKBONE_PATH",
    "GAUNT_FLAT_PATH",
    "STOCK_BACKBONE_PATH",
    "STOCK_FLAT_PATH",
    "GauntOptions",
    "GauntConfigError",
    "split_gaunt_kwargs",
    "wants_gaunt",
    "check_gaunt_supported",
    "check_no_gaunt_keys",
    "SUPPORTED_MODELS",
    "model_sections",
]

TENSOR_PRODUCT_KEY = "tensor_product"
GAUNT = "gaunt"
METHODS = ("auto", "grid", "fourier")

#: gaunt_* config keys and the :class:`GauntOptions` field each one sets.
GAUNT_OPTION_KEYS = {"gaunt_method": "method", "gaunt_zero_init": "zero_init", "gaunt_normalize": "normalize"}

# Registry names (fairchem-core 1.10) and the full dotted paths of the classes behind them.
STOCK_BACKBONE_PATH = "fairchem.core.models.equiformer_v2.equiformer_v2.EquiformerV2Backbone"
STOCK_FLAT_PATH = "fairchem.core.models.equiformer_v2.equiformer_v2_deprecated.EquiformerV2"
GAUNT_BACKBONE_PATH = "gaunt_plugins.adapters.equiformer_v2.GauntEquiformerV2Backbone"
GAUNT_FLAT_PATH = "gaunt_plugins.adapters.equiformer_v2.GauntEquiformerV2"
STOCK_BACKBONE_NAMES = ("equiformer_v2_backbone", STOCK_BACKBONE_PATH)
STOCK_FLAT_NAMES = ("equiformer_v2", STOCK_FLAT_PATH)
GAUNT_BACKBONE_NAME = "equiformer_v2_gaunt_backbone"
GAUNT_FLAT_NAME = "equiformer_v2_gaunt"
#: The fairchem model names that take ``tensor_product: gaunt`` (the stock names need the patch).
SUPPORTED_MODELS = (
    f"{STOCK_BACKBONE_NAMES[0]} (a hydra model's backbone), {STOCK_FLAT_NAMES[0]} (flat), "
    f"{GAUNT_BACKBONE_NAME}, {GAUNT_FLAT_NAME}, {GAUNT_BACKBONE_PATH}, {GAUNT_FLAT_PATH}"
)


class GauntConfigError(ValueError):
    """A model config asks the Gaunt EquiformerV2 for something it cannot serve."""


@dataclass(frozen=True)
class GauntOptions:
    """The Gaunt self-mix options read from a model section."""

    method: str = "auto"
    zero_init: bool = False
    normalize: bool = True

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise GauntConfigError(
                f"gaunt_method: {self.method!r} is not a Gaunt product method; choose one of {METHODS}"
            )
        if not isinstance(self.zero_init, bool):
            raise GauntConfigError(f"gaunt_zero_init must be true or false, got {self.zero_init!r}")
        if not isinstance(self.normalize, bool):
            raise GauntConfigError(f"gaunt_normalize must be true or false, got {self.normalize!r}")


def wants_gaunt(section: Mapping[str, Any]) -> bool:
    """Whether a model section selects the Gaunt variant (``tensor_product: gaunt``).

    Raises :class:`GauntConfigError` for an empty or another ``tensor_product`` value, or for
    ``gaunt_*`` keys given without ``tensor_product: gaunt`` (they would otherwise be silently ignored).
    """
    if TENSOR_PRODUCT_KEY in section and _is_empty(section[TENSOR_PRODUCT_KEY]):
        raise GauntConfigError(_EMPTY)
    value = section.get(TENSOR_PRODUCT_KEY)
    if value is None:
        stray = sorted(k for k in section if str(k).startswith("gaunt_"))
        if stray:
            raise GauntConfigError(
                f"{stray} given without `{TENSOR_PRODUCT_KEY}: {GAUNT}`; add the key to select the "
                f"Gaunt EquiformerV2, or remove them"
            )
        return False
    if str(value).lower() != GAUNT:
        raise GauntConfigError(
            f"`{TENSOR_PRODUCT_KEY}: {value}` is not supported by EquiformerV2; the only value is "
            f"`{GAUNT}` (leave the key out for the stock model)"
        )
    return True


_EMPTY = (
    f"`{TENSOR_PRODUCT_KEY}:` is empty; write `{TENSOR_PRODUCT_KEY}: {GAUNT}` for the Gaunt EquiformerV2, "
    "or leave the key out for the stock model"
)


def _is_empty(value: Any) -> bool:
    """A YAML key with nothing after it (``None``) or a blank string."""
    return value is None or (isinstance(value, str) and not value.strip())


def check_no_gaunt_keys(name: str, section: Mapping[str, Any], hydra: bool = False) -> None:
    """Refuse ``tensor_product`` and ``gaunt_*`` keys in the section of a fairchem model ``name`` that
    is not an EquiformerV2 (fairchem would fail with ``unexpected keyword`` or ignore them).

    ``hydra``: the model is fairchem's hydra model, whose ``backbone:`` section is where the keys go.
    """
    keys = [str(k) for k in section if k == TENSOR_PRODUCT_KEY or str(k).startswith("gaunt_")]
    if not keys:
        return
    given = ", ".join(
        f"`{k}: {section[k]}`" if not _is_empty(section[k]) else f"`{k}:` (empty)" for k in keys)
    them = "it" if len(keys) == 1 else "them"
    where = (
        f"; put {them} in the hydra model's `backbone:` section, whose `model:` names an EquiformerV2 backbone"
        if hydra else f"; remove {them} for {name!r}"
    )
    raise GauntConfigError(
        f"fairchem model {name!r} got {given}: the Gaunt tensor product exists only for EquiformerV2, "
        f"supported models: {SUPPORTED_MODELS}{where}"
    )


def split_gaunt_kwargs(kwargs: Mapping[str, Any]) -> Tuple[Dict[str, Any], GauntOptions]:
    """Split a Gaunt model section into fairchem's keyword arguments and :class:`GauntOptions`.

    ``tensor_product`` may be absent or ``gaunt``; unknown ``gaunt_*`` keys are an error naming the
    known ones.
    """
    value = kwargs.get(TENSOR_PRODUCT_KEY, GAUNT)
    if _is_empty(value):
        raise GauntConfigError(_EMPTY)
    if str(value).lower() != GAUNT:
        raise GauntConfigError(
            f"the Gaunt EquiformerV2 got `{TENSOR_PRODUCT_KEY}: {value}`; it only accepts `{GAUNT}`"
        )
    rest: Dict[str, Any] = {}
    opts: Dict[str, Any] = {}
    for key, val in kwargs.items():
        if key == TENSOR_PRODUCT_KEY:
            continue
        if str(key).startswith("gaunt_"):
            if key not in GAUNT_OPTION_KEYS:
                raise GauntConfigError(
                    f"unknown Gaunt option {key!r}; known options: {sorted(GAUNT_OPTION_KEYS)}"
                )
            opts[GAUNT_OPTION_KEYS[key]] = val
        else:
            rest[key] = val
    return rest, GauntOptions(**opts)


def check_gaunt_supported(lmax_list: Optional[List[int]], mmax_list: Optional[List[int]]) -> int:
    """Check the EquiformerV2 options the self-mix has to serve; return the single ``lmax``.

    Raises :class:`GauntConfigError` for several resolutions (``len(lmax_list) > 1``: fairchem's
    layer norms assume one) and for inconsistent ``lmax_list``/``mmax_list``.
    """
    lmax_list = [6] if lmax_list is None else list(lmax_list)
    mmax_list = [2] if mmax_list is None else list(mmax_list)
    if len(lmax_list) != 1:
        raise GauntConfigError(
            f"the Gaunt self-mix serves one resolution; got lmax_list={lmax_list} (use a single "
            f"entry, e.g. lmax_list: [{max(lmax_list) if lmax_list else 6}])"
        )
    if len(mmax_list) != len(lmax_list):
        raise GauntConfigError(
            f"lmax_list={lmax_list} and mmax_list={mmax_list} must have the same length"
        )
    lmax, mmax = int(lmax_list[0]), int(mmax_list[0])
    if lmax < 1:
        raise GauntConfigError(f"the Gaunt self-mix needs lmax >= 1, got lmax_list={lmax_list}")
    if not 0 <= mmax <= lmax:
        raise GauntConfigError(f"mmax must be in [0, lmax]; got lmax={lmax}, mmax={mmax}")
    return lmax


def model_sections(config: MutableMapping[str, Any]) -> List[Tuple[MutableMapping[str, Any], str]]:
    """The EquiformerV2 sections of a fairchem config, with the key that names their class.

    Returns ``[(section, name_key)]``: ``(config["model"], "name")`` for a flat model, or
    ``(config["model"]["backbone"], "model")`` for a hydra model. Only sections naming a stock or
    Gaunt EquiformerV2 are returned. (Old configs with ``model: <name>`` plus
    ``model_attributes:`` are normalised first by the converter, as ``OCPCalculator`` does.)
    """
    known = set(STOCK_BACKBONE_NAMES + STOCK_FLAT_NAMES) | {
        GAUNT_BACKBONE_NAME, GAUNT_FLAT_NAME, GAUNT_BACKBONE_PATH, GAUNT_FLAT_PATH}
    model = config.get("model")
    found: List[Tuple[MutableMapping[str, Any], str]] = []
    if isinstance(model, MutableMapping):
        if model.get("name") in known:
            found.append((model, "name"))
        backbone = model.get("backbone")
        if isinstance(backbone, MutableMapping) and backbone.get("model") in known:
            found.append((backbone, "model"))
    return found
