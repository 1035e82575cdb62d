"""The Qt-free core of the review tools: edits, corrections, review queue and mask store."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from training.inference.postprocess import probability_to_labels
from training.review import integrity, layout
from training.review import location as review_location
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
from training.review.edits import (
    EditSummary,
    changed_pixels,
    edit_summary,
    match_ids,
    rederive,
)
from training.review.queue import ReviewQueue, doubt_score, review_candidates
from training.review.store import (
    MaskStore,
    MaskStoreError,
    set_aside,
    slide_identity,
    store_location,
)

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


def same_objects(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two label images hold the same objects, whatever their ids."""
    pairs = np.unique(np.stack([a.ravel(), b.ravel()]), axis=1)
    return len(np.unique(pairs[0])) == len(np.unique(pairs[1])) == pairs.shape[1]


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
        assert same_objects(model, probability_to_labels(probability, threshold, 10))
        # the edited object is kept pixel for pixel, under its id, which the model does not use
        assert np.array_equal(object_at(labels, (24, 24)), painted)
        assert labels[24, 24] == grown and grown not in model
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


def test_objects_that_persist_keep_their_ids_as_the_threshold_moves() -> None:
    """Lowering the threshold brings in a blob above the others in raster order: numbered
    afresh, every id would shift; matched by overlap, the three kept their ids."""
    probability = blobs_probability()
    probability[2:12, 60:70] = 0.6  # a faint object at the top, above every blob's centre
    labels, model = rederive(probability, 0.7, 10)
    before = {point: labels[point] for point, _ in BLOBS[:3]}
    labels, model = rederive(probability, 0.5, 10, labels, model)
    assert {point: labels[point] for point, _ in BLOBS[:3]} == before
    assert labels[5, 65] not in before.values() and labels[5, 65] > 0
    assert same_objects(model, probability_to_labels(probability, 0.5, 10))
    assert int(labels.max()) == len(np.unique(labels)) - 1  # the new one took the free id
    # an edited object keeps its id too, and no model object takes it
    labels[40:44, 40:44] = 9
    labels, model = rederive(probability, 0.3, 10, labels, model)
    assert (labels[40:44, 40:44] == 9).all() and 9 not in model
    assert {point: labels[point] for point, _ in BLOBS[:3]} == before


def test_match_ids_takes_the_largest_overlap_and_the_smallest_free_ids() -> None:
    old = np.zeros((8, 8), np.int32)
    old[0:4, 0:4], old[0:4, 4:8], old[6:8, 0:2] = 5, 7, -1  # two objects and an erasure
    new = np.zeros((8, 8), np.int32)
    new[0:4, 0:5] = 1  # mostly old 5, a column of old 7
    new[0:4, 5:8] = 2  # the rest of old 7
    new[6:8, 0:8] = 3  # over the erasure (background) only
    match_ids(new, old, reserved=np.array([1]))
    assert (new[0, 0], new[0, 7], new[7, 7]) == (5, 7, 2)  # 1 is reserved: 2 is the first free
    assert match_ids(np.zeros((3, 3), np.int32), old[:3, :3]).max() == 0


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


# ---- review queue ------------------------------------------------------------------------------


class SliceOnly:
    """A zarr-like probability map that refuses to be read whole."""

    def __init__(self, array: np.ndarray) -> None:
        self.array, self.shape, self.reads = array, array.shape, []

    def __getitem__(self, index: tuple[slice, slice]) -> np.ndarray:
        rows, cols = index
        assert (rows.stop - rows.start) * (cols.stop - cols.start) < self.array.size
        self.reads.append(index)
        return self.array[index]

    def __array__(self, *args: object, **kwargs: object) -> np.ndarray:
        raise AssertionError("read whole")


def queue_scene() -> tuple[np.ndarray, np.ndarray]:
    labels = np.zeros((64, 64), np.int32)
    probability = np.zeros((64, 64), np.float32)
    labels[2:22, 2:22], probability[2:22, 2:22] = 1, 0.97  # confident and large
    labels[2:22, 30:50], probability[2:22, 30:50] = 2, 0.52  # at the threshold
    labels[40:45, 40:45], probability[40:45, 40:45] = 3, 0.97  # confident but small
    labels[30:50, 2:22], probability[30:50, 2:22] = 4, 0.75  # halfway
    return labels, probability


