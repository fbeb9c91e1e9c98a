"""Convert a stock EquiformerV2 checkpoint (fairchem-core 1.x) into a Gaunt EquiformerV2 checkpoint.

The converted model has a Gaunt self-mix sub-layer in every block whose output linear is zero, so
it predicts exactly what the original predicted (the residual branch adds zero) until it is
fine-tuned. Console script::

    gaunt-convert-equiformer-v2 stock.pt gaunt.pt [--method auto|grid|fourier] [--keep-name] [--verify] [--force]

``gaunt.pt`` is written through a temporary file in its folder; an existing file (the input
included) is replaced only with ``--force``.

What changes in the checkpoint:

- ``config["model"]`` (flat ``equiformer_v2``) or ``config["model"]["backbone"]`` (hydra
  ``equiformer_v2_backbone``): the class becomes the dotted path of the Gaunt class (loads with no
  patch; ``--keep-name`` keeps the stock name, which then needs ``FairchemPatch``), plus
  ``tensor_product: gaunt``, ``gaunt_method`` and ``gaunt_zero_init: true``.
- ``state_dict``: every stock entry unchanged, plus ``blocks.<i>.gaunt_mix.*`` (input weights one,
  output linear and bias zero, norm at its identity init).
- ``ema``: the shadow parameters re-listed in the Gaunt model's parameter order (new ones take
  their initial values).
- The training state (``optimizer``, ``scheduler``, ``epoch``, ``step``, ``best_val_metric``) is
  dropped: it belongs to the old parameter set; fine-tuning starts afresh from these weights.
  Normalizers, element references, ``amp`` and ``scale_dict`` are kept. A ``gaunt_conversion``
  entry records what was done.

Checkpoints are read with ``torch.load(weights_only=False)``: convert only files you trust.
"""
from __future__ import annotations

import argparse
import copy
import logging
import sys
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch

from .equiformer_v2_config import (
    GAUNT,
    GAUNT_BACKBONE_PATH,
    GAUNT_FLAT_PATH,
    METHODS,
    STOCK_BACKBONE_NAMES,
    STOCK_FLAT_NAMES,
    TENSOR_PRODUCT_KEY,
    GauntConfigError,
    model_sections,
    wants_gaunt,
)

__all__ = ["convert_checkpoint", "build_model_from_config", "verify_conversion", "main"]

logger = logging.getLogger("gaunt_plugins.convert")

_TRAINING_STATE = ("optimizer", "scheduler", "epoch", "step", "best_val_metric", "primary_metric")


def _normalise_config(config: Dict[str, Any]) -> Dict[str, Any]:
    """Old configs (``model: name`` + ``model_attributes:``) -> ``model: {name: ..., ...}``."""
    config = copy.deepcopy(config)
    if "model_attributes" in config:
        attrs = config.pop("model_attributes")
        attrs["name"] = config.pop("model")
        config["model"] = attrs
    return config


def _register_equiformer_v2() -> None:
    """Make fairchem's registry know hydra and the EquiformerV2 classes and heads.

    ``setup_imports()`` (what fairchem's trainer calls) imports every model fairchem ships, and
    fails when an optional dependency of an unrelated model is missing (``torch_sparse`` for
    GemNet/DimeNet); the modules EquiformerV2 needs are imported directly when that happens.
    """
    from fairchem.core.common.utils import setup_imports

    try:
        setup_imports()
    except ImportError as exc:
        logger.debug("fairchem setup_imports failed (%s); importing the EquiformerV2 modules only", exc)
        import importlib

        for module in (
            "fairchem.core.models.base",
            "fairchem.core.models.equiformer_v2.equiformer_v2",
            "fairchem.core.models.equiformer_v2.equiformer_v2_deprecated",
            "fairchem.core.models.equiformer_v2.heads",
        ):
            importlib.import_module(module)


