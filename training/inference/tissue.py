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


def tissue_mask(thumbnail: np.ndarray, od_threshold: float = 0.15, grow: int = 1) -> np.ndarray:
    """Boolean tissue mask of an RGB thumbnail: stained (optical density) and not tiny specks.

    Glass is bright and colourless; stained tissue absorbs. A pixel is tissue when its summed
    optical density exceeds ``od_threshold``; holes are filled and the mask is grown by ``grow``
    pixels (one by default, so tiles at the tissue's edge are kept; none for measuring).
    """
    rgb = thumbnail[..., :3].astype(np.float32)
    white = max(float(np.percentile(rgb.max(axis=-1), 99)), 1.0)
    od = -np.log(np.clip(rgb / white, 1e-3, 1.0)).sum(axis=-1)
    mask = od > od_threshold
    mask = ndimage.binary_opening(mask, iterations=1)
    mask = ndimage.binary_fill_holes(mask)
    return ndimage.binary_dilation(mask, iterations=grow) if grow > 0 else mask


def slide_tissue(slide, grow: int = 1) -> tuple[np.ndarray, float]:
    """The tissue mask of a slide's thumbnail (grown by ``grow`` pixels, as
    :func:`tissue_mask`), and thumbnail pixels per level-0 pixel."""
    thumb_px = thumbnail_pixel_size(slide)
    height, width = slide.shape[:2]
    thumb = slide.read_region_at(
        thumb_px,
        0,
        0,
        math.ceil(height * slide.pixel_size_um / thumb_px),
        math.ceil(width * slide.pixel_size_um / thumb_px),
    )
    return tissue_mask(thumb, grow=grow), slide.pixel_size_um / thumb_px


def grown(tissue: tuple[np.ndarray, float], pixels: int = 1) -> tuple[np.ndarray, float]:
    """A :func:`slide_tissue` pair with its mask grown by ``pixels`` (the same mask as
    ``slide_tissue(slide, grow=pixels)`` from one of ``grow=0``, without reading again)."""
    mask, scale = tissue
    return ndimage.binary_dilation(mask, iterations=pixels), scale


def tissue_area_mm2(
    slide,
    box: tuple[float, float, float, float] | None = None,
    tissue: tuple[np.ndarray, float] | None = None,
) -> float:
    """The tissue area (mm²) of a slide, or of its level-0 ``box`` ``(y, x, height, width)``,
    from the engine's thumbnail mask without its safety margin; thumbnail pixels cut by the
    box count by the part of them inside it. ``tissue``: that mask as a run found it
    (``SegmentationResult.tissue``), so the thumbnail is not read again; else it is read."""
    mask, scale = tissue if tissue is not None else slide_tissue(slide, grow=0)
    height, width = slide.shape[:2]
    y, x, h, w = box if box is not None else (0, 0, height, width)
    rows = _coverage(y * scale, (y + h) * scale, mask.shape[0])
    columns = _coverage(x * scale, (x + w) * scale, mask.shape[1])
    thumb_um = slide.pixel_size_um / scale
    return float(rows @ mask.astype(np.float64) @ columns) * thumb_um**2 / 1e6


def _coverage(start: float, stop: float, size: int) -> np.ndarray:
    """How much of each of ``size`` unit cells lies in ``[start, stop)``."""
    edges = np.arange(size + 1, dtype=np.float64)
    return np.clip(np.minimum(edges[1:], stop) - np.maximum(edges[:-1], start), 0, 1)


def tile_has_tissue(
    mask: np.ndarray, scale: float, y: float, x: float, height: float, width: float
) -> bool:
    """Whether the box at ``(y, x)`` of ``height x width``, in units of ``1/scale`` thumbnail
    pixels, touches tissue in ``mask``."""
    y0, x0 = math.floor(y * scale), math.floor(x * scale)
    y1, x1 = math.ceil((y + height) * scale), math.ceil((x + width) * scale)
    return bool(mask[max(y0, 0) : max(y1, 0), max(x0, 0) : max(x1, 0)].any())
