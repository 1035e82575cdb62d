"""Writes of the mask store that survive a kill or a power loss: files flushed to the disk, and
the journal of a region write, carried out again when the store is next opened.

zarr (3.1.3 and later) writes each chunk and each ``zarr.json`` to a temporary file renamed into
place, so a kill leaves every file whole, old or new; it does not flush them, so after a power
loss a renamed file may not hold its bytes yet. :func:`sync_files` flushes what a save wrote
before the save is committed.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from training.atomic import atomic_path, fsync_dir, fsync_file

JOURNAL = "region-journal.npz"  # beside the store's zarr.json: a region write under way


def sync_files(paths: Iterable[Path]) -> None:
    """Flush files to the disk, and the folders that name them (a rename is in the folder)."""
    folders = set()
    for path in paths:
        fsync_file(path)
        folders.add(path.parent)
    for folder in folders:
        fsync_dir(folder)


def sync_tree(folder: Path) -> None:
    """Flush every file under ``folder`` (a generation of the store's arrays)."""
    sync_files(path for path in folder.rglob("*") if path.is_file())


def write_journal(location: Path, **arrays: np.ndarray) -> None:
    """Write the region journal: whole and on disk, or (killed on the way) not at all."""
    target = location / JOURNAL
    with atomic_path(target, ".partial") as partial, partial.open("wb") as handle:
        np.savez(handle, **arrays)
        handle.flush()
        os.fsync(handle.fileno())
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
    fsync_dir(location)