def build_model_from_config(model_config: Dict[str, Any]) -> torch.nn.Module:
    """Build a model from a fairchem ``model:`` section through fairchem's registry."""
    from fairchem.core.common.registry import registry

    _register_equiformer_v2()
    cfg = copy.deepcopy(model_config)
    name = cfg.pop("name")
    return registry.get_model_class(name)(**cfg)


def _strip(state: Dict[str, torch.Tensor]) -> Tuple[Dict[str, torch.Tensor], str]:
    """Remove DataParallel/DDP ``module.`` prefixes; return the stripped dict and the prefix."""
    first = next(iter(state))
    prefix = ""
    while first.startswith(prefix + "module."):
        prefix += "module."
    return {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in state.items()}, prefix


def convert_checkpoint(
    checkpoint: Dict[str, Any],
    method: str = "auto",
    keep_name: bool = False,
) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """Convert a loaded stock EquiformerV2 checkpoint dict; returns ``(new_checkpoint, report)``.

    Raises :class:`GauntConfigError` when the checkpoint holds no stock EquiformerV2 (or already
    holds a Gaunt one), and ``RuntimeError`` when its weights do not fit the model its config
    describes.
    """
    if method not in METHODS:
        raise GauntConfigError(f"--method {method!r}: choose one of {METHODS}")
    if not isinstance(checkpoint, Mapping):
        raise GauntConfigError(_not_a_checkpoint(checkpoint))
    if not isinstance(checkpoint.get("config"), Mapping) or not isinstance(checkpoint.get("state_dict"), Mapping):
        raise GauntConfigError(
            "not a fairchem checkpoint: expected a dict with 'config' and 'state_dict' entries, as fairchem's "
            f"trainer writes; it has {sorted(map(str, checkpoint))[:8]}"
        )
    config = _normalise_config(checkpoint["config"])
    sections = model_sections(config)
    stock = [(s, key) for s, key in sections if s[key] in STOCK_BACKBONE_NAMES + STOCK_FLAT_NAMES and not wants_gaunt(s)]
    if not stock:
        if sections:
            raise GauntConfigError("this checkpoint already holds a Gaunt EquiformerV2; nothing to convert")
        raise GauntConfigError(
            "no stock EquiformerV2 in this checkpoint's config (looked for model.name in "
            f"{list(STOCK_FLAT_NAMES)} or model.backbone.model in {list(STOCK_BACKBONE_NAMES)})"
        )

    stock_model = build_model_from_config(config["model"])
    source_state, prefix = _strip(checkpoint["state_dict"])
    stock_model.load_state_dict(source_state, strict=True)

    gaunt_config = copy.deepcopy(config)
    written_config = copy.deepcopy(config)
    for cfg, build in ((gaunt_config, True), (written_config, False)):
        for section, key in model_sections(cfg):
            if section[key] not in STOCK_BACKBONE_NAMES + STOCK_FLAT_NAMES:
                continue
            is_flat = section[key] in STOCK_FLAT_NAMES
            if build or not keep_name:
                section[key] = GAUNT_FLAT_PATH if is_flat else GAUNT_BACKBONE_PATH
            section[TENSOR_PRODUCT_KEY] = GAUNT
            section["gaunt_method"] = method
            section["gaunt_zero_init"] = True
    gaunt_model = build_model_from_config(gaunt_config["model"])
    result = gaunt_model.load_state_dict(stock_model.state_dict(), strict=False)
    if result.unexpected_keys:
        raise RuntimeError(f"stock weights with no place in the Gaunt model: {result.unexpected_keys}")
    not_mix = [k for k in result.missing_keys if ".gaunt_mix." not in k]
    if not_mix:
        raise RuntimeError(f"Gaunt model parameters missing from the stock weights: {not_mix}")

    new_state = {prefix + k: v for k, v in gaunt_model.state_dict().items()}
    new = {k: v for k, v in checkpoint.items() if k not in _TRAINING_STATE}
    new["config"] = written_config
    new["state_dict"] = new_state
    ema = checkpoint.get("ema")
    if isinstance(ema, dict) and isinstance(ema.get("shadow_params"), list):
        new["ema"] = _convert_ema(ema, stock_model, gaunt_model)
    new["gaunt_conversion"] = {
        "from": [s[key] for s, key in stock],
        "method": method,
        "new_parameters": sorted(result.missing_keys),
        "dropped": [k for k in _TRAINING_STATE if k in checkpoint],
    }
    report = dict(new["gaunt_conversion"])
    report["n_parameters_stock"] = sum(p.numel() for p in stock_model.parameters())
    report["n_parameters_gaunt"] = sum(p.numel() for p in gaunt_model.parameters())
    return new, report


