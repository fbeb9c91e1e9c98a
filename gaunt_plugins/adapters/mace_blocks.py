"""MACE blocks whose tensor products are Gaunt products, and the conversion of a built model.

- :class:`GauntRealAgnosticInteractionBlock` / :class:`GauntRealAgnosticResidualInteractionBlock`:
  MACE's first-layer and residual interactions with ``conv_tp`` a
  :class:`~gaunt_plugins.layers.GauntConvolution` (its ``weight_numel`` sizes the radial MLP
  ``conv_tp_weights``). Everything else (``linear_up``, ``linear``, ``skip_tp``, ``reshape``, the
  forward pass) is MACE's own: the classes subclass MACE's and only replace ``_setup``.
- :class:`GauntProductBasisBlock`: MACE's ``EquivariantProductBasisBlock`` with
  ``symmetric_contractions`` a :class:`~gaunt_plugins.layers.GauntManyBody`.
- :func:`gaunt_construction`: while it is active, MACE's own model constructors build these blocks
  directly (MACE's Clebsch-Gordan instructions and symmetric-contraction U-matrices for the replaced
  blocks are never computed): how ``tensor_product: gaunt`` builds a new model.
- :func:`gauntify_model`: turn the blocks of a built MACE model into these, keeping every weight
  that carries over (matched by name and shape); used for fine-tuning a foundation model with
  ``tensor_product: gaunt`` and by ``gaunt-convert-mace``.

The model class stays MACE's own (``ScaleShiftMACE``), so MACE's tools
(``extract_config_mace_model``, the calculator, ``mace_eval_configs``, TorchScript export) keep
working. A saved model refers to these classes by their import path: loading it needs
gaunt-plugins importable (not patched).

Shapes: node features are e3nn ``mul_ir`` flat ``[n_nodes, irreps.dim]``; the product basis takes
``[n_nodes, C, (L+1)^2]`` as MACE's interactions return it.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Tuple

import torch

import mace.modules  # noqa: F401  (import MACE before e3nn: it sets up e3nn 0.4.4 on new torch)
from mace.modules.blocks import (
    EquivariantProductBasisBlock,
    RealAgnosticInteractionBlock,
    RealAgnosticResidualInteractionBlock,
)
from mace.modules.irreps_tools import reshape_irreps
from mace.modules.wrapper_ops import FullyConnectedTensorProduct, Linear
from mace.tools.torch_tools import default_dtype

from gaunt_plugins._e3nn import compile_mode, o3
from gaunt_plugins.layers import GauntConvolution, GauntManyBody, GauntPathConvolution

from .mace_config import (PATH_CONV, GauntOptions, GauntSettingsError, build_options, check_irreps,
                          current_build_options)

from e3nn import nn as e3nn_nn  # after mace (see above)

__all__ = [
    "GauntRealAgnosticInteractionBlock",
    "GauntRealAgnosticResidualInteractionBlock",
    "GauntProductBasisBlock",
    "GAUNT_INTERACTIONS",
    "ConversionReport",
    "gauntify_model",
    "gaunt_construction",
    "built_blocks",
    "is_gaunt_model",
]

logger = logging.getLogger("gaunt_plugins.mace")


def _refuse_accelerated_backends(block: torch.nn.Module) -> None:
    cueq, oeq = getattr(block, "cueq_config", None), getattr(block, "oeq_config", None)
    if (cueq is not None and getattr(cueq, "enabled", False)) or (
        oeq is not None and getattr(oeq, "enabled", False)
    ):
        raise GauntSettingsError(
            f"{type(block).__name__}: Gaunt blocks cannot run under cuEquivariance or "
            f"OpenEquivariance (enable_cueq / enable_oeq); they are their own backend"
        )


def _setup_gaunt_conv(block: torch.nn.Module, residual: bool) -> None:
    """MACE's ``RealAgnostic[Residual]InteractionBlock._setup`` with a Gaunt ``conv_tp``."""
    if not hasattr(block, "cueq_config"):
        block.cueq_config = None
    if not hasattr(block, "oeq_config"):
        block.oeq_config = None
    _refuse_accelerated_backends(block)
    for name in ("node_feats_irreps", "edge_irreps", "target_irreps"):
        check_irreps(getattr(block, name), what=f"{type(block).__name__}.{name}")
    options = current_build_options()
    block.gaunt_method = options.method
    # with scalar node features every path has l1 = 0 and one product per channel is exact
    scalar_nodes = all(ir.l == 0 for _, ir in o3.Irreps(str(block.edge_irreps)))
    per_path = options.conv_products == PATH_CONV
    block.gaunt_conv_products = options.conv_products if per_path or not scalar_nodes else 1

    block.linear_up = Linear(
        block.node_feats_irreps,
        block.edge_irreps,
        internal_weights=True,
        shared_weights=True,
        cueq_config=block.cueq_config,
    )
    if per_path:
        block.conv_tp = GauntPathConvolution(block.edge_irreps, block.edge_attrs_irreps, block.target_irreps)
    else:
        block.conv_tp = GauntConvolution(
            block.edge_irreps, block.edge_attrs_irreps, block.target_irreps, method=block.gaunt_method,
            products=block.gaunt_conv_products,
        )
    # MACE's forward then calls conv_tp(node_feats, edge_attrs, tp_weights, edge_index) for the whole message
    # (gather, convolution, scatter-sum): one fused kernel where the backend has one
    block.conv_fusion = "gaunt"
    input_dim = block.edge_feats_irreps.num_irreps
    block.conv_tp_weights = e3nn_nn.FullyConnectedNet(
        [input_dim] + block.radial_MLP + [block.conv_tp.weight_numel],
        torch.nn.functional.silu,
    )
    block.irreps_out = block.target_irreps
    block.linear = Linear(
        block.conv_tp.irreps_out,
        block.irreps_out,
        internal_weights=True,
        shared_weights=True,
        cueq_config=block.cueq_config,
    )
    if residual:
        block.skip_tp = FullyConnectedTensorProduct(
            block.node_feats_irreps,
            block.node_attrs_irreps,
            block.hidden_irreps,
            cueq_config=block.cueq_config,
        )
    else:
        block.skip_tp = FullyConnectedTensorProduct(
            block.irreps_out,
            block.node_attrs_irreps,
            block.irreps_out,
            cueq_config=block.cueq_config,
        )
    block.reshape = reshape_irreps(block.irreps_out, cueq_config=block.cueq_config)


