"""Where layers go in the viewer's world, without Qt: boxes in slide pixels, and the scale and
translation that lay a coarser map exactly over its slide (the field of view: _geometry.py)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

Box = tuple[int, int, int, int]  # (y, x, h, w) in level-0 pixels


def world_to_pixels(
    top_left: Sequence[float],
    bottom_right: Sequence[float],
    scale: Sequence[float],
    translate: Sequence[float],
    shape: Sequence[int],
) -> Box | None:
    """The level-0 pixels of an image (its layer's ``scale``, ``translate``, level-0 ``shape``)
    that a world box covers, clipped to the image; ``None`` when it misses the image."""
    scale = np.asarray(scale[-2:], float)
    translate = np.asarray(translate[-2:], float)
    # pixel k covers world [k - 0.5, k + 0.5] * scale + translate
    start = (np.asarray(top_left, float) - translate) / scale + 0.5
    stop = (np.asarray(bottom_right, float) - translate) / scale + 0.5
    y0, x0 = (max(0, math.floor(v)) for v in np.minimum(start, stop))
    y1 = min(int(shape[0]), math.ceil(max(start[0], stop[0])))
    x1 = min(int(shape[1]), math.ceil(max(start[1], stop[1])))
    if y1 <= y0 or x1 <= x0:
        return None
    return y0, x0, y1 - y0, x1 - x0


def overlay(
    scale: Sequence[float],
    translate: Sequence[float],
    downsample: float,
    origin: Sequence[int] = (0, 0),
) -> tuple[tuple[float, float], tuple[float, float]]:
    """Scale and translate for a map whose pixel ``(i, j)`` covers level-0 pixels
    ``[(origin + i) * d, (origin + i + 1) * d)`` of an image layer with ``scale``/``translate``
    (``d`` = ``downsample``): the map pixel's centre lands on the centre of the block it covers.
    """
    scale = np.asarray(scale[-2:], float)
    translate = np.asarray(translate[-2:], float)
    origin = np.asarray(origin, float)
    new_scale = scale * downsample
    new_translate = translate + scale * (origin * downsample + (downsample - 1) / 2)
    return tuple(new_scale.tolist()), tuple(new_translate.tolist())


def rectangle_bounds(corners: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The axis-aligned world box around a shape's corner points (the last two axes)."""
    corners = np.asarray(corners, float)[:, -2:]
    return corners.min(axis=0), corners.max(axis=0)


def drawn_rectangle(shapes: Any) -> tuple[np.ndarray, np.ndarray] | None:
    """The world box of a Shapes layer's selected shape (the last drawn when none is selected),
    or ``None`` when the layer holds no shape."""
    if shapes is None or not len(shapes.data):
        return None
    index = max(shapes.selected_data) if shapes.selected_data else len(shapes.data) - 1
    return rectangle_bounds(np.array([shapes.data_to_world(p) for p in shapes.data[index]]))