def _convert_ema(ema: Dict[str, Any], stock_model: torch.nn.Module, gaunt_model: torch.nn.Module) -> Dict[str, Any]:
    """Re-list EMA shadow parameters (kept by position, in ``parameters()`` order) for the Gaunt model."""
    stock_names = [n for n, p in stock_model.named_parameters() if p.requires_grad]
    shadow = ema["shadow_params"]
    if len(shadow) != len(stock_names):
        raise RuntimeError(
            f"EMA holds {len(shadow)} shadow parameters but the stock model has {len(stock_names)}"
        )
    by_name = dict(zip(stock_names, shadow))
    new_shadow: List[torch.Tensor] = []
    for name, param in gaunt_model.named_parameters():
        if not param.requires_grad:
            continue
        new_shadow.append(by_name[name].clone() if name in by_name else param.detach().clone())
    out = dict(ema)
    out["shadow_params"] = new_shadow
    out["collected_params"] = []
    return out


def _not_a_checkpoint(obj: Any) -> str:
    """Why ``obj`` (what a file held) is not a fairchem checkpoint, naming what it is."""
    kind = type(obj)
    what = f"a {kind.__module__}.{kind.__qualname__} object"
    hint = ""
    if kind.__module__.split(".")[0] == "mace":
        hint = "; this is a MACE model: convert it with gaunt-convert-mace"
    elif isinstance(obj, torch.nn.Module):
        hint = "; a whole pickled model is not a checkpoint"
    return (f"not a fairchem checkpoint: it holds {what}, expected a dict with 'config' and 'state_dict' "
            f"entries, as fairchem's trainer writes{hint}")


def _load(path: Path) -> Dict[str, Any]:
    """``torch.load`` a checkpoint; a file that is missing, a folder, or not a ``torch.save`` archive
    (truncated, text, empty) raises :class:`GauntConfigError` saying so."""
    path = Path(path)
    if not path.exists():
        raise GauntConfigError("no such file; expected a fairchem checkpoint (.pt)")
    if path.is_dir():
        raise GauntConfigError("is a folder; expected a fairchem checkpoint file (.pt)")
    try:
        return torch.load(str(path), map_location="cpu", weights_only=False)
    except (KeyboardInterrupt, MemoryError):
        raise
    except Exception as exc:  # torch.load fails with RuntimeError, UnpicklingError, EOFError, ...
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise GauntConfigError(
            f"cannot be read as a PyTorch checkpoint ({reason[:200]}); expected a fairchem checkpoint (.pt) "
            "written by torch.save, complete"
        ) from None


def _probe_batch(max_num_elements: int):
    """A small periodic Cu/O structure as a fairchem batch (no data files needed)."""
    import numpy as np
    from ase import Atoms

    from .equiformer_v2_data import batch_from_atoms

    rng = np.random.default_rng(0)
    numbers = [29] * 6 + [8] * 2 if max_num_elements > 29 else [1] * 8
    atoms = Atoms(numbers=numbers, positions=rng.uniform(0, 6.0, (8, 3)), cell=np.eye(3) * 6.0, pbc=True,
                  tags=[1] * len(numbers))
    return batch_from_atoms([atoms])


