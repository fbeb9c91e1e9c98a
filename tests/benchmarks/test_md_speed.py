"""benchmarks/md_speed.py: its grid and argument checks, the boxes it builds, the budget skips, the scaling fit,
and one tiny run end to end (its JSON)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "benchmarks"
sys.path.insert(0, str(BENCH))

import md_speed  # noqa: E402


def test_the_grid_is_what_the_command_line_selects():
    args = md_speed.parse_args(["--lmax", "1", "2", "--channels", "64", "--atoms", "100", "5000", "--modes", "eager",
                                "script", "--dtypes", "float64", "--threads", "2"])
    cases = md_speed.plan_cases(args)
    assert len(cases) == 2 * 2 * 3  # modes x L x (molecule + 2 boxes)
    assert {(c["mode"], c["L"], c["C"], c["dtype"], c["threads"]) for c in cases} == {
        (m, l, 64, "float64", 2) for m in ("eager", "script") for l in (1, 2)}
    boxes = [c for c in cases if c["system"] == "box"]
    assert sorted({15 * c["k"] ** 3 for c in boxes}) == [120, 5145]
    assert all(c["variants"] == ["upstream", "product", "conv,product"] for c in cases)
    # eager first; within one setting the molecule, then the boxes smallest first
    assert [c["mode"] for c in cases[:6]] == ["eager"] * 6
    assert [c.get("k") for c in cases[:3]] == [None, 2, 7]
    assert all((c["product_chains"], c["product_odd_chains"]) == (1, 0) for c in cases)


def test_the_gaunt_models_get_the_chains_the_command_line_asks_for():
    args = md_speed.parse_args(["--lmax", "1", "--channels", "4", "--product-chains", "2", "--product-odd-chains",
                                "1"])
    spec = md_speed.plan_cases(args)[0]
    model = md_speed.build_model("product", spec["L"], spec["C"], 0, product_chains=spec["product_chains"],
                                 product_odd_chains=spec["product_odd_chains"])
    blocks = [p.symmetric_contractions for p in model.products]
    assert [(b.chains, b.odd_chains) for b in blocks] == [(2, 1)] * len(blocks)


def test_bad_arguments_are_refused_by_name(capsys):
    for argv, needle in ((["--lmax", "-1"], "--lmax: every value must be >= 0"),
                         (["--threads", "0"], "--threads: every value must be >= 1"),
                         (["--modes", "jit"], "invalid choice: 'jit'"),
                         (["--atoms", "--no-molecule"], "nothing to time"),
                         (["--case-budget", "0"], "--case-budget: must be > 0"),
                         (["--product-chains", "0"], "--product-chains must be >= 1")):
        with pytest.raises(SystemExit):
            md_speed.parse_args(argv)
        assert needle in capsys.readouterr().err


def test_the_box_has_the_density_and_neighbours_of_a_liquid():
    from ase.neighborlist import neighbor_list

    atoms, info = md_speed.acac_box(2)
    assert len(atoms) == 120 and atoms.pbc.all()
    grams = atoms.get_masses().sum() / md_speed.AVOGADRO
    assert abs(grams / (atoms.get_volume() * 1e-24) - 1.0) < 1e-3  # g/cm^3
    assert 40 < len(neighbor_list("i", atoms, 5.0)) / len(atoms) < 55  # per atom within r_max
    assert info["closest_contact_A"] > 0.9


def test_slow_variants_are_skipped_by_prediction_from_the_smaller_box():
    spec = {"system": "box", "k": 4, "L": 2, "C": 128, "dtype": "float32", "threads": 1, "mode": "eager",
            "variants": ["upstream", "product"], "warmup": 1, "budget_s": 60}
    done = [{"system": "box", "atoms": 120, "variant": "upstream", "median_ms": 5000.0, **_same(spec)},
            {"system": "box", "atoms": 120, "variant": "product", "median_ms": 1000.0, **_same(spec)}]
    skip = md_speed.predicted_skips(spec, done)
    # upstream: 5 s x 8 (960 / 120 atoms) x 2 calls = 80 s > 60 s; product: 16 s
    assert list(skip) == ["upstream"]
    assert skip["upstream"].startswith("predicted 80 s for 2 steps (linear from 5000 ms at 120 atoms)")


def _same(spec):
    return {k: spec[k] for k in ("L", "C", "dtype", "threads", "mode")}


def test_scaling_exponent_and_ratios():
    rows = [{"system": "box", "variant": v, "atoms": n, "median_ms": c * n ** b, "L": 1, "C": 64, "dtype": "float32",
             "threads": 1, "mode": "eager", "peak_mib": m * n}
            for v, c, b, m in (("upstream", 2.0, 1.0, 2.0), ("product", 0.5, 1.2, 1.0)) for n in (120, 960, 5145)]
    fits = {f["variant"]: f["exponent"] for f in md_speed.fit_scaling(rows)}
    assert fits == {"upstream": 1.0, "product": 1.2}
    md_speed.add_ratios(rows)
    small = next(r for r in rows if r["variant"] == "product" and r["atoms"] == 120)
    assert small["speedup"] == pytest.approx(2.0 * 120 / (0.5 * 120 ** 1.2))
    assert small["memory_ratio"] == pytest.approx(0.5)


def test_step_memory_sees_what_a_step_allocates():
    import numpy as np

    out, mib = md_speed.measure_step(lambda: np.ones(64 * 2**20 // 8).sum())
    assert out == 64 * 2**20 // 8
    if mib is None:
        pytest.skip("no /proc/self/clear_refs or glibc here")
    assert 60 < mib < 200


@pytest.mark.slow
def test_a_tiny_grid_runs_end_to_end_and_writes_its_json(tmp_path):
    out = tmp_path / "md.json"
    cmd = [sys.executable, str(BENCH / "md_speed.py"), "--lmax", "0", "--channels", "4", "--atoms", "100",
           "--threads", "1", "--variants", "upstream", "product", "--iters", "1", "--md-iters", "1",
           "--md-chunk", "2", "--md-warmup", "1", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert "random: torch.manual_seed(0)" in result["weights"]
    assert len(result["loadavg_start"]) == 3 and len(result["loadavg_end"]) == 3
    rows = {(r["system"], r["variant"]): r for r in result["results"]}
    assert set(rows) == {(s, v) for s in ("molecule", "box") for v in ("upstream", "product")}
    for r in rows.values():
        assert r["median_ms"] > 0 and r["atom_steps_per_s"] > 0 and r["peak_mib"] > 0, r
    assert rows["box", "upstream"]["atoms"] == 120 and rows["box", "upstream"]["edges"] > 40 * 120
    assert rows["box", "product"]["speedup"] > 0 and rows["box", "upstream"]["speedup"] == 1.0
    assert "| box | 120 | 0 | 4 | float32 | 1 | eager |" in proc.stdout
