from __future__ import annotations

import errno
import os
import stat

import pytest

from training.atomic import atomic_path, exclusive_lock


@pytest.fixture
def umask():
    """Set the process umask for a test and restore it afterwards."""
    previous = os.umask(0o022)
    yield lambda value: os.umask(value)
    os.umask(previous)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize(
    ("mask", "expected"), [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)], ids=oct
)
def test_new_files_follow_the_umask(tmp_path, umask, mask, expected):
    umask(mask)
    target = tmp_path / "result.json"
    with atomic_path(target) as tmp:
        assert mode(tmp) == expected  # already while it is written
        tmp.write_text("{}")
    assert mode(target) == expected


def test_a_replaced_file_keeps_its_mode(tmp_path, umask):
    umask(0o022)
    target = tmp_path / "train.csv"
    target.write_text("old")
    os.chmod(target, 0o640)  # e.g. made readable to a group only, on purpose
    with atomic_path(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new" and mode(target) == 0o640


def test_a_failed_write_leaves_nothing_behind(tmp_path):
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "a.txt", suffix=".tmp.tiff") as tmp:
        assert tmp.name.startswith(".a.txt.") and tmp.name.endswith(".tmp.tiff")
        raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_a_filesystem_without_locks_writes_unlocked_with_a_warning(tmp_path, monkeypatch, caplog):
    fcntl = pytest.importorskip("fcntl")

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with exclusive_lock(tmp_path / ".train.csv.lock"):
        ran = True
    assert ran and "no file locks" in caplog.text
