"""What makes a mask store trustworthy: every chunk it should hold is on disk and decodes, and it
belongs to the slide it is opened for.

zarr reads a missing chunk as the fill value (0: background), so a deleted chunk would look like
a block where nobody drew anything, and the next save would make the loss permanent. The store
therefore writes every chunk, empty ones too, and these checks tell a missing chunk from an
empty one; a chunk that does not decode raises :class:`MaskStoreDamaged` naming the array and
the chunk instead of the codec's bare ``RuntimeError``.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

SAMPLE_BYTES = 64 * 1024  # one sampled block of a large slide file
SAMPLES = 64  # blocks sampled from a large slide file, first and last included
WHOLE_LIMIT = 32 * 2**20  # files up to this size are hashed whole
# a chunk that cannot be decoded: zstd's RuntimeError, a short or odd-sized buffer's ValueError,
# the disk's OSError
READ_ERRORS = (RuntimeError, ValueError, TypeError, OSError)


class MaskStoreError(ValueError):
    """A mask store that cannot be used: made for another slide, or with arrays missing."""


class MaskStoreDamaged(MaskStoreError):
    """A mask store with an array or a chunk missing or unreadable (``array``, ``chunk``: which;
    ``chunk`` is ``None`` for a whole array)."""

    def __init__(
        self, location: Path, array: str, chunk: tuple[int, ...] | None, problem: str
    ) -> None:
        self.location, self.array, self.chunk = Path(location), array, chunk
        where = f"chunk {chunk} of {array!r}" if chunk is not None else f"the array {array!r}"
        where = where if array else "its group metadata (zarr.json)"
        super().__init__(f"the mask store {location} is damaged: {where} {problem}")


# ---- chunks ------------------------------------------------------------------------------------


def chunk_regions(
    array: Any, box: tuple[slice, slice] | None = None
) -> Iterator[tuple[tuple[int, int], tuple[slice, slice]]]:
    """The chunks of a 2-D zarr array that ``box`` touches (every chunk without one): each
    chunk's grid index and the region it covers."""
    (height, width), (ch, cw) = array.shape, array.chunks
    rows = (0, height) if box is None else (box[0].start, box[0].stop)
    cols = (0, width) if box is None else (box[1].start, box[1].stop)
    for i in range(rows[0] // ch, -(-rows[1] // ch)):
        for j in range(cols[0] // cw, -(-cols[1] // cw)):
            rows_of = slice(i * ch, min((i + 1) * ch, height))
            yield (i, j), (rows_of, slice(j * cw, min((j + 1) * cw, width)))


def check_present(location: Path, name: str, array: Any, box: tuple[slice, slice] | None) -> None:
    """Raise :class:`MaskStoreDamaged` for the first chunk ``box`` touches that is not on disk."""
    for index, _ in chunk_regions(array, box):
        if not (location / name / array.metadata.encode_chunk_key(index)).is_file():
            raise MaskStoreDamaged(location, name, index, "is missing (deleted?)")


def read_checked(
    location: Path, name: str, array: Any, box: tuple[slice, slice], present: bool = True
) -> np.ndarray:
    """``array[box]``, read only when every chunk it needs is on disk (``present``: check that)
    and decodes; :class:`MaskStoreDamaged` names the first chunk that is missing or does not."""
    if present:
        check_present(location, name, array, box)
    try:
        return np.asarray(array[box])
    except MaskStoreError:
        raise
    except READ_ERRORS as exc:
        for index, region in chunk_regions(array, box):  # which chunk: each read alone
            try:
                array[region]
            except READ_ERRORS as inner:
                problem = f"cannot be read ({type(inner).__name__}: {inner})"
                raise MaskStoreDamaged(location, name, index, problem) from inner
        problem = f"cannot be read ({type(exc).__name__}: {exc})"
        raise MaskStoreDamaged(location, name, None, problem) from exc


def verify_array(location: Path, name: str, array: Any, present: bool = True) -> None:
    """Read every chunk of ``array`` once (one chunk in memory at a time): each is on disk
    (``present``: check that) and decodes, else :class:`MaskStoreDamaged`."""
    if present:
        check_present(location, name, array, None)
    for _, region in chunk_regions(array):
        read_checked(location, name, array, region, present=False)


# ---- the slide's identity ----------------------------------------------------------------------


def slide_identity(slide_path: str | os.PathLike) -> dict[str, Any]:
    """What identifies a slide file's content: its size and a SHA-256 of its bytes (the whole
    file up to 32 MiB; else 64 blocks of 64 KiB spread evenly over it, first and last
    included), so a moved or copied folder still matches and a rewrite of the same size does
    not. The resolved path and mtime are kept to explain a mismatch, never compared."""
    path = Path(slide_path).resolve()
    stat = path.stat()
    return {
        "path": str(path),
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "content_sha256": _content_hash(path, stat.st_size),
    }


def identity_differences(stored: dict[str, Any], slide: dict[str, Any]) -> list[str]:
    """The keys on which a store's slide identity and a slide's differ, each with both values;
    a store made before content hashes is compared by path, size and mtime."""
    legacy = "content_sha256" not in stored
    keys = ("path", "size", "mtime_ns") if legacy else ("size", "content_sha256")
    return [
        f"{key} {_shown(key, stored.get(key))!r} (slide: {_shown(key, slide.get(key))!r})"
        for key in keys
        if stored.get(key) != slide.get(key)
    ]


def _shown(key: str, value: Any) -> Any:
    # a hash's first 12 hex digits tell two versions apart in a one-line message
    return value[:12] + "..." if key == "content_sha256" and isinstance(value, str) else value


def _content_hash(path: Path, size: int) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        if size <= WHOLE_LIMIT:
            for block in iter(lambda: handle.read(2**20), b""):
                digest.update(block)
        else:
            last = size - SAMPLE_BYTES
            for k in range(SAMPLES):
                handle.seek(last * k // (SAMPLES - 1))
                digest.update(handle.read(SAMPLE_BYTES))
    return digest.hexdigest()
