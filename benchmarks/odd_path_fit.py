"""Can a Gaunt many-body with an odd-path term express MACE's order-3 couplings? A fit, no training.

A product of spherical functions only forms couplings ``l1 x l2 -> l3`` with ``l1 + l2 + l3`` even. MACE's
symmetric contraction at correlation 3 also couples its natural-parity inputs through two odd intermediate
paths (e.g. ``(1 x 2 -> 2) x 1 -> 2``). In function language such a coupling is the nested Poisson bracket of
the sphere, ``{{f1, f2}, f3}`` with ``{f, g}(r) = r . (grad f x grad g)`` (surface gradients): one bracket
flips parity, two restore it. This script fits layer ``--layer``'s order-3 homogeneous part (the target of
``energy_gap_diagnostics.py``'s "order 3" rows) with ``P`` Gaunt chains plus ``B`` bracket chains, each bracket
chain ``proj_out({{f1, f2}, f3})`` with ``f_i = sum_l u_i[z, c, l] A[c, l]`` (per-degree weights, like the
chains'); everything else as in ``energy_gap_diagnostics.fit_many_body``. The brackets are computed on a
Gauss-Legendre x uniform grid exact for every product involved (float64).

    OMP_NUM_THREADS=1 python benchmarks/odd_path_fit.py --chains 4 --brackets 0 1 2

JSON in benchmarks/results/odd_path_fit.json.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import List

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import energy_gap_diagnostics as egd  # noqa: E402

o3 = egd.o3


class SphereGrid:
    """Points ``r [P, 3]`` and weights ``w [P]`` of a product quadrature exact for degree ``degree``, with the
    values ``Y [P, (L+1)^2]`` and surface gradients ``dY [P, (L+1)^2, 3]`` of e3nn's real spherical harmonics up
    to ``lmax``, and ``gram [(L+1)^2]`` (their squared norms; the basis is orthogonal)."""

    def __init__(self, lmax: int, degree: int):
        n_theta = degree // 2 + 1
        n_phi = degree + 1
        z, wz = np.polynomial.legendre.leggauss(n_theta)
        phi = 2 * np.pi * np.arange(n_phi) / n_phi
        zz, pp = np.meshgrid(z, phi, indexing="ij")
        s = np.sqrt(1 - zz ** 2)
        # e3nn's axes: y is the polar axis
        pts = np.stack([s * np.sin(pp), zz, s * np.cos(pp)], -1).reshape(-1, 3)
        self.r = torch.tensor(pts)
        self.w = torch.tensor((wz[:, None] * np.full(n_phi, 2 * np.pi / n_phi)[None, :]).reshape(-1))
        self.lmax = lmax
        r = self.r.clone().requires_grad_(True)
        y = o3.spherical_harmonics(list(range(lmax + 1)), r, normalize=True, normalization="component")
        grads = [torch.autograd.grad(y[:, k].sum(), r, retain_graph=True)[0] for k in range(y.shape[1])]
        dy = torch.stack(grads, 1)  # [P, K, 3]
        self.Y = y.detach()
        self.dY = dy - (dy * self.r[:, None, :]).sum(-1, keepdim=True) * self.r[:, None, :]  # tangent part
        self.gram = (self.w[:, None] * self.Y ** 2).sum(0)

    def project(self, values: torch.Tensor, lmax: int) -> torch.Tensor:
        """``[..., P]`` grid values -> ``[..., (lmax+1)^2]`` coefficients."""
        k = (lmax + 1) ** 2
        return (values * self.w) @ self.Y[:, :k] / self.gram[:k]

    def gradient(self, coeffs: torch.Tensor) -> torch.Tensor:
        """``[..., K]`` coefficients -> ``[..., P, 3]`` surface gradient on the grid."""
        k = coeffs.shape[-1]
        return torch.einsum("...k,pkd->...pd", coeffs, self.dY[:, :k])

    def bracket(self, grad_f: torch.Tensor, grad_g: torch.Tensor) -> torch.Tensor:
        """``r . (grad f x grad g)`` on the grid: ``[..., P, 3] x2 -> [..., P]``."""
        return (self.r * torch.linalg.cross(grad_f, grad_g, dim=-1)).sum(-1)


def degree_index(lmax: int) -> torch.Tensor:
    return torch.cat([torch.full((2 * l + 1,), l) for l in range(lmax + 1)])


def bracket_terms(x: torch.Tensor, element: torch.Tensor, u: torch.Tensor, grid: SphereGrid, la: int,
                  irreps_out) -> torch.Tensor:
    """``[B, N, dim_out]``: per bracket chain ``b``, ``proj_out({{f1, f2}, f3})`` per channel in the flat
    ``mul_ir`` layout, ``f_i = sum_l u[b, i, z, c, l] x[n, c, l m]``; ``x [N, C, (la+1)^2]``,
    ``u [B, 3, elements, C, la+1]``."""
    deg = degree_index(la)
    out_irreps = o3.Irreps(str(irreps_out))
    lo = max(ir.l for _, ir in out_irreps)
    terms = []
    for b in range(u.shape[0]):
        a = [x * u[b, i][element][:, :, deg] for i in range(3)]  # [N, C, K]
        g1, g2, g3 = (grid.gradient(ai) for ai in a)
        h = grid.bracket(g1, g2)  # [N, C, P]
        hc = grid.project(h, 2 * la)
        g = grid.bracket(grid.gradient(hc), g3)
        oc = grid.project(g, lo)  # [N, C, (lo+1)^2]
        blocks = []
        for mul, ir in out_irreps:
            blocks.append(oc[:, :mul, ir.l ** 2:(ir.l + 1) ** 2].reshape(oc.shape[0], -1))
        terms.append(torch.cat(blocks, -1))
    return torch.stack(terms)


def fit(x, attrs, target, irreps_in, irreps_out, correlation, chains, brackets, starts, iterations, grid, la):
    """Best relative residual of ``chains`` Gaunt chains + ``brackets`` bracket chains (see the module doc)."""
    element = attrs.argmax(1)
    x = x.clone()
    for e in range(attrs.shape[1]):
        pick = element == e
        for sl in egd._degree_slices(irreps_in):
            block = x[pick][:, :, sl]
            x[pick, :, sl] = block / block.square().mean((0, 2), keepdim=True).sqrt().clamp_min(1e-300)
    target = target / target.square().mean().sqrt()
    den = target.square().sum()
    best = 1.0
    for start in range(starts):
        torch.manual_seed(1000 + start)
        layer = egd.GauntManyBody(irreps_in, irreps_out, correlation, attrs.shape[1], chains=chains,
                                  weight_gain=1.0)
        with torch.no_grad():
            layer.weights_in.copy_(torch.randn_like(layer.weights_in))
        u = torch.randn(brackets, 3, attrs.shape[1], x.shape[1], la + 1, requires_grad=True)
        params = [layer.weights_in] + ([u] if brackets else [])
        opt = torch.optim.LBFGS(params, lr=1, max_iter=iterations, history_size=50, line_search_fn="strong_wolfe",
                                tolerance_grad=1e-30, tolerance_change=1e-30)

        def residual(balanced=False):
            terms = egd._term_outputs(layer, x, attrs)
            if brackets:
                terms = torch.cat([terms, bracket_terms(x, element, u, grid, la, irreps_out)])
            return egd._projected_residual(terms, target, irreps_out, element, attrs.shape[1], balanced) / (
                1.0 if balanced else den)

        def closure():
            opt.zero_grad()
            loss = residual(balanced=True)
            loss.backward()
            return loss

        opt.step(closure)
        with torch.no_grad():
            value = residual().clamp_min(0.0).sqrt().item()
        if value == value:
            best = min(best, value)
    return best


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--configs", type=int, default=20)
    ap.add_argument("--max-L", type=int, default=egd.MODEL["max_L"])
    ap.add_argument("--max-ell", type=int, default=egd.MODEL["max_ell"])
    ap.add_argument("--fit-channels", type=int, default=4)
    ap.add_argument("--layer", type=int, default=0)
    ap.add_argument("--chains", type=int, nargs="+", default=[4])
    ap.add_argument("--brackets", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--starts", type=int, default=2)
    ap.add_argument("--iterations", type=int, default=300)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "odd_path_fit.json")
    args = ap.parse_args(argv)
    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(1)
    t_start = time.perf_counter()
    batch = egd.acac_configs(args.configs, egd.MODEL["r_max"])
    config = dict(egd.MODEL, channels=args.fit_channels, max_L=args.max_L, max_ell=args.max_ell)
    model = egd.upstream_model(batch, args.seed, **config)
    sc, x, attrs = egd.contraction_inputs(model, batch, args.layer)
    correlation = int(getattr(sc, "contraction_degree", len(sc.contractions[0].weights) + 1))
    irreps_in, irreps_out = o3.Irreps(str(sc.irreps_in)), o3.Irreps(str(sc.irreps_out))
    la = max(ir.l for _, ir in irreps_in)
    lo = max(ir.l for _, ir in irreps_out)
    grid = SphereGrid(2 * la, max(4 * la, 3 * la + lo))
    with torch.no_grad():
        whole = sc(x, attrs)
        order3 = egd.homogeneous_parts(lambda v: sc(v, attrs), x, correlation)[2]
    rows = []
    for p in args.chains:
        for b in args.brackets:
            t0 = time.perf_counter()
            res = fit(x, attrs, order3, irreps_in, irreps_out, correlation, p, b, args.starts, args.iterations,
                      grid, la)
            rows.append({"chains": p, "brackets": b, "residual": res, "seconds": time.perf_counter() - t0})
            print(f"layer {args.layer} order 3, {p} chains + {b} brackets: residual {res:.3e} "
                  f"({rows[-1]['seconds']:.0f} s)", flush=True)
    result = {"what": "fit of MACE's order-3 symmetric-contraction couplings by Gaunt chains + nested-bracket chains",
              "command": " ".join(["python benchmarks/odd_path_fit.py"] + list(sys.argv[1:] if argv is None else argv)),
              "model": config, "layer": args.layer, "seed": args.seed, "configs": args.configs,
              "share_of_output": (order3.norm() / whole.norm()).item(),
              "starts": args.starts, "iterations": args.iterations,
              "device": f"CPU ({platform.machine()}), 1 thread", "date": time.strftime("%Y-%m-%d"),
              "seconds": time.perf_counter() - t_start, "fits": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
