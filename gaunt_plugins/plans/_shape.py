"""Sizes shared by the plans of two-input products (``in1``, ``in2`` -> ``out``)."""
from __future__ import annotations

__all__ = ["TwoInputSizes"]


class TwoInputSizes:
    """``channels`` (of ``in1``), the dense widths ``(I1, I2, Io)`` and the degree counts ``(K1, K2, K3)``."""

    @property
    def channels(self) -> int:
        return self.in1.mul

    @property
    def widths(self):
        return tuple((f.lmax + 1) ** 2 for f in (self.in1, self.in2, self.out))

    @property
    def num_degrees(self):
        return self.in1.num_degrees, self.in2.num_degrees, self.out.num_degrees
