"""Where the probability map goes: a numpy array, or a zarr array on disk that owns its folder.

An on-disk map that the engine made in a temporary folder lives exactly as long as the
:class:`DiskProbability` object that reads it (or until :meth:`DiskProbability.close`), so
``p = run(...).probability`` keeps its storage. Missing chunks read as NaN, never as a plausible
probability, and reading a map whose folder was deleted raises.

Each temporary folder holds a lock for as long as its process uses it: a process killed before
it could clean up (SIGKILL, a power cut) leaves a folder whose lock is free, and the next map
made on disk removes it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
import weakref
from pathlib import Path
from typing import Any

import numpy as np


class DiskProbability:
    """A read-only ``(H, W)`` float32 probability map stored as zarr at ``path``.

    Index it like an array (``p[y0:y1]``) or convert it (``np.asarray(p)``). When the engine
    made it in a temporary folder (no ``workdir``), this object owns that folder: it is removed
    when the object is garbage-collected or closed, never while it can still be read.
    """

    def __init__(self, path: Path, owned_folder: OwnedFolder | None = None) -> None:
        import zarr

        self.path = Path(path)
        self._array = zarr.open_array(str(self.path), mode="r")
        self.shape: tuple[int, int] = tuple(self._array.shape)
        self.dtype = self._array.dtype
        self.ndim = 2
        self._cleanup = (
            weakref.finalize(self, owned_folder.remove) if owned_folder is not None else None
        )

    def __getitem__(self, index: Any) -> np.ndarray:
        if not self.path.is_dir():
            raise FileNotFoundError(
                f"the probability map's storage {self.path} is gone (deleted or closed); its "
                "values cannot be read"
            )
        return self._array[index]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        values = self[...]
        return values if dtype is None else values.astype(dtype)

    def __len__(self) -> int:
        return self.shape[0]

    def close(self) -> None:
        """Remove a temporary folder now (a ``workdir`` given by the caller is left alone)."""
        if self._cleanup is not None:
            self._cleanup()

    def __repr__(self) -> str:
        return f"DiskProbability({str(self.path)!r}, shape={self.shape})"


class OutputStore:
    """The probability map being written: in memory up to a limit, else zarr on disk.

    On disk it is written into a hidden partial folder, renamed into place by :meth:`finish`
    and removed whole by :meth:`discard`. Members add their weighted share band by band;
    ``first`` marks the first member's write, which sets values instead of adding to them
    (unwritten chunks hold NaN).
    """

    def __init__(
        self,
        shape: tuple[int, int],
        memory_limit_mb: float,
        workdir: str | os.PathLike | None = None,
    ) -> None:
        self.shape = shape
        self._folder: OwnedFolder | None = None  # a temporary parent this store made
        self._partial: Path | None = None
        self._final: Path | None = None
        if shape[0] * shape[1] * 4 <= memory_limit_mb * 2**20:
            self.array: Any = np.zeros(shape, np.float32)
            return
        import zarr

        if workdir is None:
            remove_stale_folders()
            self._folder = OwnedFolder.make()
            parent = self._folder.path
        else:
            parent = Path(workdir)
            parent.mkdir(parents=True, exist_ok=True)
        self._final = parent / "probability.zarr"
        if self._final.exists():
            raise FileExistsError(f"{self._final} exists; napari-ftu does not overwrite results")
        self._partial = parent / f".partial-{uuid.uuid4().hex}.zarr"
        self.array = zarr.create_array(
            str(self._partial),
            shape=shape,
            chunks=(min(shape[0], 1024), min(shape[1], 1024)),
            dtype="float32",
            fill_value=np.nan,
        )

    @property
    def on_disk(self) -> bool:
        """Whether the map is a zarr array on disk."""
        return self._partial is not None

    def add(self, y0: int, values: np.ndarray, first: bool) -> None:
        """Add ``values`` (rows ``y0 ...``) to the map; ``first``: set them instead."""
        y1 = y0 + len(values)
        if isinstance(self.array, np.ndarray):
            self.array[y0:y1] += values
        elif first:
            self.array[y0:y1] = values
        else:
            self.array[y0:y1] = self.array[y0:y1] + values

    def finish(self) -> tuple[Any, Path | None]:
        """The finished map (numpy, or a :class:`DiskProbability`) and its path on disk."""
        if self._partial is None:
            return self.array, None
        os.replace(self._partial, self._final)
        result = DiskProbability(self._final, owned_folder=self._folder)
        self._partial = None
        return result, self._final

    def discard(self) -> None:
        """Remove everything this store wrote (a cancelled or failed run leaves nothing)."""
        if self._partial is not None:
            shutil.rmtree(self._partial, ignore_errors=True)
        if self._folder is not None:
            self._folder.remove()


TEMP_PREFIX = "napari-ftu-map-"  # the plugin's mask stores use other names: never touched
OWNER_LOCK = ".owner.lock"


class OwnedFolder:
    """A temporary folder and the lock that says its process still uses it."""

    def __init__(self, path: Path, lock_fd: int | None) -> None:
        self.path, self._fd = path, lock_fd

    @classmethod
    def make(cls) -> OwnedFolder:
        """A new folder in the system's temporary folder, locked by this process."""
        path = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX))
        try:
            import fcntl
        except ImportError:  # Windows: no flock; such a folder is never taken for stale
            return cls(path, None)
        # locked before it takes its name, so no other process sees the lock file unlocked
        staging = path / f"{OWNER_LOCK}.new"
        fd = os.open(staging, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.replace(staging, path / OWNER_LOCK)
        return cls(path, fd)

    def remove(self) -> None:
        """Remove the folder, then release its lock (idempotent)."""
        shutil.rmtree(self.path, ignore_errors=True)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def remove_stale_folders(parent: str | os.PathLike | None = None) -> list[Path]:
    """Remove the temporary folders of processes that died without cleaning up (their lock is
    free) from ``parent`` (default: the system's temporary folder); returns them."""
    try:
        import fcntl
    except ImportError:
        return []
    removed = []
    for folder in Path(parent or tempfile.gettempdir()).glob(f"{TEMP_PREFIX}*"):
        try:  # a folder without the lock file is another program's, or being made: left alone
            fd = os.open(folder / OWNER_LOCK, os.O_RDWR)
        except OSError:
            continue
        try:
            with contextlib.suppress(OSError):  # held: its process is alive
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                shutil.rmtree(folder, ignore_errors=True)
                removed.append(folder)
        finally:
            os.close(fd)
    return removed
