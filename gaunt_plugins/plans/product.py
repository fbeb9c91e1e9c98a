"""The plan of a channel-wise weighted Gaunt product (:class:`~gaunt_plugins.layers.GauntTensorProduct`)."""
from __future__ import annotations

from dataclasses import dataclass

from ..irreps import ChannelIrreps, channel_irreps
from ._cache import cached_plan
from ._cast import CastCache
from ._shape import TwoInputSizes
from ._layout import dense_gather, flat_gather
from .tables import product_grid_tables

__all__ = ["ProductPlan", "product_plan"]


@dataclass(frozen=True, eq=False)
class ProductPlan(TwoInputSizes):
    """``out[c] = w3[c] proj((w1[c] x1[c]) (*) (w2[c] x2[c]))`` for ``C x (degrees)`` features.

    Flat inputs ``x1 [N, in1.dim]``, ``x2 [N, in2.dim]`` (e3nn ``mul_ir``), output ``[N, out.dim]``; weights
    ``[K, C]`` per side (degree slots ``deg*``). ``tensors.get(dtype, device)`` holds ``to_grid1 [I1, P]``,
    ``to_grid2 [I2, P]``, ``from_grid [P, Io]`` (normalisation folded in), the gathers ``index_in1
    [C I1]``, ``index_in2 [C I2]`` (flat row + one zero -> dense), ``index_out [Do]`` (dense -> flat) and
    the degree slots ``deg1 [I1]``, ``deg2 [I2]``, ``deg3 [Io]``.
    """

    in1: ChannelIrreps
    in2: ChannelIrreps
    out: ChannelIrreps
    normalize: bool
    tensors: CastCache


@cached_plan
def product_plan(irreps_in1: str, irreps_in2: str, irreps_out: str, normalize: bool = True) -> ProductPlan:
    """The (cached) plan for validated irreps strings."""
    f1 = channel_irreps(irreps_in1, "irreps_in1")
    f2 = channel_irreps(irreps_in2, "irreps_in2", mul=f1.mul)
    fo = channel_irreps(irreps_out, "irreps_out", mul=f1.mul)
    y1, y2, proj = product_grid_tables(f1, f2, fo, normalize, "GauntTensorProduct irreps_out")
    tensors = CastCache(dict(to_grid1=y1, to_grid2=y2, from_grid=proj, index_in1=dense_gather(f1),
                             index_in2=dense_gather(f2), index_out=flat_gather(fo), deg1=f1.degree_slots(),
                             deg2=f2.degree_slots(), deg3=fo.degree_slots()))
    return ProductPlan(f1, f2, fo, bool(normalize), tensors)
