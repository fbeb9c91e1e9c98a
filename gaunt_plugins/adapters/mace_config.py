"""What ``tensor_product: gaunt`` means for a MACE model, and the checks that go with it.

This module is the translation between MACE's configuration (the ``mace_run_train`` arguments, a
built model's hyper-parameters) and the Gaunt layers. It imports neither MACE nor the layers, so
the argument parser can be extended without building anything.

Options (command line ``--name value`` or YAML ``name: value``):

``tensor_product``   ``e3nn`` (default: MACE exactly as upstream) or ``gaunt``; a key left empty is refused.
``gaunt_targets``    which parts become Gaunt products: ``conv`` (the interaction's edge
                     convolution), ``product`` (the symmetric contraction); default ``[product]``
                     (``DEFAULT_TARGETS``: the Gaunt convolution trains to larger force errors than
                     MACE's at equal epochs, see benchmarks/results/accuracy_mace.json).
                     YAML ``[conv, product]``, command line ``--gaunt_targets conv product`` or
                     ``conv,product``; ``all`` means both.
``gaunt_conv_products``
                     how the Gaunt convolution builds its output. ``paths``: one output block per path
                     ``l1 x l2 -> l3``, from the Gaunt coefficients (:class:`~gaunt_plugins.layers.
                     GauntPathConvolution`): MACE's convolution and ``linear`` exactly, the same weights and
                     values. A whole number ``K``: ``K`` independent grid products per channel, each summing
                     all paths under one factorised weight (``K`` output copies per degree feeding MACE's
                     ``linear``; ``K = 1`` is the paper's one product per channel); this cannot express
                     MACE's per-path ``linear``. Interactions whose node features are scalars (the first) are
                     exact with one product and use one.
``gaunt_product_chains``
                     the number of independent power chains per channel in the Gaunt many-body product
                     (the symmetric contraction's replacement); more chains fit more of MACE's symmetric
                     basis, at a proportional cost. Default: by the edge harmonics' degree (below).
``gaunt_product_odd_chains``
                     the number of odd-path chains per channel in the Gaunt many-body product: nested
                     Poisson brackets of the sphere that form the order-3 couplings through odd intermediate
                     paths (``(1 x 2 -> 2) x 1 -> 2``) of MACE's symmetric contraction, which no product of
                     spherical functions forms; needs correlation >= 3. They start at zero weight, so the
                     initial model is the same. Default: by the edge harmonics' degree (below).

Where the config leaves the chains unset they follow the degree of the features the many-body product
receives, which is MACE's ``max_ell`` (:func:`default_product_chains`): below 3 one chain and no odd-path
chain; from 3 (MACE's own default) two chains and, at correlation >= 3, one odd-path chain, which a trained
MACE contraction needs there (one chain leaves 8% of it, these 2%; on acac they train to upstream's forces
where one chain trails by 8-13%, see benchmarks/README.md).
``gaunt_product_gain``
                     how many times faster than its parameters the many-body product's weights move under
                     the optimiser (a positive number; default: the layer's, ``GauntManyBody``'s
                     ``DEFAULT_WEIGHT_GAIN``). The initial function does not depend on it.

``gaunt_method`` (``auto`` or ``grid``) is accepted for configs written for earlier versions and has no effect:
the MACE layers always compute on the quadrature grid (both values ran it); a ``FutureWarning`` says so.

The ``gaunt_*`` keys configure Gaunt products: without ``tensor_product: gaunt`` they are refused
(:class:`GauntSettingsError`), never ignored. ``gaunt_conv_products`` and ``gaunt_product_chains`` are
at most :data:`MAX_CONV_PRODUCTS` and :data:`MAX_PRODUCT_CHAINS`.
"""

from __future__ import annotations

import argparse
import contextlib
import contextvars
import warnings
from dataclasses import dataclass
from typing import Any, FrozenSet, Iterable, Iterator, Optional, Sequence, Tuple, Union

