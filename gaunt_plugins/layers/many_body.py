"""GauntManyBody: the many-body (power) product that replaces MACE's SymmetricContraction."""
from __future__ import annotations

import torch

from typing import Optional

from .._e3nn import compile_mode
from ..backends import registry, torch_ops
from ..backends.cpu.script import MB_MAXI, MB_MAXNU, MB_MAXP, operator_device
from ..backends.torch_ops import dense_to_flat
from ..irreps import channel_irreps
from ..plans import many_body_plan
from ._planned import PlannedModule, check_floating, layer_method, pickled_normalize, whole_number
from .odd_paths import GauntOddPaths

__all__ = ["GauntManyBody", "DEFAULT_WEIGHT_GAIN"]

#: how much faster than its parameters the layer's weights move (see ``GauntManyBody``); on acac (the
#: main job's MACE config, 3 seeds) gains 1, 4, 8 and 16 trained to 1.14x, 1.07x, 1.01x and 1.06x upstream's
#: force MAE
DEFAULT_WEIGHT_GAIN = 8.0


@compile_mode("script")
class GauntManyBody(PlannedModule):
    """Element-dependent many-body product of correlation order ``nu_max`` (MACE's product basis).

    ``forward(x [N, C, sum_l (2l+1)], node_attrs [N, num_elements]) -> [N, irreps_out.dim]``; ``x`` holds
    the ``C`` channels of ``irreps_in`` (``C x (degrees)``), ``node_attrs`` is the element one-hot. With
    ``f_j[k, c] = sum_l w_in[z, j, l, k, c] x[c, l]`` (the function of channel ``c`` reweighted per degree,
    for chain ``k``):

        B[c, lo] = sum_{k=1..chains} sum_{nu=1..nu_max} w_out[z, nu, lo, k, c] * proj_lo( f_1[k, c] * ... * f_nu[k, c] )

    computed by pointwise powers on the grid exact for degree ``nu_max L + Lo``. Weights
    ``weights_in [num_elements, nu_max, K, chains C]``, ``weights_out [num_elements, nu_max, Ko, chains C]``
    (lane ``k C + c``), both multiplied by ``weight_gain`` (a 0-dim buffer) in ``forward``: the parameters
    hold ``w / weight_gain``, so an optimiser whose step is about ``lr`` per parameter whatever its scale
    (Adam, MACE's default) moves ``w`` ``weight_gain`` times as far. ``w_in`` starts at 1 (``w_out`` at
    ``O(1)``), where MACE's symmetric-contraction weights start at ``O(1 / basis size)``: with a gain of 1 the
    Gaunt weights change by about ``lr`` relative to their size per step and train more slowly than
    MACE's. The initial function does not depend on the gain. Layers saved without a gain have 1.

    ``scalar_bias`` (default on, natural-parity outputs with a ``0e`` part): a per-element, per-channel constant
    ``b[z, c]`` added to the ``0e`` output, starting at 0. A readout of it is a per-element energy shift: a MACE
    model's energy error after short training is mostly a constant offset that only the (lightly weighted) energy
    loss teaches, and without the bias the Gaunt model's offset shrinks more slowly than upstream's. Layers saved
    without it have none.

    Compared with MACE's ``SymmetricContraction`` (a full symmetric tensor basis per element): the
    couplings are restricted to Gaunt paths (even ``l1+l2+l3`` at every step, so no pseudotensor
    outputs from natural inputs) and each chain factorises per degree, with ``O(chains nu_max (K + Ko) C)``
    weights per element instead of one per basis function; more chains fit more of the symmetric basis.
    ``contraction_degree`` (MACE's name) is ``correlation``.

    ``odd_chains > 0`` (correlation >= 3) adds :class:`GauntOddPaths` (``odd_paths``): that many nested Poisson
    brackets per channel, the order-3 couplings through odd intermediate paths that no chain forms, to the
    outputs of degree >= 1 (a scalar output has no such coupling: with scalar outputs alone there is no
    ``odd_paths``); their output weights start at 0, so the initial function is the same. Layers saved without
    it have none.
    """

    _TABLES = ("to_grid", "from_grids")
    _DERIVED = ("offsets_in", "offsets_out")
    #: buffers that layers saved by earlier versions lack; such a layer loads them as 1 (the identity)
    DEFAULTED_BUFFERS = ("weight_gain",)
    __jit_unused_properties__ = ["plan", "contraction_degree", "odd_chains"]

    def __init__(self, irreps_in, irreps_out, correlation: int, num_elements: int, normalize: bool = True,
                 method: str = "auto", chains: int = 1, weight_gain: float = DEFAULT_WEIGHT_GAIN,
                 scalar_bias: bool = True, odd_chains: int = 0):
        super().__init__()
        correlation = whole_number(correlation, "correlation", "GauntManyBody")
        num_elements = whole_number(num_elements, "num_elements", "GauntManyBody")
        chains = whole_number(chains, "chains", "GauntManyBody")
        if isinstance(odd_chains, bool) or not isinstance(odd_chains, int) or odd_chains < 0:
            raise ValueError(f"GauntManyBody: odd_chains must be a whole number >= 0, got {odd_chains!r}")
        if odd_chains and correlation < 3:
            raise ValueError(f"GauntManyBody: odd_chains needs correlation >= 3 (the odd-path couplings are of order "
                             f"3), got correlation {correlation}")
        if isinstance(weight_gain, bool) or not isinstance(weight_gain, (int, float)) or not (
                0.0 < float(weight_gain) < float("inf")):
            raise ValueError(f"GauntManyBody: weight_gain must be a positive finite number, got {weight_gain!r}")
        fi = channel_irreps(irreps_in, "irreps_in")
        fo = channel_irreps(irreps_out, "irreps_out", mul=fi.mul)
        self.method = layer_method(method, "GauntManyBody")
        self.normalize = bool(normalize)
        plan = many_body_plan(str(fi.irreps), str(fo.irreps), correlation, self.normalize, chains)
        self.__dict__["_plan"] = plan
        self.chains = chains
        self.irreps_in, self.irreps_out = fi.irreps, fo.irreps
        self.correlation = correlation
        self.num_elements = num_elements
        self.channels = fi.mul
        self.k_in, self.k_out = fi.num_degrees, fo.num_degrees
        self.width_in = plan.widths[0]
        self.compact_in = plan.compact_width
        self.dim_out = fo.dim
        t = plan.tensors.get(torch.get_default_dtype(), torch.device("cpu"))
        self._register_plan_buffers(t, ("to_grid", "from_grids", "index_in", "index_out", "deg_in", "deg_out"))
        self._register_derived()
        lanes = chains * self.channels
        weights_in = torch.ones(num_elements, correlation, self.k_in, lanes)
        # chains after the first start apart from it, so that they learn different couplings
        weights_in[..., self.channels:] += 0.5 * torch.randn(num_elements, correlation, self.k_in, lanes - self.channels)
        self.register_buffer("weight_gain", torch.tensor(float(weight_gain)))
        self.weights_in = torch.nn.Parameter(weights_in / float(weight_gain))
        # the linear term starts at unit scale, the higher powers smaller (as in MACE's symmetric
        # contraction, whose linear coupling has one basis function and the higher ones many); the
        # chains' sum keeps that scale
        scale = torch.full((correlation, 1, 1), correlation ** -0.5)
        scale[0] = 1.0
        self.weights_out = torch.nn.Parameter(
            torch.randn(num_elements, correlation, self.k_out, lanes) * scale / (chains ** 0.5 * float(weight_gain)))
        self.scalar_start = _scalar_start(fo.irreps)
        self.scalar_bias: Optional[torch.nn.Parameter] = None
        if scalar_bias and self.scalar_start >= 0:
            self.scalar_bias = torch.nn.Parameter(torch.zeros(num_elements, self.channels))
        # the brackets' scalar part vanishes: a layer with scalar outputs alone (MACE's last) gets none
        self._odd_chains = odd_chains
        self.add_module("odd_paths", GauntOddPaths(fi, fo, num_elements, odd_chains, float(weight_gain))
                        if odd_chains and max(fo.degrees) > 0 else None)

    @property
    def odd_chains(self) -> int:
        """The odd-path chains asked for (a layer whose outputs are all scalars has no ``odd_paths``)."""
        return self._odd_chains

    @property
    def contraction_degree(self) -> int:
        return self.correlation

    def _build_plan(self):
        return many_body_plan(str(self.irreps_in), str(self.irreps_out), self.correlation, self.normalize,
                              self.chains)

    def __setstate__(self, state) -> None:
        state.pop("contraction_degree", None)  # pickled as an attribute by earlier versions
        buffers = state.get("_buffers", {})
        for name in self.DEFAULTED_BUFFERS:  # pickled before the gain: its parameters are the weights
            buffers.setdefault(name, torch.ones((), dtype=buffers["to_grid"].dtype))
        state.setdefault("chains", 1)
        state.setdefault("normalize", pickled_normalize(state, "from_grids", _normalized_plan))
        state.get("_parameters", {}).setdefault("scalar_bias", None)  # pickled before the bias: none
        state.setdefault("scalar_start", _scalar_start(state["irreps_out"]))
        state.get("_modules", {}).setdefault("odd_paths", None)  # pickled before the odd paths: none
        state.setdefault("_odd_chains", 0)
        super().__setstate__(state)
        if any(name not in self._buffers for name in self._DERIVED):  # pickled before these tables were buffers
            self._register_derived()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        if prefix + "weights_in" in state_dict:
            for name in self.DEFAULTED_BUFFERS:  # saved before the gain: its parameters are the weights
                state_dict.setdefault(prefix + name, torch.ones((), dtype=self.weight_gain.dtype))
            if self.scalar_bias is not None:  # saved before the bias: a zero bias predicts what it did
                state_dict.setdefault(prefix + "scalar_bias", torch.zeros_like(self.scalar_bias))
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}({self.irreps_in} -> {self.irreps_out} | correlation={self.correlation}, "
                f"{self.chains} chain(s) per channel, {self.num_elements} elements, "
                f"scalar bias {'on' if self.scalar_bias is not None else 'off'}, "
                f"{self.odd_chains} odd-path chain(s), method={self.method})")

    def forward(self, x: torch.Tensor, node_attrs: torch.Tensor) -> torch.Tensor:
        if x.dim() != 3 or x.shape[1] != self.channels or x.shape[2] != self.compact_in:
            raise ValueError(f"GauntManyBody: x must be [N, {self.channels}, {self.compact_in}], got {list(x.shape)}")
        if node_attrs.dim() != 2 or node_attrs.shape[0] != x.shape[0] or node_attrs.shape[1] != self.num_elements:
            raise ValueError(f"GauntManyBody: node_attrs must be [N={x.shape[0]}, {self.num_elements}], "
                             f"got {list(node_attrs.shape)}")
        check_floating("GauntManyBody", [x])
        dtype = x.dtype
        compute = torch.float64 if dtype == torch.float64 else torch.float32
        n = x.shape[0]
        attrs = node_attrs.to(compute)
        gain = self.weight_gain.to(compute)
        w_in = torch.matmul(attrs, self.weights_in.to(compute).reshape(self.num_elements, -1)) * gain
        w_out = torch.matmul(attrs, self.weights_out.to(compute).reshape(self.num_elements, -1)) * gain
        lanes = self.chains * self.channels
        w_in = w_in.view(n, self.correlation, self.k_in, lanes)
        w_out = w_out.view(n, self.correlation, self.k_out, lanes)
        x = x.to(compute)
        out = self._compute(x, w_in, w_out)
        odd_paths = self.odd_paths
        if odd_paths is not None:
            out = out + odd_paths(x, attrs, gain)
        bias = self.scalar_bias
        if bias is not None:
            shift = torch.matmul(attrs, bias.to(compute))
            start = self.scalar_start
            out = torch.cat([out[:, :start], out[:, start:start + self.channels] + shift,
                             out[:, start + self.channels:]], dim=1)
        return out.to(dtype)

    def _compute(self, x: torch.Tensor, w_in: torch.Tensor, w_out: torch.Tensor) -> torch.Tensor:
        """The one route of every call (eager, TorchScript, ``torch.compile``; :mod:`gaunt_plugins.backends.registry`):
        ``torch.ops.gaunt.many_body`` on CPU and CUDA tensors where it serves, else the dense op of the backend setting
        (scripted: the reference)."""
        if torch.jit.is_scripting():
            if self._kernel_ops:  # a constant of the script: without the operators this branch is not compiled
                if operator_device(x):
                    return self._kernel_forward(x, w_in, w_out)
        elif self._kernels_serve(x):
            self._note_operator("many_body_product", x)
            return self._kernel_forward(x, w_in, w_out)
        compute = x.dtype
        xd = x
        if self.compact_in != self.width_in:
            xd = torch.cat([x, x.new_zeros(x.shape[0], self.channels, 1)], dim=2).index_select(2, self.index_in)
        if self.chains > 1:
            xd = xd.repeat(1, self.chains, 1)
        y, fs = self.to_grid.to(compute), self.from_grids.to(compute)
        if torch.jit.is_scripting():
            out = torch_ops.many_body_product(xd, w_in, w_out, self.deg_in, self.deg_out, y, fs)
        else:
            out = registry.many_body_product(xd, w_in, w_out, self.deg_in, self.deg_out, y, fs)
        if self.chains > 1:
            out = out.view(out.shape[0], self.chains, self.channels, out.shape[2]).sum(1)
        return dense_to_flat(out, self.index_out)

    @torch.jit.unused
    def _fits_kernels(self) -> bool:
        """Whether the plan is within ``many_body.c``'s stack limits (the dtype is float32 or float64 here)."""
        return (self.to_grid.shape[1] <= MB_MAXP and self.correlation <= MB_MAXNU
                and max(self.width_in, self.from_grids.shape[2]) <= MB_MAXI)

    def _kernel_forward(self, x: torch.Tensor, w_in: torch.Tensor, w_out: torch.Tensor) -> torch.Tensor:
        """``torch.ops.gaunt.many_body`` on the compact rows (every chain reading its channel's coefficients)."""
        compute = x.dtype
        xl = x if self.chains == 1 else x.repeat(1, self.chains, 1)
        return torch.ops.gaunt.many_body(xl, w_in, w_out, self.offsets_in, self.offsets_out, self.deg_in, self.deg_out,
                                         self.to_grid.to(compute), self.from_grids.to(compute), self.dim_out)


def _scalar_start(irreps_out) -> int:
    """Where the ``0e`` block of a flat ``irreps_out`` feature starts (-1: it has none)."""
    for (_, ir), sl in zip(irreps_out, irreps_out.slices()):
        if ir.l == 0 and ir.p == 1:
            return int(sl.start)
    return -1


def _normalized_plan(state: dict):
    return many_body_plan(str(state["irreps_in"]), str(state["irreps_out"]), int(state["correlation"]), True,
                          int(state.get("chains", 1)))
