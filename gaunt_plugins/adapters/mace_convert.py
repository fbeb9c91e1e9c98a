"""``gaunt-convert-mace in.model out.model``: the Gaunt variant of an existing MACE model.

The converted model has the same hyper-parameters (cutoff, radial basis, channels, degrees,
correlation, elements, heads, E0s, scale/shift) and every weight that carries over, bit for bit:
embeddings, radial-MLP hidden layers, ``linear_up``, ``skip_tp``, the linears that keep their
shapes, readouts, atomic energies and scale/shift. The Gaunt weights, the radial MLP's last layer
(sized by the Gaunt convolution) and the linears whose input changed are freshly initialised: the
model is a starting point for fine-tuning (``mace_run_train --foundation_model out.model`` or a
restart), not a drop-in replacement of the original's predictions.

Usage::

    gaunt-convert-mace in.model out.model [--targets conv,product] [--method auto] [--seed 0] [--force]

Prints what was copied and what was freshly initialised, and says so when every block chosen by
``--targets`` was a Gaunt block already (``out.model`` is then an unchanged copy). ``out.model`` is written
through a temporary file in its folder; an existing file (the input included) is replaced only with
``--force``. An input that is not a readable model, an output that is a folder, or a ``--device`` this
machine does not have is refused with one line naming the file or device and what was expected (status 2). The input is the pickled ``<name>.model``: the ``<name>_compiled.model`` MACE writes
beside it is a TorchScript export, which holds compiled code rather than the modules to convert.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

import torch

__all__ = ["convert", "main"]


def convert(model: torch.nn.Module, targets=("conv", "product"), method: str = "auto", seed: Optional[int] = 0,
            conv_products="paths"):
    """Return ``(gaunt_model, report, unchanged)``: a converted deep copy of ``model``, the
    :class:`~gaunt_plugins.adapters.mace_blocks.ConversionReport` of the replaced blocks, and the
    names of the tensors outside them (copied unchanged). ``conv_products``: ``"paths"`` (the per-path
    convolution, MACE's own: every convolution weight carries over) or ``K`` grid products per channel."""
    from gaunt_plugins.adapters.mace_blocks import gauntify_model
    from gaunt_plugins.adapters.mace_config import GauntOptions, parse_targets

    options = GauntOptions(targets=parse_targets(targets), method=method, conv_products=conv_products)
    if seed is not None:
        torch.manual_seed(seed)
    before = model.state_dict()
    gaunt, report = gauntify_model(model, options, inplace=False)
    replaced = tuple(line.split(":")[0] + "." for line in report.converted_blocks)
    unchanged = [name for name in gaunt.state_dict() if name in before and not name.startswith(replaced)]
    return gaunt, report, unchanged


def _torchscript_message(path: str) -> str:
    name = Path(path).name
    stem = name[: -len("_compiled.model")] if name.endswith("_compiled.model") else None
    sibling = Path(path).with_name(f"{stem}.model") if stem else None
    where = (f" ({sibling} is beside it)" if sibling is not None and sibling.exists() else
             f" (mace_run_train saved it as {stem}.model next to this file)" if stem else "")
    return (f"{path} is a TorchScript export (the <name>_compiled.model mace_run_train writes for LAMMPS and "
            "plain-PyTorch use): it holds compiled code, not the MACE modules a conversion rebuilds. Convert "
            f"the pickled model instead{where}")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gaunt-convert-mace",
        description="Build the Gaunt variant of a MACE model, copying every weight that carries over.",
    )
    parser.add_argument("input", help="a MACE model saved with torch.save (e.g. MACE-OFF, a .model from mace_run_train)")
    parser.add_argument("output", help="where to save the converted model")
    parser.add_argument("--targets", default="conv,product",
                        help="parts to replace: conv, product or both (default conv,product)")
    parser.add_argument("--conv-products", default="paths",
                        help="the Gaunt convolution: paths (one block per path, MACE's convolution, every weight "
                             "copied; the default) or K grid products per channel (its radial MLP's last layer and "
                             "linear are freshly initialised)")
    parser.add_argument("--method", default="auto", help="Gaunt method of the layers (default auto)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fresh initialisation (default 0)")
    parser.add_argument("--device", default="cpu", help="map_location for loading (default cpu)")
    parser.add_argument("--force", action="store_true", help="replace the output file if it exists (even the input)")
    parser.add_argument("-q", "--quiet", action="store_true", help="print only the summary line")
    return parser


