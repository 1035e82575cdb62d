"""Regions of a tiled TIFF level read tile by tile straight from the file.

Reading through tifffile's zarr store sends every chunk of every reading thread through zarr's
one event-loop thread: on a GPU machine that loop, not decoding, capped the engine's tile source
at about 70 tiles/s whatever the number of threads (docs/benchmarks.md, "GPU (issue 7)"). Here
each thread reads its tiles' bytes (``os.pread``) and decodes them itself with
tifffile's own decoder (imagecodecs releases the GIL), sharing the slide's decoded-tile cache.
The pixels are those the zarr store gives: the same decoder, missing tiles as 0.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import numpy as np


class TileFile:
    """The slide file opened once more for tile reads, apart from tifffile's handle (whose file
    position zarr's reads move): ``os.pread`` where there is one, else seek and read under a
    lock. Opened on first use, and again in a forked process."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._file: Any = None
        self._pid = -1

    def read(self, offset: int, count: int) -> bytes:
        """``count`` bytes at ``offset``."""
        with self._lock:
            if self._file is None or self._pid != os.getpid():
                self._file = open(self.path, "rb")  # noqa: SIM115 - closed by close()
                self._pid = os.getpid()
            if not hasattr(os, "pread"):
                self._file.seek(offset)
                return self._file.read(count)
            fd = self._file.fileno()
        return os.pread(fd, count, offset)

    def close(self) -> None:
        """Close the file (it is opened again if read after)."""
        with self._lock:
            if self._file is not None and self._pid == os.getpid():
                self._file.close()
            self._file = None


class TiledLevel:
    """One pyramid level (a tiled, chunky TIFF page) as an array that can be sliced by rows and
    columns; ``fallback`` (the level's zarr array) serves any other index and the lazy view."""

    def __init__(self, level: Any, fallback: Any, cache: Any, index: int, file: TileFile) -> None:
        self.page = level.pages[0]
        self._file = file
        self.keyframe = level.keyframe
        self.fallback = fallback
        self.shape = tuple(fallback.shape)
        self.dtype = np.dtype(fallback.dtype)
        self.ndim = len(self.shape)
        self._cache = cache
        self._index = index
        keyframe = self.keyframe
        self._tile = (keyframe.tilelength, keyframe.tilewidth)
        self._across = -(-keyframe.imagewidth // keyframe.tilewidth)
        self._samples = keyframe.samplesperpixel
        self._decode_args: dict[str, Any] = {"_fullsize": True}
        if self.page.jpegtables is not None:
            self._decode_args["jpegtables"] = self.page.jpegtables
        if keyframe.jpegheader is not None:
            self._decode_args["jpegheader"] = keyframe.jpegheader

    @staticmethod
    def supports(level: Any) -> bool:
        """Whether ``level`` (a tifffile series level) is one tiled 2-D page, samples
        interleaved: what this reader handles; anything else stays with zarr."""
        if len(level.pages) != 1 or level.pages[0] is None:
            return False
        keyframe = level.keyframe
        samples = keyframe.samplesperpixel
        return bool(
            keyframe.is_tiled
            and keyframe.tiledepth == 1
            and keyframe.imagedepth == 1
            and (samples == 1 or keyframe.planarconfig == 1)
            and level.axes in ("YX", "YXS")
            and tuple(level.shape)
            == (keyframe.imagelength, keyframe.imagewidth) + ((samples,) if samples > 1 else ())
            and keyframe.dtype is not None
        )

    def __getitem__(self, key: Any) -> Any:
        rows_cols = key[:2] if isinstance(key, tuple) else ()
        rest = key[2:] if isinstance(key, tuple) else ()
        if (
            len(rows_cols) != 2
            or not all(isinstance(k, slice) and k.step in (None, 1) for k in rows_cols)
            or any(k != slice(None) for k in rest)
        ):
            return self.fallback[key]
        (y0, y1, _), (x0, x1, _) = (
            k.indices(n) for k, n in zip(rows_cols, self.shape[:2], strict=True)
        )
        return self.read(y0, max(y0, y1), x0, max(x0, x1))

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """Rows ``y0:y1``, columns ``x0:x1`` (inside the level), shaped as the level."""
        th, tw = self._tile
        out = np.zeros((y1 - y0, x1 - x0, self._samples), self.dtype)
        if y1 > y0 and x1 > x0:
            indices = [
                ty * self._across + tx
                for ty in range(y0 // th, (y1 - 1) // th + 1)
                for tx in range(x0 // tw, (x1 - 1) // tw + 1)
            ]
            for index, tile in zip(indices, self._tiles(indices), strict=True):
                if tile is None:  # a tile the file does not hold: 0, as zarr gives it
                    continue
                top, left = (index // self._across) * th, (index % self._across) * tw
                ya, yb = max(y0, top), min(y1, top + th)
                xa, xb = max(x0, left), min(x1, left + tw)
                out[ya - y0 : yb - y0, xa - x0 : xb - x0] = tile[
                    ya - top : yb - top, xa - left : xb - left
                ]
        return out if self.ndim == 3 else out[..., 0]

    def _tiles(self, indices: list[int]) -> list[np.ndarray | None]:
        """Decoded tiles, from the cache or read (in file order) and decoded on this thread."""
        tiles: dict[int, np.ndarray | None] = {}
        wanted = []
        for index in indices:
            cached = self._cache.get((self._index, index))
            if cached is not None:
                tiles[index] = cached
            elif not self.page.dataoffsets[index] or not self.page.databytecounts[index]:
                tiles[index] = None
            else:
                wanted.append(index)
        if wanted:
            wanted.sort(key=lambda i: self.page.dataoffsets[i])
            th, tw = self._tile
            for index in wanted:
                chunk = self._file.read(
                    self.page.dataoffsets[index], self.page.databytecounts[index]
                )
                if len(chunk) != self.page.databytecounts[index]:
                    raise OSError(f"tile {index} of level {self._index} is cut short")
                segment = self.keyframe.decode(chunk, index, **self._decode_args)[0]
                tile = np.asarray(segment).reshape(th, tw, self._samples)
                self._cache.put((self._index, index), tile)
                tiles[index] = tile
        return [tiles[index] for index in indices]
