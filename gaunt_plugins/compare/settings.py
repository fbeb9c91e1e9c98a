"""What a variant's runs were trained with, and whether runs of two reports may share one table.

A variant's settings (:meth:`.framework.Framework.settings`) are a JSON mapping: ``config`` (its
config, flattened to dotted keys, output folders aside), ``seeds``, ``budget`` (``epochs``,
``max_minutes``), ``tests`` (name -> path) and ``device``. ``report.json`` records them for both
variants under ``settings``. ``--only gaunt`` keeps the earlier report's upstream results only if
upstream would be trained with the same settings now (:func:`check_kept`): then the two columns
compare runs that differ in the variant alone.
"""

from __future__ import annotations

import json
from typing import Any, Dict, Iterable, List, Mapping

__all__ = ["normalise", "differences", "check_kept", "SettingsMismatch"]


class SettingsMismatch(ValueError):
    """The earlier report's runs were trained with other settings than the ones asked for now."""


def normalise(settings: Mapping[str, Any]) -> Dict[str, Any]:
    """``settings`` as they read back from ``report.json`` (JSON types only)."""
    return json.loads(json.dumps(settings, default=str))


def _show(value: Any) -> str:
    return "(absent)" if value is None else json.dumps(value, default=str)


def differences(before: Mapping[str, Any], now: Mapping[str, Any]) -> List[str]:
    """One phrase per setting that differs: ``"max_num_epochs: 40 before, 2 now"``."""
    before, now = normalise(before), normalise(now)
    out: List[str] = []
    a, b = before.get("config") or {}, now.get("config") or {}
    for key in sorted(set(a) | set(b)):
        if a.get(key) != b.get(key):
            out.append(f"config `{key}`: {_show(a.get(key))} before, {_show(b.get(key))} now")
    for name in ("seeds", "budget", "tests", "device"):
        if before.get(name) != now.get(name):
            out.append(f"{name}: {_show(before.get(name))} before, {_show(now.get(name))} now")
    return out


def check_kept(previous: Mapping[str, Any], now: Mapping[str, Mapping[str, Any]], rerun: Iterable[str]) -> None:
    """Raise :class:`SettingsMismatch` unless every variant of the earlier report ``previous`` that
    ``--only`` keeps (those not in ``rerun`` and run at all) was trained with the settings it
    would be trained with now (``now``: variant -> settings)."""
    rerun = list(rerun)
    recorded = previous.get("settings") or {}
    for name, entry in (previous.get("variants") or {}).items():
        if name in rerun or name not in now or entry.get("status") == "not run":
            continue
        how = (f"rerun both variants with these settings (`--overwrite` instead of `--only {','.join(rerun)}`), "
               f"or repeat the earlier run's own command (`{previous.get('command', '?')}`) with `--only "
               f"{','.join(rerun)}`")
        if name not in recorded:
            raise SettingsMismatch(
                f"--only {','.join(rerun)}: the earlier report does not record the settings its {name} runs were "
                f"trained with, so they cannot be put next to this run's: {how}")
        diff = differences(recorded[name], now[name])
        if diff:
            raise SettingsMismatch(
                f"--only {','.join(rerun)}: the kept {name} results were trained with other settings than this "
                f"run would use ({'; '.join(diff)}), so the report would compare unlike runs: {how}")
