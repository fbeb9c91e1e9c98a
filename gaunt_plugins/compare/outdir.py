"""The report folder (``--out``): one comparison per folder, never mixed with an earlier one.

- An absent or empty folder is used as it is.
- A folder holding an earlier report is refused, unless ``overwrite`` (``--overwrite``: its
  contents are removed first) or ``rerun`` names the variants to run again (``--only``): their
  folders are removed, the other variants' results stay and are reported as the earlier run's.
- A non-empty folder that holds anything gaunt-compare did not write (or no report) is never
  touched: choose another folder.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Dict, Iterable, Optional

__all__ = ["OutDirError", "prepare_out_dir", "REPORT_FILES"]

REPORT_FILES = ("report.json", "report.md", "learning_curves.png")


class OutDirError(ValueError):
    """The report folder cannot be used as asked."""


def _previous_report(out_dir: Path) -> Optional[Dict[str, Any]]:
    try:
        report = json.loads((out_dir / "report.json").read_text())
    except (OSError, ValueError):
        return None
    return report if isinstance(report, dict) and isinstance(report.get("variants"), dict) else None


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def prepare_out_dir(out_dir: Path, variants: Iterable[str], all_variants: Iterable[str], overwrite: bool = False,
                    rerun_only: bool = False) -> Optional[Dict[str, Any]]:
    """Make ``out_dir`` ready for a run of ``variants``; returns the earlier report whose other
    variants are kept (``rerun_only``), else ``None``. Raises :class:`OutDirError`."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise OutDirError(f"--out {out_dir} is a file, not a folder")
    entries = sorted(out_dir.iterdir()) if out_dir.exists() else []
    if not entries:
        out_dir.mkdir(parents=True, exist_ok=True)
        return None
    previous = _previous_report(out_dir)
    ours = set(REPORT_FILES) | set(all_variants)
    foreign = [p.name for p in entries if p.name not in ours]
    if previous is None or foreign:
        what = f"files gaunt-compare did not write ({', '.join(foreign[:5])})" if foreign else "no gaunt-compare report"
        raise OutDirError(f"--out {out_dir} is not empty and holds {what}: not touching it; choose an empty or "
                          "new folder")
    if overwrite:
        for path in entries:
            _remove(path)
        return None
    if rerun_only:
        for variant in variants:
            _remove(out_dir / variant)
        return previous
    raise OutDirError(
        f"--out {out_dir} already holds the report of an earlier run (started {previous.get('started', '?')}): "
        "pass --overwrite to replace it, --only VARIANT to run one variant again and keep the other's "
        "results, or choose another folder")
