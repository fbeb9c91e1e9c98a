"""``gaunt-run``: run a framework's own command with the gaunt-plugins patches applied.

Usage::

    gaunt-run mace_run_train --config cfg.yaml          # a console script, run in this process
    gaunt-run -m mace.cli.run_train --config cfg.yaml   # a module, like python -m
    gaunt-run train.py --epochs 3                       # a Python file
    gaunt-run torchrun --nproc_per_node 2 $(which mace_run_train) --config cfg.yaml --distributed
    gaunt-run --patches mace mace_run_train ...         # only some patches (comma-separated)

    gaunt-run --install-hook      # write the automatic hook into this environment's site-packages
    gaunt-run --uninstall-hook    # remove it again
    gaunt-run --hook-status       # say where it is and whether it is active

How the patches reach every process:

1. In this process the patches are applied (forgiving: a framework that is not installed, or an
   unsupported version, is skipped with a log line), then the command runs here: console scripts
   are looked up among the ``console_scripts`` entry points and called, so ``sys.argv[0]`` is the
   command's name and its exit status is returned.
2. For the processes the command starts (``torchrun`` workers, data-loader workers started with
   spawn, ``subprocess`` calls) ``GAUNT_PLUGINS_AUTOPATCH=1`` is exported and a private directory
   (:func:`subprocess_hook_dir`) holding a short ``sitecustomize.py`` is put first on ``PYTHONPATH``,
   and first on this process's ``sys.path`` (a child started with ``PYTHONPATH`` rebuilt from
   ``sys.path`` keeps it): every Python child then patches each framework as soon as it imports it
   (:mod:`gaunt_plugins.patches.autopatch`). A ``sitecustomize`` the environment already had still
   runs: ours executes it after itself. ``--no-subprocess-hook`` turns this off.

The installed hook (``--install-hook``) is a ``gaunt_plugins_autopatch.pth`` file in the
environment's ``site-packages``. It does nothing unless ``GAUNT_PLUGINS_AUTOPATCH=1`` is set, so
after installing it ``GAUNT_PLUGINS_AUTOPATCH=1 mace_run_train --config cfg.yaml`` (stock command,
no launcher) accepts ``tensor_product: gaunt``. It never overwrites a file it did not write.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import runpy
import shutil
import sys
import sysconfig
import tempfile
from importlib import metadata
from pathlib import Path
from typing import List, Optional, Sequence

from .._private_files import NotPrivate, fresh_private_dir, private_dir, read_private_file, write_private_file
from .autopatch import AUTOPATCH_ENV, PATCHES_ENV, enabled
from .loader import apply_patches, available_patches

__all__ = ["main", "install_hook", "uninstall_hook", "hook_path", "HOOK_FILENAME", "subprocess_hook_dir",
           "hook_environment", "export_hook"]

logger = logging.getLogger("gaunt_plugins.patches")

HOOK_FILENAME = "gaunt_plugins_autopatch.pth"
HOOK_MARKER = "# gaunt-plugins automatic patching hook"

# Both hooks load autopatch.py by its file path (recorded when the hook is written), not through
# `import gaunt_plugins...`: the package's __init__ imports torch, which would make every Python
# process started with the variable set pay seconds at start-up. autopatch.py needs only the
# standard library until a framework is imported. A missing file (package uninstalled) is skipped.
_LOAD_AUTOPATCH = """import importlib.util, os, sys
p = {path!r}
if os.path.exists(p) and "_gaunt_plugins_autopatch" not in sys.modules:
    spec = importlib.util.spec_from_file_location("_gaunt_plugins_autopatch", p)
    m = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = m
    spec.loader.exec_module(m)
    m.from_hook()
