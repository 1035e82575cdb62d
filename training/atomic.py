"""Safe file writes: a result appears whole or not at all, several files replace theirs
together (:class:`FileGroup`), backups never overwrite each other, and writers take turns."""

from __future__ import annotations

import datetime as dt
import errno
import json
import logging
import os
import re
import secrets
import shutil
import stat
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write to; it replaces ``path`` when the block
    ends normally and is removed when the block raises.

    A new file gets the mode any program would give it (``0o666`` less the umask, so colleagues
    can read a shared dataset folder); a replaced file keeps its own mode.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _create_beside(path, suffix)
    try:
        yield tmp
        _keep_mode(path, tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _create_beside(path: Path, suffix: str) -> Path:
    # Not tempfile.mkstemp: it creates files 0600 whatever the umask. Creating with 0o666 lets
    # the kernel apply the umask (and a directory's default ACL) with no process-wide umask
    # juggling, which would race with other threads.
    for _ in range(100):
        candidate = path.parent / f".{path.name}.{secrets.token_hex(4)}{suffix}"
        try:
            os.close(os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return candidate
    raise FileExistsError(f"no free temporary name beside {path}")


def _keep_mode(path: Path, tmp: Path) -> None:
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        return
    os.chmod(tmp, mode)


@contextmanager
def exclusive_lock(path: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive advisory lock on the file ``path`` for the block, so that processes
    updating one file (ranks of a torchrun job, two exports) take turns.

    The file is created for the block and removed before the lock is let go, so no lock file
    stays beside the data; a process that locked a file another holder has since removed sees
    it is no longer at ``path`` and tries again. The lock goes with the process: a crash never
    leaves it held. Where there is no ``flock`` (Windows, some network filesystems) the block
    runs unlocked, with a warning.
    """
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks through fcntl
        yield
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as exc:
            if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                os.close(fd)
                raise
            log.warning("%s: this filesystem has no file locks; writing unlocked", path)
            break
        if _still_at(fd, path):
            break
        os.close(fd)  # the holder before us removed this file: lock the one now at ``path``
    try:
        yield
    finally:
        # Removed while still held: whoever waits on this file finds it gone and starts over.
        path.unlink(missing_ok=True)
        os.close(fd)


def _still_at(fd: int, path: Path) -> bool:
    try:
        here = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (mine.st_dev, mine.st_ino) == (here.st_dev, here.st_ino)


def backup_path(directory: str | os.PathLike, name: str | os.PathLike) -> Path:
    """A path in ``directory`` for a backup of the file ``name`` that no file has:
    ``<stem>.<UTC time to the nanosecond>Z<suffix>`` (``-2``, ``-3``... after the time when
    one is taken), so backups made within one second, or one clock tick, never meet."""
    directory, name = Path(directory), Path(name)
    ns = time.time_ns()
    stamp = dt.datetime.fromtimestamp(ns // 10**9, dt.timezone.utc).strftime("%Y%m%dT%H%M%S")
    base = f"{name.stem}.{stamp}.{ns % 10**9:09d}Z"
    for count in range(1, 10_000):
        candidate = directory / f"{base}{'' if count == 1 else f'-{count}'}{name.suffix}"
        if not candidate.exists():
            return candidate
    raise FileExistsError(f"no free backup name for {name} in {directory}")


def keep_backup(path: str | os.PathLike, directory: str | os.PathLike) -> Path:
    """Copy the file ``path`` into ``directory`` under a :func:`backup_path` name; never
    replaces a file there (the name is claimed with ``O_EXCL``). Returns the backup's path."""
    path, directory = Path(path), Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for _ in range(100):
        target = backup_path(directory, path.name)
        try:
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        # A copy, not a hard link: a backup must not change when the original is edited in place.
        with os.fdopen(fd, "wb") as out, open(path, "rb") as source:
            shutil.copyfileobj(source, out)
        shutil.copystat(path, target)
        return target
    raise FileExistsError(f"no free backup name for {path.name} in {directory}")


# Files a FileGroup stages: hidden, the target's name, 16 hex digits and ``.pending`` (a name
# no other writer of this package uses, so only they are ever cleaned up).
_PENDING = re.compile(r"^\..*\.[0-9a-f]{16}\.pending")


class FileGroup:
    """Files that replace their targets together or not at all, even when the process is
    killed: each is written to a pending file beside its target (:meth:`stage`); :meth:`commit`
    records every rename in a journal, which is the commit point, then makes them.

    A process killed before the journal exists leaves its targets untouched and pending files
    that :func:`recover` removes; one killed after it leaves a journal that :func:`recover`
    carries out. Paths in the journal are relative to its folder and never leave it.
    """

    def __init__(self, journal: str | os.PathLike) -> None:
        self.journal = Path(journal)
        self.renames: list[tuple[Path, Path]] = []

    def stage(self, target: str | os.PathLike, suffix: str = "") -> Path:
        """A new empty pending file that replaces ``target`` at the commit; write it.
        ``target`` must lie in the journal's folder or below it."""
        target = Path(target)
        _inside(self.journal.parent, _relative(target, self.journal.parent))
        target.parent.mkdir(parents=True, exist_ok=True)
        pending = _create_beside(target, f".{secrets.token_hex(8)}.pending{suffix}")
        self.renames.append((pending, target))
        return pending

    def stage_copy(self, source: str | os.PathLike, target: str | os.PathLike) -> Path:
        """Stage a copy of ``source`` as ``target``: how a file about to be replaced is kept (a
        copy, not a hard link, so that editing the original in place leaves it as it was)."""
        pending = self.stage(target)
        shutil.copy2(source, pending)
        return pending

    def commit(self) -> None:
        """Make every staged file durable, write the journal, then rename them into place."""
        for pending, target in self.renames:
            _keep_mode(target, pending)
            fsync_file(pending)
        root = self.journal.parent
        text = json.dumps(
            {"renames": [[_relative(p, root), _relative(t, root)] for p, t in self.renames]}
        )
        pending = _create_beside(self.journal, f".{secrets.token_hex(8)}.pending")
        try:
            with open(pending, "w", encoding="utf-8") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(pending, self.journal)
        except BaseException:
            pending.unlink(missing_ok=True)
            raise
        self.renames = []  # committed: the journal owns the pending files now, not discard()
        fsync_dir(root)
        _carry_out(self.journal)

    def discard(self) -> None:
        """Remove the pending files of a group that will not be committed."""
        for pending, _ in self.renames:
            pending.unlink(missing_ok=True)
        self.renames.clear()


def recover(journal: str | os.PathLike, folders: Iterable[str | os.PathLike]) -> bool:
    """Finish the commit a killed process left in ``journal``, then remove the pending files in
    ``folders`` (those of groups killed before their commit). Call it holding the lock the
    writers hold. Returns whether there was a journal to carry out."""
    journal = Path(journal)
    found = journal.exists()
    if found:
        _carry_out(journal)
    for folder in folders:
        folder = Path(folder)
        if folder.is_dir():
            for entry in folder.iterdir():
                if _PENDING.match(entry.name) and entry.is_file():
                    entry.unlink(missing_ok=True)
    return found


def _carry_out(journal: Path) -> None:
    root = journal.parent
    try:
        renames = json.loads(journal.read_text(encoding="utf-8"))["renames"]
        pairs = [(_inside(root, source), _inside(root, target)) for source, target in renames]
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{journal}: not a journal this package wrote ({exc})") from None
    for source, target in pairs:
        if source.exists():  # absent: renamed before the process that wrote it was killed
            os.replace(source, target)
    for folder in {target.parent for _, target in pairs}:
        fsync_dir(folder)
    journal.unlink()
    fsync_dir(root)


def _relative(path: Path, root: Path) -> str:
    return Path(os.path.relpath(path, root)).as_posix()


def _inside(root: Path, relative: str) -> Path:
    parts = Path(relative).parts
    if Path(relative).is_absolute() or not parts or ".." in parts:
        raise ValueError(f"{relative!r} lies outside {root}")
    return root.joinpath(*parts)


def fsync_file(path: str | os.PathLike) -> None:
    """Flush the file ``path`` to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | os.PathLike) -> None:
    """Flush the folder ``path`` to the disk (so the renames in it are durable)."""
    # A rename is durable once its folder is; Windows cannot open a folder, and renames there
    # are journalled by the filesystem.
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
