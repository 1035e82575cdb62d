"""Writes of the mask store that survive a kill or a power loss: files flushed to the disk, and
the journal of a region write, carried out again when the store is next opened.

zarr (3.1.3 and later) writes each chunk and each ``zarr.json`` to a temporary file renamed into
place, so a kill leaves every file whole, old or new; it does not flush them, so after a power
loss a renamed file may not hold its bytes yet. :func:`sync_files` flushes what a save wrote
before the save is committed.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterable
from pathlib import Path

import numpy as np

JOURNAL = "region-journal.npz"  # beside the store's zarr.json: a region write under way


def sync_files(paths: Iterable[Path]) -> None:
    """Flush files to the disk, and the folders that name them (a rename is in the folder)."""
    folders = set()
    for path in paths:
        _fsync(path, os.O_RDONLY)
        folders.add(path.parent)
    for folder in folders:
        _fsync(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))


def sync_tree(folder: Path) -> None:
    """Flush every file under ``folder`` (a generation of the store's arrays)."""
    sync_files(path for path in folder.rglob("*") if path.is_file())


def write_journal(location: Path, **arrays: np.ndarray) -> None:
    """Write the region journal: whole and on disk, or (killed on the way) not at all."""
    target = location / JOURNAL
    partial = location / f".{JOURNAL}.{secrets.token_hex(4)}.partial"
    try:
        with partial.open("wb") as handle:
            np.savez(handle, **arrays)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, target)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    sync_files([target])


def read_journal(location: Path) -> dict[str, np.ndarray] | None:
    """The region journal's arrays, or ``None`` when no region write was under way."""
    path = location / JOURNAL
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as journal:
        return {name: journal[name] for name in journal.files}


def clear_journal(location: Path) -> None:
    """Remove the region journal once its write is on disk."""
    (location / JOURNAL).unlink(missing_ok=True)
    _fsync(location, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))


def _fsync(path: Path, flags: int) -> None:
    try:
        fd = os.open(path, flags)
    except IsADirectoryError:  # a platform that cannot open folders: nothing to flush
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on folders; the files are flushed
        if path.is_file():
            raise
    finally:
        os.close(fd)