def test_review_candidates_doubtful_first() -> None:
    labels, probability = queue_scene()
    source = SliceOnly(probability)
    candidates = review_candidates(labels, source, 0.5)
    assert [c.label for c in candidates] == [2, 4, 1, 3]
    assert len(source.reads) == 4
    at_threshold, halfway = candidates[0], candidates[1]
    assert at_threshold.doubt == pytest.approx(1 - 0.02 / 0.5)
    assert halfway.doubt == pytest.approx(0.5)
    assert at_threshold.bbox == (2, 30, 22, 50) and at_threshold.area_px == 400
    assert at_threshold.centroid == pytest.approx((11.5, 39.5))
    assert at_threshold.mean_probability == pytest.approx(0.52)

    # a minimum area of 20 px raises the doubt of the 25 px object (1.25 x the minimum)
    candidates = review_candidates(labels, probability, 0.5, min_area_px=20)
    assert [c.label for c in candidates] == [2, 3, 4, 1]
    assert candidates[1].doubt == pytest.approx(0.75)


def test_doubt_score_below_the_threshold_and_at_the_ends() -> None:
    assert doubt_score(0.3, 100, 0.6) == pytest.approx(0.5)
    assert doubt_score(0.0, 100, 0.6) == 0.0 and doubt_score(1.0, 100, 0.6) == 0.0
    assert doubt_score(0.9, 5, 0.5, min_area_px=10) == 1.0


def test_review_queue_navigation_and_decisions() -> None:
    labels, probability = queue_scene()
    queue = ReviewQueue(review_candidates(labels, probability, 0.5))
    assert len(queue) == 4 and queue.position == 0 and queue.current.label == 2
    assert queue.previous().label == 2  # clamped
    assert queue.next().label == 4 and queue.next().label == 1
    assert queue.next().label == 3 and queue.next().label == 3  # clamped

    queue.position = 1
    assert queue.reject().label == 4 and queue.current.label == 1
    assert queue.accept().label == 1 and queue.current.label == 3
    assert queue.accept().label == 3 and queue.current.label == 2  # wraps round to the skipped
    assert queue.decisions == {4: "rejected", 1: "accepted", 3: "accepted"}
    assert queue.undecided == 1
    assert queue.accept().label == 2 and queue.undecided == 0
    assert queue.current.label == 2  # nothing left undecided: stays
    assert labels[30, 10] == 4  # rejecting leaves the labels alone

    empty = ReviewQueue([])
    assert empty.current is None and empty.next() is None and empty.accept() is None


# ---- mask store --------------------------------------------------------------------------------


@pytest.fixture
def slide(tmp_path: Path) -> Path:
    path = tmp_path / "slides" / "kidney.tif"
    path.parent.mkdir()
    path.write_bytes(b"not really a slide")
    return path


def store_labels(shape: tuple[int, int] = (300, 520)) -> np.ndarray:
    labels = np.zeros(shape, np.int32)
    labels[10:40, 10:40] = 1
    labels[100:180, 300:420] = 2
    return labels


def small_store(location: Path, slide: Path, shape: tuple[int, int] = (300, 520)) -> MaskStore:
    return MaskStore.create(location, shape, 0.5, 4.0, slide_identity(slide))


def test_store_round_trip(tmp_path: Path, slide: Path) -> None:
    location = store_location(slide)
    assert location == slide.parent / "kidney.tif.ftu.zarr"
    store = small_store(location, slide)
    assert not store.has_model and store.shape == (300, 520)
    with pytest.raises(MaskStoreError, match="no labels yet"):
        store.read(0, 0, 10, 10)
    model = store_labels()
    store.set_model(model)
    store.settings["threshold"] = 0.4
    store.settings["min_area"] = 50.0
    assert not store.has_edits() and store.next_id == 3

    again = MaskStore.open(location, slide_identity(slide))
    assert again.pixel_size_um == 0.5 and again.downsample == 4.0
    assert dict(again.settings) == {"threshold": 0.4, "min_area": 50.0}
    assert np.array_equal(again.labels_array(), model)
    assert np.array_equal(again.read(100, 300, 20, 30, which="model"), model[100:120, 300:330])
    with pytest.raises(FileExistsError):
        small_store(location, slide)
    assert not [p for p in location.parent.iterdir() if p.name.endswith(".partial")]


