"""Tile grids and blending windows."""

from __future__ import annotations

import itertools

import numpy as np


def tile_starts(length: int, tile: int, stride: int) -> list[int]:
    """Start offsets of tiles of ``tile`` px with ``stride`` covering ``length``; the last tile
    ends at ``length`` (a single tile, padded, when ``length <= tile``)."""
    if tile <= 0 or stride <= 0:
        raise ValueError(f"tile and stride must be positive; got {tile}, {stride}")
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, stride))
    starts.append(length - tile)
    return starts


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
