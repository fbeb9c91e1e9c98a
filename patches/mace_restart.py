"""A MACE restart (``restart_latest``) only from a checkpoint of the same model.

MACE loads the latest checkpoint with ``load_state_dict(strict=False)`` inside a ``try`` that
swallows every error: a checkpoint of another model (written with another ``tensor_product``,
``gaunt_targets``, ``gaunt_conv_products`` or ``gaunt_product_chains``) fails on its first differently shaped tensor, and the
run silently starts again at epoch 0, writing over the earlier run's checkpoints and models. With
the MACE patch applied:

- every checkpoint MACE writes carries the settings of the run that wrote it
  (``checkpoint["gaunt_plugins"] = {"tensor_product": ..., "gaunt_targets": [...],
  "gaunt_conv_products": K or "paths"}``, plus ``"gaunt_product_chains": P`` for more than one chain and
  ``"gaunt_product_gain": g`` for a gain other than the default; MACE itself
  ignores the extra key);
- once the model is built, a ``restart_latest`` run compares it with the checkpoints MACE would
  restart from: their recorded settings (a checkpoint without a record was written by upstream
  MACE, with no Gaunt layers) and the names and shapes of their tensors. On any difference it stops
  with a :class:`RestartMismatchError` naming both settings and the checkpoint, before anything is
  trained or written;
- a checkpoint that cannot be read (truncated, or not written by ``torch.save``), which MACE would also
  skip before training from epoch 0, stops the run with a :class:`RestartMismatchError` naming the file.
"""

from __future__ import annotations

import glob
import os
import re
import weakref
from typing import Any, Dict, List, Optional

from gaunt_plugins.adapters.mace_config import GauntSettingsError

__all__ = ["RestartMismatchError", "run_settings", "describe", "remember_settings", "settings_of",
           "check_restart", "RECORD_KEY"]

RECORD_KEY = "gaunt_plugins"
_SETTINGS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # model -> run settings


class RestartMismatchError(GauntSettingsError):
    """``restart_latest`` found a checkpoint of another model, or one it cannot read (``mace_run_train``
    prints the message on one line, see :mod:`gaunt_plugins.patches.mace`)."""


def run_settings(args: Any) -> Dict[str, Any]:
    """The settings that decide a MACE model's Gaunt layers, from ``mace_run_train``'s arguments."""
    from gaunt_plugins.adapters.mace_config import GAUNT_TARGETS, options_from_args

    options = options_from_args(args)
    if options is None:
        return {"tensor_product": "e3nn"}
    settings: Dict[str, Any] = {"tensor_product": "gaunt",
                                "gaunt_targets": [t for t in GAUNT_TARGETS if t in options.targets]}
    if options.conv:
        settings["gaunt_conv_products"] = options.conv_products  # K, or "paths"
    chains, odd_chains = options.chains_for(int(getattr(args, "max_ell", None) or 3),
                                            int(getattr(args, "correlation", None) or 3))
    if options.product and chains != 1:  # absent: one chain (as before the option existed)
        settings["gaunt_product_chains"] = int(chains)
    if options.product and odd_chains:  # absent: none (as before the option existed)
        settings["gaunt_product_odd_chains"] = int(odd_chains)
    if options.product and options.product_gain is not None:
        from gaunt_plugins.layers.many_body import DEFAULT_WEIGHT_GAIN

        if options.product_gain != DEFAULT_WEIGHT_GAIN:  # absent: the default gain
            settings["gaunt_product_gain"] = float(options.product_gain)
    return settings


def describe(settings: Optional[Dict[str, Any]]) -> str:
    """``tensor_product: gaunt, gaunt_targets: [conv, product], gaunt_conv_products: 2``."""
    if settings is None:
        return "no gaunt-plugins record (written by MACE without the patch: tensor_product: e3nn)"
    parts = []
    for key, value in settings.items():
        parts.append(f"{key}: [{', '.join(value)}]" if isinstance(value, list) else f"{key}: {value}")
    return ", ".join(parts)


