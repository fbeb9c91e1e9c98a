"""The CPU-kernel cache on a shared machine: the cache folder is private, a cached library is loaded only
if this user built it (owner, mode, recorded SHA-256), anything else at its name is rebuilt, never
loaded; a cache that cannot be used costs one warning and the kernels still work.

These are the rules of ``build.cached_library``, which caches the ``torch.ops.gaunt`` operators' library; here
they cache the C kernels alone (compiled with the operators' flags, loaded with ctypes), which build in a
second and need no torch. Every load runs in a fresh interpreter (a library once loaded stays loaded). A
"planted" library is a real shared library whose constructor writes a marker file: the marker proves whether
it was ever loaded."""
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from gaunt_plugins.backends.cpu import build

CC = build._compiler()
pytestmark = [pytest.mark.slow, pytest.mark.skipif(CC is None, reason="no C compiler: the CPU kernels cannot be built")]
OTHER_UID = 65534  # nobody

PLANTED_C = r"""
#include <stdio.h>
#include <stdlib.h>
__attribute__((constructor)) static void planted(void) {
    const char *path = getenv("GAUNT_TEST_MARKER");
    FILE *f = path ? fopen(path, "w") : NULL;
    if (f) { fputs("planted library ran", f); fclose(f); }
}
"""

# build.py needs only the standard library: the packages above it are stubbed, so that each fresh
# interpreter skips importing torch (seconds each).
LOAD = """
import ctypes, json, os, subprocess, sys, types, warnings
for package in ("gaunt_plugins", "gaunt_plugins.backends", "gaunt_plugins.backends.cpu"):
    sys.modules[package] = types.ModuleType(package)
    sys.modules[package].__path__ = [os.path.join(ROOT, *package.split(".")[1:])]
import gaunt_plugins.backends.cpu.build as build
NAME = sys.argv[1]


def compile_to(out):
    flags = build._BASE_FLAGS + build._cpu_flags()
    proc = subprocess.run([os.environ["CC"], *flags, "-o", str(out), *map(str, build._SOURCES)], capture_output=True,
                          text=True)
    if proc.returncode != 0:
        raise build._BuildFailed(proc.stderr[-500:])


with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    try:
        lib, _ = build.cached_library(NAME, lambda folder, install: build.build_into(
            folder, NAME, install, compile_to, ctypes.CDLL, "CPU kernels"), ctypes.CDLL, "CPU kernels")
        reason = None
    except (build._BuildFailed, OSError) as exc:
        lib, reason = None, str(exc)
print(json.dumps({"loaded": lib is not None, "reason": reason,
                  "warnings": [str(w.message) for w in caught if "gaunt_plugins CPU kernels" in str(w.message)]}))
""".replace("ROOT", repr(str(Path(build.__file__).parents[2])))


NAME = "gaunt_test_kernels.so"


@pytest.fixture(scope="module")
def name():
    return NAME


@pytest.fixture
def planted_so(tmp_path):
    src = tmp_path / "planted.c"
    src.write_text(PLANTED_C)
    out = tmp_path / "planted.so"
    subprocess.run([CC, "-shared", "-fPIC", "-o", str(out), str(src)], check=True, capture_output=True)
    return out


def load(cache, tmp_path, umask=None):
    """Load the kernels in a fresh interpreter with ``GAUNT_PLUGINS_CACHE=cache``: its JSON report."""
    temp = tmp_path / "tmpdir"
    temp.mkdir(exist_ok=True)
    env = dict(os.environ, GAUNT_PLUGINS_CACHE=str(cache), GAUNT_TEST_MARKER=str(tmp_path / "marker"),
               TMPDIR=str(temp), CC=CC, GAUNT_CPU_KERNELS="1")
    proc = subprocess.run([sys.executable, "-c", LOAD, NAME], env=env, capture_output=True, text=True, timeout=300,
                          preexec_fn=(lambda: os.umask(umask)) if umask is not None else None)
    marker = (tmp_path / "marker").exists()
    assert proc.returncode == 0, (f"the loading process died ({proc.returncode}; the planted library ran: {marker}):\n"
                                  f"{proc.stderr[-3000:]}")
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    report["marker"] = marker
    report["temp_left"] = sorted(os.listdir(temp))
    return report


