"""Cost of the Gaunt self-mix: stock vs Gaunt EquiformerV2 forward+backward on EMT slabs.

    python benchmark_selfmix.py --lmax 4 --channels 64 --layers 4 --structures 4 --repeat 5

Prints parameters and median times (CPU, or CUDA with --device cuda) for the stock backbone and
the Gaunt one (same stock weights), with every product method.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch


def structures(n: int):
    from ase.build import add_adsorbate, fcc111
    from ase.calculators.emt import EMT

    out = []
    rng = np.random.default_rng(0)
    for i in range(n):
        slab = fcc111(("Cu", "Pt")[i % 2], size=(3, 3, 3), vacuum=6.0)
        add_adsorbate(slab, "O", 1.5, "fcc")
        slab.rattle(0.05, seed=int(rng.integers(1 << 30)))
        slab.calc = EMT()
        out.append(slab)
    return out


from gaunt_plugins.adapters.equiformer_v2_data import batch_from_atoms as batch_of  # noqa: E402


def model_config(args, backbone: str, **extra):
    return {
        "name": "hydra",
        "pass_through_head_outputs": True,
        "backbone": dict(
            model=backbone, use_pbc=True, regress_forces=True, otf_graph=True, max_neighbors=30,
            max_radius=6.0, max_num_elements=90, num_layers=args.layers, sphere_channels=args.channels,
            attn_hidden_channels=args.channels, num_heads=4, attn_alpha_channels=16, attn_value_channels=8,
            ffn_hidden_channels=2 * args.channels, norm_type="layer_norm_sh", lmax_list=[args.lmax],
            mmax_list=[min(2, args.lmax)], grid_resolution=18, num_sphere_samples=128,
            edge_channels=args.channels, use_grid_mlp=True, use_sep_s2_act=True, alpha_drop=0.0,
            drop_path_rate=0.0, proj_drop=0.0, weight_init="uniform", avg_num_nodes=28.0, avg_degree=30.0,
            **extra,
        ),
        "heads": {"energy": {"module": "equiformerV2_scalar_head"}, "forces": {"module": "equiformerV2_vector_head"}},
    }


def step(model, batch, device: str) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    out = model(batch)
    (out["energy"].sum() + out["forces"].pow(2).sum()).backward()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lmax", type=int, default=4)
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--structures", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    from gaunt_plugins.adapters.equiformer_v2_convert import build_model_from_config

    batch = batch_of(structures(args.structures), args.device)
    models = {}
    torch.manual_seed(0)
    models["stock"] = build_model_from_config(model_config(args, "equiformer_v2_backbone")).to(args.device)
    for method in ("grid", "fourier"):
        torch.manual_seed(0)
        models[f"gaunt/{method}"] = build_model_from_config(
            model_config(args, "gaunt_plugins.adapters.equiformer_v2.GauntEquiformerV2Backbone", gaunt_method=method)
        ).to(args.device)
    times = {name: [] for name in models}
    for i in range(args.repeat + 1):  # interleaved, so load drift hits every model alike
        for name, model in models.items():
            t = step(model, batch, args.device)
            if i > 0:  # the first call builds tables and caches
                times[name].append(t)
    n_stock = sum(p.numel() for p in models["stock"].parameters())
    t_stock = statistics.median(times["stock"])
    print(f"atoms {int(batch.natoms.sum())}, lmax {args.lmax}, C {args.channels}, layers {args.layers}, "
          f"device {args.device}, threads {torch.get_num_threads()}, median of {args.repeat}")
    for name, model in models.items():
        n = sum(p.numel() for p in model.parameters())
        t = statistics.median(times[name])
        print(f"{name:13s}: {n:>9d} parameters (+{n - n_stock:>6d}), forward+backward {1e3 * t:8.1f} ms "
              f"({100 * (t / t_stock - 1):+5.1f}%)")


if __name__ == "__main__":
    main()
