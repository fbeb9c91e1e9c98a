"""The Gaunt self-mix sub-layer of EquiformerV2 (Luo et al., ICLR 2024, section 4).

A node-wise, channel-wise residual branch added to every transformer block::

    x  ->  x + linear( gaunt( w1 * norm(x), w2 * norm(x) ) )

- ``x``: fairchem's node features ``[N, (lmax+1)^2, C]`` (coefficient-major, l-major, m = -l..l,
  e3nn real spherical harmonics, orthonormal basis).
- ``w1``, ``w2``: learnable per-degree, per-channel weights ``[lmax+1, C]`` (initialised to one).
- ``gaunt``: the exact Gaunt product of :func:`gaunt_plugins.gaunt_product`, channel by channel,
  output truncated to degree ``lmax``. It is computed on a quadrature grid exact for degree
  ``3 lmax`` (or the 2D Fourier path), not on ``SO3_Grid``'s default resolution, which aliases a
  degree-``2 lmax`` product. It is scaled by ``sqrt(4 pi)`` so that two ``l = 0`` features multiply
  as plain scalars.
- ``linear``: a per-degree channel mix ``[lmax+1, C, C]`` with a bias on ``l = 0`` (the shape of
  fairchem's ``SO3_LinearV2``); it also carries the per-degree output weights.

Initialisation. The product is not normalised: for a normalised input (unit RMS per coefficient)
its degree-``l`` output has RMS ``p_l`` of about ``(lmax+1)^2`` at ``l = 0`` (the mean of ``f^2``)
and ``~lmax+1`` above (26, 6.3, 5.9, 5.3, 4.8 at ``lmax = 4``), so a linear drawn at fairchem's
scale ``1/sqrt(C)`` would start the branch ~100-800x larger than the attention and feed-forward
branches of the same block (RMS ~0.01-0.05 per coefficient). The output linear of degree ``l``
is therefore drawn with std ``INIT_BRANCH_RMS / (sqrt(C) p_l)``, ``p_l`` the exact RMS of the
square of a unit-variance Gaussian input (:func:`gaunt_plugins.math.normalization.product_normalization`):
the branch starts at RMS :data:`INIT_BRANCH_RMS` (0.01, the scale of stock EquiformerV2's
attention branch at initialisation) at every degree. Only the initial draw is scaled; the forward
pass and the meaning of saved weights are the same as with any other initialisation.

``mmax``: EquiformerV2's ``mmax_list`` restricts the orders kept by the SO(2) edge convolutions in
each edge's own rotated frame. Node features carry every order ``m <= l`` in the global frame and
so does this node-wise layer: cutting orders in the global frame would break equivariance. The
layer therefore reads and writes all ``(lmax+1)^2`` coefficients whatever ``mmax`` is.

With ``normalize=True`` (the default) the product is divided by ``p_l`` in the forward pass (a persistent buffer
``product_scale``) and the linear drawn with std ``INIT_BRANCH_RMS / sqrt(C)``: the same initial branch, but
the linear's gradient is no longer multiplied by ``p_l`` (26x at ``l = 0``), so an optimiser with
per-parameter steps moves the branch at the stock linears' pace. A layer saved without the buffer loads
with ``product_scale = 1`` and predicts what it did.

With ``zero_init=True`` the linear starts at zero: the branch adds exactly zero, so a stock model
converted to the Gaunt variant predicts what it predicted before (see
:mod:`gaunt_plugins.adapters.equiformer_v2_convert`).

This module does not import fairchem.
"""
from __future__ import annotations

import math
from functools import lru_cache
from typing import Optional

import torch
from torch import nn

from gaunt_plugins.ops import gaunt_product

__all__ = ["GauntSelfMix", "INIT_BRANCH_RMS", "SQRT_4PI", "product_rms"]

SQRT_4PI = math.sqrt(4.0 * math.pi)

#: RMS per coefficient, at every degree, of a freshly initialised branch on unit-RMS input.
INIT_BRANCH_RMS = 0.01


