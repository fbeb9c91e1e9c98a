"""The plan of a Gaunt convolution (:class:`~gaunt_plugins.layers.GauntConvolution`, MACE's ``conv_tp``)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..irreps import ChannelIrreps, channel_irreps, output_irreps
from ._cache import cached_plan
from ._cast import CastCache
from ._shape import TwoInputSizes
from ._layout import dense_gather, flat_gather, offsets_from_gather, offsets_from_scatter
from .tables import product_grid_tables

__all__ = ["ConvPlan", "conv_plan"]


@dataclass(frozen=True, eq=False)
class ConvPlan(TwoInputSizes):
    """``P`` Gaunt products per channel of node features ``C x (degrees1)`` and edge harmonics ``1 x (degrees2)``
    with per-edge weights, emitting ``P C x (degrees_out)`` (lane ``k C + c``: product ``k`` of channel ``c``).

    Flat ``x1 [E, in1.dim]``, ``sh [E, in2.dim]``, ``weight [E, (K1 + K2 + K3) P C]`` (degree-major, lane-minor)
    -> ``[E, out.dim]``. ``tensors.get(dtype, device)`` holds the tables ``to_grid1 [I1, Pg]``, ``to_grid2
    [I2, Pg]``, ``from_grid [Pg, Io]`` (normalisation folded in), the gathers ``index_in1 [P C I1]``, ``index_in2
    [I2]``, ``index_out [Do]``, the degree slots ``deg1 [I1]``, ``deg2 [I2]``, ``deg3 [Io]`` (every kernel's one
    degree encoding), ``scalar_coupling [Io]`` (scalar ``in1``: the product of a constant with harmonic ``k`` is
    ``scalar_coupling[k]`` times it; empty otherwise) and the flat-row offsets of the CPU kernels ``offsets_in1
    [P C, I1]`` and ``offsets_out [P C, Io]`` (-1: absent / not emitted).
    """

    in1: ChannelIrreps
    in2: ChannelIrreps
    out: ChannelIrreps  # the emitted irreps, multiplicity P C
    products: int
    normalize: bool
    tensors: CastCache

    @property
    def lanes(self) -> int:
        """Products times channels: the channel count every kernel sees."""
        return self.products * self.in1.mul

    @property
    def weight_numel(self) -> int:
        return sum(self.num_degrees) * self.lanes


@cached_plan
def conv_plan(irreps_in1: str, irreps_in2: str, irreps_out: str, products: int = 1,
              normalize: bool = True) -> ConvPlan:
    """The (cached) plan; ``irreps_out`` has multiplicity ``C`` (one copy per degree and product)."""
    f1 = channel_irreps(irreps_in1, "irreps_in1 (node features)")
    f2 = channel_irreps(irreps_in2, "irreps_in2 (edge spherical harmonics)", mul=1)
    fc = channel_irreps(irreps_out, "irreps_out", mul=f1.mul)
    fo = channel_irreps(output_irreps(products * f1.mul, fc.degrees, fc.twist), "irreps_out")
    y1, y2, proj = product_grid_tables(f1, f2, fo, normalize, "GauntConvolution irreps_out")
    lanes = products * f1.mul
    index_in1 = dense_gather(f1, repeat=products)
    index_out = flat_gather(fo)
    # scalar node features: output coefficient k is coupling[k] x1 sh[k] (the grid product of a constant)
    width_out = proj.shape[1]
    coupling = (torch.einsum("p,kp,pk->k", y1[0], y2[:width_out], proj) if f1.lmax == 0 and width_out <= y2.shape[0]
                else y1.new_zeros(0))
    tensors = CastCache(dict(
        to_grid1=y1, to_grid2=y2, from_grid=proj, scalar_coupling=coupling,
        index_in1=index_in1, index_in2=dense_gather(f2), index_out=index_out,
        deg1=f1.degree_slots(), deg2=f2.degree_slots(), deg3=fo.degree_slots(),
        offsets_in1=offsets_from_gather(index_in1, f1.dim, lanes),
        offsets_out=offsets_from_scatter(index_out, lanes, (fo.lmax + 1) ** 2)))
    return ConvPlan(f1, f2, fo, int(products), bool(normalize), tensors)
