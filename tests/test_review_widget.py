"""The "Review FTUs" widget: queue, correction helpers (undoable), region review on a mask above
the direct-edit limit, and edits that survive reopening the slide."""

from __future__ import annotations

import numpy as np
import pytest

from napari_ftu._ftu_layers import show_session
from napari_ftu._geometry import camera_of
from napari_ftu._review_widget import SHORTCUTS, ReviewWidget
from napari_ftu._segment_widget import SESSION_KEY, SegmentWidget, mask_name
from training.review import session as _session
from training.review.session import FTUSession, Grid
from training.review.store import MaskStore, store_location
from training.slides import write_pyramid
from training.synthetic import make_phantom

pytestmark = pytest.mark.gui
RUN_TIMEOUT_MS = 180_000


def disc(shape, centre, radius):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2


@pytest.fixture
def reviewed(make_napari_viewer):
    """An image with a hand-made probability: three discs of mean probability 0.95, 0.55 and
    0.75 (threshold 0.5), and a ring (an object with a hole)."""
    viewer = make_napari_viewer()
    image = viewer.add_image(np.full((200, 200, 3), 200, np.uint8), name="img", rgb=True)
    probability = np.zeros((200, 200), np.float32)
    for centre, value in (((40, 40), 0.95), ((40, 150), 0.55), ((150, 40), 0.75)):
        probability[disc(probability.shape, centre, 12)] = value
    ring = disc(probability.shape, (150, 150), 20) & ~disc(probability.shape, (150, 150), 6)
    probability[ring] = 0.9
    session = FTUSession("img", "kidney", Grid((200, 200), 1.0, 1.0), threshold=0.5)
    session.add_result(probability, (0, 0))
    show_session(viewer, image, session)
    review = ReviewWidget(viewer)
    return viewer, review, viewer.layers[mask_name("img")]


def test_queue_visits_the_most_doubtful_first_and_rejects_undoably(reviewed):
    viewer, review, mask = reviewed
    review.build_queue()
    first = review.queue.current
    assert first.mean_probability == pytest.approx(0.55)
    np.testing.assert_allclose(camera_of(viewer).center[-2:], (40, 150), atol=1)
    assert mask.selected_label == first.label
    review.next()
    assert review.queue.current.mean_probability == pytest.approx(0.75)
    np.testing.assert_allclose(camera_of(viewer).center[-2:], (150, 40), atol=1)
    review.previous()
    review.reject()  # the 0.55 disc goes, in one undo step
    assert not (mask.data == first.label).any()
    assert review.queue.decisions == {first.label: "rejected"}
    review.accept()
    assert len(review.queue.decisions) == 2 and "2 left" in review.position.value
    mask.undo()
    assert (mask.data == first.label).sum() > 400


def test_correction_helpers_act_under_the_cursor_and_undo(reviewed):
    viewer, review, mask = reviewed
    keys = {str(key) for key in mask.keymap}
    assert all(any(k.replace("-", "+") in key or k in key for key in keys) for k, _, _ in SHORTCUTS)
    before = np.array(mask.data)
    a, b = int(mask.data[40, 40]), int(mask.data[150, 40])
    viewer.cursor.position = (40.0, 40.0)
    review.delete_under_cursor()
    assert not (mask.data == a).any()
    mask.undo()
    np.testing.assert_array_equal(mask.data, before)
    mask.selected_label = a
    viewer.cursor.position = (150.0, 40.0)
    review.merge_under_cursor()
    assert not (mask.data == b).any() and (mask.data[150, 40] == a)
    mask.undo()
    ring = int(mask.data[150, 165])
    mask.data_setitem(tuple(np.nonzero(disc((200, 200), (150, 150), 6))), 0)  # re-open the hole
    review.fill_holes()
    assert mask.data[150, 150] == ring
    review.min_area.value = 500.0  # um² = px here: the discs (~450 px) go, the ring stays
    review.remove_small()
    assert set(np.unique(mask.data)) == {0, ring}
    review.relabel()
    assert set(np.unique(mask.data)) == {0, 1}
    for _ in range(3):
        mask.undo()
    assert set(np.unique(mask.data)) == set(np.unique(before))


@pytest.fixture
def slide(tmp_path):
    image, _, _ = make_phantom("kidney", size=1024, seed=3)
    path = tmp_path / "kidney.tiff"
    write_pyramid(path, image, 0.4, tile=256)
    return path


def level0(layer):
    return layer.data[0] if layer.multiscale else layer.data


def open_and_segment(viewer, qtbot, path):
    (layer,) = viewer.open(str(path), plugin="napari-ftu")
    segment = SegmentWidget(viewer)
    segment.organ.value = "kidney"
    segment.start()
    qtbot.waitUntil(lambda: not segment.running, timeout=RUN_TIMEOUT_MS)
    return layer, segment, viewer.layers[mask_name(layer.name)]


