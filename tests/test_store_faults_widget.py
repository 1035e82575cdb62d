"""The "Segment FTUs" widget when the slide's mask store fails: a background save that fails is
shown (notification and status line), a damaged store is never read as background but named and
moved aside, and the next run starts a fresh store."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from napari_ftu import _segment_widget
from napari_ftu._ftu_layers import mask_name, new_session, show_session
from napari_ftu._segment_widget import SegmentWidget
from napari_ftu._session import FTUSession, Grid
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
