"""Plans: frozen descriptions of one Gaunt product, built once from its irreps and cached.

A plan holds what every executor needs and none re-derives: the degrees and degree slots of each side,
the gathers and flat-row offsets between e3nn's ``mul_ir`` layout and the dense channel-wise one, and the
float64 master tables with the normalisation folded in, handed out per ``(dtype, device)`` by
``plan.tensors.get(dtype, device)``.

- :class:`ProductPlan` (:func:`product_plan`): channel-wise weighted product (``GauntTensorProduct``).
- :class:`ConvPlan` (:func:`conv_plan`): ``P`` products per channel of node features and edge harmonics
  with per-edge weights (``GauntConvolution``, MACE's ``conv_tp``).
- :class:`ManyBodyPlan` (:func:`many_body_plan`): the power product (``GauntManyBody``).
- :class:`FunctionalPlan` (:func:`functional_plan`): :func:`gaunt_plugins.gaunt_product`.
"""
from .conv import ConvPlan, conv_plan
from .functional import FunctionalPlan, functional_plan
from .many_body import ManyBodyPlan, many_body_plan
from .product import ProductPlan, product_plan

__all__ = ["ProductPlan", "product_plan", "ConvPlan", "conv_plan", "ManyBodyPlan", "many_body_plan",
           "FunctionalPlan", "functional_plan"]
