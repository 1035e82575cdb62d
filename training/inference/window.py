"""A region run: the part of the whole slide's working grid a run writes, and the tiles it needs.

A region's map is the same box cut from a whole-slide run's map, not a run of its own crop: it
keeps the whole slide's tile grid, runs only the tiles that touch the box, and blends them with
the same weights in the same order, so every pixel of the box sums the same tiles' values as
the whole-slide run does there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from training.inference.tiling import TilePlan, tile_starts

Box = tuple[int, int, int, int]  # (y, x, height, width)


def check_region(region: Box, slide_shape: tuple[int, int], name: str) -> None:
    """Refuse (one-line ``ValueError``) a level-0 box that does not lie on the slide."""
    y, x, height, width = region
    if y < 0 or x < 0 or y + height > slide_shape[0] or x + width > slide_shape[1]:
        raise ValueError(
            f"{name}: the region (y={y}, x={x}, height={height}, width={width}) is not inside "
            f"the {slide_shape[0]} x {slide_shape[1]} px slide"
        )


def working_box(region: Box, to_working: float, full: tuple[int, int]) -> Box:
    """A level-0 box as the whole pixels of the working grid (``full``) it touches, clipped to
    the grid; ``ValueError`` when nothing of it lies on the grid."""
    y, x, h, w = region
    y0, x0 = max(0, math.floor(y * to_working)), max(0, math.floor(x * to_working))
    y1 = min(full[0], math.ceil((y + h) * to_working))
    x1 = min(full[1], math.ceil((x + w) * to_working))
    if y1 - y0 < 1 or x1 - x0 < 1:
        raise ValueError("the region to segment lies outside the image")
    return y0, x0, y1 - y0, x1 - x0


@dataclass(frozen=True)
class MapWindow:
    """The box ``(y, x, height, width)`` of the working grid (of ``grid`` shape) a run writes."""

    y: int
    x: int
    height: int
    width: int
    grid: tuple[int, int]

    @property
    def shape(self) -> tuple[int, int]:
        """The map's ``(H, W)``."""
        return self.height, self.width

    @property
    def whole(self) -> bool:
        """Whether the window is the whole grid."""
        return (self.y, self.x) == (0, 0) and self.shape == self.grid

    def view(self, plan: TilePlan, scale: float, grid_width: int) -> MemberView:
        """Member ``plan``'s tiles that touch the window (at ``scale`` working px per member
        px; ``grid_width`` the member grid's width) and where their band lies."""
        tile = round(plan.tile * scale)
        tops = [round(y * scale) for y, _ in plan.rows]  # every grid row, kept tiles or not
        if self.whole:
            return MemberView(plan, (0, 0), 0, [*tops, self.height])
        bottom, right = self.y + self.height, self.x + self.width

        def touches(x: int) -> bool:
            return self.x - tile < round(x * scale) < right

        first = next((i for i, top in enumerate(tops) if top + tile > self.y), len(tops))
        last = next((i for i, top in enumerate(tops) if top >= bottom), len(tops))
        rows = [(y, [x for x in xs if touches(x)]) for y, xs in plan.rows[first:last]]
        kept = sum(len(xs) for _, xs in rows)
        columns = sum(map(touches, tile_starts(grid_width, plan.tile, plan.stride)))
        restricted = TilePlan(
            plan.tile, plan.stride, plan.pixel_size_um, rows, kept, len(rows) * columns - kept
        )
        # the band starts at the first row's top, or at the window's when that row starts
        # below it (the rows between lie in a gap of the grid: zeros, as in a whole-slide run)
        top = min(self.y, tops[first]) if rows else self.y
        left = max(0, self.x - tile)  # left of every tile that touches the window
        row_tops = [tops[first + i] - top for i in range(len(rows))] + [bottom - top]
        return MemberView(restricted, (self.y - top, self.x - left), left, row_tops)


@dataclass
class MemberView:
    """One member's share of a run: its tiles (``plan``), where the output map starts in its
    band (``offset``, rows and columns), the band's left edge in the working grid, and
    ``row_tops``: each tile row's top in band rows, then the band's height (the accumulator
    finishes rows up to there). A whole-slide run's band is the map itself."""

    plan: TilePlan
    offset: tuple[int, int]
    left: int
    row_tops: list[int]

    def band_store(self, store: Any) -> Any:
        """``store`` (the output map) as the band sees it."""
        if self.offset == (0, 0) and self.left == 0 and self.row_tops[-1] == store.shape[0]:
            return store
        width = self.offset[1] + store.shape[1]
        return _WindowStore(store, self.offset, (self.row_tops[-1], width))

    def map_rows(self, y0: int, y1: int, height: int) -> tuple[int, int] | None:
        """Band rows ``[y0, y1)`` as rows of an output map of ``height`` rows (``None`` when
        none lie in it)."""
        y0, y1 = max(0, y0 - self.offset[0]), min(height, y1 - self.offset[0])
        return (y0, y1) if y1 > y0 else None


class _WindowStore:
    """An output store seen from a band that starts ``offset`` ``(rows, columns)`` above and to
    the left of it: rows and columns outside the store are dropped."""

    def __init__(self, target: Any, offset: tuple[int, int], shape: tuple[int, int]) -> None:
        self.target, self.offset, self.shape = target, offset, shape

    def add(self, y0: int, values: np.ndarray, first: bool) -> None:
        """Add (``first``: set) band rows ``y0 ...``, the part that lies in the store."""
        dy, dx = self.offset
        height, width = self.target.shape
        start, stop = max(y0, dy), min(y0 + len(values), dy + height)
        if stop > start:
            self.target.add(start - dy, values[start - y0 : stop - y0, dx : dx + width], first)
