"""``gaunt-compare``: train upstream and ``tensor_product: gaunt`` on the same data, seed and budget,
and write a side-by-side report.

Usage::

    gaunt-compare mace_config.yaml --epochs 5 --out compare_report
    gaunt-compare mace_config.yaml --max-minutes 15 --test test_300K.xyz --test hot=test_600K.xyz
    gaunt-compare mace_config.yaml --epochs 20 --seeds 3 --jobs 2 --out report3
    gaunt-compare fairchem_config.yml --epochs 3 --framework fairchem

The config is the one you already train with (``mace_run_train --config`` YAML, or a fairchem
``--config-yml``); ``gaunt-compare`` writes the two variants' configs itself. See
:mod:`gaunt_plugins.compare` for what is measured.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

__all__ = ["main", "build_parser", "detect_framework"]


def _value(text: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _key_values(items: Optional[List[str]], flag: str) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"gaunt-compare: {flag} expects KEY=VALUE, got {item!r}")
        out[key.strip()] = _value(value)
    return out


def _seeds(text: str):
    """``"3"`` -> 3 (a count), ``"1,5,9"`` -> [1, 5, 9]."""
    items = [t.strip() for t in str(text).split(",") if t.strip()]
    try:
        values = [int(t) for t in items]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a count or a comma-separated list of integer seeds, got {text!r}")
    if not values:
        raise argparse.ArgumentTypeError("expected a count or a list of seeds")
    if len(values) == 1 and "," not in text:
        if values[0] < 1:
            raise argparse.ArgumentTypeError(f"--seeds must be >= 1, got {values[0]}")
        return values[0]
    if len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"--seeds lists a seed twice: {text!r}")
    return values


def detect_framework(config_path: Path) -> str:
    """``fairchem`` for a fairchem trainer config (``trainer:`` / ``model:`` mapping), else ``mace``."""
    import yaml

    cfg = yaml.safe_load(Path(config_path).read_text()) or {}
    if isinstance(cfg, dict) and ("trainer" in cfg or isinstance(cfg.get("model"), dict) or "optim" in cfg):
        return "fairchem"
    return "mace"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gaunt-compare",
        description="Train the upstream model and its `tensor_product: gaunt` variant on the same data, seed and "
                    "budget, each in its own process, and write report.md, report.json and learning_curves.png.",
    )
    parser.add_argument("config", type=Path, help="your MACE (mace_run_train) or fairchem (--config-yml) YAML")
    parser.add_argument("--out", type=Path, default=Path("gaunt_compare_report"), help="report directory")
    parser.add_argument("--framework", choices=["auto", "mace", "fairchem"], default="auto")
    budget = parser.add_argument_group("budget (the same for both variants)")
    budget.add_argument("--epochs", type=int, default=None, help="epochs to train (overrides the config)")
    budget.add_argument("--max-minutes", type=float, default=None,
                        help="wall-clock training budget per variant: a new epoch starts only if it is expected "
                             "to end within it (set-up and final evaluation not counted); with --epochs, both limits")
    budget.add_argument("--timeout-minutes", type=float, default=None,
                        help="hard limit per process; a variant past it is stopped and marked interrupted "
                             "(default: 3x --max-minutes + 10, else none)")
    parser.add_argument("--seed", type=int, default=None, help="first seed (default: the config's)")
    parser.add_argument("--seeds", type=_seeds, default=1, metavar="N|S1,S2,...",
                        help="runs per variant: N seeds (the first seed, +1, +2, ...) or a comma-separated list; "
                             "the report gives mean ± std and one row per seed (default 1)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="runs at a time (default 1), each with its share of the cores; with more than one, the "
                             "report says the timings were taken while other runs shared the machine")
    parser.add_argument("--device", default=None, help="device for both (default: the config's)")
    parser.add_argument("--test", action="append", default=[], metavar="[NAME=]PATH",
                        help="a test set to evaluate both trained models on (repeatable); the config's own "
                             "test file(s) are always included")
    parser.add_argument("--set", dest="set_both", action="append", metavar="KEY=VALUE",
                        help="override a config key for both variants (YAML value; fairchem: dotted keys)")
    parser.add_argument("--set-upstream", action="append", metavar="KEY=VALUE", help="override for upstream only")
    parser.add_argument("--set-gaunt", action="append", metavar="KEY=VALUE",
                        help="override for the gaunt variant only (e.g. gaunt_targets=[conv])")
    parser.add_argument("--only", choices=["upstream", "gaunt"], default=None,
                        help="run one variant only; into a folder holding an earlier report, that variant's "
                             "results are replaced and the other's are kept, marked as from the earlier run (only "
                             "if they were trained with the same settings: config, seeds, budget, test sets)")
    parser.add_argument("--overwrite", action="store_true",
                        help="--out may hold an earlier gaunt-compare report: the files gaunt-compare wrote there "
                             "are removed first; anything else in its folders makes it stop, nothing removed "
                             "(without this, a non-empty --out is refused)")
    parser.add_argument("--order", choices=["upstream-first", "gaunt-first"], default="upstream-first")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.config.exists():
        parser.error(f"config {args.config} does not exist")
    if args.epochs is not None and args.epochs < 1:
        parser.error("--epochs must be >= 1")
    if args.max_minutes is not None and args.max_minutes <= 0:
        parser.error("--max-minutes must be > 0")
    if args.jobs < 1:
        parser.error("--jobs must be >= 1")
    framework_name = detect_framework(args.config) if args.framework == "auto" else args.framework
    timeout = args.timeout_minutes
    if timeout is None and args.max_minutes is not None:
        timeout = 3.0 * args.max_minutes + 10.0
    from .framework import CompareOptions

    options = CompareOptions(
        epochs=args.epochs, max_minutes=args.max_minutes, seed=args.seed, tests=list(args.test),
        set_both=_key_values(args.set_both, "--set"),
        set_variant={"upstream": _key_values(args.set_upstream, "--set-upstream"),
                     "gaunt": _key_values(args.set_gaunt, "--set-gaunt")},
        device=args.device, cwd=Path.cwd(), timeout_minutes=timeout,
    )
    try:
        if framework_name == "mace":
            from .mace import MaceFramework as framework_class
        else:
            from .fairchem import FairchemFramework as framework_class
        framework = framework_class(args.config, options)
        seeds = framework.seeds(args.seeds)
    except (FileNotFoundError, ValueError) as exc:
        print(f"gaunt-compare: {exc}", file=sys.stderr)
        return 2
    variants = ["upstream", "gaunt"] if args.order == "upstream-first" else ["gaunt", "upstream"]
    if args.only:
        variants = [args.only]
    from .harness import run_comparison
    from .outdir import OutDirError
    from .settings import SettingsMismatch

    say = (lambda line: None) if args.quiet else (lambda line: print(line, flush=True))
    try:
        report = run_comparison(framework, args.out, variants, seeds=seeds, jobs=args.jobs, overwrite=args.overwrite,
                                say=say, command=["gaunt-compare"] + list(sys.argv[1:] if argv is None else argv))
    except (OutDirError, SettingsMismatch) as exc:
        print(f"gaunt-compare: {exc}", file=sys.stderr)
        return 2
    if report.get("interrupted"):
        return 130
    statuses = [entry["status"] for name, entry in report["variants"].items() if name in variants]
    return 0 if all(s == "ok" for s in statuses) else 1


if __name__ == "__main__":
    sys.exit(main())