__all__ = [
    "GauntSettingsError",
    "TENSOR_PRODUCTS",
    "GAUNT_KEYS",
    "MAX_CONV_PRODUCTS",
    "MAX_PRODUCT_CHAINS",
    "GAUNT_TARGETS",
    "DEFAULT_TARGETS",
    "GauntOptions",
    "gaunt_methods",
    "parse_targets",
    "parse_whole_number",
    "DEFAULT_CONV_PRODUCTS",
    "PATH_CONV",
    "parse_conv_products",
    "parse_gain",
    "MAX_PRODUCT_GAIN",
    "DEFAULT_PRODUCT_CHAINS",
    "DEFAULT_PRODUCT_ODD_CHAINS",
    "default_product_chains",
    "MAX_PRODUCT_ODD_CHAINS",
    "options_from_args",
    "check_irreps",
    "check_backends",
    "check_config_file",
    "add_arguments",
    "build_options",
    "current_build_options",
]

TENSOR_PRODUCTS = ("e3nn", "gaunt")
GAUNT_TARGETS = ("conv", "product")
DEFAULT_TARGETS = ("product",)
DEFAULT_CONV_PRODUCTS = 1
PATH_CONV = "paths"
"""``gaunt_conv_products: paths``: the per-path Gaunt convolution."""
DEFAULT_PRODUCT_CHAINS = 1
DEFAULT_PRODUCT_ODD_CHAINS = 0
WIDE_INPUT_DEGREE = 3
"""From this input degree (MACE's ``max_ell``) the many-body product's default chains are
:data:`WIDE_PRODUCT_CHAINS` and :data:`WIDE_PRODUCT_ODD_CHAINS` (see :func:`default_product_chains`)."""
WIDE_PRODUCT_CHAINS = 2
WIDE_PRODUCT_ODD_CHAINS = 1
GAUNT_KEYS = ("gaunt_targets", "gaunt_method", "gaunt_conv_products", "gaunt_product_chains", "gaunt_product_gain",
              "gaunt_product_odd_chains")

MAX_CONV_PRODUCTS = 16
"""The largest ``gaunt_conv_products``. Each product adds ``C (K1 + K2 + Ko)`` radial-MLP outputs per edge and
one grid product per channel; a rank-``K`` decomposition of per-path weights over degrees up to ``L`` never needs
more than ``(L + 1)^2`` products, 16 at ``L = 3`` (``K = 3`` already reproduces MACE's ``uvu`` weights there)."""
MAX_PRODUCT_CHAINS = 16
"""The largest ``gaunt_product_chains``. Each chain is one more many-body product per channel (time and
activations grow in proportion); two chains already represent MACE's correlation-2 contraction exactly."""
MAX_PRODUCT_ODD_CHAINS = 16
"""The largest ``gaunt_product_odd_chains`` (each is one more nested bracket per channel)."""
_MAXIMA = {"gaunt_conv_products": MAX_CONV_PRODUCTS, "gaunt_product_chains": MAX_PRODUCT_CHAINS,
           "gaunt_product_odd_chains": MAX_PRODUCT_ODD_CHAINS}
_MINIMA = {"gaunt_product_odd_chains": 0}
MAX_PRODUCT_GAIN = 1024.0
"""The largest ``gaunt_product_gain`` (with Adam a gain ``g`` moves the weights about ``g lr`` per step)."""


class GauntSettingsError(ValueError):
    """A ``mace_run_train`` setting the MACE patch refuses; the command prints the message as one line and
    exits with status 2 (see :mod:`gaunt_plugins.patches.mace`)."""


def default_product_chains(input_degree: int, correlation: int) -> Tuple[int, int]:
    """``(chains, odd_chains)`` of a Gaunt many-body product whose input features reach ``input_degree``
    (MACE's ``max_ell``), where the config does not set them: ``(1, 0)`` below :data:`WIDE_INPUT_DEGREE`, else
    ``(2, 1)`` (``(2, 0)`` at correlation < 3, which has no odd-path couplings).

    >>> default_product_chains(2, 3), default_product_chains(3, 3), default_product_chains(3, 2)
    ((1, 0), (2, 1), (2, 0))
    """
    if int(input_degree) < WIDE_INPUT_DEGREE:
        return DEFAULT_PRODUCT_CHAINS, DEFAULT_PRODUCT_ODD_CHAINS
    return WIDE_PRODUCT_CHAINS, (WIDE_PRODUCT_ODD_CHAINS if int(correlation) >= 3 else 0)


