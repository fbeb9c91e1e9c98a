"""Write the acac data for the gaunt-compare example (MACE's default keys REF_energy / REF_forces).

    python examples/compare/prepare_acac.py [--src ACAC_DIR] [--out examples/compare/data]
                                            [--n-train 200] [--n-test 200]

- ``train.xyz``: ``--n-train`` configurations drawn (fixed seed) from ``train_300K.xyz``;
- ``test_MD_300K.xyz``, ``test_MD_600K.xyz``: ``--n-test`` configurations of each MD test set (evenly
  spaced along the trajectory; ``--n-test 0`` keeps all 650), ``test_dihedral.xyz`` and
  ``test_H_transfer.xyz`` whole (energies only: they carry no forces).

Nothing is downloaded: the source is the acac dataset already on disk.
"""
from __future__ import annotations

import argparse
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
TESTS = ("test_MD_300K.xyz", "test_MD_600K.xyz", "test_dihedral.xyz", "test_H_transfer.xyz")


def default_src() -> Path:
    for candidate in (HERE.parents[2] / "shared" / "data" / "acac", Path("/work/shared/data/acac")):
        if candidate.exists():
            return candidate
    raise SystemExit("acac dataset not found: pass --src")


def frames(path: Path):
    lines = path.read_text().splitlines()
    out, i = [], 0
    while i < len(lines):
        n = int(lines[i].split()[0])
        out.append(lines[i:i + n + 2])
        i += n + 2
    return out


def rekey(frame):
    header = frame[1].replace(" energy=", " REF_energy=").replace(":forces:R:3", ":REF_forces:R:3")
    return [frame[0], header] + frame[2:]


def write(path: Path, selected) -> None:
    path.write_text("\n".join(line for fr in selected for line in rekey(fr)) + "\n")
    print(f"wrote {path} ({len(selected)} configurations)")


def prepare(src: Path, out: Path, n_train: int = 200, seed: int = 0, n_test: int = 200) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    train = frames(src / "train_300K.xyz")
    picked = sorted(random.Random(seed).sample(range(len(train)), min(n_train, len(train))))
    write(out / "train.xyz", [train[i] for i in picked])
    for name in TESTS:
        if not (src / name).exists():
            continue
        test = frames(src / name)
        if name.startswith("test_MD") and 0 < n_test < len(test):
            step = len(test) / n_test
            test = [test[int(i * step)] for i in range(n_test)]
        write(out / name, test)
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=HERE / "data")
    parser.add_argument("--n-train", type=int, default=200)
    parser.add_argument("--n-test", type=int, default=200, help="configs per MD test set (0: all)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    prepare(args.src or default_src(), args.out, args.n_train, args.seed, args.n_test)