def test_region_review_above_the_direct_edit_limit_reaches_the_store_and_reopens(
    make_napari_viewer, qtbot, slide, monkeypatch
):
    monkeypatch.setattr(_session, "EDIT_LIMIT_PIXELS", 200 * 200)  # the 410 x 410 mask is large
    viewer = make_napari_viewer()
    _, _, mask = open_and_segment(viewer, qtbot, slide)
    assert not mask.editable  # a read-only overview (one level: the mask is small in fact)
    session = mask.metadata[SESSION_KEY]
    assert not session.grid.direct_edit
    review = ReviewWidget(viewer)
    viewer.add_shapes([[[100, 100], [100, 180], [180, 180], [180, 100]]], shape_type="rectangle")
    review.region.value = "drawn rectangle"
    review.review_region()
    region = review.editor.layer
    assert region.editable and not region.multiscale
    box = review.editor.box
    y, x, h, w = box
    assert (y, x) == (100, 100) and h >= 80 and w >= 80
    region.data_setitem((np.arange(10, 20).repeat(10), np.tile(np.arange(10, 20), 10)), 9999)
    review.apply_region()
    assert region in viewer.layers and not review.editor.dirty  # open for more edits
    store = MaskStore.open(store_location(slide))
    stored = store.read(110, 110, 10, 10)
    assert (stored == stored[0, 0]).all() and stored[0, 0] > 0  # a fresh slide-wide id
    painted = int(stored[0, 0])
    assert tuple(box) in session.reviewed_regions
    assert np.asarray(level0(mask)[110:120, 110:120]).tolist() == stored.tolist()

    region.data_setitem((np.array([50]), np.array([50])), 1)  # unapplied: no moving on
    viewer.layers["Shapes"].data = [np.array([[0, 0], [0, 50], [50, 50], [50, 0]])]
    review.review_region()
    assert review.editor.box[:2] == (y, x) and "apply" in review.message.value
    review.apply_region()
    review.review_region()  # the same layer moves to the next region
    assert review.editor.layer is region and review.editor.box[:2] == (0, 0)
    review.close_region()
    assert region not in viewer.layers
    review.build_queue()  # the queue works on a large mask too, through its store
    if review.queue.current.label == painted:  # a speck under the model's minimum area: doubted
        review.next()
    rejected = review.queue.current.label
    assert rejected != painted
    review.reject()
    assert rejected not in MaskStore.open(store_location(slide)).labels_array()

    reopened = make_napari_viewer()
    (again,) = reopened.open(str(slide), plugin="napari-ftu")
    SegmentWidget(reopened)
    restored = reopened.layers[mask_name(again.name)]
    np.testing.assert_array_equal(np.asarray(level0(restored)[110:120, 110:120]), stored)
    assert painted != rejected
    assert tuple(box) in restored.metadata[SESSION_KEY].reviewed_regions  # saved with the store


def test_direct_edits_are_saved_as_made_and_come_back(make_napari_viewer, qtbot, slide):
    viewer = make_napari_viewer()
    _, _, mask = open_and_segment(viewer, qtbot, slide)
    erased = int(mask.data.max())
    gone = mask.data == erased
    mask.data_setitem(tuple(np.nonzero(gone)), 0)  # a pathologist erases one
    mask.data_setitem((np.arange(5, 9).repeat(4), np.tile(np.arange(5, 9), 4)), erased + 1)

    def saved() -> bool:  # the autosave (every 2 s) has written the painted square
        store = MaskStore.open(store_location(slide))
        return store.has_model and bool((store.read(5, 5, 4, 4) == erased + 1).all())

    qtbot.waitUntil(saved, timeout=10_000)

    reopened = make_napari_viewer()
    (again,) = reopened.open(str(slide), plugin="napari-ftu")
    widget = SegmentWidget(reopened)
    restored = reopened.layers[mask_name(again.name)]
    np.testing.assert_array_equal(restored.data, mask.data)
    assert "erased: 1" in widget.status.value
    for threshold in (0.95, 0.05, 0.5):  # the erasure holds wherever the threshold goes
        widget.threshold.value = threshold
        assert (restored.data[gone] == 0).all(), threshold
        assert (restored.data[5:9, 5:9] > 0).all(), threshold


def test_undoing_a_rejection_makes_the_object_undecided_again(reviewed):
    _, review, mask = reviewed
    review.build_queue()
    first = review.queue.current
    review.reject()
    assert review.queue.decisions == {first.label: "rejected"}
    review.previous()
    assert "rejected" in review.position.value
    mask.undo()  # Ctrl+Z
    assert (mask.data == first.label).any() and review.queue.decisions == {}
    assert "undecided" in review.position.value and "rejected" not in review.position.value
    assert f"{len(review.queue)} left" in review.position.value


def test_remove_small_starts_at_the_masks_minimum_area(make_napari_viewer):
    viewer = make_napari_viewer()
    probability = np.zeros((200, 200), np.float32)
    probability[disc(probability.shape, (50, 50), 20)] = 0.9  # about 1250 um²
    probability[disc(probability.shape, (150, 150), 5)] = 0.9  # about 80 um²
    masks = {}
    for name, min_area in (("imported", 0.0), ("segmented", 500.0)):
        image = viewer.add_image(np.full((200, 200, 3), 200, np.uint8), name=name, rgb=True)
        session = FTUSession(name, "kidney", Grid((200, 200), 1.0, 1.0), 0.5, min_area_um2=0.0)
        session.add_result(probability, (0, 0))
        session.min_area_um2 = min_area  # the objects are kept, as after a later edit
        masks[name] = show_session(viewer, image, session)
    review = ReviewWidget(viewer)
    review.mask.value = mask_name("imported")  # derived without one: the default model's
    assert review.min_area.value == 4000.0
    review.mask.value = mask_name("segmented")
    assert review.min_area.value == 500.0
    review.remove_small()
    mask = masks["segmented"]
    assert len(np.unique(mask.data)) == 2 and mask.data[50, 50] > 0