def remember_settings(model, settings: Dict[str, Any]) -> None:
    """What :func:`settings_of` returns for ``model`` (the checkpoints of its run record it)."""
    _SETTINGS[model] = dict(settings)


def settings_of(model) -> Optional[Dict[str, Any]]:
    model = getattr(model, "module", model)  # a DistributedDataParallel wrapper
    return _SETTINGS.get(model)


def _latest_checkpoints(directory: str, tag: str) -> List[str]:
    """The checkpoints ``CheckpointHandler.load_latest`` picks from: the newest SWA one and the
    newest plain one of ``tag`` (``<tag>_epoch-<N>[_swa].pt``)."""
    pattern = re.compile(rf"^{re.escape(tag)}_epoch-(\d+)(_swa)?\.pt$")
    newest: Dict[bool, tuple] = {}
    for path in glob.glob(os.path.join(glob.escape(directory), "*.pt")):
        match = pattern.match(os.path.basename(path))
        if match:
            swa, epoch = bool(match.group(2)), int(match.group(1))
            if swa not in newest or epoch > newest[swa][0]:
                newest[swa] = (epoch, path)
    return [newest[swa][1] for swa in (True, False) if swa in newest]


def _tensor_differences(saved: Dict[str, Any], current: Dict[str, Any]) -> List[str]:
    from gaunt_plugins.layers.many_body import GauntManyBody

    out = []
    for name in sorted(set(saved) | set(current)):
        if name not in current:
            out.append(f"{name} is in the checkpoint only")
        elif name not in saved:
            if name.rsplit(".", 1)[-1] in GauntManyBody.DEFAULTED_BUFFERS:
                continue  # a checkpoint written before the buffer existed: the layer loads its default
            out.append(f"{name} is missing from the checkpoint")
        elif tuple(saved[name].shape) != tuple(current[name].shape):
            out.append(f"{name}: {list(saved[name].shape)} in the checkpoint, {list(current[name].shape)} here")
    return out


def _read_checkpoint(path: str):
    import pickle
    import zipfile

    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except (OSError, EOFError, RuntimeError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise RestartMismatchError(
            f"restart_latest: cannot read the checkpoint {os.path.abspath(path)} ({os.path.getsize(path)} bytes: "
            f"{reason}); expected a checkpoint written by mace_run_train (torch.save), and this one is truncated or "
            "damaged. MACE would skip it and train again from epoch 0, writing over that run's checkpoints. Move "
            "the file away to restart from the checkpoint before it, or remove restart_latest") from None


def check_restart(args: Any, model) -> None:
    """Raise :class:`RestartMismatchError` if ``restart_latest`` would load a checkpoint of another
    model than ``model`` (built from ``args``); nothing to do without ``restart_latest``."""
    if not getattr(args, "restart_latest", False):
        return
    import torch
    from mace.tools import get_tag

    settings = run_settings(args)
    current = model.state_dict()
    for path in _latest_checkpoints(str(args.checkpoints_dir), get_tag(name=args.name, seed=args.seed)):
        checkpoint = _read_checkpoint(path)
        recorded = checkpoint.get(RECORD_KEY) if isinstance(checkpoint, dict) else None
        differences = _tensor_differences(checkpoint.get("model", {}), current) if isinstance(checkpoint, dict) else []
        if differences or (recorded is not None and recorded != settings):
            shown = "; ".join(differences[:3]) + (f"; and {len(differences) - 3} more" if len(differences) > 3 else "")
            raise RestartMismatchError(
                f"restart_latest: the checkpoint {os.path.abspath(path)} was written with {describe(recorded)}, and this run has "
                f"{describe(settings)}"
                + (f"; {len(differences)} of its tensors do not fit this model ({shown})" if differences else "")
                + ". MACE would not load it: it would train again from epoch 0 and write over that run's "
                "checkpoints and models. Restart with the checkpoint's settings, or train these settings under "
                "another `name` or `checkpoints_dir`.")