def assert_genuine(cache, name):
    """The cache holds a library this user built: private, and matching its recorded digest."""
    lib = os.lstat(cache / name)
    assert lib.st_uid == os.getuid() and not lib.st_mode & 0o022 and stat.S_ISREG(lib.st_mode)
    digest = (cache / (name + ".sha256")).read_text().strip()
    assert hashlib.sha256((cache / name).read_bytes()).hexdigest() == digest


def test_the_cache_folder_and_library_are_private_whatever_the_umask(tmp_path, name):
    cache = tmp_path / "cache"
    report = load(cache, tmp_path, umask=0)
    assert report["loaded"] and report["warnings"] == [], report
    assert stat.S_IMODE(os.lstat(cache).st_mode) == 0o700
    assert_genuine(cache, name)
    assert sorted(os.listdir(cache)) == [name, name + ".sha256"]  # no build folder left behind


@pytest.mark.parametrize("kind", ["world_writable", "other_user", "no_recorded_digest"])
def test_a_library_planted_at_the_cached_name_is_rebuilt_never_loaded(tmp_path, name, planted_so, kind):
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)
    shutil.copy(planted_so, cache / name)
    if kind != "no_recorded_digest":  # a digest that matches: only owner and mode can give it away
        (cache / (name + ".sha256")).write_text(hashlib.sha256(planted_so.read_bytes()).hexdigest())
    os.chmod(cache / name, 0o777 if kind == "world_writable" else 0o700)
    if kind == "other_user":
        if os.getuid() != 0:
            pytest.skip("giving a file to another user needs root")
        os.chown(cache / name, OTHER_UID, OTHER_UID)
    report = load(cache, tmp_path)
    assert not report["marker"], "the planted library was loaded"
    assert report["loaded"], report
    if kind != "no_recorded_digest":
        assert len(report["warnings"]) == 1 and "not loading the cached library" in report["warnings"][0], report
    assert_genuine(cache, name)


def test_a_truncated_cached_library_is_rebuilt(tmp_path, name):
    cache = tmp_path / "cache"
    assert load(cache, tmp_path)["loaded"]
    data = (cache / name).read_bytes()
    (cache / name).write_bytes(data[: len(data) // 2])  # what a full disk or a killed copy leaves
    report = load(cache, tmp_path)  # loading half a library dies with SIGBUS or fails
    assert report["loaded"] and len(report["warnings"]) == 1 and "digest" in report["warnings"][0], report
    assert (cache / name).read_bytes() == data
    assert_genuine(cache, name)


@pytest.mark.parametrize("kind", ["other_user", "world_writable", "symlink"])
def test_a_cache_folder_that_is_not_private_is_not_used(tmp_path, name, planted_so, kind):
    real = tmp_path / "shared"
    real.mkdir()
    shutil.copy(planted_so, real / name)
    (real / (name + ".sha256")).write_text(hashlib.sha256(planted_so.read_bytes()).hexdigest())
    os.chmod(real / name, 0o755)
    os.chmod(real, 0o777 if kind == "world_writable" else 0o755)
    if kind == "other_user":
        if os.getuid() != 0:
            pytest.skip("giving a folder to another user needs root")
        for path in (real / name, real / (name + ".sha256"), real):
            os.chown(path, OTHER_UID, OTHER_UID)
    cache = real
    if kind == "symlink":
        cache = tmp_path / "link"
        cache.symlink_to(real, target_is_directory=True)
    before = sorted(os.listdir(real))
    report = load(cache, tmp_path)
    assert not report["marker"], "the planted library was loaded"
    assert report["loaded"], report
    assert len(report["warnings"]) == 1 and "cannot be used" in report["warnings"][0], report
    assert sorted(os.listdir(real)) == before  # nothing written into someone else's folder
    assert report["temp_left"] == []  # the private build folder is removed once loaded


def test_an_unusable_cache_location_costs_one_warning_and_the_kernels_still_load(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    report = load(blocker / "cache", tmp_path)  # unwritable for root too, as a read-only file system is
    assert report["loaded"] and report["reason"] is None, report
    assert len(report["warnings"]) == 1 and "cannot be used" in report["warnings"][0], report
    assert "Not a directory" in report["warnings"][0]
    assert report["temp_left"] == []
