"""Channel-wise irreps: what a Gaunt layer accepts at its e3nn boundary.

A Gaunt product multiplies spherical functions channel by channel, so a feature must be
``C x (l_a + l_b + ...)``: one multiplicity ``C`` for every irrep, each degree at most once, and
one parity rule for all of them. Y_l has parity (-1)^l, so a feature is

- *natural* (twist +1) when every irrep has parity (-1)^l (0e, 1o, 2e, ...), or
- *twisted* (twist -1) when every irrep has parity -(-1)^l (0o, 1e, 2o, ...),

and ``twist(x1 (*) x2) = twist(x1) * twist(x2)``. A mixed feature cannot be one spherical function.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from ._e3nn import o3

__all__ = ["ChannelIrreps", "channel_irreps", "output_irreps", "flat_to_dense_index", "dense_to_flat_index"]


@dataclass(frozen=True)
class ChannelIrreps:
    """``mul x (degrees)`` with one twist; ``irreps`` is the e3nn ``Irreps`` it came from."""

    irreps: o3.Irreps
    mul: int
    degrees: tuple[int, ...]
    twist: int

    @property
    def lmax(self) -> int:
        return max(self.degrees)

    @property
    def dim(self) -> int:
        return self.irreps.dim

    @property
    def num_degrees(self) -> int:
        return len(self.degrees)

    def degree_slots(self) -> torch.Tensor:
        """``[(lmax+1)^2]`` long: for each dense coefficient, the slot of its degree in ``degrees``
        (0 for degrees the feature lacks: their coefficients are zero)."""
        slot = {l: i for i, l in enumerate(self.degrees)}
        return torch.tensor([slot.get(l, 0) for l in range(self.lmax + 1) for _ in range(2 * l + 1)],
                            dtype=torch.long)


def _parity_twist(l: int, p: int) -> int:
    return 1 if p == (-1) ** l else -1


def channel_irreps(irreps, name: str, mul: int | None = None) -> ChannelIrreps:
    """Validate ``irreps`` as a channel-wise Gaunt feature; ``ValueError`` naming the irreps if not.

    ``mul`` (optional) is the multiplicity the feature must have.
    """
    try:
        irreps = o3.Irreps(irreps)
    except Exception as exc:  # e3nn raises ValueError/AssertionError depending on version
        raise ValueError(f"{name}: cannot parse irreps {irreps!r}: {exc}") from exc
    if len(irreps) == 0:
        raise ValueError(f"{name}: irreps are empty")
    muls = sorted({m for m, _ in irreps})
    if len(muls) != 1:
        raise ValueError(f"{name} = {irreps}: a Gaunt product is channel-wise; every irrep needs the same "
                         f"multiplicity, got {muls}")
    if mul is not None and muls[0] != mul:
        raise ValueError(f"{name} = {irreps}: expected multiplicity {mul} (the number of channels), got {muls[0]}")
    degrees = [ir.l for _, ir in irreps]
    if len(set(degrees)) != len(degrees):
        raise ValueError(f"{name} = {irreps}: each degree may appear once (merge copies with .simplify() "
                         f"or a linear layer first)")
    if degrees != sorted(degrees):
        raise ValueError(f"{name} = {irreps}: degrees must be in increasing order (use .sort())")
    twists = {_parity_twist(ir.l, ir.p) for _, ir in irreps}
    if len(twists) != 1:
        natural = [str(ir) for _, ir in irreps if _parity_twist(ir.l, ir.p) == 1]
        twisted = [str(ir) for _, ir in irreps if _parity_twist(ir.l, ir.p) == -1]
        raise ValueError(f"{name} = {irreps}: mixed parity; natural irreps {natural} and pseudo (twisted) irreps "
                         f"{twisted} cannot be one spherical function: split the feature by parity")
    return ChannelIrreps(irreps, muls[0], tuple(degrees), twists.pop())


def output_irreps(mul: int, degrees: Sequence[int], twist: int) -> o3.Irreps:
    """``mul x (l with parity twist * (-1)^l for l in degrees)``."""
    return o3.Irreps([(mul, (l, twist * (-1) ** l)) for l in degrees])


def flat_to_dense_index(feat: ChannelIrreps) -> torch.Tensor:
    """Gather index ``[C * (lmax+1)^2]`` from a flat e3nn ``mul_ir`` vector extended by one trailing
    zero (index ``dim``) to the dense channel-wise layout ``[C, (lmax+1)^2]``."""
    c, width = feat.mul, (feat.lmax + 1) ** 2
    idx = torch.full((c, width), feat.dim, dtype=torch.long)
    offset = 0
    for l in feat.degrees:
        d = 2 * l + 1
        block = torch.arange(c * d).view(c, d) + offset
        idx[:, l * l:l * l + d] = block
        offset += c * d
    return idx.reshape(-1)


def dense_to_flat_index(feat: ChannelIrreps) -> torch.Tensor:
    """Gather index ``[dim]`` from the dense ``[C * (lmax+1)^2]`` layout back to flat ``mul_ir``."""
    c, width = feat.mul, (feat.lmax + 1) ** 2
    parts = []
    for l in feat.degrees:
        d = 2 * l + 1
        parts.append((torch.arange(c)[:, None] * width + l * l + torch.arange(d)[None, :]).reshape(-1))
    return torch.cat(parts)
