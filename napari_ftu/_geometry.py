"""Which pixels of an image layer the canvas shows: the field of view as a box in world
coordinates, and the pyramid level and pixel region that cover it at screen resolution.

Qt-free and napari-free (plain numbers in, plain numbers out), so it is tested without a viewer.
Layers are taken as axis-aligned: scale and translate only, no rotation, shear or affine.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

# What a preview reads at most: a few megapixels keep the stain transform under a second or two.
MAX_PREVIEW_PIXELS = 4_000_000


@dataclass(frozen=True)
class Box:
    """An axis-aligned box in world coordinates (rows, then columns)."""

    top: float
    left: float
    bottom: float
    right: float


@dataclass(frozen=True)
class Region:
    """Pixels ``[y0:y1:step, x0:x1:step]`` of pyramid ``level``, with the scale and translate
    that lay them over the source layer exactly."""

    level: int
    y0: int
    x0: int
    y1: int
    x1: int
    step: int
    scale: tuple[float, float]
    translate: tuple[float, float]

    @property
    def slices(self) -> tuple[slice, slice]:
        """Row and column slices of the level's array."""
        return slice(self.y0, self.y1, self.step), slice(self.x0, self.x1, self.step)

    @property
    def shape(self) -> tuple[int, int]:
        """``(h, w)`` of the pixels the slices read."""
        return (
            math.ceil((self.y1 - self.y0) / self.step),
            math.ceil((self.x1 - self.x0) / self.step),
        )


def field_of_view(center: Sequence[float], zoom: float, canvas_size: Sequence[int]) -> Box:
    """The world box the canvas shows: ``center`` (the camera's; its last two values are rows and
    columns), ``zoom`` in screen pixels per world unit, ``canvas_size`` ``(h, w)`` in pixels."""
    if not zoom > 0:
        raise ValueError(f"zoom must be positive; got {zoom}")
    cy, cx = float(center[-2]), float(center[-1])
    half_h, half_w = canvas_size[0] / zoom / 2, canvas_size[1] / zoom / 2
    return Box(cy - half_h, cx - half_w, cy + half_h, cx + half_w)


def region_in_view(
    box: Box,
    scale: Sequence[float],
    translate: Sequence[float],
    level_shapes: Sequence[Sequence[int]],
    zoom: float,
    max_pixels: int = MAX_PREVIEW_PIXELS,
) -> Region | None:
    """The pixels of a layer (``scale``/``translate`` of level 0, ``level_shapes`` ``(H, W, ...)``
    finest first) that cover ``box`` at the screen's resolution (``zoom`` screen pixels per world
    unit), no more than ``max_pixels``; ``None`` when the box misses the image.

    The level is the coarsest whose pixels are no larger than a screen pixel; when that still
    reads more than ``max_pixels``, a coarser level, and past the coarsest, every n-th pixel.
    """
    sy, sx = float(scale[-2]), float(scale[-1])
    ty, tx = float(translate[-2]), float(translate[-1])
    height, width = int(level_shapes[0][0]), int(level_shapes[0][1])
    # level-0 pixel i is centred on world translate + i * scale and covers half a pixel around it
    y0 = max(0, math.floor((box.top - ty) / sy + 0.5))
    x0 = max(0, math.floor((box.left - tx) / sx + 0.5))
    y1 = min(height, math.ceil((box.bottom - ty) / sy + 0.5))
    x1 = min(width, math.ceil((box.right - tx) / sx + 0.5))
    if y1 <= y0 or x1 <= x0:
        return None
    downsamples = [height / int(shape[0]) for shape in level_shapes]
    per_screen_pixel = 1.0 / (zoom * min(sy, sx))  # level-0 pixels under one screen pixel
    fine_enough = [i for i, d in enumerate(downsamples) if d <= per_screen_pixel * 1.01]
    level = max(fine_enough, key=lambda i: downsamples[i]) if fine_enough else 0
    area = (y1 - y0) * (x1 - x0)
    while level + 1 < len(downsamples) and area / downsamples[level] ** 2 > max_pixels:
        level += 1
    d = downsamples[level]
    step = max(1, math.ceil(math.sqrt(area / d**2 / max_pixels)))
    level_h, level_w = int(level_shapes[level][0]), int(level_shapes[level][1])
    ly0, lx0 = min(int(y0 // d), level_h - 1), min(int(x0 // d), level_w - 1)
    ly1, lx1 = min(level_h, math.ceil(y1 / d)), min(level_w, math.ceil(x1 / d))
    span = d * step  # level-0 pixels per preview pixel
    # preview pixel j covers level-0 pixels [ly0 * d + j * span, ... + span): its centre there
    return Region(
        level=level,
        y0=ly0,
        x0=lx0,
        y1=ly1,
        x1=lx1,
        step=step,
        scale=(sy * span, sx * span),
        translate=(ty + sy * (ly0 * d + (span - 1) / 2), tx + sx * (lx0 * d + (span - 1) / 2)),
    )


def camera_of(viewer: object) -> object:
    """The viewer's camera: ``viewer.scene.camera`` since napari 0.9 (``viewer.camera`` before,
    deprecated there)."""
    scene = getattr(viewer, "scene", None)
    camera = getattr(scene, "camera", None)
    return camera if camera is not None else viewer.camera
