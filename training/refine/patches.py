"""Boundary patches: where BPR looks (centres spread along each object's outline) and how the
refined patches go back into the map (a soft window, overlaps averaged, only near the outline).

Coordinates: the working map's pixel ``(Y, X)`` covers ``[Y * w, (Y + 1) * w)`` micrometres of
the slide (``w`` its pixel size) and a refiner pixel ``(i, j)`` covers ``[i * f, (i + 1) * f)``
(``f`` the refiner's pixel size): both grids start at the slide's origin.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from training.refine.metrics import boundary
from training.slides.resample import area_weights, separable

BLOCK = 256  # side of the blocks the blend accumulates in (working px)


def boundary_centres(labels: np.ndarray, per_object: int, spacing: float) -> np.ndarray:
    """Up to ``per_object`` patch centres ``(y, x)`` (working px) per labelled object, on its
    boundary, at least ``spacing`` px apart (Chebyshev), spread evenly: farthest-point sampling
    of the dense boundary, which is BPR's dense sampling followed by non-maximum suppression.
    Objects in order of their label; ``(0, 2)`` when there is none."""
    if per_object < 1:
        raise ValueError(f"per_object must be at least 1; got {per_object}")
    centres = []
    for index, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        # one pixel more each way, so the crop's edge is not the object's (the image's is not)
        y0, x0 = max(box[0].start - 1, 0), max(box[1].start - 1, 0)
        edge = np.argwhere(boundary(labels[y0 : box[0].stop + 1, x0 : box[1].stop + 1] == index))
        if len(edge):
            centres.extend(_spread(edge + np.array([y0, x0]), per_object, spacing))
    return np.array(centres, np.int64).reshape(-1, 2)


def _spread(points: np.ndarray, count: int, spacing: float) -> list[np.ndarray]:
    """Farthest-point sampling of ``points`` from the first (the top-left-most): each next
    point is the one farthest from those chosen, until ``count`` or none is ``spacing`` away."""
    chosen = [points[0]]
    distance = np.abs(points - points[0]).max(axis=1)
    while len(chosen) < count:
        far = int(distance.argmax())
        if distance[far] < spacing:
            break
        chosen.append(points[far])
        distance = np.minimum(distance, np.abs(points - points[far]).max(axis=1))
    return chosen


@dataclass(frozen=True)
class PatchBox:
    """One patch: ``size`` refiner pixels square at ``(y, x)`` of the refiner's grid, ``scale``
    working px per refiner px."""

    y: int
    x: int
    size: int
    scale: float

    @classmethod
    def around(cls, centre: np.ndarray, size: int, scale: float) -> PatchBox:
        """The patch centred on working pixel ``centre``."""
        cy, cx = ((float(c) + 0.5) / scale - size / 2 for c in centre)
        return cls(round(cy), round(cx), size, scale)

    def coarse(self, probability: Any, origin: tuple[int, int] = (0, 0)) -> np.ndarray:
        """The working map (its top-left at working pixel ``origin``) resampled (bilinearly,
        edges repeated) onto this patch's grid."""
        height, width = probability.shape
        centres = (np.arange(self.size) + 0.5) * self.scale - 0.5
        ys = self.y * self.scale + centres - origin[0]
        xs = self.x * self.scale + centres - origin[1]
        y0, x0 = _clip(math.floor(ys[0]), height), _clip(math.floor(xs[0]), width)
        y1, x1 = _clip(math.ceil(ys[-1]) + 1, height) + 1, _clip(math.ceil(xs[-1]) + 1, width) + 1
        region = np.asarray(probability[y0:y1, x0:x1], np.float32)
        grid = np.meshgrid(ys - y0, xs - x0, indexing="ij")
        return ndimage.map_coordinates(region, grid, order=1, mode="nearest").astype(np.float32)

    def working_span(self) -> tuple[int, int, int, int]:
        """``(Y0, X0, Y1, X1)``: the working pixels lying wholly inside the patch."""
        s = self.scale
        return (
            math.ceil(self.y * s - 1e-6),
            math.ceil(self.x * s - 1e-6),
            math.floor((self.y + self.size) * s + 1e-6),
            math.floor((self.x + self.size) * s + 1e-6),
        )

    def to_working(self, values: np.ndarray) -> tuple[int, int, np.ndarray]:
        """``values`` (this patch's grid) as area means on the working pixels inside the
        patch: ``(Y0, X0, array)``."""
        y0, x0, y1, x1 = self.working_span()
        ratio = 1 / self.scale
        along_y = area_weights(y0 * ratio - self.y, ratio, y1 - y0, self.size)
        along_x = area_weights(x0 * ratio - self.x, ratio, x1 - x0, self.size)
        return y0, x0, separable(values[..., None], along_y, along_x)[..., 0]


