"""The report folder (``--out``): one comparison per folder, never mixed with an earlier one, and
nothing in it that gaunt-compare did not write is ever removed.

gaunt-compare lists every file and folder it writes there in a manifest (:data:`MANIFEST`, JSON,
paths relative to the folder): the report files when they are written, and each run's folder
with everything in it when the run has ended.

- An absent or empty folder is used as it is.
- A folder holding an earlier report is refused, unless ``overwrite`` (``--overwrite``: the files
  of the manifest are removed first) or ``rerun_only`` names the variants to run again
  (``--only``): the files of the manifest in their folders are removed, the other variants'
  results stay and are reported as the earlier run's.
- Anything else found where files would be removed (a file or folder not in the manifest, or a
  report without a manifest) makes the request fail before anything is removed, naming what was
  found: move it elsewhere or choose another folder. A folder whose top level holds anything
  gaunt-compare does not write there is never touched at all.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Set

__all__ = ["OutDirError", "prepare_out_dir", "REPORT_FILES", "MANIFEST", "Manifest"]

MANIFEST = "gaunt-compare-files.json"
REPORT_FILES = ("report.json", "report.md", "learning_curves.png")


class OutDirError(ValueError):
    """The report folder cannot be used as asked."""


def _previous_report(out_dir: Path) -> Optional[Dict[str, Any]]:
    try:
        report = json.loads((out_dir / "report.json").read_text())
    except (OSError, ValueError):
        return None
    return report if isinstance(report, dict) and isinstance(report.get("variants"), dict) else None


def _walk(root: Path, base: Path) -> List[str]:
    """Every file and folder under ``root`` (and ``root`` itself), relative to ``base``, POSIX
    style; folders end in ``/``; symbolic links are entries of their own, never followed."""
    if root.is_symlink() or not root.is_dir():
        return [root.relative_to(base).as_posix()] if (root.exists() or root.is_symlink()) else []
    out = [root.relative_to(base).as_posix() + "/"]
    for folder, dirs, files in os.walk(root, followlinks=False):
        here = Path(folder)
        for name in dirs:
            path = here / name
            out.append(path.relative_to(base).as_posix() + ("" if path.is_symlink() else "/"))
        out.extend((here / name).relative_to(base).as_posix() for name in files)
    return out


class Manifest:
    """The files and folders gaunt-compare wrote in ``out_dir`` (``files``: relative paths,
    folders ending in ``/``), stored in ``out_dir / MANIFEST``."""

    def __init__(self, out_dir: Path, files: Iterable[str] = ()):
        self.out_dir = Path(out_dir)
        self.files: Set[str] = set(files)

    @classmethod
    def load(cls, out_dir: Path) -> Optional["Manifest"]:
        """The manifest of ``out_dir``; ``None`` if it has none (or one that cannot be read)."""
        try:
            data = json.loads((Path(out_dir) / MANIFEST).read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(data, dict) or not isinstance(data.get("files"), list):
            return None
        return cls(out_dir, (str(f) for f in data["files"]))

    def add(self, path: Path) -> None:
        """Record ``path`` (a file, or a folder with everything in it now) as written by gaunt-compare."""
        path = Path(path)
        self.files.update(_walk(path, self.out_dir))
        for parent in path.relative_to(self.out_dir).parents:
            if str(parent) != ".":
                self.files.add(parent.as_posix() + "/")

    def save(self) -> None:
        tmp = self.out_dir / f".{MANIFEST}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps({"written_by": "gaunt-compare", "files": sorted(self.files)}, indent=0))
        os.replace(tmp, self.out_dir / MANIFEST)

    def foreign(self, paths: Iterable[Path]) -> List[str]:
        """What under ``paths`` is not in the manifest."""
        found = [p for path in paths for p in _walk(Path(path), self.out_dir)]
        return [p for p in found if p not in self.files]

    def remove(self, paths: Iterable[Path]) -> None:
        """Remove ``paths`` (files of the manifest, folders with only such files in them: check
        :meth:`foreign` first) and drop them from the manifest."""
        for path in paths:
            entries = _walk(Path(path), self.out_dir)
            for rel in sorted(entries, key=lambda r: (-r.rstrip("/").count("/"), r)):  # deepest first
                target = self.out_dir / rel.rstrip("/")
                if rel.endswith("/"):
                    target.rmdir()
                else:
                    target.unlink()
                self.files.discard(rel)


def _refuse_foreign(out_dir: Path, foreign: List[str], action: str) -> None:
    shown = ", ".join(foreign[:8]) + (f" and {len(foreign) - 8} more" if len(foreign) > 8 else "")
    raise OutDirError(
        f"--out {out_dir}: {action} would remove files gaunt-compare did not write ({shown}; they are not in "
        f"its list {MANIFEST}); nothing was removed: move them out of {out_dir} (if they are left from a "
        "gaunt-compare run that was killed, delete them yourself), or choose another folder")


def prepare_out_dir(out_dir: Path, variants: Iterable[str], all_variants: Iterable[str], overwrite: bool = False,
                    rerun_only: bool = False,
                    check: Optional[Callable[[Dict[str, Any]], None]] = None) -> Optional[Dict[str, Any]]:
    """Make ``out_dir`` ready for a run of ``variants``; returns the earlier report whose other
    variants are kept (``rerun_only``), else ``None``. ``check(previous)`` is called with the
    earlier report before anything is removed (it raises to refuse). Raises :class:`OutDirError`
    (nothing removed)."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise OutDirError(f"--out {out_dir} is a file, not a folder")
    entries = sorted(out_dir.iterdir()) if out_dir.exists() else []
    if not entries:
        out_dir.mkdir(parents=True, exist_ok=True)
        return None
    previous = _previous_report(out_dir)
    ours = set(REPORT_FILES) | set(all_variants) | {MANIFEST}
    foreign = [p.name for p in entries if p.name not in ours]
    if previous is None or foreign:
        what = f"files gaunt-compare did not write ({', '.join(foreign[:5])})" if foreign else "no gaunt-compare report"
        raise OutDirError(f"--out {out_dir} is not empty and holds {what}: not touching it; choose an empty or "
                          "new folder")
    if not (overwrite or rerun_only):
        raise OutDirError(
            f"--out {out_dir} already holds the report of an earlier run (started {previous.get('started', '?')}): "
            "pass --overwrite to replace it, --only VARIANT to run one variant again and keep the other's "
            "results, or choose another folder")
    manifest = Manifest.load(out_dir)
    action = "--overwrite" if overwrite else "--only " + ",".join(variants)
    if manifest is None:
        raise OutDirError(
            f"--out {out_dir} holds a report without gaunt-compare's list of the files it wrote ({MANIFEST}; "
            f"written by an older version), so {action} cannot tell its files from yours: nothing was removed; "
            "delete the folder yourself or choose another one")
    clear = [p for p in entries if p.name != MANIFEST] if overwrite else [out_dir / v for v in variants]
    clear = [p for p in clear if p.exists() or p.is_symlink()]
    foreign = manifest.foreign(clear)
    if foreign:
        _refuse_foreign(out_dir, foreign, action)
    if check is not None and not overwrite:
        check(previous)
    manifest.remove(clear)
    manifest.save()
    return None if overwrite else previous