def _device(name: str) -> torch.device:
    """``--device``: a device this machine has."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f"--device {name!r} is not a device: expected cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: no CUDA device is available here (torch.cuda.is_available() is False); "
                         "use --device cpu (the default)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def _load_model(path: str, device: torch.device) -> torch.nn.Module:
    """The MACE model saved at ``path`` (``ValueError`` naming the file and what was expected otherwise)."""
    from ._files import is_torchscript_archive

    expected = "expected a MACE model saved with torch.save (the <name>.model mace_run_train writes)"
    source = Path(path)
    if not source.exists():
        raise ValueError(f"{path} does not exist: {expected}")
    if source.is_dir():
        raise ValueError(f"{path} is a folder: {expected}")
    if is_torchscript_archive(path):
        raise ValueError(_torchscript_message(path))
    try:
        model = torch.load(path, map_location=device, weights_only=False)
    except Exception as exc:  # noqa: BLE001  (whatever the file holds, the user gets one line)
        reason = str(exc).strip().splitlines()[0].split(". ")[0] if str(exc).strip() else ""
        raise ValueError(f"{path} cannot be read as a model ({type(exc).__name__}: {reason}; {source.stat().st_size} "
                         f"bytes): {expected}; this file is truncated, damaged or of another format") from None
    if not isinstance(model, torch.nn.Module) or not hasattr(model, "interactions"):
        raise ValueError(f"{path} holds a {type(model).__name__}, not a MACE model: {expected}")
    return model


def _check_output_path(path: str) -> None:
    if Path(path).is_dir():
        raise ValueError(f"{path} is a folder: give the path of the model file to write "
                         f"(e.g. {Path(path) / 'gaunt.model'})")


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    import mace.modules  # noqa: F401  (before e3nn: see gaunt_plugins._e3nn)

    from ._files import check_output, save_atomically

    try:
        _check_output_path(args.output)
        check_output(args.input, args.output, args.force)
        device = _device(args.device)
        model = _load_model(args.input, device)
        gaunt, report, unchanged = convert(model, args.targets, args.method, args.seed, args.conv_products)
    except (FileExistsError, FileNotFoundError, ValueError) as exc:
        print(f"gaunt-convert-mace: {exc}", file=sys.stderr)
        return 2
    try:
        save_atomically(gaunt, args.output)
    except OSError as exc:
        print(f"gaunt-convert-mace: cannot write {args.output}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    if not args.quiet:
        for line in report.converted_blocks:
            print(f"converted {line}")
        if report.already_gaunt:
            print(f"already Gaunt blocks, unchanged: {', '.join(report.already_gaunt)}")
        print(f"copied unchanged ({len(unchanged)} tensors outside the converted blocks):")
        for name in unchanged:
            print(f"  {name}")
        print(f"copied into the Gaunt blocks ({len(report.copied)} tensors):")
        for name in report.copied:
            print(f"  {name}")
        print(f"freshly initialised ({len(report.fresh)} parameters):")
        for name in report.fresh:
            print(f"  {name}")
    if not report.converted_blocks:
        print(f"gaunt-convert-mace: nothing to convert: the blocks --targets {args.targets} chooses "
              f"({', '.join(report.already_gaunt) or 'none'}) are Gaunt blocks already; wrote {args.output} as an "
              "unchanged copy of the input")
        return 0
    already = f"; already Gaunt, unchanged: {', '.join(report.already_gaunt)}" if report.already_gaunt else ""
    print(f"gaunt-convert-mace: wrote {args.output}: {len(unchanged) + len(report.copied)} tensors copied, "
          f"{len(report.fresh)} parameters freshly initialised{already}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
