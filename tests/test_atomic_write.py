"""Files and folders written whole or not at all: the destination changes only on success, and
no temporary is left behind either way."""

import os
import stat
import tempfile

import pytest

from jaxdiff.atomic_write import atomic_path, write_atomically


class Interrupted(Exception):
    """Stands for anything that stops a write half-way."""


def test_write_atomically_writes_text_and_bytes_and_leaves_nothing_else(tmp_path):
    text, data = tmp_path / "deeper" / "notes.txt", tmp_path / "deeper" / "blob.bin"
    write_atomically(text, "héllo\n")
    write_atomically(data, b"\x00\x01")
    write_atomically(text, "again")  # replaces the old contents
    assert text.read_text() == "again"
    assert data.read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in text.parent.iterdir()) == ["blob.bin", "notes.txt"]


def test_the_temporary_keeps_the_suffix_and_sits_beside_the_destination(tmp_path):
    with atomic_path(tmp_path / "stats.npz") as partial:
        assert partial.parent == tmp_path and partial.suffix == ".npz"
        assert partial.name != "stats.npz"
        partial.write_bytes(b"x")
    assert (tmp_path / "stats.npz").read_bytes() == b"x"


@pytest.mark.parametrize("existing", [False, True])
def test_a_failed_write_changes_nothing_and_leaves_no_temporary(tmp_path, existing):
    path = tmp_path / "result.json"
    if existing:
        path.write_text("old")
    with pytest.raises(Interrupted), atomic_path(path) as partial:
        partial.write_text("half")
        raise Interrupted
    assert sorted(p.name for p in tmp_path.iterdir()) == (["result.json"] if existing else [])
    if existing:
        assert path.read_text() == "old"


def test_a_write_that_never_creates_its_temporary_fails_cleanly(tmp_path):
    with pytest.raises(Interrupted), atomic_path(tmp_path / "out.png"):
        raise Interrupted
    assert list(tmp_path.iterdir()) == []


def test_directory_mode_creates_and_replaces_a_folder_whole(tmp_path):
    folder = tmp_path / "model"
    with atomic_path(folder, directory=True) as partial:
        assert partial.is_dir() and not any(partial.iterdir())
        (partial / "a.txt").write_text("first")
    assert [p.name for p in folder.iterdir()] == ["a.txt"]
    with atomic_path(folder, directory=True) as partial:
        (partial / "b.txt").write_text("second")
    assert [p.name for p in folder.iterdir()] == ["b.txt"], "the old folder is replaced"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_a_failed_folder_leaves_the_old_one_and_no_temporary(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "a.txt").write_text("kept")
    with pytest.raises(Interrupted), atomic_path(folder, directory=True) as partial:
        (partial / "nested").mkdir()
        (partial / "nested" / "b.txt").write_text("half")
        raise Interrupted
    assert [p.name for p in tmp_path.iterdir()] == ["model"]
    assert [p.name for p in folder.iterdir()] == ["a.txt"]
    assert (folder / "a.txt").read_text() == "kept"


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    yield
    os.umask(old)


def test_files_and_folders_get_the_permissions_the_umask_gives(tmp_path, umask_027):
    with atomic_path(tmp_path / "private.bin") as partial:
        handle, name = tempfile.mkstemp(dir=tmp_path)  # created 0600, as mkstemp does
        os.close(handle)
        os.replace(name, partial)
    write_atomically(tmp_path / "notes.txt", "x")
    with atomic_path(tmp_path / "model", directory=True) as partial:
        partial.chmod(0o700)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
    assert modes == {"private.bin": 0o640, "notes.txt": 0o640, "model": 0o750}