def test_write_region_remaps_new_ids_and_updates_the_overview(tmp_path: Path) -> None:
    slide = tmp_path / "big.png"
    slide.write_bytes(b"x")
    shape = (1100, 2300)  # long side over 1024: two overview levels (1150, then 575)
    store = MaskStore.create(tmp_path / "big.ftu.zarr", shape, 1.0, 1.0, slide_identity(slide))
    model = store_labels(shape)
    store.set_model(model)
    levels = store.overview_levels()
    assert [tuple(level.shape) for level in levels] == [(1100, 2300), (550, 1150), (275, 575)]

    y, x = 97, 290
    old = store.read(y, x, 101, 103)
    new = old.copy()
    new[50:90, 5:40] = 1  # a new object painted with an id used elsewhere in the slide
    new[20, 20] = 0  # object 2 trimmed
    written = store.write_region(y, x, new, old)
    assert store.next_id == 4
    assert (written[50:90, 5:40] == 3).all() and written[20, 20] == 0
    expected = model.copy()
    expected[y : y + 101, x : x + 103] = written
    labels = MaskStore.open(store.location).labels_array()  # reopened: the edits are there
    assert np.array_equal(labels, expected)
    for step, level in zip((2, 4), levels[1:], strict=True):
        assert np.array_equal(np.asarray(level), expected[::step, ::step])
    assert store.has_edits()
    assert store.edit_summary() == EditSummary(objects=3, edited=2, deleted=0)
    with pytest.raises(MaskStoreError, match="changed"):
        store.write_region(y, x, new, old)


def test_store_refuses_another_slide_version_and_missing_arrays(slide: Path) -> None:
    location = store_location(slide)
    store = small_store(location, slide)
    store.set_model(store_labels())
    slide.write_bytes(b"another version of the slide")
    with pytest.raises(MaskStoreError, match="size"):
        MaskStore.open(location, slide_identity(slide))
    with pytest.raises(MaskStoreError, match="another working scale"):
        MaskStore.open_or_create(location, (300, 520), 1.0, 4.0, store.identity)

    shutil.rmtree(location / "labels")
    with pytest.raises(MaskStoreError, match="labels"):
        store.read(0, 0, 10, 10)  # opened before the deletion: never zeros
    with pytest.raises(MaskStoreError, match="labels"):
        MaskStore.open(location)


def chunked_store(location: Path, slide: Path, monkeypatch: pytest.MonkeyPatch) -> MaskStore:
    """A store of 300 x 1100 in chunks of 64 (5 x 18 chunks, most of them empty; an overview
    level of 3 x 9) with a model and an edit."""
    monkeypatch.setattr(layout, "CHUNK", 64)
    store = small_store(location, slide, (300, 1100))
    store.set_model(store_labels((300, 1100)))
    old = store.read(64, 320, 64, 64)
    store.write_region(64, 320, np.full_like(old, 5), old)  # an edit in chunk (1, 5)
    store.write_probability(64, 320, np.full((64, 64), 0.9))
    return store