@compile_mode("script")
class GauntRealAgnosticInteractionBlock(RealAgnosticInteractionBlock):
    """MACE's first-layer interaction (``RealAgnosticInteractionBlock``) with a Gaunt convolution.

    Same constructor and forward as MACE's; ``conv_tp`` is a
    :class:`~gaunt_plugins.layers.GauntConvolution` with ``irreps_in1 = edge_irreps``
    (``C x (...)``), ``irreps_in2 = edge_attrs_irreps`` (the edge spherical harmonics) and
    ``irreps_out = target_irreps``; the method comes from
    :func:`~gaunt_plugins.adapters.mace_config.build_options` (default ``auto``).
    """

    def _setup(self) -> None:
        _setup_gaunt_conv(self, residual=False)


@compile_mode("script")
class GauntRealAgnosticResidualInteractionBlock(RealAgnosticResidualInteractionBlock):
    """MACE's residual interaction (``RealAgnosticResidualInteractionBlock``) with a Gaunt
    convolution; see :class:`GauntRealAgnosticInteractionBlock`."""

    def _setup(self) -> None:
        _setup_gaunt_conv(self, residual=True)


# stock class -> Gaunt class, for the interactions whose convolution can be replaced
GAUNT_INTERACTIONS: Dict[type, type] = {
    RealAgnosticInteractionBlock: GauntRealAgnosticInteractionBlock,
    RealAgnosticResidualInteractionBlock: GauntRealAgnosticResidualInteractionBlock,
}


