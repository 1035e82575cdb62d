"""Tissue detection on a thumbnail, so tiles of bare glass are never run through a model."""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

THUMBNAIL_MAX_SIDE = 2048
THUMBNAIL_MIN_UM_PER_PX = 4.0


def thumbnail_pixel_size(slide) -> float:
    """Pixel size of the tissue thumbnail: coarse, at most 2048 px on a side."""
    height, width = slide.shape[:2]
    base = slide.pixel_size_um
    return max(base, THUMBNAIL_MIN_UM_PER_PX, base * max(height, width) / THUMBNAIL_MAX_SIDE)


def tissue_mask(thumbnail: np.ndarray, od_threshold: float = 0.15) -> np.ndarray:
    """Boolean tissue mask of an RGB thumbnail: stained (optical density) and not tiny specks.

    Glass is bright and colourless; stained tissue absorbs. A pixel is tissue when its summed
    optical density exceeds ``od_threshold``; holes are filled and the mask is grown by one
    pixel so tiles at the tissue's edge are kept.
    """
    rgb = thumbnail[..., :3].astype(np.float32)
    white = max(float(np.percentile(rgb.max(axis=-1), 99)), 1.0)
    od = -np.log(np.clip(rgb / white, 1e-3, 1.0)).sum(axis=-1)
    mask = od > od_threshold
    mask = ndimage.binary_opening(mask, iterations=1)
    mask = ndimage.binary_fill_holes(mask)
    return ndimage.binary_dilation(mask, iterations=1)


def slide_tissue(slide) -> tuple[np.ndarray, float]:
    """The tissue mask of a slide's thumbnail, and thumbnail pixels per level-0 pixel."""
    thumb_px = thumbnail_pixel_size(slide)
    height, width = slide.shape[:2]
    thumb = slide.read_region_at(
        thumb_px,
        0,
        0,
        math.ceil(height * slide.pixel_size_um / thumb_px),
        math.ceil(width * slide.pixel_size_um / thumb_px),
    )
    return tissue_mask(thumb), slide.pixel_size_um / thumb_px


def tile_has_tissue(
    mask: np.ndarray, scale: float, y: float, x: float, height: float, width: float
) -> bool:
    """Whether the box at ``(y, x)`` of ``height x width``, in units of ``1/scale`` thumbnail
    pixels, touches tissue in ``mask``."""
    y0, x0 = math.floor(y * scale), math.floor(x * scale)
    y1, x1 = math.ceil((y + height) * scale), math.ceil((x + width) * scale)
    return bool(mask[max(y0, 0) : max(y1, 0), max(x0, 0) : max(x1, 0)].any())
