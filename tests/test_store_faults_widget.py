"""The "Segment FTUs" widget when the slide's mask store fails: a background save that fails is
shown (notification and status line), a damaged store is never read as background but named and
moved aside, and the next run starts a fresh store."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from napari_ftu import _ftu_layers, _segment_widget
from napari_ftu._ftu_layers import mask_name, new_session, show_session
from napari_ftu._segment_widget import SegmentWidget
from training.review import layout
from training.review.session import FTUSession, Grid
from training.review.store import MaskStore, MaskStoreError, slide_identity, store_location
from training.slides import write_pyramid
from training.synthetic import make_phantom

pytestmark = pytest.mark.gui
SIZE = 256


@pytest.fixture
def slide(tmp_path):
    image, _, _ = make_phantom("kidney", size=SIZE, seed=3)
    return write_pyramid(tmp_path / "kidney.tiff", image, 0.4, tile=128)


@pytest.fixture
def errors(monkeypatch) -> list[str]:
    shown: list[str] = []
    monkeypatch.setattr(_segment_widget, "_show_error", shown.append)
    return shown


def probability() -> np.ndarray:
    _, truth, _ = make_phantom("kidney", size=SIZE, seed=3)
    return truth.astype(np.float32) * 0.9


def test_a_failed_autosave_is_shown_until_a_save_succeeds(
    make_napari_viewer, qtbot, slide, errors
):
    viewer = make_napari_viewer()
    (image,) = viewer.open(str(slide), plugin="napari-ftu")
    location = store_location(slide)
    store = MaskStore.create(location, (SIZE, SIZE), 0.4, 1.0, slide_identity(slide))
    session = FTUSession(image.name, "kidney", Grid((SIZE, SIZE), 0.4, 1.0), 0.5, store=store)
    session.add_result(probability(), (0, 0))
    mask = show_session(viewer, image, session)
    widget = SegmentWidget(viewer)
    shutil.rmtree(location)  # the store deleted (a full disk fails the same way)
    mask.data_setitem((np.arange(5, 9).repeat(4), np.tile(np.arange(5, 9), 4)), 99)

    qtbot.waitUntil(lambda: widget.status.value.startswith("NOT SAVED"), timeout=15_000)
    assert "was not saved to" in widget.status.value and "is missing" in widget.status.value
    assert len(errors) == 1 and str(location) in errors[0]
    failures = []
    save = session.save

    def counted_save() -> bool:
        try:
            return save()
        except MaskStoreError:
            failures.append(True)
            raise

    session.save = counted_save
    qtbot.waitUntil(lambda: len(failures) >= 2, timeout=15_000)  # written again, failed again
    assert len(errors) == 1  # the same failure: on the status line, not a new pop-up each time
    assert widget.status.value.startswith("NOT SAVED")

    MaskStore.create(location, (SIZE, SIZE), 0.4, 1.0, slide_identity(slide))  # room again
    qtbot.waitUntil(lambda: widget.status.value.startswith("FTUs:"), timeout=15_000)
    assert session.save_error is None
    assert MaskStore.open(location).read(5, 5, 4, 4).tolist() == [[99] * 4] * 4

def test_a_damaged_store_is_named_moved_aside_and_never_read_as_background(
    make_napari_viewer, slide, errors
):
    location = store_location(slide)
    store = MaskStore.create(location, (SIZE, SIZE), 0.4, 1.0, slide_identity(slide))
    labels = np.zeros((SIZE, SIZE), np.int32)
    labels[20:60, 20:60] = 1
    store.set_model(labels)
    (location / "labels" / "c" / "0" / "0").unlink()  # the chunk holding every object

    viewer = make_napari_viewer()
    (image,) = viewer.open(str(slide), plugin="napari-ftu")
    SegmentWidget(viewer)  # restores the saved mask of every open slide
    assert mask_name(image.name) not in viewer.layers  # no mask of zeros shown, nothing saved
    (error,) = errors
    assert "chunk (0, 0) of 'labels' is missing" in error
    aside = location.with_name(location.name + ".damaged-1")
    assert f"moved to {aside}" in error and not location.exists()
    assert (aside / "model" / "c" / "0" / "0").is_file()  # set aside whole, nothing deleted

    class Result:  # what a run hands new_session: a fresh store takes the damaged one's place
        organ, threshold, min_area_um2 = "kidney", 0.5, 0.0

    session = new_session(image, Result(), Grid((SIZE, SIZE), 0.4, 1.0))
    assert session.store.location == location and not session.store.has_model


class Questions(list):
    """The questions asked (instead of the Qt question box), each answered ``answer``."""

    answer = True

    def __call__(self, question: str) -> bool:
        self.append(question)
        return self.answer


@pytest.fixture
def asked(monkeypatch) -> Questions:
    questions = Questions()
    monkeypatch.setattr(_ftu_layers, "_ask", questions, raising=False)
    return questions


def saved_twice(slide) -> tuple[np.ndarray, np.ndarray]:
    """The slide's store saved twice, the latest save's labels damaged (chunk (0, 0)); the
    first save's labels and the second's."""
    store = MaskStore.create(store_location(slide), (SIZE, SIZE), 0.4, 1.0, slide_identity(slide))
    first = np.zeros((SIZE, SIZE), np.int32)
    first[20:60, 20:60] = 1
    store.set_model(first)
    second = first.copy()
    second[100:140, 100:140] = 2  # an object painted since
    store.set_model(first, second)
    chunk = store.location / layout.array_path("labels", store.generation) / "c" / "0" / "0"
    chunk.write_bytes(b"not a chunk")
    return first, second


def test_a_damaged_latest_save_is_restored_to_the_save_before_it_when_the_user_agrees(
    make_napari_viewer, monkeypatch, slide, errors, asked
):
    warnings: list[str] = []
    monkeypatch.setattr(_ftu_layers, "_warn", warnings.append, raising=False)
    first, _ = saved_twice(slide)
    location = store_location(slide)
    copy = location.with_name(location.name + ".damaged-1")

    viewer = make_napari_viewer()
    (image,) = viewer.open(str(slide), plugin="napari-ftu")
    SegmentWidget(viewer)  # restores the saved mask of every open slide
    (question,) = asked
    assert "The mask store of kidney.tiff is damaged (generation1/labels chunk (0, 0))" in question
    assert f"copied to {copy}" in question
    assert errors == []
    shown = viewer.layers[mask_name(image.name)].data
    assert np.array_equal(np.asarray(shown[0] if isinstance(shown, list) else shown), first)
    (warning,) = warnings
    assert "the save before the latest one was restored" in warning and str(copy) in warning
    assert copy.is_dir() and location.is_dir()  # the damaged store kept, a copy
    with pytest.raises(MaskStoreError, match="chunk"):
        MaskStore.open(copy).verify()


def test_a_damaged_latest_save_is_set_aside_when_the_user_declines(
    make_napari_viewer, slide, errors, asked
):
    asked.answer = False
    saved_twice(slide)
    location = store_location(slide)
    viewer = make_napari_viewer()
    (image,) = viewer.open(str(slide), plugin="napari-ftu")
    SegmentWidget(viewer)
    assert len(asked) == 1 and mask_name(image.name) not in viewer.layers
    (error,) = errors
    aside = location.with_name(location.name + ".damaged-1")
    assert "chunk (0, 0) of 'generation1/labels' cannot be read" in error
    assert f"moved to {aside}" in error and not location.exists()
    assert not location.with_name(location.name + ".damaged-2").exists()  # no second copy