@compile_mode("script")
class GauntProductBasisBlock(EquivariantProductBasisBlock):
    """MACE's ``EquivariantProductBasisBlock`` with a Gaunt many-body product.

    ``symmetric_contractions`` is a :class:`~gaunt_plugins.layers.GauntManyBody`:
    ``[n_nodes, C, (L+1)^2]`` features and one-hot ``node_attrs [n_nodes, num_elements]`` ->
    ``[n_nodes, target_irreps.dim]``; it exposes ``contraction_degree`` (the correlation order),
    ``irreps_in`` and ``irreps_out`` as MACE's tools expect. The forward pass is MACE's.
    """

    def __init__(
        self,
        node_feats_irreps: o3.Irreps,
        target_irreps: o3.Irreps,
        correlation: int,
        use_sc: bool = True,
        num_elements: Optional[int] = None,
        use_agnostic_product: bool = False,
        use_reduced_cg: Optional[bool] = None,  # accepted for MACE's signature; unused
        cueq_config=None,
        oeq_config=None,
        method: Optional[str] = None,
    ) -> None:
        torch.nn.Module.__init__(self)
        self.cueq_config = cueq_config
        self.oeq_config = oeq_config
        _refuse_accelerated_backends(self)
        node_feats_irreps = o3.Irreps(str(node_feats_irreps))
        target_irreps = o3.Irreps(str(target_irreps))
        check_irreps(node_feats_irreps, what="GauntProductBasisBlock input irreps")
        check_irreps(target_irreps, what="GauntProductBasisBlock target irreps")
        self.use_sc = use_sc
        self.use_agnostic_product = use_agnostic_product
        if use_agnostic_product:
            num_elements = 1
        if num_elements is None:
            raise ValueError("GauntProductBasisBlock needs num_elements")
        options = current_build_options()
        self.gaunt_method = method or options.method
        gain = {} if options.product_gain is None else {"weight_gain": options.product_gain}
        chains, odd_chains = options.chains_for(node_feats_irreps.lmax, correlation)
        self.symmetric_contractions = GauntManyBody(
            node_feats_irreps, target_irreps, correlation, num_elements, method=self.gaunt_method,
            chains=chains, odd_chains=odd_chains, **gain,
        )
        self.linear = Linear(
            target_irreps,
            target_irreps,
            internal_weights=True,
            shared_weights=True,
            cueq_config=cueq_config,
        )


# ---------------------------------------------------------------------------- direct construction
@contextlib.contextmanager
def gaunt_construction(options: GauntOptions, interactions: Tuple[str, ...] = ()) -> Iterator[None]:
    """Inside the block, MACE's model classes build Gaunt blocks for ``options.targets``.

    ``mace.modules.interaction_classes`` maps the stock names of the replaceable interactions to their
    Gaunt classes (``conv``) and ``mace.modules.models.EquivariantProductBasisBlock`` is the Gaunt product
    basis (``product``); both are restored on exit. ``interactions``: the interaction names the model
    will be built with; one with no Gaunt version raises ``ValueError`` before anything is built.
    """
    import mace.modules.models as models

    if options.conv:
        supported = {stock.__name__ for stock in GAUNT_INTERACTIONS}
        gaunt_names = {gaunt.__name__ for gaunt in GAUNT_INTERACTIONS.values()}
        unknown = [name for name in interactions if name not in supported | gaunt_names]
        if unknown:
            raise GauntSettingsError(
                f"tensor_product: gaunt has no Gaunt version of interaction {unknown[0]}; supported: "
                f"{sorted(supported)}. Use gaunt_targets: [product] to keep this interaction's e3nn convolution."
            )
    table = mace.modules.interaction_classes
    saved_table = dict(table)
    saved_product = models.EquivariantProductBasisBlock
    try:
        if options.conv:
            for stock, gaunt in GAUNT_INTERACTIONS.items():
                table[stock.__name__] = gaunt
        if options.product:
            models.EquivariantProductBasisBlock = GauntProductBasisBlock
        with build_options(options):
            yield
    finally:
        table.clear()
        table.update(saved_table)
        models.EquivariantProductBasisBlock = saved_product