def gaunt_methods() -> Sequence[str]:
    """The method names the Gaunt layers accept (the layers' own list, which may be shorter than
    :func:`gaunt_plugins.gaunt_product`'s)."""
    from gaunt_plugins.layers import LAYER_METHODS

    return tuple(LAYER_METHODS)


@dataclass(frozen=True)
class GauntOptions:
    """A resolved ``tensor_product: gaunt`` request.

    >>> GauntOptions(targets=frozenset({"conv"}), method="grid").conv
    True
    """

    targets: FrozenSet[str] = frozenset(DEFAULT_TARGETS)
    method: str = "auto"
    conv_products: Union[int, str] = DEFAULT_CONV_PRODUCTS
    product_chains: Optional[int] = None  # None: by the input degree (default_product_chains)
    product_gain: Optional[float] = None  # None: the layer's default
    product_odd_chains: Optional[int] = None  # None: by the input degree

    def __post_init__(self):
        unknown = set(self.targets) - set(GAUNT_TARGETS)
        if unknown:
            raise GauntSettingsError(
                f"gaunt_targets: unknown target(s) {sorted(unknown)}; choose from {list(GAUNT_TARGETS)}"
            )
        if not self.targets:
            raise GauntSettingsError(
                "gaunt_targets is empty: name at least one of conv, product "
                "(or use tensor_product: e3nn)"
            )
        methods = gaunt_methods()
        if self.method not in methods:
            raise GauntSettingsError(f"gaunt_method: unknown method {self.method!r}; choose one of {list(methods)}")
        object.__setattr__(self, "conv_products", parse_conv_products(self.conv_products))
        if self.product_chains is not None:
            object.__setattr__(self, "product_chains",
                               parse_whole_number(self.product_chains, "gaunt_product_chains"))
        if self.product_gain is not None:
            object.__setattr__(self, "product_gain", parse_gain(self.product_gain))
        if self.product_odd_chains is not None:
            object.__setattr__(self, "product_odd_chains",
                               parse_whole_number(self.product_odd_chains, "gaunt_product_odd_chains"))

    def chains_for(self, input_degree: int, correlation: int) -> Tuple[int, int]:
        """``(chains, odd_chains)`` of a many-body product with this input degree and correlation: the ones
        set, the :func:`default_product_chains` of the others."""
        chains, odd = default_product_chains(input_degree, correlation)
        return (chains if self.product_chains is None else self.product_chains,
                odd if self.product_odd_chains is None else self.product_odd_chains)

    @property
    def conv(self) -> bool:
        return "conv" in self.targets

    @property
    def product(self) -> bool:
        return "product" in self.targets

    def describe(self) -> str:
        parts = [t for t in GAUNT_TARGETS if t in self.targets]
        counts = []
        if self.conv:
            counts.append("one Gaunt path per MACE path in the convolution" if self.conv_products == PATH_CONV
                          else f"{self.conv_products} product(s) per channel in the convolution")
        if self.product:
            counts.append("chains per channel in the many-body product by its input degree" if self.product_chains is None
                          else f"{self.product_chains} chain(s) per channel in the many-body product")
            if self.product_odd_chains:
                counts.append(f"{self.product_odd_chains} odd-path chain(s) per channel")
            if self.product_gain is not None:
                counts.append(f"weight gain {self.product_gain:g}")
        return f"Gaunt tensor products for {' and '.join(parts)} (method {self.method}); {', '.join(counts)}"


_COUNTS = {"gaunt_conv_products": "products per channel in the Gaunt convolution",
           "gaunt_product_chains": "chains per channel in the Gaunt many-body product",
           "gaunt_product_odd_chains": "odd-path chains per channel in the Gaunt many-body product"}


def parse_whole_number(value: Any, name: str) -> int:
    """``gaunt_conv_products`` / ``gaunt_product_chains`` / ``gaunt_product_odd_chains``: a whole number from 1
    (0 for the odd chains) to its maximum (:data:`MAX_CONV_PRODUCTS`, :data:`MAX_PRODUCT_CHAINS`,
    :data:`MAX_PRODUCT_ODD_CHAINS`; ``"3"`` from a command line is accepted).

    >>> parse_whole_number("3", "gaunt_conv_products")
    3
    """
    text = str(value).strip()
    top, low = _MAXIMA.get(name), _MINIMA.get(name, 1)
    if isinstance(value, bool) or not text.isdigit() or int(text) < low or (top is not None and int(text) > top):
        allowed = f"from {low} to {top}" if top is not None else f">= {low}"
        raise GauntSettingsError(f"{name}: expected a whole number {allowed} ({_COUNTS.get(name, name)}), "
                                 f"got {value!r}")
    return int(text)


