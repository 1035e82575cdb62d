"""The Qt-free core of the review tools: edits, corrections, review queue and mask store."""

from __future__ import annotations

import numpy as np
import pytest

from training.inference.postprocess import probability_to_labels
from training.review.corrections import (
    Change,
    apply_change,
    delete_object,
    fill_holes,
    label_at,
    merge_objects,
    relabel,
    remove_small,
)
from training.review.edits import EditSummary, changed_pixels, edit_summary, rederive

# blob centres (row, col) and peak probabilities; each blob shrinks as the threshold rises
BLOBS = [((24, 24), 0.95), ((24, 96), 0.9), ((96, 30), 0.85), ((96, 100), 0.8)]


def blobs_probability(size: int = 128, sigma: float = 9.0) -> np.ndarray:
    rows, cols = np.mgrid[:size, :size]
    probability = np.zeros((size, size), np.float32)
    for (y, x), peak in BLOBS:
        bump = peak * np.exp(-((rows - y) ** 2 + (cols - x) ** 2) / (2 * sigma**2))
        probability = np.maximum(probability, bump.astype(np.float32))
    return probability


def object_at(labels: np.ndarray, point: tuple[int, int]) -> np.ndarray:
    return labels == labels[point]


# ---- edits -------------------------------------------------------------------------------------


def test_rederive_keeps_edits_across_threshold_changes() -> None:
    probability = blobs_probability()
    labels, model = rederive(probability, 0.5, 10)
    assert np.array_equal(labels, model) and len(np.unique(model)) == 5

    # the pathologist grows the top-left object with a square and deletes the bottom-left one
    grown = labels[24, 24]
    labels[2:10, 2:46] = grown
    labels[object_at(labels, (96, 30))] = 0
    painted = labels == grown
    erased = model == model[96, 30]
    assert edit_summary(labels, model) == EditSummary(objects=3, edited=1, deleted=1)

    for threshold in (0.4, 0.3):
        before = [object_at(model, (y, x)).sum() for (y, x), _ in BLOBS[1:2] + BLOBS[3:]]
        labels, model = rederive(probability, threshold, 10, labels, model)
        assert np.array_equal(model, probability_to_labels(probability, threshold, 10))
        # the edited object is kept pixel for pixel, under an id the model does not use
        assert np.array_equal(object_at(labels, (24, 24)), painted)
        assert labels[24, 24] > model.max()
        # the deleted object stays deleted, and still counts as an edit
        assert not labels[erased].any() and model[96, 30] != 0
        assert changed_pixels(labels, model)[96, 30]
        # unedited objects follow the threshold: lower, so larger
        after = [object_at(labels, (y, x)).sum() for (y, x), _ in BLOBS[1:2] + BLOBS[3:]]
        assert all(a > b for a, b in zip(after, before, strict=True))
        assert np.array_equal(labels == labels[24, 96], model == model[24, 96])
        assert edit_summary(labels, model) == EditSummary(objects=3, edited=1, deleted=1)


def test_rederive_without_edits_follows_the_model() -> None:
    probability = blobs_probability()
    labels, model = rederive(probability, 0.5, 10)
    again, model_again = rederive(probability, 0.3, 10, labels, model)
    assert np.array_equal(again, model_again)
    assert again is not model_again
    with pytest.raises(ValueError, match="model"):
        rederive(probability, 0.3, 10, labels)


def test_undone_edit_counts_as_no_edit() -> None:
    model = probability_to_labels(blobs_probability(), 0.5, 10)
    current = model.copy()
    current[object_at(current, (24, 96))] = 0
    current[60:64, 60:64] = 9
    assert edit_summary(current, model) == EditSummary(objects=4, edited=1, deleted=1)
    current[:] = model  # what napari's undo does: the data back as it was, with no paint event
    assert not changed_pixels(current, model).any()
    assert edit_summary(current, model) == EditSummary(objects=4, edited=0, deleted=0)


