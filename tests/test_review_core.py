"""The Qt-free core of the review tools: edits, corrections, review queue and mask store."""

from __future__ import annotations

import numpy as np
import pytest

from training.inference.postprocess import probability_to_labels
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
