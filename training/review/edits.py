"""A pathologist's edits, found by comparing the current labels with the model's.

napari's undo and redo emit no paint event, so edits are never tracked from events: whatever
differs from the model's labels is an edit, and an edit undone is no edit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

ROWS = 1024  # rows per band when overlaps are counted (a stored mask is read a band at a time)
OVERLAP_STEP = 2  # overlaps are counted on every other row and column (ROWS is a multiple)


@dataclass
class EditSummary:
    """Counts of objects and edits in a label image (see :func:`edit_summary`)."""

    objects: int
    edited: int
    deleted: int


def changed_pixels(current: np.ndarray, model: np.ndarray) -> np.ndarray:
    """Where ``current`` differs from ``model``, as a boolean map."""
    _check_shapes(current, model)
    return np.not_equal(current, model)


def edit_summary(current: np.ndarray, model: np.ndarray) -> EditSummary:
    """Count the objects of ``current`` and the edits made to ``model``.

    - ``objects``: distinct nonzero ids in ``current``.
    - ``edited``: distinct nonzero ids of ``current`` that touch a changed pixel: those with a
      pixel that differs from ``model`` (painted, grown, merged, relabelled or newly drawn
      objects) and those that lost a pixel of their own in the model (shrunk, trimmed or split
      objects, whose remaining pixels all still equal the model).
    - ``deleted``: model objects whose every pixel is background in ``current``. A model object
      with no pixel left under its own id but covered (wholly or partly) by another id is part of
      that object's edit, not a deletion: any such pixel differs from the model, so the covering
      id is counted as edited. A merge is thus one edited object, an erasure one deleted.
    """
    changed = changed_pixels(current, model)
    objects = _nonzero_ids(current)
    edited = edited_ids(current, model, changed)
    in_model = _nonzero_ids(model)
    # model ids with a pixel still covered by some object in current
    covered = _nonzero_ids(model[current != 0])
    deleted = np.setdiff1d(in_model, covered, assume_unique=True)
    return EditSummary(objects=len(objects), edited=len(edited), deleted=len(deleted))


def rederive(
    probability: Any,
    threshold: float,
    min_area_px: float,
    current: np.ndarray | None = None,
    model: np.ndarray | None = None,
    fill_holes: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Labels from ``probability`` at a new threshold and minimum area, keeping the edits.

    Returns ``(labels, model_labels)``: ``model_labels`` is
    :func:`training.inference.postprocess.probability_to_labels` at the new settings; ``labels``
    is what to show. With no ``current`` (or no pixel of it differing from ``model``) the labels
    are a copy of the model's. Otherwise:

    - edited objects of ``current`` (those touching a changed pixel) are kept exactly, under
      their own ids, which no new model object takes;
    - changed pixels that are background in ``current`` (the pathologist's erasures) stay
      background;
    - new model objects that share a pixel with either of those (the protected pixels) are
      dropped whole, since a part of one would be a sliver beside or around the edit;
    - every other new model object is taken as is, with its model id, so unedited objects
      follow the threshold.

    Given ``model``, the new model objects are renumbered by :func:`match_ids`: an object that
    persists keeps its id (and so its colour) however the threshold moves.

    The result keeps the edits visible to :func:`changed_pixels` against ``model_labels``: kept
    objects carry ids the model does not, and an erased area differs wherever the new model
    finds an object there. Two limits follow from knowing the edits only by that comparison:
    an erased area where the new model finds nothing is no longer marked (labels and model
    agree there), so a later, lower threshold can bring that object back; and an unedited
    neighbour that grows into an edit at the new threshold is dropped with it, and from then on
    reads as erased. The plugin's session lifts both with its reference: ``model`` may mark
    erased pixels with -1 (they stay erased wherever the model goes), and the model objects
    left out are removed from the reference it passes next time.
    """
    from training.inference.postprocess import probability_to_labels  # its package loads torch

    if current is not None and model is None:
        raise ValueError("rederive needs the model's labels to tell the edits in current apart")
    model_labels = probability_to_labels(probability, threshold, min_area_px, fill_holes)
    if current is None:
        return model_labels.copy(), model_labels
    _check_shapes(current, model)
    _check_shapes(current, model_labels)
    changed = np.not_equal(current, model)
    if not changed.any():
        match_ids(model_labels, model)
        return model_labels.copy(), model_labels

    edited = edited_ids(current, model, changed)
    match_ids(model_labels, model, reserved=edited)
    kept = _pixels_of(current, edited)
    protected = changed | kept
    dropped = _nonzero_ids(model_labels[protected])
    labels = model_labels.copy()
    if len(dropped):
        labels[_pixels_of(model_labels, dropped)] = 0
    labels[changed & (current == 0)] = 0  # already 0 unless the new model found nothing there
    labels[kept] = current[kept]  # ids the new model objects were kept off (reserved)
    return labels, model_labels


