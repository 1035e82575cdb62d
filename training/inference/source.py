"""The tile source: RGB uint8 tiles of a slide at a model's pixel size, read ahead on threads.

Tiles of one batch lie side by side in one row of the tile plan, so a batch is read as one
region (spans of tiles that overlap or nearly touch) and cut into tiles: the overlapping parts
are read, decoded and resampled once. The slide's own decoded-tile cache does the same across
rows. Reading runs on worker threads while the model runs (decoding and resampling release the
GIL), a bounded number of batches ahead.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Generator, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from training.slides import Slide, as_rgb_uint8


class TileSource:
    """Square RGB uint8 tiles of ``tile`` px at ``pixel_size_um`` from ``slide``.

    ``stain``: an object with ``transform(rgb_uint8) -> rgb_uint8`` applied to every pixel read
    (a normaliser fixed to the slide, so reading a span at once equals reading tile by tile).
    ``workers``: threads that read ahead; 0 reads on the calling thread.
    """

    def __init__(
        self,
        slide: Slide,
        pixel_size_um: float,
        tile: int,
        stain: Any = None,
        workers: int = 2,
    ) -> None:
        if workers < 0:
            raise ValueError(f"workers must be 0 or more; got {workers}")
        self.slide = slide
        self.pixel_size_um = pixel_size_um
        self.tile = tile
        self.stain = stain
        self.workers = workers

    def read(self, y: int, xs: Sequence[int]) -> np.ndarray:
        """Tiles at ``(y, x)`` for each ``x`` (tile grid coordinates at the model's scale), as an
        ``(n, tile, tile, 3)`` uint8 array."""
        out = np.empty((len(xs), self.tile, self.tile, 3), np.uint8)
        for group in _spans(xs, self.tile):
            x0 = xs[group[0]]
            width = xs[group[-1]] + self.tile - x0
            region = self.region(y, x0, self.tile, width)
            for index in group:
                out[index] = region[:, xs[index] - x0 : xs[index] - x0 + self.tile]
        return out

    def region(self, y: int, x: int, h: int, w: int) -> np.ndarray:
        """Any region at the model's scale, RGB uint8, stain-normalised."""
        region = as_rgb_uint8(self.slide.read_region_at(self.pixel_size_um, y, x, h, w))
        if self.stain is not None:
            region = self.stain.transform(region)
        return region

    def batches(
        self, requests: Iterable[tuple[Any, int, Sequence[int]]]
    ) -> Generator[tuple[Any, Sequence[int], np.ndarray], None, None]:
        """``(key, xs, tiles)`` for each ``(key, y, xs)`` request, in order, read ahead on the
        worker threads. Closing the generator stops reading and waits for reads in flight."""
        if self.workers == 0:
            for key, y, xs in requests:
                yield key, xs, self.read(y, xs)
            return
        pool = ThreadPoolExecutor(self.workers, thread_name_prefix="napari-ftu-read")
        pending: deque[tuple[Any, Sequence[int], Future]] = deque()
        ahead = 2 * self.workers
        try:
            for key, y, xs in requests:
                pending.append((key, xs, pool.submit(self.read, y, xs)))
                if len(pending) > ahead:
                    key_done, xs_done, future = pending.popleft()
                    yield key_done, xs_done, future.result()
            while pending:
                key_done, xs_done, future = pending.popleft()
                yield key_done, xs_done, future.result()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


def _spans(xs: Sequence[int], tile: int) -> list[list[int]]:
    """Indices of ``xs`` grouped into runs whose tiles overlap or touch (read as one region)."""
    groups: list[list[int]] = []
    for index, x in enumerate(xs):
        if groups and x <= xs[groups[-1][-1]] + tile:
            groups[-1].append(index)
        else:
            groups.append([index])
    return groups
