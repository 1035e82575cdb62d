from __future__ import annotations

import errno
import json
import multiprocessing
import os
import stat

import pytest

from training.atomic import FileGroup, atomic_path, exclusive_lock, keep_backup, recover


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


def add_under_lock(folder, times: int) -> None:
    counter = folder / "counter"
    for _ in range(times):
        with exclusive_lock(folder / ".counter.lock"):
            value = int(counter.read_text())
            with atomic_path(counter) as tmp:
                tmp.write_text(str(value + 1))


def test_the_lock_file_is_removed_after_use_and_still_excludes(tmp_path):
    """Issue 21, item 5: the lock file stayed in the folder. Removing it must not let two
    writers in at once (one locking the removed file, the other a new one)."""
    (tmp_path / "counter").write_text("0")
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=add_under_lock, args=(tmp_path, 200)) for _ in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
        assert worker.exitcode == 0
    assert (tmp_path / "counter").read_text() == "800"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["counter"]


def test_a_committed_group_is_finished_by_recover_and_an_uncommitted_one_removed(tmp_path):
    (tmp_path / "a.txt").write_text("old a")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.txt").write_text("old b")
    group = FileGroup(tmp_path / ".journal")
    group.stage(tmp_path / "a.txt").write_text("new a")
    group.stage(tmp_path / "sub" / "b.txt").write_text("new b")
    group.stage_copy(tmp_path / "a.txt", tmp_path / "kept-a.txt")
    # Written as commit() writes it, as if killed after the first rename.
    renames = [
        [os.path.relpath(p, tmp_path), os.path.relpath(t, tmp_path)] for p, t in group.renames
    ]
    (tmp_path / ".journal").write_text(json.dumps({"renames": renames}))
    os.replace(group.renames[0][0], tmp_path / "a.txt")
    assert recover(tmp_path / ".journal", [tmp_path, tmp_path / "sub"])
    assert (tmp_path / "a.txt").read_text() == "new a"
    assert (tmp_path / "sub" / "b.txt").read_text() == "new b"
    assert (tmp_path / "kept-a.txt").read_text() == "old a"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "kept-a.txt", "sub"]

    uncommitted = FileGroup(tmp_path / ".journal")
    uncommitted.stage(tmp_path / "a.txt").write_text("newer a")
    assert not recover(tmp_path / ".journal", [tmp_path])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "kept-a.txt", "sub"]
    assert (tmp_path / "a.txt").read_text() == "new a"


def test_a_journal_naming_files_outside_its_folder_is_refused(tmp_path):
    (tmp_path / "outside").write_text("keep")
    folder = tmp_path / "ds"
    folder.mkdir()
    (folder / ".journal").write_text(json.dumps({"renames": [["../outside", "x"]]}))
    with pytest.raises(ValueError, match=r"'\.\./outside' lies outside"):
        recover(folder / ".journal", [folder])
    assert (tmp_path / "outside").read_text() == "keep"


def test_backups_never_overwrite_each_other(tmp_path):
    source = tmp_path / "s.geojson"
    kept = []
    for index in range(20):
        source.write_text(str(index))
        kept.append(keep_backup(source, tmp_path / ".backup"))
    assert len(set(kept)) == 20
    assert [p.read_text() for p in kept] == [str(i) for i in range(20)]


def test_a_file_outside_the_journals_folder_cannot_be_staged(tmp_path):
    group = FileGroup(tmp_path / "ds" / ".journal")
    with pytest.raises(ValueError, match="lies outside"):
        group.stage(tmp_path / "elsewhere.txt")
    assert list(tmp_path.iterdir()) == []


def test_backup_names_keep_the_file_name_and_its_suffix(tmp_path):
    kept = keep_backup(_written(tmp_path / "a.b.tiff"), tmp_path / ".backup")
    assert kept.name.startswith("a.b.") and kept.name.endswith("Z.tiff")


def _written(path):
    path.write_text("x")
    return path