def built_blocks(model: torch.nn.Module) -> List[str]:
    """``"interactions.1: RealAgnosticResidualInteractionBlock -> GauntRealAgnosticResidualInteractionBlock"``,
    ...: the Gaunt blocks of ``model`` and the MACE blocks they stand for."""
    stock_of = {gaunt: stock for stock, gaunt in GAUNT_INTERACTIONS.items()}
    lines = [f"interactions.{i}: {stock_of[type(b)].__name__} -> {type(b).__name__}"
             for i, b in enumerate(model.interactions) if type(b) in stock_of]
    lines += [f"products.{i}: EquivariantProductBasisBlock -> GauntProductBasisBlock"
              for i, b in enumerate(model.products) if isinstance(b, GauntProductBasisBlock)]
    return lines


# ---------------------------------------------------------------------------- conversion
@dataclass
class ConversionReport:
    """What :func:`gauntify_model` did: tensors of the replaced blocks that were copied, and
    parameters that were freshly initialised (tensors outside the replaced blocks are untouched)."""

    copied: List[str] = field(default_factory=list)
    fresh: List[str] = field(default_factory=list)
    converted_blocks: List[str] = field(default_factory=list)
    already_gaunt: List[str] = field(default_factory=list)  # target blocks that were Gaunt blocks already

    def summary(self) -> str:
        lines = [f"converted blocks: {', '.join(self.converted_blocks) or 'none'}"]
        if self.already_gaunt:
            lines.append(f"already Gaunt blocks (unchanged): {', '.join(self.already_gaunt)}")
        lines.append(f"copied ({len(self.copied)} tensors):")
        lines += [f"  {n}" for n in self.copied]
        lines.append(f"freshly initialised ({len(self.fresh)} parameters):")
        lines += [f"  {n}" for n in self.fresh]
        return "\n".join(lines)


def _correlation_of(product: torch.nn.Module) -> int:
    sc = product.symmetric_contractions
    if hasattr(sc, "contraction_degree"):
        return int(sc.contraction_degree)
    return len(sc.contractions[0].weights) + 1  # MACE's SymmetricContraction


def _num_elements_of(model: torch.nn.Module, product: torch.nn.Module) -> int:
    if getattr(product, "use_agnostic_product", False):
        return 1
    return int(model.node_embedding.linear.irreps_in.dim)


def _transfer(
    prefix: str, old: torch.nn.Module, new: torch.nn.Module, report: ConversionReport
) -> None:
    """Copy every tensor of ``old`` into ``new`` where name and shape agree (bit for bit).

    Parameters that do not carry over are reported as freshly initialised; buffers that do not
    (the Gaunt layers' quadrature tables and index maps) are derived from the irreps, not learnt,
    and are not reported.
    """
    old_state = old.state_dict()
    parameters = {name for name, _ in new.named_parameters()}
    keep = {}
    for name, tensor in new.state_dict().items():
        src = old_state.get(name)
        if src is not None and src.shape == tensor.shape and src.dtype == tensor.dtype:
            keep[name] = src.detach().clone()
            report.copied.append(f"{prefix}.{name}")
        elif name in parameters:
            report.fresh.append(f"{prefix}.{name}")
    new.load_state_dict(keep, strict=False)


def _interaction_kwargs(block: torch.nn.Module) -> dict:
    return dict(
        node_attrs_irreps=block.node_attrs_irreps,
        node_feats_irreps=block.node_feats_irreps,
        edge_attrs_irreps=block.edge_attrs_irreps,
        edge_feats_irreps=block.edge_feats_irreps,
        target_irreps=block.target_irreps,
        hidden_irreps=block.hidden_irreps,
        avg_num_neighbors=block.avg_num_neighbors,
        edge_irreps=block.edge_irreps,
        radial_MLP=list(block.radial_MLP),
        cueq_config=getattr(block, "cueq_config", None),
        oeq_config=getattr(block, "oeq_config", None),
    )


def _model_dtype_device(model: torch.nn.Module) -> Tuple[torch.dtype, torch.device]:
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype, p.device
    return torch.get_default_dtype(), torch.device("cpu")


def _copy_model(model: torch.nn.Module) -> torch.nn.Module:
    """A deep copy; through pickling where ``copy.deepcopy`` fails (e3nn 0.4.4 modules holding
    empty parameters cannot be deep-copied on new torch, but they pickle as MACE saves them)."""
    try:
        return copy.deepcopy(model)
    except (TypeError, RuntimeError):
        buffer = io.BytesIO()
        torch.save(model, buffer)
        buffer.seek(0)
        return torch.load(buffer, weights_only=False, map_location="cpu").to(
            next(model.parameters()).device)


