"""The benchmarks' child processes, under gaunt-plugins' one supervisor (``gaunt_plugins/_process.py``).

That file needs only the standard library; it is loaded here by path from this checkout, so a benchmark
gets it without importing torch or an installed ``gaunt_plugins`` (``gpu_suite.py`` runs before its
wheels are installed). :func:`spawn`: a :class:`subprocess.Popen` in its own process group, killed with
the benchmark; :func:`stop`: SIGTERM, then SIGKILL, to that group; :func:`run`: :func:`subprocess.run` on
top of them.
"""
import importlib.util
import sys
from pathlib import Path

_NAME = "_gaunt_plugins_process"  # not ``gaunt_plugins._process``: its package may not be importable here


def _load():
    if _NAME not in sys.modules:
        spec = importlib.util.spec_from_file_location(_NAME, Path(__file__).resolve().parents[1] / "gaunt_plugins"
                                                      / "_process.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[_NAME] = module  # before running it: its dataclasses look their module up
        spec.loader.exec_module(module)
    return sys.modules[_NAME]


process = _load()
spawn, stop, run = process.spawn, process.stop, process.run
