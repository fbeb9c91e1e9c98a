"""The plan of a Gaunt many-body (power) product (:class:`~gaunt_plugins.layers.GauntManyBody`)."""
from __future__ import annotations

from dataclasses import dataclass

from ..irreps import ChannelIrreps, channel_irreps
from ._cache import cached_plan
from ._cast import CastCache
from ._layout import compact_gather, flat_gather, offsets_from_scatter
from .tables import power_grids

__all__ = ["ManyBodyPlan", "many_body_plan"]


@dataclass(frozen=True, eq=False)
class ManyBodyPlan:
    """``B[c, lo] = sum_{k=1..chains} sum_{nu=1..correlation} w_out[nu, lo, kC+c] proj_lo(prod_{j<=nu} f_j[kC+c])``
    with ``f_j[kC+c] = sum_l w_in[j, l, kC+c] x[c, l]``: ``chains`` independent running products per channel.

    Input MACE's compact ``x [N, C, sum_l (2l+1)]``, per-node weights ``w_in [N, nu, K, chains C]``, ``w_out
    [N, nu, Ko, chains C]`` (lane ``k C + c``: chain ``k`` of channel ``c``); output flat ``[N, out.dim]``.
    ``tensors.get(dtype, device)`` holds ``to_grid [I, P]``, ``from_grids [nu, P, Io]`` (slice ``nu-1`` projects
    the ``nu``-fold term, its normalisation folded in), ``index_in [I]`` (compact row + one zero -> dense),
    ``offsets_in [I]`` (-1: absent), ``index_out [Do]``, ``offsets_out [chains C, Io]`` (every chain of a channel
    adds into the same output offsets) and the degree slots ``deg_in [I]``, ``deg_out [Io]``.
    """

    feat: ChannelIrreps
    out: ChannelIrreps
    correlation: int
    normalize: bool
    chains: int
    tensors: CastCache

    @property
    def channels(self) -> int:
        return self.feat.mul

    @property
    def lanes(self) -> int:
        """Chains times channels: the channel count the kernels see."""
        return self.chains * self.feat.mul

    @property
    def compact_width(self) -> int:
        return sum(2 * l + 1 for l in self.feat.degrees)

    @property
    def widths(self):
        """Dense widths ``(I, Io)``."""
        return (self.feat.lmax + 1) ** 2, (self.out.lmax + 1) ** 2


@cached_plan
def many_body_plan(irreps_in: str, irreps_out: str, correlation: int, normalize: bool = True,
                   chains: int = 1) -> ManyBodyPlan:
    fi = channel_irreps(irreps_in, "irreps_in")
    fo = channel_irreps(irreps_out, "irreps_out", mul=fi.mul)
    to_grid, from_grids = power_grids(fi, fo, correlation, normalize, "GauntManyBody irreps_out")
    index_in = compact_gather(fi)
    offsets_in = index_in.clone()
    offsets_in[offsets_in == sum(2 * l + 1 for l in fi.degrees)] = -1
    index_out = flat_gather(fo)
    tensors = CastCache(dict(to_grid=to_grid, from_grids=from_grids, index_in=index_in, offsets_in=offsets_in,
                             index_out=index_out,
                             offsets_out=offsets_from_scatter(index_out, fo.mul, (fo.lmax + 1) ** 2).repeat(chains, 1),
                             deg_in=fi.degree_slots(), deg_out=fo.degree_slots()))
    return ManyBodyPlan(fi, fo, int(correlation), bool(normalize), int(chains), tensors)
