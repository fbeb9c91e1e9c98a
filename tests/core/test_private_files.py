"""Private folders and files (gaunt_plugins._private_files): created 0700/0600 whatever the umask; anything
at the name that is not this user's and writable only by them (a symlink, a file, a folder others can
write or another user owns) is refused, never followed or reused."""
import os
import stat

import pytest

from gaunt_plugins._private_files import NotPrivate, private_dir, read_private_file, write_private_file

OTHER_UID = 65534  # nobody


def _as_other_user(path):
    if os.getuid() != 0:
        pytest.skip("giving a file to another user needs root")
    os.chown(path, OTHER_UID, OTHER_UID, follow_symlinks=False)


@pytest.fixture
def umask_000():
    old = os.umask(0)
    yield
    os.umask(old)


def test_new_folders_and_files_are_private_whatever_the_umask(tmp_path, umask_000):
    folder = private_dir(tmp_path / "a" / "cache")
    assert stat.S_IMODE(os.lstat(folder).st_mode) == 0o700
    target = write_private_file(folder / "f.bin", b"data")
    assert stat.S_IMODE(os.lstat(target).st_mode) == 0o600
    assert read_private_file(target) == b"data"
    assert sorted(os.listdir(folder)) == ["f.bin"]  # the temporary file was renamed, not left behind


def test_an_own_folder_that_nobody_else_can_write_is_reused_and_tightened(tmp_path):
    folder = tmp_path / "old"
    folder.mkdir()
    os.chmod(folder, 0o755)
    (folder / "kept").write_text("x")
    assert private_dir(folder, tighten=False) == folder and stat.S_IMODE(os.lstat(folder).st_mode) == 0o755
    assert private_dir(folder) == folder and stat.S_IMODE(os.lstat(folder).st_mode) == 0o700
    assert (folder / "kept").read_text() == "x"


@pytest.mark.parametrize("kind", ["world_writable", "group_writable", "symlink", "file", "other_user"])
def test_a_folder_name_held_by_something_else_is_refused_and_left_alone(tmp_path, kind):
    name = tmp_path / "held"
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    if kind == "symlink":
        name.symlink_to(real, target_is_directory=True)
    elif kind == "file":
        name.write_text("a file")
    else:
        name.mkdir()
        os.chmod(name, {"world_writable": 0o777, "group_writable": 0o770}.get(kind, 0o700))
        if kind == "other_user":
            _as_other_user(name)
    before = os.lstat(name)
    why = {"symlink": "is a symlink", "file": "is not a directory", "other_user": "is owned by uid 65534"}
    with pytest.raises(NotPrivate, match=why.get(kind, "writable by group or others")):
        private_dir(name)
    after = os.lstat(name)
    assert (after.st_mode, after.st_uid, after.st_ino) == (before.st_mode, before.st_uid, before.st_ino)
    assert stat.S_IMODE(os.lstat(real).st_mode) == 0o700


@pytest.mark.parametrize("kind", ["world_writable", "symlink", "other_user", "folder"])
def test_a_file_that_is_not_private_is_not_read(tmp_path, kind):
    path = tmp_path / "f"
    if kind == "symlink":
        (tmp_path / "real").write_bytes(b"data")
        path.symlink_to(tmp_path / "real")
    elif kind == "folder":
        path.mkdir()
    else:
        path.write_bytes(b"data")
        os.chmod(path, 0o666 if kind == "world_writable" else 0o600)
        if kind == "other_user":
            _as_other_user(path)
    with pytest.raises(NotPrivate):
        read_private_file(path)


def test_writing_replaces_a_symlink_instead_of_following_it(tmp_path):
    outside = tmp_path / "outside"
    outside.write_text("not ours to change")
    link = tmp_path / "f"
    link.symlink_to(outside)
    write_private_file(link, b"new")
    assert outside.read_text() == "not ours to change"
    assert not link.is_symlink() and read_private_file(link) == b"new"
