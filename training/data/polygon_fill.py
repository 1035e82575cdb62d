"""Filling polygons (level-0 pixel coordinates, x then y) into a binary mask, two conventions.

- ``"qupath"``: pixel ``(i, j)`` covers ``[j, j + 1) x [i, i + 1)`` and is foreground when its
  centre ``(j + 0.5, i + 0.5)`` lies inside the polygon. A centre exactly on an edge follows the
  top-left rule (a left or top edge is inside, a right or bottom edge outside), so polygons that
  share an edge never share a pixel. This is the Java2D rule QuPath fills ROIs with when it
  exports labelled images.
- ``"labelme"``: pixel ``(i, j)`` is centred on ``(j, i)`` and is foreground when Pillow's
  ``ImageDraw.polygon(fill=1, outline=1)`` paints it: the interior plus the outline drawn one
  pixel wide. This is LabelMe's ``shape_to_mask``, so it reproduces masks made that way.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
from shapely.geometry import GeometryCollection, MultiPolygon, Polygon, box

__all__ = ["CONVENTIONS", "fill", "polygon_parts"]

CONVENTIONS = ("qupath", "labelme")
# Polygons reaching further than this past the mask are clipped first: the fill then never works
# on more than the mask, and Pillow, which overflows on coordinates like 1e12, never sees them.
CLIP_MARGIN = 2.0


def fill(mask: np.ndarray, polygons: Iterable[Polygon], convention: str = "qupath") -> None:
    """Set to 1 the pixels of ``mask`` (``(H, W)`` uint8) inside ``polygons``; holes stay 0.

    Polygons are drawn one at a time and combined as a union: one polygon's hole never clears
    another polygon's pixels. Parts outside the mask are clipped.
    """
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown pixel convention {convention!r}; expected one of {CONVENTIONS}")
    clipped = _clipped(polygons, *mask.shape)
    if convention == "qupath":
        for polygon in clipped:
            _fill_centres(mask, polygon)
    else:
        _fill_labelme(mask, list(clipped))


def polygon_parts(geometry: Any) -> Iterator[Polygon]:
    """The non-empty polygons of a (multi-part) shapely geometry; points and lines dropped."""
    if isinstance(geometry, Polygon):
        if not geometry.is_empty:
            yield geometry
    elif isinstance(geometry, (MultiPolygon, GeometryCollection)):
        for part in geometry.geoms:
            yield from polygon_parts(part)


def _clipped(polygons: Iterable[Polygon], height: int, width: int) -> Iterator[Polygon]:
    limit = (-CLIP_MARGIN, -CLIP_MARGIN, width + CLIP_MARGIN, height + CLIP_MARGIN)
    for polygon in polygons:
        minx, miny, maxx, maxy = polygon.bounds
        if minx >= limit[0] and miny >= limit[1] and maxx <= limit[2] and maxy <= limit[3]:
            yield polygon
        else:
            yield from polygon_parts(polygon.intersection(box(*limit)))


def _fill_centres(mask: np.ndarray, polygon: Polygon) -> None:
    # A scanline fill, linear in the polygon's rows and vertices: skimage.draw.polygon tests
    # every pixel of the bounding box against every vertex, which takes minutes for the large,
    # finely traced tissue annotations QuPath users draw.
    height, width = mask.shape
    starts, ends = _edges(polygon)
    if starts.size == 0:
        return
    top, bottom = np.minimum(starts[:, 1], ends[:, 1]), np.maximum(starts[:, 1], ends[:, 1])
    # Rows whose centre i + 0.5 is in [top, bottom): half-open, so a vertex shared by two edges
    # is crossed once, and a peak or a valley twice or not at all, which keeps the parity right.
    first = np.clip(np.ceil(top - 0.5), 0, height).astype(np.int64)
    stop = np.clip(np.ceil(bottom - 0.5), 0, height).astype(np.int64)
    count = np.maximum(stop - first, 0)
    if count.sum() == 0:
        return
    edge = np.repeat(np.arange(count.size), count)
    rows = first[edge] + np.arange(edge.size) - np.repeat(np.cumsum(count) - count, count)
    x0, y0 = starts[edge, 0], starts[edge, 1]
    slope = (ends[edge, 0] - x0) / (ends[edge, 1] - y0)
    xs = x0 + (rows + 0.5 - y0) * slope
    order = np.lexsort((xs, rows))
    rows, xs = rows[order], xs[order]
    # Even-odd: every row has an even number of crossings, so sorted crossings pair up as
    # (enter, leave) runs; holes are rings too and cut their runs out of the shell's.
    run_rows = rows[0::2]
    run_first = np.clip(np.ceil(xs[0::2] - 0.5), 0, width).astype(np.int64)
    run_stop = np.clip(np.ceil(xs[1::2] - 0.5), 0, width).astype(np.int64)
    for row, a, b in zip(run_rows.tolist(), run_first.tolist(), run_stop.tolist(), strict=True):
        if b > a:
            mask[row, a:b] = 1


def _edges(polygon: Polygon) -> tuple[np.ndarray, np.ndarray]:
    """Start and end points of every non-horizontal edge of every ring."""
    rings = [polygon.exterior, *polygon.interiors]
    starts, ends = [], []
    for ring in rings:
        xy = np.asarray(ring.coords)[:, :2]
        starts.append(xy[:-1])
        ends.append(xy[1:])
    starts, ends = np.concatenate(starts), np.concatenate(ends)
    sloped = starts[:, 1] != ends[:, 1]
    return starts[sloped], ends[sloped]


def _fill_labelme(mask: np.ndarray, polygons: list[Polygon]) -> None:
    from PIL import Image, ImageDraw

    height, width = mask.shape
    # Pillow settles pixels whose centre is on an edge by floating-point rounding, so a polygon
    # moved into a smaller canvas can gain or lose such a pixel: outlines are drawn where they
    # are, on one canvas the size of the mask, as LabelMe draws them.
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    with_holes = []
    for polygon in polygons:
        if polygon.interiors:
            with_holes.append(polygon)
        else:
            draw.polygon(_points(polygon.exterior), fill=1, outline=1)
    mask |= np.asarray(canvas, dtype=np.uint8)
    del canvas, draw
    # A hole drawn on the shared canvas would clear other polygons; LabelMe has no holes, so
    # these get a canvas of their own.
    for polygon in with_holes:
        window = _window(polygon, height, width)
        if window is None:
            continue
        y0, x0, y1, x1 = window
        local = Image.new("L", (x1 - x0, y1 - y0), 0)
        draw = ImageDraw.Draw(local)
        draw.polygon(_points(polygon.exterior, x0, y0), fill=1, outline=1)
        for hole in polygon.interiors:
            # The hole's outline stays foreground: like the shell's, it belongs to the object.
            draw.polygon(_points(hole, x0, y0), fill=0, outline=1)
        mask[y0:y1, x0:x1] |= np.asarray(local, dtype=np.uint8)


def _window(polygon: Polygon, height: int, width: int) -> tuple[int, int, int, int] | None:
    """``(y0, x0, y1, x1)``: the part of the mask the polygon's outline can reach."""
    minx, miny, maxx, maxy = polygon.bounds
    y0, x0 = max(math.floor(miny) - 1, 0), max(math.floor(minx) - 1, 0)
    y1, x1 = min(math.ceil(maxy) + 2, height), min(math.ceil(maxx) + 2, width)
    return (y0, x0, y1, x1) if y1 > y0 and x1 > x0 else None


def _points(ring: object, x0: int = 0, y0: int = 0) -> list[tuple[float, float]]:
    return [(x - x0, y - y0) for x, y in np.asarray(ring.coords)[:, :2].tolist()]
