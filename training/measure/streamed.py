"""One object too tall for a band, measured a strip of rows at a time.

Every measure of :mod:`training.measure.objects` is a sum over the object's pixels or over its
2x2 neighbourhoods, or follows from its convex hull, so it can be gathered strip by strip and
memory stays at a strip's size however large the object (an untrained model's output can span
the tissue). The formulas are scikit-image's: central moments give the axes and eccentricity
(``regionprops``' inertia tensor), the 2x2 configuration counts give the Crofton perimeter
(``perimeter_crofton``, four directions), and the convex area counts the pixel centres inside
or on the hull of the pixels' edge midpoints (``convex_hull_image``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from training.measure.objects import Geometry, frame_of, stain_od

__all__ = ["measure_tall_object"]

# scikit-image's perimeter_crofton coefficients, four directions, by 2x2 configuration code
_CROFTON = np.array(
    [
        0,
        np.pi / 4 * (1 + 1 / np.sqrt(2)),
        np.pi / (4 * np.sqrt(2)),
        np.pi / (2 * np.sqrt(2)),
        0,
        np.pi / 4 * (1 + 1 / np.sqrt(2)),
        0,
        np.pi / (4 * np.sqrt(2)),
        np.pi / 4,
        np.pi / 2,
        np.pi / (4 * np.sqrt(2)),
        np.pi / (4 * np.sqrt(2)),
        np.pi / 4,
        np.pi / 2,
        0,
        0,
    ]
)


def measure_tall_object(
    labels: np.ndarray,
    value: int,
    box: tuple[slice, slice],
    geometry: Geometry,
    probability: Any = None,
    read_rgb: Callable[[int, int, int, int], np.ndarray] | None = None,
    strip: int = 256,
) -> pd.DataFrame:
    """The one-row table of object ``value`` of ``labels`` within its bounding ``box``, read
    ``strip`` rows at a time (columns as :func:`training.measure.objects.measure_objects`)."""
    y0, y1, x0, x1 = box[0].start, box[0].stop, box[1].start, box[1].stop
    width = x1 - x0
    sums = np.zeros(6)  # n, sum y, sum x, sum yy, sum xx, sum xy (box coordinates)
    codes = np.zeros(16, np.int64)
    channels = np.zeros(3)  # probability, H, E sums
    extremes = []  # (row, first column, last column) of every row holding the object
    previous = np.zeros(width + 2, bool)  # the row above the strip, padded: zeros at the top
    for top in range(y0, y1, strip):
        bottom = min(top + strip, y1)
        inside = labels[top:bottom, x0:x1] == value
        rows, cols = np.nonzero(inside)
        ys, xs = rows + (top - y0), cols.astype(np.float64)
        ys = ys.astype(np.float64)
        sums += (len(ys), ys.sum(), xs.sum(), (ys * ys).sum(), (xs * xs).sum(), (ys * xs).sum())
        padded = np.zeros((bottom - top + 1, width + 2), bool)
        padded[0], padded[1:, 1:-1] = previous, inside
        codes += _configurations(padded)
        previous = padded[-1]
        present = inside.any(axis=1)
        first = inside.argmax(axis=1)
        last = width - 1 - inside[:, ::-1].argmax(axis=1)
        offset = top - y0
        extremes += [(r + offset, first[r], last[r]) for r in np.flatnonzero(present)]
        if probability is not None:
            values = np.asarray(probability[top:bottom, x0:x1], np.float64)
            channels[0] += float(values[inside].sum())
        if read_rgb is not None:
            od = stain_od(read_rgb(top, x0, bottom - top, width))[inside]
            channels[1:] += od.astype(np.float64).sum(axis=0)
    closing = np.zeros((2, width + 2), bool)
    closing[0] = previous  # the windows below the last row
    codes += _configurations(closing)
    n = sums[0]
    cy, cx = sums[1] / n, sums[2] / n
    var_y, var_x = sums[3] / n - cy * cy, sums[4] / n - cx * cx
    cov = sums[5] / n - cy * cx
    root = math.sqrt(max(((var_y - var_x) / 2) ** 2 + cov * cov, 0.0))
    large = max((var_y + var_x) / 2 + root, 0.0)
    small = max((var_y + var_x) / 2 - root, 0.0)
    table = {
        "label": np.array([value]),
        "area": np.array([n]),
        "perimeter_crofton": np.array([float(codes @ _CROFTON)]),
        "equivalent_diameter_area": np.array([math.sqrt(4 * n / math.pi)]),
        "axis_major_length": np.array([4 * math.sqrt(large)]),
        "axis_minor_length": np.array([4 * math.sqrt(small)]),
        "eccentricity": np.array([math.sqrt(1 - small / large) if large > 0 else 0.0]),
        "solidity": np.array([n / _convex_area(np.array(extremes, np.float64))]),
        "centroid-0": np.array([cy]),
        "centroid-1": np.array([cx]),
        "bbox-0": np.array([0]),
        "bbox-1": np.array([0]),
        "bbox-2": np.array([y1 - y0]),
        "bbox-3": np.array([width]),
    }
    means = channels / n
    intensity = []
    if probability is not None:
        intensity.append(means[0])
    if read_rgb is not None:
        intensity += [means[1], means[2]]
    for index, mean in enumerate(intensity):
        table[f"intensity_mean-{index}"] = np.array([mean])
    return frame_of(table, geometry, (y0, x0), len(intensity), probability is not None)


def _configurations(padded: np.ndarray) -> np.ndarray:
    """How often each 2x2 configuration occurs among the windows whose top row is one of
    ``padded``'s rows but its last (code: bottom-right 1, bottom-left 4, top-right 2,
    top-left 8, as scikit-image's Crofton convolution numbers them)."""
    top, below = padded[:-1].astype(np.uint8), padded[1:].astype(np.uint8)
    code = below[:, 1:] + 4 * below[:, :-1] + 2 * top[:, 1:] + 8 * top[:, :-1]
    return np.bincount(code.ravel(), minlength=16)