def is_gaunt_model(model: torch.nn.Module) -> bool:
    """Whether any block of ``model`` is a Gaunt block."""
    gaunt = (GauntRealAgnosticInteractionBlock, GauntRealAgnosticResidualInteractionBlock,
             GauntProductBasisBlock)
    return any(isinstance(m, gaunt) for m in model.modules())


def gauntify_model(
    model: torch.nn.Module,
    options: Optional[GauntOptions] = None,
    inplace: bool = True,
) -> Tuple[torch.nn.Module, ConversionReport]:
    """Replace the tensor products of a built MACE model with Gaunt products.

    For each interaction (``"conv"`` in ``options.targets``) of class
    ``RealAgnosticInteractionBlock`` / ``RealAgnosticResidualInteractionBlock`` a Gaunt block is
    built with the same hyper-parameters; for each ``EquivariantProductBasisBlock`` (``"product"``)
    a :class:`GauntProductBasisBlock` with the same irreps, correlation and elements. Every tensor
    whose name and shape carry over is copied bit for bit (``linear_up``, ``skip_tp``, the radial
    MLP's hidden layers, the product's ``linear``; everything outside these blocks is untouched);
    the rest is freshly initialised: the Gaunt weights and, for a factorised convolution
    (``conv_products = K``), the radial MLP's last layer and the linear after the convolution, whose
    input shrinks to K copies per degree. A per-path convolution (``conv_products = "paths"``) is
    MACE's own and keeps every weight.

    Raises ``ValueError`` for interactions that have no Gaunt counterpart (Density, Att,
    NonLinear variants) and for pseudotensor irreps.
    """
    options = options or GauntOptions()
    if not inplace:
        model = _copy_model(model)
    report = ConversionReport()
    dtype, device = _model_dtype_device(model)
    gaunt_classes = tuple(GAUNT_INTERACTIONS.values())
    with build_options(options), default_dtype(dtype):
        if options.conv:
            for i, block in enumerate(model.interactions):
                if isinstance(block, gaunt_classes):
                    report.already_gaunt.append(f"interactions.{i}")
                    continue
                target = GAUNT_INTERACTIONS.get(type(block))
                if target is None:
                    raise GauntSettingsError(
                        f"tensor_product: gaunt has no Gaunt version of interaction "
                        f"{type(block).__name__} (layer {i}); supported: "
                        f"{sorted(c.__name__ for c in GAUNT_INTERACTIONS)}. Use gaunt_targets: "
                        f"[product] to keep this interaction's e3nn convolution."
                    )
                new = target(**_interaction_kwargs(block)).to(device=device, dtype=dtype)
                _transfer(f"interactions.{i}", block, new, report)
                model.interactions[i] = new
                report.converted_blocks.append(f"interactions.{i}: {type(block).__name__} -> {target.__name__}")
        if options.product:
            for i, block in enumerate(model.products):
                if isinstance(block, GauntProductBasisBlock):
                    report.already_gaunt.append(f"products.{i}")
                    continue
                if type(block) is not EquivariantProductBasisBlock:
                    raise GauntSettingsError(
                        f"tensor_product: gaunt cannot replace product block {type(block).__name__} "
                        f"(layer {i})"
                    )
                sc = block.symmetric_contractions
                new = GauntProductBasisBlock(
                    node_feats_irreps=sc.irreps_in,
                    target_irreps=block.linear.irreps_out,
                    correlation=_correlation_of(block),
                    use_sc=block.use_sc,
                    num_elements=_num_elements_of(model, block),
                    use_agnostic_product=getattr(block, "use_agnostic_product", False),
                    cueq_config=getattr(block, "cueq_config", None),
                    method=options.method,
                ).to(device=device, dtype=dtype)
                _transfer(f"products.{i}", block, new, report)
                model.products[i] = new
                report.converted_blocks.append(f"products.{i}: {type(block).__name__} -> GauntProductBasisBlock")
    return model, report
