"""From a probability map to FTU instances."""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage

from training.data.rle import nearest_indices

ROWS = 1024  # rows per band when a whole-slide array is processed piecewise


def probability_to_labels(
    probability: Any, threshold: float, min_area_px: float = 0.0, fill_holes: bool = True
) -> np.ndarray:
    """Threshold, fill the holes inside objects, label connected objects, drop those under
    ``min_area_px``; labels are numbered 1..N.

    ``probability``: a 2-D numpy or zarr array. Labels are int32. A hole is background not
    connected to the image's edge (8-connected, the dual of the objects' 4-connectivity), so
    each hole is enclosed by one object: filling the mask's holes at once fills each object's
    own, and an object inside another's hole joins it. Memory beyond the result is one
    boolean mask: the background is labelled into the result's own array to find the holes,
    and areas are counted a band at a time.
    """
    if not 0 <= threshold <= 1:
        raise ValueError(f"threshold must be in [0, 1]; got {threshold}")
    mask = threshold_mask(probability, threshold)
    labels = np.empty(mask.shape, np.int32)
    if fill_holes and mask.any():
        _fill_holes(mask, labels)
    # into int32 directly: scipy labels into a smaller type through an int64-sized temporary
    count = ndimage.label(mask, output=labels)
    del mask
    if not count or min_area_px <= 1:  # every object has a pixel: nothing to drop
        return labels
    areas = np.zeros(count + 1, np.int64)
    for y in range(0, labels.shape[0], ROWS):  # bincount copies to int64: a band at a time
        areas += np.bincount(labels[y : y + ROWS].ravel(), minlength=count + 1)
    keep = (areas > 0) & (areas >= min_area_px)
    keep[0] = False
    if keep[1:].all():
        return labels
    relabel = np.zeros(count + 1, labels.dtype)
    relabel[keep] = np.arange(1, int(keep.sum()) + 1)
    for y in range(0, labels.shape[0], ROWS):  # in place, a band at a time
        labels[y : y + ROWS] = relabel[labels[y : y + ROWS]]
    return labels


def _fill_holes(mask: np.ndarray, work: np.ndarray) -> None:
    """Set every hole of ``mask`` in place; ``work`` (int32, the mask's shape) is scratch space.

    Objects are 4-connected, so the background is taken 8-connected (its topological dual):
    then every background component not reaching the edge is enclosed by a single object.
    """
    count = ndimage.label(~mask, structure=np.ones((3, 3), bool), output=work)
    if not count:
        return
    hole = np.ones(count + 1, bool)
    hole[0] = False
    for edge in (work[0], work[-1], work[:, 0], work[:, -1]):
        hole[edge] = False
    if not hole.any():  # the usual case: every stretch of background reaches the edge
        return
    for y in range(0, mask.shape[0], ROWS):
        mask[y : y + ROWS] |= hole[work[y : y + ROWS]]


def threshold_mask(probability: Any, threshold: float, rows: int = ROWS) -> np.ndarray:
    """``probability >= threshold`` as a boolean array, read ``rows`` rows at a time, so a
    probability map on disk (zarr) is never loaded whole as float. Missing values (NaN: what
    an unwritten or lost chunk reads as) raise instead of reading as background."""
    mask = np.empty(probability.shape, bool)
    for y in range(0, probability.shape[0], rows):
        band = np.asarray(probability[y : y + rows])
        if np.isnan(band).any():
            raise ValueError(
                f"the probability map has missing values (NaN) in rows {y}..{y + len(band) - 1}: "
                "its storage was deleted or never completely written"
            )
        np.greater_equal(band, threshold, out=mask[y : y + rows])
    return mask


def resize_labels(labels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a label image to ``shape`` (e.g. the slide's level 0).

    For a slide-sized mask's RLE, :func:`training.data.rle.encode_upscaled` gives the same
    result without building the resized array.
    """
    rows = nearest_indices(labels.shape[0], shape[0])
    cols = nearest_indices(labels.shape[1], shape[1])
    return labels[rows[:, None], cols[None, :]]


def outlines(labels: np.ndarray) -> np.ndarray:
    """Where each object's inner boundary is, as a boolean map; an object cut by the image's
    edge is outlined along the edge too (the labels are padded before the boundary is found)."""
    from skimage.segmentation import find_boundaries

    return find_boundaries(np.pad(labels, 1), mode="inner")[1:-1, 1:-1]
