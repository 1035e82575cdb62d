"""Tile grids and blending windows."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from training.inference.limits import MAX_TILES


def tile_starts(length: int, tile: int, stride: int) -> list[int]:
    """Start offsets of tiles of ``tile`` px with ``stride`` covering ``length``; the last tile
    ends at ``length`` (a single tile, padded, when ``length <= tile``)."""
    if tile <= 0 or stride <= 0:
        raise ValueError(f"tile and stride must be positive; got {tile}, {stride}")
    if length <= tile:
        return [0]
    if tile_count(length, tile, stride) > MAX_TILES:
        raise ValueError(f"{length} px in tiles of {tile} px every {stride} px: too many tiles")
    starts = list(range(0, length - tile, stride))
    starts.append(length - tile)
    return starts


def tile_count(length: int, tile: int, stride: int) -> int:
    """How many starts :func:`tile_starts` gives, without listing them."""
    return 1 if length <= tile else math.ceil((length - tile) / stride) + 1


def tile_cores(starts: list[int], tile: int, length: int) -> list[tuple[float, float]]:
    """The part of each tile that no other tile covers better: ``[start, stop)`` per tile.

    Neighbouring cores meet in the middle of the tiles' overlap, the first starts at 0 and the
    last ends at ``length``, so every pixel lies in exactly one core, the one of the tile it is
    most central in.
    """
    bounds = [0.0, *((a + tile + b) / 2 for a, b in itertools.pairwise(starts)), float(length)]
    return list(itertools.pairwise(bounds))


def blend_window(size: int, ramp: int, floor: float = 1e-3) -> np.ndarray:
    """2-D weights that fall off linearly over ``ramp`` px towards every border.

    Never zero (``floor``), so a pixel covered by one tile only, at a slide border, is still
    normalised exactly.
    """
    ramp = max(int(ramp), 1)
    distance = np.minimum(np.arange(size), np.arange(size)[::-1]) + 1
    line = np.clip(distance / ramp, floor, 1.0).astype(np.float32)
    return np.outer(line, line)


@dataclass
class TilePlan:
    """One member's tiles: rows of ``(y, [x, ...])`` at the member's scale, tissue-skipped."""

    tile: int
    stride: int
    pixel_size_um: float
    rows: list[tuple[int, list[int]]]
    kept: int
    skipped: int

    def tiles(self) -> list[tuple[int, int]]:
        """Every kept tile's ``(y, x)``, row by row."""
        return [(y, x) for y, xs in self.rows for x in xs]

    def batches(self, size: int) -> Iterator[tuple[int, int, list[int]]]:
        """``(row, y, xs)``: the kept tiles in batches of at most ``size``, each within one row
        (so a batch is read as one region)."""
        for row, (y, xs) in enumerate(self.rows):
            for start in range(0, len(xs), size):
                yield row, y, xs[start : start + size]


def tile_grid(
    shape: tuple[int, int], to_member: float, tile: int, overlap: float, pixel_size_um: float
) -> tuple[int, int, int]:
    """``(height, width, stride)`` of the member grid that :func:`plan_tiles` covers;
    ``ValueError`` naming both pixel sizes when it would hold more than ``MAX_TILES`` tiles."""
    height = math.ceil(shape[0] * to_member)
    width = math.ceil(shape[1] * to_member)
    stride = max(1, round(tile * (1 - overlap)))
    count = tile_count(height, tile, stride) * tile_count(width, tile, stride)
    if count > MAX_TILES:  # refused before any list is built: the lists alone would not fit
        raise ValueError(
            f"a {shape[0]} x {shape[1]} px slide at {to_member * pixel_size_um:.3g} um/px read "
            f"at the model's {pixel_size_um:g} um/px is a {height} x {width} px grid of "
            f"{count:.3g} tiles of {tile} px (at most {MAX_TILES}); check both pixel sizes"
        )
    return height, width, stride


def plan_tiles(
    shape: tuple[int, int],
    to_member: float,
    tile: int,
    overlap: float,
    pixel_size_um: float,
    tissue: Callable[[float, float, float, float], bool] | None = None,
) -> TilePlan:
    """Tiles of ``tile`` px covering a slide of level-0 ``shape`` at ``to_member`` member px per
    level-0 px. A tile is kept when ``tissue(y, x, h, w)`` (a level-0 box) says its *core*,
    the part no other tile covers more centrally, touches tissue: every tissue pixel is then
    predicted by the tile it is most central in."""
    height, width, stride = tile_grid(shape, to_member, tile, overlap, pixel_size_um)
    ys_all, xs_all = tile_starts(height, tile, stride), tile_starts(width, tile, stride)
    x_cores = tile_cores(xs_all, tile, width)
    rows, kept = [], 0
    for y, (cy0, cy1) in zip(ys_all, tile_cores(ys_all, tile, height), strict=True):
        xs = [
            x
            for x, (cx0, cx1) in zip(xs_all, x_cores, strict=True)
            if tissue is None
            or tissue(
                cy0 / to_member, cx0 / to_member, (cy1 - cy0) / to_member, (cx1 - cx0) / to_member
            )
        ]
        rows.append((y, xs))
        kept += len(xs)
    skipped = len(ys_all) * len(xs_all) - kept
    return TilePlan(tile, stride, pixel_size_um, rows, kept, skipped)