def damage(chunk: Path, how: str) -> None:
    if how == "deleted":
        chunk.unlink()
    elif how == "garbage":
        chunk.write_bytes(os.urandom(chunk.stat().st_size))
    else:  # truncated
        chunk.write_bytes(chunk.read_bytes()[: chunk.stat().st_size // 2])


@pytest.mark.parametrize("how", ["deleted", "garbage", "truncated"])
@pytest.mark.parametrize("name", ["labels", "model", "probability", "overview/1"])
def test_a_damaged_chunk_is_a_named_error_never_background(
    tmp_path: Path, slide: Path, monkeypatch: pytest.MonkeyPatch, name: str, how: str
) -> None:
    location = store_location(slide)
    chunked_store(location, slide, monkeypatch)
    MaskStore.open(location, slide_identity(slide)).verify()  # empty chunks are on disk too
    chunk = (1, 5) if name != "overview/1" else (0, 2)  # the edited block
    damage(location / name / "c" / str(chunk[0]) / str(chunk[1]), how)
    expected = rf"damaged: chunk \({chunk[0]}, {chunk[1]}\) of '{name}' "
    expected += "is missing" if how == "deleted" else "cannot be read"
    with pytest.raises(MaskStoreError, match=expected):
        MaskStore.open(location, slide_identity(slide)).verify()
    if how == "deleted":  # found on opening, by the chunks' presence alone
        with pytest.raises(MaskStoreError, match=expected):
            MaskStore.open(location)
    elif name in ("labels", "model"):  # and every read through the store names it
        store = MaskStore.open(location)
        for read in (lambda: store.read(60, 300, 30, 40, which=name), store.has_edits):
            with pytest.raises(MaskStoreError, match=expected):
                read()


def test_a_damaged_store_is_set_aside_never_deleted(tmp_path: Path, slide: Path) -> None:
    location = store_location(slide)
    small_store(location, slide).set_model(store_labels())
    (location / "labels" / "c" / "0" / "0").unlink()
    aside = set_aside(location)
    assert aside == location.with_name(location.name + ".damaged-1")
    assert not location.exists() and (aside / "model" / "c" / "0" / "0").is_file()
    small_store(location, slide)  # a fresh store takes its place
    assert set_aside(location).name.endswith(".damaged-2")


def two_saves(location: Path, slide: Path) -> tuple[MaskStore, np.ndarray, np.ndarray]:
    """A store saved twice; the first save's labels and model."""
    store = small_store(location, slide)
    first_model = store_labels()
    first = first_model.copy()
    first[200:250, 20:90] = 7  # an object painted
    store.set_model(first_model, first)
    second = store_labels()
    second[10:40, 10:40] = 0  # an object erased
    store.set_model(second, second)
    return store, first, first_model


@pytest.mark.parametrize("how", ["deleted", "garbage", "metadata"])
def test_a_damaged_latest_save_offers_the_save_before_it(
    tmp_path: Path, slide: Path, how: str
) -> None:
    location = store_location(slide)
    store, first, first_model = two_saves(location, slide)
    assert store.previous_complete
    labels = location / layout.array_path("labels", store.generation)
    if how == "metadata":
        (labels / "zarr.json").write_text("{not json")
    else:
        damage(labels / "c" / "0" / "0", how)
    with pytest.raises(MaskStoreError, match=r"damaged: .*'generation1/labels'"):
        MaskStore.open(location, slide_identity(slide)).verify()

    assert MaskStore.previous_save(location, {**slide_identity(slide), "size": 1}) is None
    previous = MaskStore.previous_save(location, slide_identity(slide))
    assert previous is not None
    previous.restore_previous()
    restored = MaskStore.open(location, slide_identity(slide))
    restored.verify()
    assert np.array_equal(restored.labels_array(), first)
    assert np.array_equal(restored.model_array(), first_model)
    assert not restored.previous_complete  # the damaged generation is never offered back
    assert MaskStore.previous_save(location, slide_identity(slide)) is None

    restored.set_model(first_model, first * 2)  # the next save writes over the damaged one
    again = MaskStore.open(location, slide_identity(slide))
    again.verify()
    assert np.array_equal(again.labels_array(), first * 2) and again.previous_complete


def test_no_earlier_save_is_offered_without_a_complete_one(
    tmp_path: Path, slide: Path
) -> None:
    location = store_location(slide)
    store = small_store(location, slide)
    store.set_model(store_labels())  # one save: the other generation never written
    assert not store.previous_complete
    assert MaskStore.previous_save(location, slide_identity(slide)) is None

    store.set_model(store_labels())
    damage(location / "probability" / "c" / "0" / "0", "garbage")  # kept once, not twice
    assert MaskStore.previous_save(location, slide_identity(slide)) is None


def test_slide_identity_survives_a_moved_folder_and_catches_a_same_size_rewrite(
    tmp_path: Path, slide: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    location = store_location(slide)
    small_store(location, slide).set_model(store_labels())
    moved = tmp_path / "moved"
    slide.parent.rename(moved)  # the folder moved (or copied elsewhere) with its store
    slide = moved / slide.name
    assert MaskStore.open(store_location(slide), slide_identity(slide)).has_model

    stat = slide.stat()
    slide.write_bytes(b"not really a slidE")  # same size; the same mtime given back below
    os.utime(slide, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    with pytest.raises(MaskStoreError, match="another version of the slide: content_sha256"):
        MaskStore.open(store_location(slide), slide_identity(slide))

    # a large file is hashed by sampled blocks: a rewrite inside one of them is caught
    monkeypatch.setattr(integrity, "WHOLE_LIMIT", 1000)
    monkeypatch.setattr(integrity, "SAMPLE_BYTES", 100)
    big = tmp_path / "big.tif"
    big.write_bytes(bytes(range(256)) * 100)
    before = slide_identity(big)
    data = bytearray(big.read_bytes())
    data[-1] ^= 1
    big.write_bytes(bytes(data))
    assert slide_identity(big)["content_sha256"] != before["content_sha256"]
    assert slide_identity(big)["size"] == before["size"]


def test_a_version_1_store_is_still_read_by_its_old_identity(
    tmp_path: Path, slide: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # made before every chunk was written and before content hashes: empty chunks are absent
    location = store_location(slide)
    store = small_store(location, slide)
    store.set_model(store_labels())
    legacy = {key: slide_identity(slide)[key] for key in ("path", "size", "mtime_ns")}
    store._update_attrs(version=1, slide_identity=legacy)
    (location / "probability" / "c" / "0" / "0").unlink()
    again = MaskStore.open(location, slide_identity(slide))
    assert "version-1 mask store" in caplog.text
    assert np.array_equal(again.labels_array(), store_labels())
    moved = tmp_path / "moved"
    slide.parent.rename(moved)
    with pytest.raises(MaskStoreError, match="another version of the slide: path"):
        MaskStore.open(store_location(moved / slide.name), slide_identity(moved / slide.name))


def test_store_location_falls_back_to_the_cache(
    tmp_path: Path, slide: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NAPARI_FTU_CACHE", str(tmp_path / "cache"))
    digest = hashlib.sha1(str(slide.resolve()).encode()).hexdigest()
    cached = tmp_path / "cache" / "napari-ftu" / "masks" / f"{digest}.ftu.zarr"
    if os.geteuid() == 0:
        pytest.skip("running as root: a read-only folder is still writable")
    slide.parent.chmod(0o555)
    try:
        assert store_location(slide) == cached
        store = MaskStore.open_or_create(cached, (64, 64), None, 1.0, slide_identity(slide))
        assert store.pixel_size_um is None
        slide.parent.chmod(0o755)
        assert store_location(slide) == cached  # the edits saved there are still found
    finally:
        slide.parent.chmod(0o755)


def test_store_location_cache_when_not_writable(
    tmp_path: Path, slide: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the same fallback, for runs as root, where chmod cannot make a folder read-only
    monkeypatch.setenv("NAPARI_FTU_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(review_location, "_writable", lambda folder: False)
    location = store_location(slide)
    assert location.parent == tmp_path / "cache" / "napari-ftu" / "masks"
    assert location.name == hashlib.sha1(str(slide.resolve()).encode()).hexdigest() + ".ftu.zarr"


def test_the_review_core_imports_without_qt_napari_or_torch() -> None:
    code = (
        "import sys, training.review; "
        "loaded = {'torch', 'napari', 'qtpy'} & set(sys.modules); assert not loaded, loaded"
    )
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_the_review_session_and_tissue_area_import_without_torch() -> None:
    # the widgets need them after a viewer exists, where importing torch late is unsafe
    code = (
        "import sys, training.review.session, training.inference.tissue; "
        "from training.inference import probability_to_labels; "
        "loaded = {'torch', 'napari', 'qtpy'} & set(sys.modules); assert not loaded, loaded"
    )
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