def parse_gain(value: Any) -> float:
    """``gaunt_product_gain``: a number ``0 < g <=`` :data:`MAX_PRODUCT_GAIN` (``"4"`` from a command line is
    accepted).

    >>> parse_gain("4")
    4.0
    """
    try:
        gain = float(str(value).strip()) if not isinstance(value, bool) else float("nan")
    except ValueError:
        gain = float("nan")
    if not 0.0 < gain <= MAX_PRODUCT_GAIN:
        raise GauntSettingsError(f"gaunt_product_gain: expected a number greater than 0 and at most "
                                 f"{MAX_PRODUCT_GAIN:g} (how many times faster than its parameters the many-body "
                                 f"product's weights move), got {value!r}")
    return gain


def parse_conv_products(value: Any) -> Union[int, str]:
    """``gaunt_conv_products``: ``"paths"`` (:data:`PATH_CONV`) or a whole number from 1 to
    :data:`MAX_CONV_PRODUCTS`.

    >>> parse_conv_products("Paths"), parse_conv_products("3")
    ('paths', 3)
    """
    if isinstance(value, str) and value.strip().lower() == PATH_CONV:
        return PATH_CONV
    try:
        return parse_whole_number(value, "gaunt_conv_products")
    except GauntSettingsError:
        raise GauntSettingsError(f"gaunt_conv_products: expected {PATH_CONV!r} (one output block per path, MACE's "
                                 f"convolution) or a whole number from 1 to {MAX_CONV_PRODUCTS} (grid products per "
                                 f"channel), got {value!r}") from None


def parse_targets(value: Union[None, str, Iterable[str]]) -> FrozenSet[str]:
    """``"conv,product"``, ``"[conv, product]"``, ``["conv", "product"]`` -> ``{"conv", "product"}``.

    ``None`` means :data:`DEFAULT_TARGETS`, ``"all"`` both.

    >>> sorted(parse_targets("[conv, product]"))
    ['conv', 'product']
    >>> sorted(parse_targets(["conv"]))
    ['conv']
    """
    if value is None:
        return frozenset(DEFAULT_TARGETS)
    items = [value] if isinstance(value, str) else list(value)
    names = []
    for item in items:
        for piece in str(item).replace("[", " ").replace("]", " ").replace(",", " ").split():
            piece = piece.strip().strip("'\"").lower()
            if piece:
                names.append(piece)
    if names == ["all"]:
        return frozenset(GAUNT_TARGETS)
    return frozenset(names)


def options_from_args(args: Any) -> Optional[GauntOptions]:
    """The Gaunt options an ``argparse.Namespace`` asks for, or ``None`` for stock MACE.

    Raises :class:`GauntSettingsError` (a ``ValueError``) for an unknown or empty ``tensor_product``
    value, unknown targets or method, and for ``gaunt_*`` keys given without ``tensor_product: gaunt``.
    ``tensor_product`` absent or ``None`` (the patched parser's default, or a namespace made by an unpatched
    parser) means ``e3nn``; a ``gaunt_*`` key that is ``None`` was not given.
    """
    tp = getattr(args, "tensor_product", None)
    tp = "e3nn" if tp is None else str(tp).strip().lower()
    if tp not in TENSOR_PRODUCTS:
        raise GauntSettingsError(f"tensor_product: unknown value {tp!r}; choose one of {list(TENSOR_PRODUCTS)}")
    if tp == "e3nn":
        given = [key for key in GAUNT_KEYS if getattr(args, key, None) is not None]
        if given:
            raise GauntSettingsError(
                f"{given[0]} is set but tensor_product is e3nn (the default): the gaunt_* keys configure Gaunt "
                f"tensor products and take effect only with them. Add `tensor_product: gaunt` (command line "
                f"`--tensor_product gaunt`), or remove {', '.join(given)}")
        return None
    method = getattr(args, "gaunt_method", None)
    if method is not None:
        warnings.warn(f"gaunt_method: {method} has no effect and will be removed: the MACE Gaunt layers always compute "
                      f"on the quadrature grid (auto and grid were the same); remove the key", FutureWarning,
                      stacklevel=2)
    products = getattr(args, "gaunt_conv_products", None)
    chains = getattr(args, "gaunt_product_chains", None)
    gain = getattr(args, "gaunt_product_gain", None)
    odd = getattr(args, "gaunt_product_odd_chains", None)
    return GauntOptions(
        targets=parse_targets(getattr(args, "gaunt_targets", None)),
        method=str(method or "auto").lower(),
        conv_products=DEFAULT_CONV_PRODUCTS if products is None else products,
        product_chains=chains,
        product_gain=gain,
        product_odd_chains=odd,
    )