"""


def _autopatch_file() -> str:
    return str(Path(__file__).resolve().with_name("autopatch.py"))


def _pth_text() -> str:
    """The .pth file: site.py executes lines that start with "import". It costs one environment
    lookup unless GAUNT_PLUGINS_AUTOPATCH is set, and never stops the interpreter from starting."""
    code = "try:\n" + "".join(" " + line + "\n" for line in _LOAD_AUTOPATCH.format(path=_autopatch_file()).splitlines())
    code += "except Exception as e:\n sys.stderr.write('gaunt-plugins hook: %r\\n' % (e,))\n"
    return (
        f"{HOOK_MARKER} (written by `gaunt-run --install-hook`; remove with\n"
        f"# `gaunt-run --uninstall-hook` or by deleting this file). Active only with {AUTOPATCH_ENV}=1.\n"
        f"import os, sys; exec({code!r}) if os.environ.get({AUTOPATCH_ENV!r}, '').strip().lower() "
        f"in ('1', 'true', 'yes', 'on') else None\n"
    )


def _sitecustomize_text() -> str:
    load = "".join("        " + line + "\n" for line in _LOAD_AUTOPATCH.format(path=_autopatch_file()).splitlines())
    return f'''{HOOK_MARKER}: the sitecustomize that `gaunt-run` puts first on PYTHONPATH.
# With {AUTOPATCH_ENV}=1 it applies the gaunt-plugins patches when a framework is imported,
# then runs the sitecustomize this directory hides, if the environment has one.
import os as _os, sys as _sys


def _gaunt_plugins_hook():
    if _os.environ.get({AUTOPATCH_ENV!r}, "").strip().lower() in ("1", "true", "yes", "on"):
      try:
{load}      except Exception as exc:  # never stop the interpreter
        _sys.stderr.write("gaunt-plugins hook: %r\\n" % (exc,))
    here = _os.path.dirname(_os.path.abspath(__file__))
    try:
        import importlib.machinery
        import importlib.util

        rest = [p for p in _sys.path if _os.path.abspath(p or ".") != here]
        spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
        if spec is not None and spec.loader is not None:
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
    except Exception as exc:
        _sys.stderr.write("gaunt-plugins hook: the hidden sitecustomize failed: %r\\n" % (exc,))


_gaunt_plugins_hook()
del _gaunt_plugins_hook
'''


# ---------------------------------------------------------------------------- hooks
def hook_path(site_dir: Optional[str] = None) -> Path:
    """Where ``--install-hook`` writes the ``.pth`` file (this interpreter's purelib)."""
    return Path(site_dir or sysconfig.get_paths()["purelib"]) / HOOK_FILENAME


def _is_ours(path: Path) -> bool:
    try:
        return path.read_text().startswith(HOOK_MARKER)
    except OSError:
        return False


def install_hook(site_dir: Optional[str] = None) -> Path:
    """Write the ``.pth`` hook; refuse (``FileExistsError``) to replace a file we did not write."""
    path = hook_path(site_dir)
    if path.exists() and not _is_ours(path):
        raise FileExistsError(f"{path} exists and was not written by gaunt-plugins; not touching it")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".pth.tmp")
    tmp.write_text(_pth_text())
    os.replace(tmp, path)
    return path


def uninstall_hook(site_dir: Optional[str] = None) -> Optional[Path]:
    """Remove the ``.pth`` hook if it is ours; returns the removed path (None if there was none)."""
    path = hook_path(site_dir)
    if not path.exists():
        return None
    if not _is_ours(path):
        raise FileExistsError(f"{path} was not written by gaunt-plugins; not removing it")
    path.unlink()
    return path


_FRESH_HOOK_DIRS: dict = {}  # stable name refused -> the fresh folder this process uses instead


def subprocess_hook_dir() -> Path:
    """A private folder (0700, this user's, checked; never followed through a symlink) holding only the
    launcher's ``sitecustomize.py``. Its name, ``gaunt_plugins_hook_<uid>_<digest>`` under the temporary
    directory, is reused across runs while it passes the checks; if something else holds that name (a
    folder another user created or anyone can write, a symlink, a file) it is left alone and this
    process uses a fresh folder with an unpredictable name instead, with a warning."""
    text = _sitecustomize_text().encode()
    digest = hashlib.sha256(text).hexdigest()[:12]
    uid = os.getuid() if hasattr(os, "getuid") else "user"
    stable = Path(tempfile.gettempdir()) / f"gaunt_plugins_hook_{uid}_{digest}"
    directory = _FRESH_HOOK_DIRS.get(stable)
    if directory is None:
        try:
            directory = private_dir(stable)
        except OSError as exc:  # NotPrivate, or the name cannot be created
            directory = _FRESH_HOOK_DIRS[stable] = fresh_private_dir(prefix=stable.name + "_")
            logger.warning("gaunt-run: %s, so the subprocess hook lives in a fresh private folder, %s",
                           exc, directory)
    target = directory / "sitecustomize.py"
    try:
        current = read_private_file(target)
    except (FileNotFoundError, NotPrivate):
        current = None
    if current != text:
        write_private_file(target, text)
    return directory


def hook_environment(environ=None, names: Optional[List[str]] = None) -> dict:
    """A copy of ``environ`` (default ``os.environ``) in which Python processes patch themselves:
    what ``gaunt-run`` gives the processes it starts (``GAUNT_PLUGINS_AUTOPATCH=1``, the hook's
    ``sitecustomize`` directory first on ``PYTHONPATH``, ``GAUNT_PLUGINS_PATCHES`` if ``names``)."""
    env = dict(os.environ if environ is None else environ)
    env[AUTOPATCH_ENV] = "1"
    if names is not None:
        env[PATCHES_ENV] = ",".join(names)
    hook_dir = str(subprocess_hook_dir())
    parts = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != hook_dir]
    env["PYTHONPATH"] = os.pathsep.join([hook_dir] + parts)
    return env


def export_hook(names: Optional[List[str]] = None) -> None:
    """Give every Python process started from now on the hook: ``os.environ`` <- :func:`hook_environment`,
    and the hook's directory first on this process's ``sys.path`` too, so that a child whose
    ``PYTHONPATH`` is rebuilt from ``sys.path`` (``":".join(sys.path)``, as MACE's own tests start
    ``run_train.py``) still gets it."""
    os.environ.update(hook_environment(os.environ, names))
    hook_dir = str(subprocess_hook_dir())
    if hook_dir in sys.path:
        sys.path.remove(hook_dir)
    sys.path.insert(0, hook_dir)


