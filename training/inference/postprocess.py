"""From a probability map to FTU instances."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def probability_to_labels(
    probability: np.ndarray, threshold: float, min_area_px: float = 0.0, fill_holes: bool = True
) -> np.ndarray:
    """Threshold, fill holes, label connected objects and drop those under ``min_area_px``."""
    if not 0 <= threshold <= 1:
        raise ValueError(f"threshold must be in [0, 1]; got {threshold}")
    mask = np.asarray(probability) >= threshold
    if fill_holes:
        mask = ndimage.binary_fill_holes(mask)
    labels, count = ndimage.label(mask)
    if count and min_area_px > 0:
        areas = np.bincount(labels.ravel(), minlength=count + 1)
        keep = areas >= min_area_px
        keep[0] = False
        relabel = np.zeros(count + 1, np.int32)
        relabel[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
        labels = relabel[labels]
    return labels.astype(np.int32, copy=False)


def resize_labels(labels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a label image to ``shape`` (e.g. the slide's level 0)."""
    rows = np.minimum(
        ((np.arange(shape[0]) + 0.5) * labels.shape[0] / shape[0]).astype(np.int64),
        labels.shape[0] - 1,
    )
    cols = np.minimum(
        ((np.arange(shape[1]) + 0.5) * labels.shape[1] / shape[1]).astype(np.int64),
        labels.shape[1] - 1,
    )
    return labels[rows[:, None], cols[None, :]]