def _twist(l: int, p: int) -> int:
    return 1 if p == (-1) ** l else -1


def check_irreps(hidden_irreps: Any, what: str = "hidden_irreps") -> None:
    """Raise ``ValueError`` if a MACE hidden irreps cannot be served by Gaunt products.

    A Gaunt product is the pointwise product of spherical functions, so every feature must have
    natural parity (0e, 1o, 2e, ...). Pseudotensor irreps (0o, 1e, 2o, ...) need the odd
    ``l1 + l2 + l3`` paths that a Gaunt product does not have.
    """
    from gaunt_plugins._e3nn import o3

    irreps = o3.Irreps(str(hidden_irreps))
    odd = [str(ir) for _, ir in irreps if _twist(ir.l, ir.p) != 1]
    if odd:
        raise GauntSettingsError(
            f"tensor_product: gaunt cannot serve {what} {irreps} (pseudotensor irreps {odd}): a Gaunt "
            f"product multiplies spherical functions, so it only produces natural-parity features "
            f"(0e, 1o, 2e, ...) and has no path with l1+l2+l3 odd. Use natural-parity hidden irreps "
            f"(e.g. num_channels/max_L) or tensor_product: e3nn."
        )
    muls = {mul for mul, _ in irreps}
    if len(muls) > 1:
        raise GauntSettingsError(
            f"tensor_product: gaunt needs one multiplicity for every irrep of {what}, got {irreps}"
        )


def check_backends(enable_cueq: bool = False, enable_oeq: bool = False, only_cueq: bool = False) -> None:
    """Gaunt layers are their own backend: refuse cuEquivariance / OpenEquivariance with them."""
    chosen = [n for n, on in (("--enable_cueq", enable_cueq), ("--only_cueq", only_cueq),
                              ("--enable_oeq", enable_oeq)) if on]
    if chosen:
        raise GauntSettingsError(
            f"tensor_product: gaunt cannot be combined with {' / '.join(chosen)}: the Gaunt layers "
            f"replace the tensor products those backends accelerate. Drop {' and '.join(chosen)} "
            f"or use tensor_product: e3nn."
        )


def check_config_file(path: Any) -> None:
    """Raise :class:`GauntSettingsError` for a ``tensor_product`` or ``gaunt_*`` key left empty in the YAML
    ``path`` (``tensor_product:`` with no value): the config parser would drop it without a word."""
    import yaml

    try:
        with open(path, encoding="utf-8") as handle:
            cfg = yaml.safe_load(handle)
    except (OSError, yaml.YAMLError):
        return  # the config parser reports an unreadable file itself
    if not isinstance(cfg, dict):
        return
    for key in ("tensor_product",) + GAUNT_KEYS:
        if key in cfg and (cfg[key] is None or (isinstance(cfg[key], str) and not cfg[key].strip())):
            allowed = {"tensor_product": f"one of {list(TENSOR_PRODUCTS)}",
                       "gaunt_targets": f"a list of {list(GAUNT_TARGETS)}",
                       "gaunt_method": f"one of {list(gaunt_methods())}",
                       "gaunt_conv_products": f"{PATH_CONV} or a whole number",
                       "gaunt_product_gain": "a positive number"}.get(key, "a whole number")
            then = "MACE runs as upstream, e3nn" if key == "tensor_product" else "its default applies"
            raise GauntSettingsError(f"{key} is empty in {path}: give {allowed}, or remove the key (then {then})")


