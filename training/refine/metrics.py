"""The boundary F-score (as in BPR and the DAVIS benchmark): how well two masks' outlines agree."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def boundary(mask: np.ndarray) -> np.ndarray:
    """The inner boundary of a binary mask: its pixels with a 4-neighbour outside it (the
    image's edge does not count as outside)."""
    mask = np.asarray(mask, bool)
    eroded = ndimage.binary_erosion(mask, border_value=1)
    return mask & ~eroded


def boundary_f_score(pred: np.ndarray, truth: np.ndarray, tolerance_px: float = 2) -> float:
    """F-score of boundary pixels: precision is the share of ``pred``'s boundary pixels within
    ``tolerance_px`` (Euclidean) of ``truth``'s boundary, recall the converse. 1.0 when neither
    mask has a boundary, 0.0 when only one has."""
    if np.shape(pred) != np.shape(truth):
        raise ValueError(f"masks differ in shape: {np.shape(pred)} and {np.shape(truth)}")
    if tolerance_px < 0:
        raise ValueError(f"tolerance_px must be 0 or more; got {tolerance_px}")
    pred_edge, truth_edge = boundary(pred), boundary(truth)
    if not pred_edge.any() and not truth_edge.any():
        return 1.0
    if not pred_edge.any() or not truth_edge.any():
        return 0.0
    precision = float(
        (ndimage.distance_transform_edt(~truth_edge)[pred_edge] <= tolerance_px).mean()
    )
    recall = float((ndimage.distance_transform_edt(~pred_edge)[truth_edge] <= tolerance_px).mean())
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)
