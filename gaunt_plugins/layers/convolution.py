"""GauntConvolution: node features times edge spherical harmonics, per-edge weights (MACE's conv_tp)."""
from __future__ import annotations

from typing import Optional

import torch

from .._e3nn import compile_mode, o3
from ..backends import registry, torch_ops
from ..backends.cpu.script import CONV_MAXI, CONV_MAXK2, CONV_MAXP, operator_device
from ..backends.torch_ops import dense_to_flat, flat_to_dense
from ..irreps import channel_irreps, output_irreps
from ..math.gaunt import gaunt_path_allowed
from ..plans import conv_plan
from ._planned import PlannedModule, check_floating, layer_method, pickled_normalize, whole_number

__all__ = ["GauntConvolution"]


@compile_mode("script")
class GauntConvolution(PlannedModule):
    """Gaunt equivariant convolution, a drop-in for MACE's ``conv_tp``.

    ``forward(x1 [E, irreps_in1.dim], x2 [E, irreps_in2.dim], weight [E, weight_numel]) -> [E, irreps_out.dim]``:
    ``x1`` are the sender's node features ``C x (degrees)`` (e3nn ``mul_ir``), ``x2`` the edge's spherical
    harmonics ``1x0e + 1x1o + ...``, ``weight`` the per-edge output of a radial MLP, viewed as
    ``[E, K1 + K2 + Ko, P C]`` (degree-major: one weight per product and channel for each node-feature
    degree, each harmonic degree and each output degree; product-major within a degree). With ``P =
    products`` independent products per channel, for product ``k`` and channel ``c``:

        out[k, c] = w_out[lo] * proj_lo( sum_l1 (b + w1[l1]) x1[c, l1] (*) sum_l2 (b + w2[l2]) Y_l2(r_ij) )

    (weights indexed ``[k, c]``; ``b = weight_offset``). The output is ``P C x (degrees of irreps_out)``,
    product-major within each degree (copy ``k`` of channel ``c`` is channel ``k C + c``).

    ``forward(node_feats [N, irreps_in1.dim], x2, weight, edge_index [2, E]) -> [N, irreps_out.dim]`` is the
    message step MACE calls on blocks with ``conv_fusion``: ``out[v] = sum_{e: edge_index[1, e] = v}
    conv(node_feats[edge_index[0, e]], x2[e], weight[e])``, one fused kernel where a backend has one (the
    ``[E, P C, (L+1)^2]`` per-edge messages are then never materialised).

    ``weight_offset = 1`` makes a path weight ``(1 + w1) (1 + w2) w_out`` linear in the radial MLP's output
    at initialisation (MACE's ``uvu`` path weight is the MLP output itself), so the convolution starts at
    MACE's scale; it still vanishes wherever ``w_out`` does (at the cutoff). ``weight_offset = 0`` is the plain
    product ``w1 w2 w_out``. The harmonic side goes to the grid once per degree and edge, not per channel.

    Compared with MACE's ``uvu`` Clebsch-Gordan convolution: the paths with ``l1 + l2 + l3`` odd are
    missing (with natural-parity hidden irreps MACE keeps none of them anyway), and each product's path
    weight factorises over the degrees. The sum of ``P`` such products is a rank-``P`` decomposition of the
    per-path weights: ``P = 3`` reproduces arbitrary ``uvu`` path weights for node degrees and harmonic
    degrees up to 3, ``P = 1`` does not (``weight_numel = P C (K1 + K2 + Ko)`` instead of one weight per
    path and channel). ``irreps_out`` (``C x ...``) defaults to every reachable degree up to ``L1 + L2``.
    """

    _TABLES = ("to_grid1", "to_grid2", "from_grid")
    _DERIVED = ("offsets_in1", "offsets_out", "deg2", "scalar_coupling")

    def __init__(self, irreps_in1, irreps_in2, irreps_out=None, normalize: bool = True, method: str = "auto",
                 products: int = 1, weight_offset: float = 1.0):
        super().__init__()
        products = whole_number(products, "products", "GauntConvolution")
        f1 = channel_irreps(irreps_in1, "irreps_in1 (node features)")
        f2 = channel_irreps(irreps_in2, "irreps_in2 (edge spherical harmonics)", mul=1)
        if irreps_out is None:
            degrees = [c for c in range(f1.lmax + f2.lmax + 1)
                       if any(gaunt_path_allowed(a, b, c) for a in f1.degrees for b in f2.degrees)]
            irreps_out = output_irreps(f1.mul, degrees, f1.twist * f2.twist)
        fc = channel_irreps(irreps_out, "irreps_out", mul=f1.mul)
        self.method = layer_method(method, "GauntConvolution")
        self.products = products
        self.weight_offset = float(weight_offset)
        self.normalize = bool(normalize)
        plan = conv_plan(str(f1.irreps), str(f2.irreps), str(fc.irreps), products, self.normalize)
        self.__dict__["_plan"] = plan
        fo = plan.out
        self.irreps_in1, self.irreps_in2, self.irreps_out = f1.irreps, f2.irreps, fo.irreps
        self.channels = f1.mul
        self.k1, self.k2, self.k3 = plan.num_degrees
        self.width1, self.width2 = plan.widths[:2]
        self.dim_in1, self.dim_in2, self.dim_out = f1.dim, f2.dim, fo.dim
        self.weight_numel = plan.weight_numel
        t = plan.tensors.get(torch.get_default_dtype(), torch.device("cpu"))
        self._register_plan_buffers(t, ("to_grid1", "to_grid2", "from_grid", "index_in1", "index_in2",
                                        "index_out", "deg1", "deg3"))
        self._register_derived()

    def _build_plan(self):
        irreps_out = o3.Irreps([(self.channels, ir) for _, ir in self.irreps_out])
        return conv_plan(str(self.irreps_in1), str(self.irreps_in2), str(irreps_out), self.products, self.normalize)

    def __setstate__(self, state) -> None:
        # models pickled before products / weight_offset / normalize were attributes computed one plain,
        # normalised product per channel
        state.setdefault("products", 1)
        state.setdefault("weight_offset", 0.0)
        state.setdefault("normalize", pickled_normalize(state, "from_grid", _normalized_plan))
        state.get("_buffers", {}).pop("deg_mask2", None)  # the harmonics' degrees as a mask: now the slots deg2
        super().__setstate__(state)
        if any(name not in self._buffers for name in self._DERIVED):  # pickled before these tables were buffers
            self._register_derived()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        state_dict.pop(prefix + "deg_mask2", None)  # saved when the harmonics' degrees were also held as a mask
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}({self.irreps_in1} x {self.irreps_in2} -> {self.irreps_out} | "
                f"{self.products} product(s) per channel, weight offset {self.weight_offset:g}, "
                f"{self.weight_numel} weights per edge, method={self.method})")

    def forward(self, x1: torch.Tensor, x2: torch.Tensor, weight: torch.Tensor,
                edge_index: Optional[torch.Tensor] = None) -> torch.Tensor:
        if x1.dim() != 2 or x1.shape[1] != self.dim_in1:
            raise ValueError(f"GauntConvolution: x1 must be [{'N' if edge_index is not None else 'E'}, "
                             f"{self.dim_in1}], got {list(x1.shape)}")
        edges = x1.shape[0] if edge_index is None else x2.shape[0]
        if x2.dim() != 2 or x2.shape[1] != self.dim_in2 or x2.shape[0] != edges:
            raise ValueError(f"GauntConvolution: x2 must be [E={edges}, {self.dim_in2}], got {list(x2.shape)}")
        if weight.dim() != 2 or weight.shape[1] != self.weight_numel or weight.shape[0] != edges:
            raise ValueError(f"GauntConvolution: weight must be [E={edges}, {self.weight_numel}], "
                             f"got {list(weight.shape)}")
        if edge_index is not None:
            if edge_index.dim() != 2 or edge_index.shape[0] != 2 or edge_index.shape[1] != edges \
                    or edge_index.is_floating_point():
                raise ValueError(f"GauntConvolution: edge_index must be an integer tensor [2, E={edges}], got "
                                 f"{edge_index.dtype} {list(edge_index.shape)}")
        check_floating("GauntConvolution", [x1, x2, weight])
        dtype = x1.dtype
        compute = torch.float64 if dtype == torch.float64 else torch.float32
        x1, x2, weight = x1.to(compute), x2.to(compute), weight.to(compute)
        if self.weight_offset != 0.0:
            n_in = (self.k1 + self.k2) * self.products * self.channels
            weight = torch.cat([weight[:, :n_in] + self.weight_offset, weight[:, n_in:]], dim=1)
        return self._compute(x1, x2, weight, edge_index).to(dtype)

    def _compute(self, x1: torch.Tensor, x2: torch.Tensor, weight: torch.Tensor,
                 edge_index: Optional[torch.Tensor]) -> torch.Tensor:
        """The one route of every call (eager, TorchScript, ``torch.compile``; :mod:`gaunt_plugins.backends.registry`):
        under ``auto`` scalar node features coefficient-wise, else ``torch.ops.gaunt.conv``/``message`` on CPU
        and CUDA tensors where the operators serve; otherwise the dense ops of the backend setting (scripted: the
        reference)."""
        op = "conv_product" if edge_index is None else "conv_message"
        sh = flat_to_dense(x2, self.index_in2, 1, self.width2).view(x2.shape[0], self.width2)
        if torch.jit.is_scripting():
            if self._kernel_ops:  # a constant of the script: without the operators this branch is not compiled
                if self.width1 == 1:
                    return self._scalar_nodes(x1, sh, weight, edge_index)
                if operator_device(x1):
                    return self._kernel_forward(x1, sh, weight, edge_index)
        elif self._auto_setting() and self.width1 == 1:
            self._note(op, "torch-scalar-nodes")
            return self._scalar_nodes(x1, sh, weight, edge_index)
        elif self._kernels_serve(x1):
            self._note_operator(op, x1)
            return self._kernel_forward(x1, sh, weight, edge_index)
        compute = x1.dtype
        lanes = self.products * self.channels
        w = weight.view(weight.shape[0], self.k1 + self.k2 + self.k3, lanes)
        a = flat_to_dense(x1, self.index_in1, lanes, self.width1)
        y1, y2, f = self.to_grid1.to(compute), self.to_grid2.to(compute), self.from_grid.to(compute)
        if edge_index is None:
            if torch.jit.is_scripting():
                out = torch_ops.conv_product(a, sh, w, self.k1, self.k2, self.deg1, self.deg2, self.deg3, y1, y2, f)
            else:
                out = registry.conv_product(a, sh, w, self.k1, self.k2, self.deg1, self.deg2, self.deg3, y1, y2, f)
            return dense_to_flat(out, self.index_out)
        if torch.jit.is_scripting():
            msg = torch_ops.conv_product(a.index_select(0, edge_index[0]), sh, w, self.k1, self.k2, self.deg1,
                                         self.deg2, self.deg3, y1, y2, f)
            dense = msg.new_zeros([x1.shape[0]] + list(msg.shape[1:])).index_add(0, edge_index[1], msg)
        else:
            dense = registry.conv_message(a, sh, w, edge_index, x1.shape[0], self.k1, self.k2, self.deg1, self.deg2,
                                          self.deg3, y1, y2, f)
        return dense_to_flat(dense, self.index_out)

    @torch.jit.unused
    def _fits_kernels(self) -> bool:
        """Whether the plan is within ``conv.c``'s stack limits (the dtype is float32 or float64 here)."""
        return (self.to_grid1.shape[1] <= CONV_MAXP and self.k2 <= CONV_MAXK2
                and max(self.width1, self.width2, self.from_grid.shape[1]) <= CONV_MAXI)

    def _kernel_forward(self, x1: torch.Tensor, sh: torch.Tensor, weight: torch.Tensor,
                        edge_index: Optional[torch.Tensor]) -> torch.Tensor:
        """``torch.ops.gaunt.conv`` (``edge_index`` None) or ``torch.ops.gaunt.message`` on the flat rows."""
        compute = x1.dtype
        y1, y2, f = self.to_grid1.to(compute), self.to_grid2.to(compute), self.from_grid.to(compute)
        if edge_index is None:
            return torch.ops.gaunt.conv(x1, sh, weight, self.offsets_in1, self.offsets_out, self.deg1, self.deg2,
                                        self.deg3, y1, y2, f, self.k1, self.k2, self.dim_out)
        return torch.ops.gaunt.message(x1, sh, weight, edge_index, x1.shape[0], self.offsets_in1, self.offsets_out,
                                       self.deg1, self.deg2, self.deg3, y1, y2, f, self.k1, self.k2, self.dim_out)

    def _scalar_nodes(self, x1: torch.Tensor, sh: torch.Tensor, weight: torch.Tensor,
                      edge_index: Optional[torch.Tensor]) -> torch.Tensor:
        """Scalar node features: a degree-0 factor only scales, ``out[k] = w3[k] coupling[k] (b + w1) x (b + w2[k])
        sh[k]`` coefficient by coefficient (any device; ``coupling[k] = N_l Y_00`` from the tables), then the
        message's scatter-sum."""
        compute = x1.dtype
        lanes = self.products * self.channels
        width_out = self.from_grid.shape[1]
        coupling = self.scalar_coupling.to(compute)
        x = x1 if edge_index is None else x1.index_select(0, edge_index[0])
        w = weight.view(weight.shape[0], self.k1 + self.k2 + self.k3, lanes)
        a = flat_to_dense(x, self.index_in1, lanes, 1)[:, :, 0] * w[:, 0]
        deg2 = self.deg2[:width_out]
        w2 = w[:, self.k1:self.k1 + self.k2].transpose(1, 2).index_select(2, deg2)
        w3 = w[:, self.k1 + self.k2:].transpose(1, 2).index_select(2, self.deg3)
        out = dense_to_flat((a.unsqueeze(2) * w2) * (sh[:, None, :width_out] * (coupling * w3)), self.index_out)
        if edge_index is None:
            return out
        return out.new_zeros(x1.shape[0], out.shape[1]).index_add(0, edge_index[1], out)


def _normalized_plan(state: dict):
    irreps_out = o3.Irreps([(state["channels"], ir) for _, ir in state["irreps_out"]])
    return conv_plan(str(state["irreps_in1"]), str(state["irreps_in2"]), str(irreps_out), state.get("products", 1),
                     True)