def _convex_area(extremes: np.ndarray) -> float:
    """Pixel centres inside or on the convex hull of the object's pixel edge midpoints (as
    ``convex_hull_image``), from each row's first and last pixel ``(row, first, last)``."""
    from scipy.spatial import ConvexHull

    r, first, last = extremes[:, 0], extremes[:, 1], extremes[:, 2]
    points = np.concatenate(
        [
            np.stack([r - 0.5, first], 1),
            np.stack([r + 0.5, first], 1),
            np.stack([r, first - 0.5], 1),
            np.stack([r - 0.5, last], 1),
            np.stack([r + 0.5, last], 1),
            np.stack([r, last + 0.5], 1),
        ]
    )
    hull = ConvexHull(np.unique(points, axis=0))
    vertices = hull.points[hull.vertices]
    edges = np.stack([vertices, np.roll(vertices, -1, axis=0)], 1)  # (k, 2 ends, (y, x))
    rows = np.arange(math.ceil(vertices[:, 0].min()), math.floor(vertices[:, 0].max()) + 1)
    (ya, xa), (yb, xb) = edges[:, 0].T, edges[:, 1].T
    low, high = np.minimum(ya, yb), np.maximum(ya, yb)
    crosses = (rows[:, None] >= low - 1e-9) & (rows[:, None] <= high + 1e-9)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(yb != ya, (rows[:, None] - ya) / (yb - ya), 0.0)
    xs = xa + np.clip(t, 0, 1) * (xb - xa)
    flat = (yb == ya) & crosses  # a horizontal edge on this row: both its ends count
    left = np.where(crosses, xs, np.inf).min(1)
    right = np.where(crosses, xs, -np.inf).max(1)
    left = np.minimum(left, np.where(flat, np.minimum(xa, xb), np.inf).min(1))
    right = np.maximum(right, np.where(flat, np.maximum(xa, xb), -np.inf).max(1))
    counts = np.floor(right + 1e-9) - np.ceil(left - 1e-9) + 1
    return float(np.clip(counts, 0, None).sum())