def match_ids(new: np.ndarray, old: Any, reserved: np.ndarray | None = None) -> np.ndarray:
    """Renumber the objects of ``new`` in place so that those that persist from ``old`` keep
    their ids; returns ``new``.

    ``new``: integer labels (e.g. :func:`probability_to_labels` at a new threshold); ``old``:
    the labels before, a numpy or zarr array of the same shape (negative values, a reference's
    erasures, are background). Pairs of overlapping objects are matched one to one, the largest
    overlap first; an object of ``new`` left unmatched takes the smallest id that no matched
    object and none of ``reserved`` has, so the ids stay as small as the object count allows.
    ``reserved``: ids no object of ``new`` may take (edited objects shown beside them).
    """
    _check_shapes(new, old)
    top = int(new.max(initial=0))
    if top <= 0:
        return new
    news, olds, overlaps = _overlaps(new, old)
    taken = set() if reserved is None else {int(i) for i in np.asarray(reserved).ravel()}
    lut = np.zeros(top + 1, np.int64)
    for index in np.lexsort((olds, news, -overlaps)):  # the largest overlap first
        n, o = int(news[index]), int(olds[index])
        if not lut[n] and o not in taken:
            lut[n] = o
            taken.add(o)
    unmatched = np.flatnonzero(lut[1:] == 0) + 1
    if len(unmatched):
        candidates = np.arange(1, len(unmatched) + len(taken) + 1, dtype=np.int64)
        lut[unmatched] = np.setdiff1d(candidates, np.fromiter(taken, np.int64))[: len(unmatched)]
    if lut.max() > np.iinfo(new.dtype).max:
        raise OverflowError(f"object id {int(lut.max())} does not fit labels of {new.dtype}")
    if np.array_equal(lut, np.arange(top + 1)):  # every id is already the one to keep
        return new
    lut = lut.astype(new.dtype)
    for y in range(0, new.shape[0], ROWS):  # in place, a band at a time, objects only
        band = new[y : y + ROWS]
        inside = band > 0
        band[inside] = lut[band[inside]]
    return new


def _overlaps(new: np.ndarray, old: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(new ids, old ids, pixels)`` of every pair of objects that overlap on the sampled
    pixels (every :data:`OVERLAP_STEP`-th row and column), counted a band of rows at a time
    (``old`` may be a zarr array: never read whole). An object no sampled pixel of the other
    mask overlaps, a speck of a few pixels, takes a new id."""
    keys, counts = [], []
    for y in range(0, new.shape[0], ROWS):
        # every other row and column: the overlaps only rank the pairs, and a quarter of the
        # pixels keeps a slider move on a 3000 x 3000 map within its 100 ms
        a = np.asarray(new[y : y + ROWS])[::OVERLAP_STEP, ::OVERLAP_STEP]
        b = np.asarray(old[y : y + ROWS])[::OVERLAP_STEP, ::OVERLAP_STEP]
        both = (a > 0) & (b > 0)
        if both.any():
            pairs = (a[both].astype(np.int64) << 32) | b[both].astype(np.int64)
            # runs of one pair along the rows: far fewer than pixels, so cheaper to sort
            starts = np.flatnonzero(np.r_[True, pairs[1:] != pairs[:-1]])
            keys.append(pairs[starts])
            counts.append(np.diff(np.r_[starts, len(pairs)]))
    if not keys:
        empty = np.zeros(0, np.int64)
        return empty, empty, empty
    unique, inverse = np.unique(np.concatenate(keys), return_inverse=True)
    total = np.bincount(inverse, weights=np.concatenate(counts)).astype(np.int64)
    return unique >> 32, unique & 0xFFFFFFFF, total


def edited_ids(
    current: np.ndarray, model: np.ndarray, changed: np.ndarray | None = None
) -> np.ndarray:
    """The sorted ids of the edited objects of ``current`` (see :func:`edit_summary`);
    ``changed``: :func:`changed_pixels`, when the caller has it already."""
    if changed is None:
        changed = changed_pixels(current, model)
    painted = _nonzero_ids(current[changed])
    # an object that only lost pixels has none that differ: find it by its id in the model
    lost = _nonzero_ids(model[changed])
    if len(lost):
        lost = lost[_present(current, lost)]
    return np.union1d(painted, lost)


def _present(labels: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """For each of ``ids`` (sorted, nonzero), whether ``labels`` has a pixel with it."""
    boxes = _boxes(labels, ids)
    if boxes is None:
        return np.isin(ids, _nonzero_ids(labels), assume_unique=True)
    return np.array([boxes[int(index) - 1] is not None for index in ids], bool)


def _pixels_of(labels: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Boolean map of the pixels whose id is in ``ids`` (sorted, nonzero): one pass to find
    the objects' bounding boxes, then each object is looked for only inside its own box."""
    if not len(ids):
        return np.zeros(labels.shape, bool)
    boxes = _boxes(labels, ids)
    if boxes is None:
        return np.isin(labels, ids)
    mask = np.zeros(labels.shape, bool)
    for index in ids:
        box = boxes[int(index) - 1]
        if box is not None:
            mask[box] |= labels[box] == index
    return mask


def _boxes(labels: np.ndarray, ids: np.ndarray) -> list | None:
    """``ndimage.find_objects`` up to the largest of ``ids``; ``None`` when an id is so large
    that its list (one entry per id below it) would outweigh one pass over the image."""
    if int(ids[-1]) > labels.size:
        return None
    return ndimage.find_objects(labels, max_label=int(ids[-1]))


def _nonzero_ids(values: np.ndarray) -> np.ndarray:
    """The object ids among ``values``: positive (a reference marks erased pixels with -1)."""
    ids = np.unique(values)
    return ids[ids > 0]


def _check_shapes(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape != b.shape:
        raise ValueError(f"label images differ in shape: {a.shape} and {b.shape}")