# ---------------------------------------------------------------------------- running
def _console_script(name: str):
    eps = metadata.entry_points()
    group = eps.select(group="console_scripts") if hasattr(eps, "select") else eps.get("console_scripts", [])
    for ep in group:
        if ep.name == name:
            return ep
    return None


def _is_python_file(path: str) -> bool:
    if path.endswith(".py"):
        return True
    try:
        with open(path, "rb") as handle:
            first = handle.readline(200)
    except OSError:
        return False
    return first.startswith(b"#!") and b"python" in first


def _run(command: Sequence[str], module: Optional[str]) -> int:
    if module is not None:
        sys.argv = [module] + list(command)
        runpy.run_module(module, run_name="__main__", alter_sys=True)
        return 0
    name, args = command[0], list(command[1:])
    ep = _console_script(name) if os.sep not in name else None
    if ep is not None:
        func = ep.load()
        sys.argv = [name] + args
        result = func()
        return result if isinstance(result, int) else 0
    path = name if os.path.exists(name) else shutil.which(name)
    if path is not None and _is_python_file(path):
        sys.argv = [path] + args
        sys.path.insert(0, os.path.dirname(os.path.abspath(path)))
        runpy.run_path(path, run_name="__main__")
        return 0
    if path is None:
        raise SystemExit(f"gaunt-run: command not found: {name}")
    # not Python: the patches reach its Python children through the subprocess hook only
    os.execv(path, [name] + args)
    return 0  # pragma: no cover


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gaunt-run",
        usage="gaunt-run [options] (COMMAND | -m MODULE) [ARGS ...]",
        description="Run a command with the gaunt-plugins framework patches applied "
        "(in this process and in every Python process it starts).",
        epilog="Example: gaunt-run mace_run_train --config cfg.yaml   (cfg.yaml: tensor_product: gaunt)",
    )
    parser.add_argument("--patches", help="comma-separated patch names (default: all available)")
    parser.add_argument("-m", dest="module", help="run a module as a script, like python -m")
    parser.add_argument("--no-subprocess-hook", action="store_true",
                        help="patch only this process, not the processes it starts")
    parser.add_argument("--install-hook", action="store_true",
                        help=f"write {HOOK_FILENAME} into site-packages (active with {AUTOPATCH_ENV}=1)")
    parser.add_argument("--uninstall-hook", action="store_true", help=f"remove {HOOK_FILENAME}")
    parser.add_argument("--hook-status", action="store_true", help="show the installed hook and patches")
    parser.add_argument("--site-dir", help="site-packages directory for --install-hook/--uninstall-hook")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what is patched")
    return parser


_VALUE_OPTIONS = ("--patches", "--site-dir", "-m")


def _split(argv: Sequence[str]):
    """``[launcher options] (-m module | command) [its arguments]``: the launcher's own options end
    at the first word that is not one of them, so the command's options are never parsed here."""
    argv = list(argv)
    i = 0
    while i < len(argv):
        token = argv[i]
        if token == "--":
            return argv[:i], argv[i + 1:]
        if not token.startswith("-"):
            break
        if token == "-m" and i + 1 < len(argv):
            return argv[: i + 2], argv[i + 2:]
        if token in _VALUE_OPTIONS:
            i += 1
        i += 1
    return argv[:i], argv[i:]


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = _parser()
    own, command = _split(sys.argv[1:] if argv is None else argv)
    opts = parser.parse_args(own)
    opts.command = command
    if opts.verbose:
        logging.basicConfig(level=logging.INFO, format="%(message)s")

    if opts.install_hook or opts.uninstall_hook or opts.hook_status:
        try:
            if opts.install_hook:
                print(f"gaunt-run: installed {install_hook(opts.site_dir)}; "
                      f"set {AUTOPATCH_ENV}=1 to activate it")
            if opts.uninstall_hook:
                removed = uninstall_hook(opts.site_dir)
                print(f"gaunt-run: removed {removed}" if removed else "gaunt-run: no hook installed")
        except FileExistsError as exc:
            print(f"gaunt-run: {exc}", file=sys.stderr)
            return 1
        if opts.hook_status:
            path = hook_path(opts.site_dir)
            state = "installed" if path.exists() and _is_ours(path) else "not installed"
            print(f"hook: {path} ({state}); {AUTOPATCH_ENV}={'on' if enabled() else 'off'}")
            for name, cls in sorted(available_patches().items()):
                print(f"patch {name}: {cls.distribution}{cls.supported}")
        if not opts.command and opts.module is None:
            return 0

    if not opts.command and opts.module is None:
        parser.print_usage(sys.stderr)
        print("gaunt-run: error: no command given", file=sys.stderr)
        return 2
    names = [n.strip() for n in opts.patches.split(",") if n.strip()] if opts.patches else None
    if not opts.no_subprocess_hook:
        export_hook(names)
    applied = apply_patches(names)
    logger.info("gaunt-run: patched %s", ", ".join(sorted(applied)) or "nothing")
    return _run(opts.command, opts.module)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