def product_rms(lmax: int) -> torch.Tensor:
    """``[lmax+1]`` float64: the RMS of degree ``l`` of ``sqrt(4 pi) gaunt(y, y)`` truncated to
    ``lmax``, for ``y`` with independent unit-variance Gaussian coefficients up to ``lmax``.

    Exact (Isserlis): ``p_0^2 = (lmax+1)^4 + 2 (lmax+1)^2`` at ``l = 0``, ``~lmax+1`` above.
    """
    return torch.tensor(_product_rms(int(lmax)), dtype=torch.float64)


@lru_cache(maxsize=None)
def _product_rms(lmax: int) -> tuple:
    from gaunt_plugins.math.normalization import product_normalization

    degrees = list(range(lmax + 1))
    factors = product_normalization([degrees, degrees], degrees, identical=True)
    return tuple(float(SQRT_4PI / f) for f in factors)


def _degree_index(lmax: int) -> torch.Tensor:
    """``[(lmax+1)^2]`` long tensor: the degree ``l`` of each coefficient (l-major order)."""
    return torch.tensor([l for l in range(lmax + 1) for _ in range(2 * l + 1)], dtype=torch.long)


class GauntSelfMix(nn.Module):
    """``linear(gaunt(w1 * norm(x), w2 * norm(x)))`` on ``[N, (lmax+1)^2, C]`` features.

    Returns the branch only (``[N, (lmax+1)^2, C]``); the caller adds the residual.

    Args:
        lmax: largest degree of the features (one resolution).
        channels: number of channels ``C``.
        norm: an equivariant normalisation module applied first (``None``: identity). In the
            EquiformerV2 adapter it is fairchem's ``get_normalization_layer(norm_type, ...)``.
        method: forwarded to :func:`gaunt_plugins.gaunt_product` (``"auto"``, ``"grid"``,
            ``"fourier"``).
        zero_init: start the output linear at zero (the branch is then exactly zero).
        normalize: divide the product's degree ``l`` by ``p_l`` (see the module docstring; default on).
        weight_init: ``"normal"`` or ``"uniform"``: the distribution of the output linear when
            ``zero_init`` is False (fairchem's ``weight_init`` names), both with the per-degree std
            ``INIT_BRANCH_RMS / (sqrt(C) p_l)`` of the module docstring.

    Example:
        >>> mix = GauntSelfMix(lmax=2, channels=4)
        >>> mix(torch.randn(3, 9, 4)).shape
        torch.Size([3, 9, 4])
    """

    def __init__(
        self,
        lmax: int,
        channels: int,
        norm: Optional[nn.Module] = None,
        method: str = "auto",
        zero_init: bool = False,
        weight_init: str = "normal",
        normalize: bool = True,
    ) -> None:
        super().__init__()
        if lmax < 0:
            raise ValueError(f"GauntSelfMix: lmax must be >= 0, got {lmax}")
        if channels < 1:
            raise ValueError(f"GauntSelfMix: channels must be >= 1, got {channels}")
        if weight_init not in ("normal", "uniform"):
            raise ValueError(f"GauntSelfMix: weight_init must be 'normal' or 'uniform', got {weight_init!r}")
        self.lmax = int(lmax)
        self.channels = int(channels)
        self.method = str(method)
        self.norm = norm if norm is not None else nn.Identity()
        self.input_weight1 = nn.Parameter(torch.ones(self.lmax + 1, self.channels))
        self.input_weight2 = nn.Parameter(torch.ones(self.lmax + 1, self.channels))
        self.weight = nn.Parameter(torch.empty(self.lmax + 1, self.channels, self.channels))
        self.bias = nn.Parameter(torch.zeros(self.channels))
        # derived from lmax: not part of the state dict, so checkpoints carry parameters only
        self.register_buffer("expand_index", _degree_index(self.lmax), persistent=False)
        self._check_method()  # before the scale and the initialisation, which need the product's tables
        scale = 1.0 / product_rms(self.lmax) if normalize else torch.ones(self.lmax + 1, dtype=torch.float64)
        self.register_buffer("product_scale", scale.to(torch.get_default_dtype()))
        self.reset_parameters(zero_init=zero_init, weight_init=weight_init)

    def reset_parameters(self, zero_init: bool = False, weight_init: str = "normal") -> None:
        """Input weights to one, bias to zero, the output linear to zero or random with the
        per-degree std ``INIT_BRANCH_RMS / (sqrt(C) p_l)`` (branch RMS ``INIT_BRANCH_RMS``)."""
        with torch.no_grad():
            self.input_weight1.fill_(1.0)
            self.input_weight2.fill_(1.0)
            self.bias.zero_()
            if zero_init:
                self.weight.zero_()
                return
            if weight_init == "normal":
                self.weight.normal_(0.0, 1.0)
            else:
                self.weight.uniform_(-math.sqrt(3.0), math.sqrt(3.0))  # unit variance
            effective = product_rms(self.lmax) * self.product_scale.to(torch.float64)  # the forward's p_l
            std = INIT_BRANCH_RMS / (math.sqrt(self.channels) * effective)  # [lmax+1]
            self.weight.mul_(std.to(device=self.weight.device, dtype=self.weight.dtype).view(-1, 1, 1))

    def _check_method(self) -> None:
        """Fail at construction, with context, if the product cannot serve this degree/method."""
        probe = torch.zeros(1, (self.lmax + 1) ** 2, dtype=torch.float64)
        try:
            gaunt_product(probe, probe, self.lmax, method=self.method)
        except ValueError as exc:
            raise ValueError(
                f"EquiformerV2 Gaunt self-mix (lmax={self.lmax}, method={self.method!r}) is not "
                f"available: {exc}"
            ) from exc

    @property
    def irreps(self) -> str:
        """The features' irreps in e3nn terms (natural parity describes EquiformerV2's SO(3) features)."""
        return "+".join(f"{self.channels}x{l}{'e' if l % 2 == 0 else 'o'}" for l in range(self.lmax + 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [N, (lmax+1)^2, C]`` -> branch ``[N, (lmax+1)^2, C]``."""
        y = self.norm(x)
        w1 = self.input_weight1.index_select(0, self.expand_index)  # [(L+1)^2, C]
        w2 = self.input_weight2.index_select(0, self.expand_index)
        a = (y * w1).transpose(1, 2)  # [N, C, (L+1)^2]
        b = (y * w2).transpose(1, 2)
        prod = gaunt_product(a, b, self.lmax, method=self.method) * SQRT_4PI  # [N, C, (L+1)^2]
        prod = prod * self.product_scale.to(prod.dtype).index_select(0, self.expand_index)
        weight = self.weight.index_select(0, self.expand_index)  # [(L+1)^2, C_out, C_in]
        out = torch.einsum("nim,moi->nmo", prod, weight)  # [N, (L+1)^2, C]
        return torch.cat([out.narrow(1, 0, 1) + self.bias, out.narrow(1, 1, out.shape[1] - 1)], dim=1)

    @property
    def normalized(self) -> bool:
        return bool((self.product_scale != 1).any())

    def __setstate__(self, state) -> None:
        buffers = state.get("_buffers", {})
        if "product_scale" not in buffers:  # pickled before the buffer existed: the product was not normalised
            lmax = state["lmax"]
            buffers["product_scale"] = torch.ones(lmax + 1, dtype=state["_parameters"]["weight"].dtype)
        super().__setstate__(state)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        if prefix + "weight" in state_dict and prefix + "product_scale" not in state_dict:
            # saved before the buffer existed: the product was not normalised
            state_dict[prefix + "product_scale"] = torch.ones_like(self.product_scale)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def extra_repr(self) -> str:
        return (f"lmax={self.lmax}, channels={self.channels}, method={self.method!r}, "
                f"normalized={self.normalized}")
