"""Where a slide's mask store lives, and where a damaged one is set aside."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from training.review.integrity import MaskStoreError


def store_location(slide_path: str | os.PathLike) -> Path:
    """Where a slide's mask store lives: ``<slide folder>/<slide name>.ftu.zarr`` when that
    folder is writable, else ``<cache>/napari-ftu/masks/<sha1 of the resolved slide
    path>.ftu.zarr`` (cache: ``$NAPARI_FTU_CACHE`` or ``~/.cache``).

    A store that already exists at either place is found there first, so edits saved in the
    cache while the folder was read-only are not orphaned when it becomes writable.
    """
    path = Path(slide_path).resolve()
    beside = path.parent / f"{path.name}.ftu.zarr"
    digest = hashlib.sha1(str(path).encode()).hexdigest()
    cached = _cache_dir() / f"{digest}.ftu.zarr"
    if beside.exists():
        return beside
    if cached.exists() or not _writable(path.parent):
        return cached
    return beside


def _cache_dir() -> Path:
    root = os.environ.get("NAPARI_FTU_CACHE") or Path.home() / ".cache"
    return Path(root) / "napari-ftu" / "masks"


def _writable(folder: Path) -> bool:
    return folder.is_dir() and os.access(folder, os.W_OK | os.X_OK)


def set_aside(location: str | os.PathLike) -> Path:
    """Rename a (damaged) store to ``<name>.damaged-<n>`` beside it, never deleting it, so a
    new store can take its place; the new name."""
    location = Path(location)
    target = _damaged_name(location)
    os.rename(location, target)
    return target


def copy_aside(location: str | os.PathLike) -> Path:
    """Copy a (damaged) store to ``<name>.damaged-<n>`` beside it, named as :func:`set_aside`
    names it, and leave the store in place; the copy's name. A copy is never seen half made."""
    location = Path(location)
    target = _damaged_name(location)
    partial = target.with_name(f".{target.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(location, partial)
    partial.rename(target)
    return target


def _damaged_name(location: Path) -> Path:
    for n in range(1, 10_000):
        target = location.with_name(f"{location.name}.damaged-{n}")
        if not target.exists():
            return target
    raise MaskStoreError(f"{location}: too many damaged copies beside it; remove some")