def _ramp(size: int) -> np.ndarray:
    """Weights rising linearly over a quarter of ``size`` from each end (never quite 0)."""
    distance = np.minimum(np.arange(size), np.arange(size)[::-1]) + 1
    return np.clip(distance / max(size // 4, 1), 1e-3, 1.0).astype(np.float32)


def _clip(value: int, length: int) -> int:
    return min(max(value, 0), length - 1)


class BlendAccumulator:
    """Refined values and their window weights over a map of ``shape``, kept only in the
    ``BLOCK``-sized blocks that patches touch (memory grows with the refined area)."""

    def __init__(self, shape: tuple[int, int]) -> None:
        self.shape = shape
        self.blocks: dict[tuple[int, int], np.ndarray] = {}  # (2, BLOCK, BLOCK): sum, weight

    def add(self, y0: int, x0: int, values: np.ndarray) -> None:
        """Add one patch's values at working pixel ``(y0, x0)`` with a window that falls off
        linearly over a quarter of the patch towards its edges (no seams)."""
        height, width = values.shape
        window = np.outer(_ramp(height), _ramp(width))
        for (by, bx), (ys, xs), (py, px) in self._pieces(y0, x0, height, width):
            block = self.blocks.setdefault((by, bx), np.zeros((2, BLOCK, BLOCK), np.float32))
            w = window[py, px]
            block[0][ys, xs] += w * values[py, px]
            block[1][ys, xs] += w

    def _pieces(self, y0: int, x0: int, height: int, width: int) -> Iterator[tuple]:
        """The parts of a ``height x width`` box at ``(y0, x0)`` inside the map, block by block:
        ``(block index, slices in the block, slices in the box)``."""
        top, left = max(y0, 0), max(x0, 0)
        bottom, right = min(y0 + height, self.shape[0]), min(x0 + width, self.shape[1])
        for by in range(top // BLOCK, (bottom - 1) // BLOCK + 1 if bottom > top else 0):
            for bx in range(left // BLOCK, (right - 1) // BLOCK + 1 if right > left else 0):
                ya, yb = max(top, by * BLOCK), min(bottom, (by + 1) * BLOCK)
                xa, xb = max(left, bx * BLOCK), min(right, (bx + 1) * BLOCK)
                yield (
                    (by, bx),
                    (
                        slice(ya - by * BLOCK, yb - by * BLOCK),
                        slice(xa - bx * BLOCK, xb - bx * BLOCK),
                    ),
                    (slice(ya - y0, yb - y0), slice(xa - x0, xb - x0)),
                )

    def blend_into(self, probability: Any, objects: np.ndarray, band_px: float) -> int:
        """Write the blend into ``probability`` (numpy or zarr, in place), block by block: the
        mean of the refined patches, over the old value where the windows sum to under 1, and
        only within ``band_px`` of the boundary of ``objects`` (a boolean map; the change fades
        out over the band's outer half: deep inside or far outside, pixels keep their value
        exactly). Returns the pixels changed."""
        changed = 0
        margin = math.ceil(band_px) + 1
        for (by, bx), (total, weight) in sorted(self.blocks.items()):
            y0, x0 = by * BLOCK, bx * BLOCK
            y1, x1 = min(y0 + BLOCK, self.shape[0]), min(x0 + BLOCK, self.shape[1])
            near = band_weight(objects, (y0, x0, y1, x1), band_px, margin)
            weight = weight[: y1 - y0, : x1 - x0]
            alpha = np.minimum(weight, 1.0) * near
            touched = alpha > 0
            if not touched.any():
                continue
            old = np.asarray(probability[y0:y1, x0:x1], np.float32)
            mean = total[: y1 - y0, : x1 - x0][touched] / weight[touched]
            new = old.copy()
            new[touched] = alpha[touched] * mean + (1 - alpha[touched]) * old[touched]
            probability[y0:y1, x0:x1] = new
            changed += int(touched.sum())
        return changed


def band_weight(
    objects: np.ndarray, box: tuple[int, int, int, int], band_px: float, margin: int
) -> np.ndarray:
    """For the pixels of ``box`` ``(y0, x0, y1, x1)``: 1 within half of ``band_px`` of the
    objects' boundary, falling linearly to 0 at ``band_px``, 0 beyond (and everywhere when no
    boundary is that near)."""
    y0, x0, y1, x1 = box
    ya, xa = max(y0 - margin, 0), max(x0 - margin, 0)
    region = objects[ya : y1 + margin, xa : x1 + margin]
    if region.all() or not region.any():
        return np.zeros((y1 - y0, x1 - x0), np.float32)
    inside = ndimage.distance_transform_edt(region)
    outside = ndimage.distance_transform_edt(~region)
    distance = np.where(region, inside, outside)[y0 - ya : y1 - ya, x0 - xa : x1 - xa] - 1
    fade = max(band_px / 2, 1.0)
    return np.clip((band_px - distance) / fade, 0.0, 1.0).astype(np.float32)
