"""Correction helpers for a label image, each one undoable step.

Every helper is a pure function returning a :class:`Change` (the pixels to set and their new
values, exactly what napari's ``Labels.data_setitem(indices, values)`` takes, so the viewer
records the whole correction as a single undo step) or ``None`` when there is nothing to change.
Work is done inside the bounding boxes of the objects concerned.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass
class Change:
    """Pixels to set (``indices``: row and column arrays) and their new ``values``."""

    indices: tuple[np.ndarray, np.ndarray]
    values: np.ndarray

    def __len__(self) -> int:
        return len(self.values)


def label_at(labels: np.ndarray, y: float, x: float) -> int:
    """The label under the point ``(y, x)`` (data coordinates, rounded to the nearest pixel as
    napari does); 0 outside the image."""
    row, col = int(np.round(y)), int(np.round(x))
    if not (0 <= row < labels.shape[0] and 0 <= col < labels.shape[1]):
        return 0
    return int(labels[row, col])


def delete_object(labels: np.ndarray, label: int) -> Change | None:
    """Set every pixel of ``label`` to background; ``None`` for background or an absent id."""
    if label == 0:
        return None
    box = _box(labels, label)
    if box is None:
        return None
    rows, cols = np.nonzero(labels[box] == label)
    return _change(labels, rows + box[0].start, cols + box[1].start, 0)


def merge_objects(labels: np.ndarray, keep: int, other: int) -> Change | None:
    """Give ``other``'s pixels the id ``keep``. Only the labels change: a background gap
    between the two objects stays background (fill it with the paint tool if it is tissue).
    ``None`` when the ids are equal or either is absent; background cannot be merged."""
    if keep == 0 or other == 0:
        raise ValueError("background (0) cannot be merged; pick two objects")
    if keep == other or _box(labels, keep) is None:
        return None
    box = _box(labels, other)
    if box is None:
        return None
    rows, cols = np.nonzero(labels[box] == other)
    return _change(labels, rows + box[0].start, cols + box[1].start, keep)


def fill_holes(labels: np.ndarray, label: int | None = None) -> Change | None:
    """Fill the background holes inside object ``label``, or inside every object (``None``).

    Another object lying in a hole is left as it is; only the background around it is filled.
    A background pixel in the holes of nested objects goes to the innermost one.
    """
    if label is not None:
        if label == 0:
            return None
        box = _box(labels, label)
        if box is None:
            return None
        rows, cols = _holes(labels[box], label)
        return _change(labels, rows + box[0].start, cols + box[1].start, label)

    boxes = ndimage.find_objects(labels)
    found = [(index, box) for index, box in enumerate(boxes, start=1) if box is not None]
    # smaller boxes last, so an inner object's hole overrides the hole of the one around it
    found.sort(key=lambda item: -_box_area(item[1]))
    pieces = []
    for index, box in found:
        rows, cols = _holes(labels[box], index)
        flat = np.ravel_multi_index((rows + box[0].start, cols + box[1].start), labels.shape)
        pieces.append((flat, np.full(len(flat), index, dtype=labels.dtype)))
    if not pieces:
        return None
    flat = np.concatenate([piece[0] for piece in pieces])[::-1]
    values = np.concatenate([piece[1] for piece in pieces])[::-1]
    if not len(flat):
        return None
    # reversed, a pixel's first occurrence is its last assignment: the innermost object's
    flat, first = np.unique(flat, return_index=True)
    rows, cols = np.unravel_index(flat, labels.shape)
    return Change(indices=(rows.astype(np.intp), cols.astype(np.intp)), values=values[first])


def remove_small(labels: np.ndarray, min_area_px: float) -> Change | None:
    """Delete every object smaller than ``min_area_px`` pixels."""
    ids, areas = np.unique(labels, return_counts=True)
    small = ids[(ids != 0) & (areas < min_area_px)]
    if not len(small):
        return None
    rows, cols = np.nonzero(np.isin(labels, small))
    return _change(labels, rows, cols, 0)


def relabel(labels: np.ndarray) -> Change | None:
    """Renumber the objects 1..N (in the order of their old ids); ``None`` when they already
    are."""
    from skimage.segmentation import relabel_sequential

    renumbered, _, _ = relabel_sequential(labels)
    rows, cols = np.nonzero(renumbered != labels)
    if not len(rows):
        return None
    return Change(indices=(rows, cols), values=renumbered[rows, cols].astype(labels.dtype))


def apply_change(labels: np.ndarray, change: Change | None) -> None:
    """Apply ``change`` to ``labels`` in place (for scripts and tests; in napari, pass the
    change to ``layer.data_setitem``)."""
    if change is not None:
        labels[change.indices] = change.values


def _holes(crop: np.ndarray, label: int) -> tuple[np.ndarray, np.ndarray]:
    inside = crop == label
    holes = ndimage.binary_fill_holes(inside) & (crop == 0)
    return np.nonzero(holes)


def _box(labels: np.ndarray, label: int) -> tuple[slice, slice] | None:
    """The bounding box of ``label``, or ``None`` when it is absent."""
    mask = labels == label
    rows = np.flatnonzero(mask.any(axis=1))
    if not len(rows):
        return None
    cols = np.flatnonzero(mask[rows[0] : rows[-1] + 1].any(axis=0))
    return slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1)


def _box_area(box: tuple[slice, slice]) -> int:
    return (box[0].stop - box[0].start) * (box[1].stop - box[1].start)


def _change(labels: np.ndarray, rows: np.ndarray, cols: np.ndarray, value: int) -> Change | None:
    if not len(rows):
        return None
    values = np.full(len(rows), value, dtype=labels.dtype)
    return Change(indices=(rows.astype(np.intp), cols.astype(np.intp)), values=values)
