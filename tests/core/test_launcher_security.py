"""The launcher's subprocess hook on a shared machine: the folder put first on the children's PYTHONPATH
is private (0700, this user's, a real directory). Whatever holds its predictable name under the
temporary directory (a folder anyone can write or another user owns, a symlink, a file) is left alone
and never reaches a child: the children use a fresh private folder, and still patch themselves.

What is planted imitates an attacker: a ``sitecustomize.py`` and a ``json.py`` (any module a child
imports would do) that write a marker file when run."""
import hashlib
import json
import os
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from gaunt_plugins.patches import launcher

OTHER_UID = 65534  # nobody
PLANTED = "open({marker!r}, 'w').write('planted code ran')\n"
CHILD = "import json, sys; print(json.dumps('_gaunt_plugins_autopatch' in sys.modules))"


@pytest.fixture
def temp_dir(tmp_path, monkeypatch):
    """A temporary directory of the test's own, as ``tempfile.gettempdir()`` and ``TMPDIR``."""
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    monkeypatch.setenv("TMPDIR", str(temp))
    monkeypatch.setattr(launcher, "_FRESH_HOOK_DIRS", {})
    return temp


def predictable_name(temp: Path) -> Path:
    digest = hashlib.sha256(launcher._sitecustomize_text().encode()).hexdigest()[:12]
    return temp / f"gaunt_plugins_hook_{os.getuid()}_{digest}"


def plant(folder: Path, marker: Path):
    for name in ("sitecustomize.py", "json.py"):
        (folder / name).write_text(PLANTED.format(marker=str(marker)))


def run_child(env, marker: Path = None) -> bool:
    """Start a Python child with ``env``; whether the hook patched it (the autopatch module loaded)."""
    proc = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=120)
    assert marker is None or not marker.exists(), "a child ran the planted code"
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def assert_private_hook_dir(path: str, not_at: Path):
    st = os.lstat(path)
    assert Path(path) != not_at
    assert stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid() and stat.S_IMODE(st.st_mode) == 0o700
    assert sorted(os.listdir(path)) == ["sitecustomize.py"]


def test_the_hook_folder_is_private_and_reused_whatever_the_umask(temp_dir):
    old = os.umask(0)
    try:
        first = launcher.subprocess_hook_dir()
    finally:
        os.umask(old)
    assert first == predictable_name(temp_dir)
    assert_private_hook_dir(str(first), not_at=Path("/nonexistent"))
    assert stat.S_IMODE(os.lstat(first / "sitecustomize.py").st_mode) == 0o600
    assert launcher.subprocess_hook_dir() == first  # reused: no new folder per run


@pytest.mark.parametrize("kind", ["world_writable", "other_user", "symlink"])
def test_a_planted_hook_folder_never_reaches_a_child(temp_dir, tmp_path, kind, caplog):
    name = predictable_name(temp_dir)
    marker = tmp_path / "marker"
    if kind == "symlink":  # to a folder of the attacker's, with the planted files
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir(mode=0o700)
        plant(elsewhere, marker)
        name.symlink_to(elsewhere, target_is_directory=True)
    else:
        name.mkdir()
        plant(name, marker)
        os.chmod(name, 0o777 if kind == "world_writable" else 0o755)
        if kind == "other_user":
            if os.getuid() != 0:
                pytest.skip("giving a folder to another user needs root")
            for path in [*name.iterdir(), name]:
                os.chown(path, OTHER_UID, OTHER_UID)
    planted = {p.name: p.read_text() for p in name.iterdir()}
    env = launcher.hook_environment(dict(os.environ))
    hook_dir = env["PYTHONPATH"].split(os.pathsep)[0]
    assert run_child(env, marker), "the child was not patched"
    assert_private_hook_dir(hook_dir, not_at=name)
    assert {p.name: p.read_text() for p in name.iterdir()} == planted  # left alone
    assert "fresh private folder" in caplog.text


def test_a_file_at_the_predictable_name_does_not_stop_the_launcher(temp_dir):
    name = predictable_name(temp_dir)
    name.write_text("somebody's file")
    env = launcher.hook_environment(dict(os.environ))
    assert run_child(env)
    assert_private_hook_dir(env["PYTHONPATH"].split(os.pathsep)[0], not_at=name)
    assert name.read_text() == "somebody's file"


def test_export_hook_and_hook_environment_agree_on_one_fresh_folder(temp_dir, monkeypatch):
    """A refused name costs one fresh folder per process, not one per call."""
    predictable_name(temp_dir).write_text("taken")
    for variable in ("PYTHONPATH", "GAUNT_PLUGINS_AUTOPATCH"):  # restored after the test
        monkeypatch.setenv(variable, os.environ.get(variable, ""))
    monkeypatch.setattr(sys, "path", list(sys.path))
    launcher.export_hook(None)
    assert sys.path[0] == os.environ["PYTHONPATH"].split(os.pathsep)[0]
    assert len([p for p in temp_dir.iterdir() if p.is_dir()]) == 1