def test_edit_summary_counts_merged_and_trimmed_objects_as_edited() -> None:
    model = np.zeros((64, 64), np.int32)
    model[5:15, 5:15] = 1
    model[5:15, 20:30] = 2
    model[40:50, 40:50] = 3
    current = model.copy()
    current[model == 2] = 1  # merged into 1
    assert edit_summary(current, model) == EditSummary(objects=2, edited=1, deleted=0)
    current[45, 45] = 0  # 3 trimmed: none of its pixels differs, but it lost one
    assert edit_summary(current, model) == EditSummary(objects=2, edited=2, deleted=0)
    current[model == 3] = 0
    assert edit_summary(current, model) == EditSummary(objects=1, edited=1, deleted=1)


def test_rederive_keeps_a_trimmed_object() -> None:
    probability = blobs_probability()
    labels, model = rederive(probability, 0.5, 10)
    labels[:, :24][labels[:, :24] == labels[24, 24]] = 0  # the left half of an object erased
    trimmed = object_at(labels, (24, 30))
    labels, model = rederive(probability, 0.3, 10, labels, model)
    assert np.array_equal(object_at(labels, (24, 30)), trimmed)
    assert not labels[24, 10]


# ---- corrections -------------------------------------------------------------------------------


def two_squares() -> np.ndarray:
    labels = np.zeros((64, 64), np.int32)
    labels[4:20, 4:20] = 3
    labels[4:20, 30:40] = 7
    labels[40:43, 40:43] = 9  # small: 9 px
    return labels


def applied(labels: np.ndarray, change: Change | None) -> np.ndarray:
    assert change is not None
    out = labels.copy()
    apply_change(out, change)
    return out


def test_label_at() -> None:
    labels = two_squares()
    assert label_at(labels, 10, 10) == 3
    assert label_at(labels, 9.6, 30.2) == 7
    assert label_at(labels, 0, 0) == 0
    assert label_at(labels, -3, 10) == 0 and label_at(labels, 10, 64) == 0


def test_delete_and_merge() -> None:
    labels = two_squares()
    expected = labels.copy()
    expected[expected == 7] = 0
    assert np.array_equal(applied(labels, delete_object(labels, 7)), expected)
    assert delete_object(labels, 5) is None and delete_object(labels, 0) is None

    expected = labels.copy()
    expected[expected == 7] = 3
    change = merge_objects(labels, 3, 7)
    assert np.array_equal(applied(labels, change), expected)
    assert change.values.dtype == labels.dtype and len(change) == 16 * 10
    assert merge_objects(labels, 3, 3) is None and merge_objects(labels, 3, 5) is None
    with pytest.raises(ValueError, match="background"):
        merge_objects(labels, 3, 0)


def test_fill_holes_one_object_or_all() -> None:
    labels = two_squares()
    labels[8:12, 8:12] = 0  # a hole in 3
    labels[9, 9] = 9  # another object inside it stays
    labels[10:14, 33:36] = 0  # a hole in 7
    labels[4:20, 47] = 0  # not a hole: open to the image's background

    expected = labels.copy()
    expected[8:12, 8:12] = 3
    expected[9, 9] = 9
    assert np.array_equal(applied(labels, fill_holes(labels, 3)), expected)
    expected[10:14, 33:36] = 7
    assert np.array_equal(applied(labels, fill_holes(labels)), expected)
    assert fill_holes(expected) is None and fill_holes(labels, 9) is None


def test_fill_holes_nested_goes_to_the_inner_object() -> None:
    labels = np.zeros((40, 40), np.int32)
    labels[2:38, 2:38] = 1
    labels[6:34, 6:34] = 0
    labels[10:30, 10:30] = 2
    labels[18:22, 18:22] = 0
    filled = applied(labels, fill_holes(labels))
    assert (filled[6:34, 6:34][labels[6:34, 6:34] == 0] != 0).all()
    assert (filled[18:22, 18:22] == 2).all() and filled[7, 7] == 1


def test_remove_small_and_relabel() -> None:
    labels = two_squares()
    expected = labels.copy()
    expected[expected == 9] = 0
    assert np.array_equal(applied(labels, remove_small(labels, 10)), expected)
    assert remove_small(labels, 9) is None

    renumbered = applied(labels, relabel(labels))
    assert np.array_equal(np.unique(renumbered), [0, 1, 2, 3])
    assert np.array_equal(renumbered == 1, labels == 3)
    assert relabel(renumbered) is None
