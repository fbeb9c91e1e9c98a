"""Write the acac dataset with MACE's default keys (REF_energy / REF_forces).

Usage: python prepare_acac.py [--src ACAC_DIR] [--out OUT_DIR]
(defaults: the shared acac directory, and ./data next to this file)
"""
import argparse
from pathlib import Path

HERE = Path(__file__).resolve().parent


def default_src() -> Path:
    for candidate in (HERE.parents[2] / "shared" / "data" / "acac", Path("/work/shared/data/acac")):
        if candidate.exists():
            return candidate
    raise SystemExit("acac dataset not found: pass --src")


def prepare(src: Path, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    for name in ("train_300K.xyz", "test_MD_300K.xyz", "test_MD_600K.xyz"):
        text = (src / name).read_text()
        text = text.replace(" energy=", " REF_energy=").replace(":forces:R:3", ":REF_forces:R:3")
        (out / name).write_text(text)
        print(f"wrote {out / name}")
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--src", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=HERE / "data")
    args = parser.parse_args()
    prepare(args.src or default_src(), args.out)
