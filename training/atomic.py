"""Safe file writes: a result appears whole or not at all, and writers take turns."""

from __future__ import annotations

import errno
import logging
import os
import secrets
import stat
from collections.abc import Iterator
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
    """Hold an exclusive advisory lock on the file ``path`` (created if absent) for the block,
    so that processes updating one file (ranks of a torchrun job, two exports) take turns.

    The lock goes with the process: a crash never leaves it behind. Where there is no ``flock``
    (Windows, some network filesystems) the block runs unlocked, with a warning.
    """
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks through fcntl
        yield
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as exc:
            if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                raise
            log.warning("%s: this filesystem has no file locks; writing unlocked", path)
        yield
    finally:
        os.close(fd)  # closing releases the lock