def add_arguments(parser: Any) -> Any:
    """Add ``--tensor_product``, ``--gaunt_targets``, ``--gaunt_method``, ``--gaunt_conv_products``,
    ``--gaunt_product_chains``, ``--gaunt_product_odd_chains``, ``--gaunt_product_gain`` to MACE's parser. Their defaults are ``None`` (not
    given): ``tensor_product`` then means ``e3nn`` and each ``gaunt_*`` key its documented default (see
    :func:`options_from_args`)."""

    def _tensor_product(value: str) -> str:
        return str(value).strip().lower()

    parser.add_argument(
        "--tensor_product",
        help="tensor-product implementation: e3nn (upstream MACE, the default) or gaunt (Gaunt tensor "
        "products from gaunt-plugins)",
        type=_tensor_product,
        default=None,
        choices=list(TENSOR_PRODUCTS),
    )
    parser.add_argument(
        "--gaunt_targets",
        help="with --tensor_product gaunt: which parts use Gaunt products (conv, product; default "
        f"{' '.join(DEFAULT_TARGETS)})",
        nargs="+",
        type=str,
        default=None,
    )
    parser.add_argument(
        "--gaunt_method",
        help="no effect, to be removed (the Gaunt layers always compute on the grid; accepted for older configs)",
        type=lambda v: str(v).strip().lower(),
        default=None,
        choices=list(gaunt_methods()),
    )
    def _argument_type(parse, *extra):
        """``parse(value, *extra)`` as an argparse ``type`` whose errors argparse prints as they are."""
        def argument(value: str):
            try:
                return parse(value, *extra)
            except ValueError as exc:  # argparse shows the message of this type only
                raise argparse.ArgumentTypeError(str(exc)) from exc
        return argument

    parser.add_argument(
        "--gaunt_conv_products",
        help="with --tensor_product gaunt: how the Gaunt convolution builds its output: paths (one block per "
        "path, MACE's convolution exactly) or K independent grid products per channel "
        f"(default {DEFAULT_CONV_PRODUCTS}, at most {MAX_CONV_PRODUCTS})",
        type=_argument_type(parse_conv_products),
        default=None,
    )
    parser.add_argument(
        "--gaunt_product_chains",
        help="with --tensor_product gaunt: independent power chains per channel in the Gaunt many-body "
        f"product (default: {DEFAULT_PRODUCT_CHAINS}, or {WIDE_PRODUCT_CHAINS} from max_ell {WIDE_INPUT_DEGREE}; "
        f"at most {MAX_PRODUCT_CHAINS})",
        type=_argument_type(parse_whole_number, "gaunt_product_chains"),
        default=None,
    )

    parser.add_argument(
        "--gaunt_product_odd_chains",
        help="with --tensor_product gaunt: odd-path chains (nested brackets) per channel in the Gaunt many-body "
        f"product, the couplings through odd intermediate paths (default: {DEFAULT_PRODUCT_ODD_CHAINS}, or "
        f"{WIDE_PRODUCT_ODD_CHAINS} from max_ell {WIDE_INPUT_DEGREE}; at most {MAX_PRODUCT_ODD_CHAINS}; correlation >= 3)",
        type=_argument_type(parse_whole_number, "gaunt_product_odd_chains"),
        default=None,
    )
    parser.add_argument(
        "--gaunt_product_gain",
        help="with --tensor_product gaunt: how many times faster than its parameters the many-body product's "
        f"weights move under the optimiser (default: the layer's, 8; at most {MAX_PRODUCT_GAIN:g})",
        type=_argument_type(parse_gain),
        default=None,
    )
    return parser


# The method a Gaunt block uses when it is built through MACE's own constructors, which pass no
# Gaunt-specific argument. Set with `with build_options(GauntOptions(...)):`.
_BUILD_OPTIONS: contextvars.ContextVar[GauntOptions] = contextvars.ContextVar(
    "gaunt_plugins_mace_build_options", default=GauntOptions()
)


def current_build_options() -> GauntOptions:
    return _BUILD_OPTIONS.get()


@contextlib.contextmanager
def build_options(options: Optional[GauntOptions]) -> Iterator[GauntOptions]:
    """Make ``options`` the defaults of the Gaunt blocks built inside the ``with`` block."""
    token = _BUILD_OPTIONS.set(options if options is not None else GauntOptions())
    try:
        yield _BUILD_OPTIONS.get()
    finally:
        _BUILD_OPTIONS.reset(token)