def verify_conversion(src_checkpoint: Dict[str, Any], new_checkpoint: Dict[str, Any]) -> float:
    """Largest absolute difference between the two models' outputs on a probe structure."""
    def model_of(ckpt):
        config = _normalise_config(ckpt["config"])
        cfg = copy.deepcopy(config["model"])
        for section, key in model_sections({"model": cfg}):
            if section.get(TENSOR_PRODUCT_KEY) == GAUNT and section[key] in STOCK_BACKBONE_NAMES + STOCK_FLAT_NAMES:
                section[key] = GAUNT_FLAT_PATH if section[key] in STOCK_FLAT_NAMES else GAUNT_BACKBONE_PATH
        model = build_model_from_config(cfg)
        model.load_state_dict(_strip(ckpt["state_dict"])[0], strict=True)
        return model.eval()

    a, b = model_of(src_checkpoint), model_of(new_checkpoint)
    section = model_sections(_normalise_config(src_checkpoint["config"]))[0][0]
    batch = _probe_batch(int(section.get("max_num_elements", 90)))
    out_a, out_b = a(batch), b(batch)
    diff = 0.0
    for k in out_a:
        va = out_a[k][k] if isinstance(out_a[k], dict) else out_a[k]
        vb = out_b[k][k] if isinstance(out_b[k], dict) else out_b[k]
        diff = max(diff, (va.detach() - vb.detach()).abs().max().item())
    return diff


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="gaunt-convert-equiformer-v2",
        description="Convert a stock EquiformerV2 checkpoint (fairchem-core 1.x) into a Gaunt "
        "EquiformerV2 checkpoint whose self-mix starts at zero (same predictions until fine-tuned).",
    )
    parser.add_argument("src", type=Path, help="stock checkpoint (.pt) written by fairchem")
    parser.add_argument("dst", type=Path, help="where to write the Gaunt checkpoint")
    parser.add_argument("--method", default="auto", choices=METHODS, help="Gaunt product method (default auto)")
    parser.add_argument(
        "--keep-name",
        action="store_true",
        help="keep the stock registry name plus `tensor_product: gaunt` (loading then needs the "
        "fairchem patch: gaunt-run or gaunt_plugins.patch('fairchem')); default: the Gaunt class's "
        "dotted path, which loads with no patch",
    )
    parser.add_argument("--verify", action="store_true", help="check both models predict the same on a probe structure")
    parser.add_argument("--force", action="store_true", help="replace dst if it exists (even the input)")
    args = parser.parse_args(argv)
    from ._files import check_output, save_atomically

    def fail(path: Path, exc: object) -> int:
        message = " ".join(str(exc).split())  # one line (load_state_dict's errors span several)
        where = "" if str(path) in message else f"{path}: "
        print(f"gaunt-convert-equiformer-v2: error: {where}{message}", file=sys.stderr)
        return 2

    try:
        check_output(args.src, args.dst, args.force)
    except FileExistsError as exc:
        return fail(args.dst, exc)
    if args.dst.is_dir():
        return fail(args.dst, "is a folder; give the path of the checkpoint file to write")
    try:
        src = _load(args.src)
        new, report = convert_checkpoint(src, method=args.method, keep_name=args.keep_name)
    except (GauntConfigError, RuntimeError, TypeError, ValueError, KeyError) as exc:
        # a config or weights that do not describe a buildable EquiformerV2
        return fail(args.src, exc)
    try:
        save_atomically(new, args.dst)
    except OSError as exc:
        return fail(args.dst, f"cannot be written ({exc.strerror or exc})")
    print(
        f"wrote {args.dst}: {report['from']} -> Gaunt EquiformerV2 (method {report['method']}); "
        f"{len(report['new_parameters'])} new tensors, parameters {report['n_parameters_stock']} -> "
        f"{report['n_parameters_gaunt']}; dropped training state: {report['dropped'] or 'none'}"
    )
    if args.verify:
        diff = verify_conversion(src, new)
        print(f"verify: largest output difference on a probe structure {diff:.3g}")
        if diff > 1e-6:
            print("gaunt-convert-equiformer-v2: error: predictions differ", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
