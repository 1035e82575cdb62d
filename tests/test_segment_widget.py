"""The "Segment FTUs" widget in a real viewer: runs, fill-in, cancel, errors, sliders, regions."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from napari_ftu import _segment_widget
from napari_ftu._geometry import camera_of
from napari_ftu._segment_widget import SegmentWidget, mask_name, probability_name
from training.slides import write_pyramid
from training.synthetic import make_phantom

pytestmark = pytest.mark.gui
RUN_TIMEOUT_MS = 180_000


@pytest.fixture(scope="module")
def kidney_phantom():
    image, mask, _ = make_phantom("kidney", size=1024, seed=3)
    return image, mask


@pytest.fixture(scope="module")
def wide_kidney_image():
    """Three rows of the default kidney specialist's 512 px tiles at 1 um/px (the phantom above
    fits in one tile), so a run shows bands before it ends and can be cancelled between them."""
    return make_phantom("kidney", size=3200, seed=3)[0]


@pytest.fixture
def kidney_slide(kidney_phantom, tmp_path):
    """A kidney phantom as a pyramidal TIFF at 0.4 um/px (the default model works at 1 um/px),
    in a folder of its own (its mask store is written beside it)."""
    path = tmp_path / "kidney.tiff"
    write_pyramid(path, kidney_phantom[0], 0.4, tile=256)
    return path, kidney_phantom[1]


def open_in_viewer(make_napari_viewer, path, organ="kidney"):
    """The slide in a viewer with the widget docked; ``organ`` picked (nothing beside these
    slides says which organ they are)."""
    viewer = make_napari_viewer()
    (layer,) = viewer.open(str(path), plugin="napari-ftu")
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Segment FTUs")
    widget.organ.value = organ
    return viewer, widget, layer


@pytest.fixture
def errors(monkeypatch):
    shown: list[str] = []
    monkeypatch.setattr(_segment_widget, "_show_error", shown.append)
    return shown


@pytest.fixture
def opened(make_napari_viewer, kidney_slide):
    return open_in_viewer(make_napari_viewer, kidney_slide[0])


@pytest.fixture
def opened_wide(make_napari_viewer, wide_kidney_image, tmp_path):
    path = write_pyramid(tmp_path / "wide.tiff", wide_kidney_image, 0.4, tile=256)
    return open_in_viewer(make_napari_viewer, path)


def wait_for_run(qtbot, widget):
    qtbot.waitUntil(lambda: not widget.running, timeout=RUN_TIMEOUT_MS)


def test_prefills_from_the_slide_and_fills_in_before_the_run_ends(qtbot, opened_wide, errors):
    viewer, widget, layer = opened_wide
    assert widget.image.value == layer.name and widget.pixel_size.value == "0.4"
    widget.organ.value = "kidney"
    seen = []

    def during_run(event):  # runs after the widget's own slot for the same event
        preview = widget._preview.layer
        if event.done < event.total and preview is not None and preview.data.max() > 0:
            seen.append(event.done)

    widget.start()
    widget.worker.yielded.connect(during_run)
    wait_for_run(qtbot, widget)
    assert not errors
    assert seen, "the probability layer never changed before the run ended"
    assert f"{probability_name(layer.name)} (running)" not in viewer.layers
    probability = viewer.layers[probability_name(layer.name)]
    mask = viewer.layers[mask_name(layer.name)]
    # working scale 1 um/px over a 0.4 um/px slide: 2.5 level-0 px per map pixel
    np.testing.assert_allclose(mask.scale, (1.0, 1.0))
    np.testing.assert_allclose(mask.translate, (0.4 * 0.75, 0.4 * 0.75))
    np.testing.assert_allclose(probability.scale, mask.scale)
    assert mask.data.shape == (1280, 1280) and mask.data.max() >= 1
    session = mask.metadata[_segment_widget.SESSION_KEY]
    assert widget.status.value.startswith(f"FTUs: {session.counts().objects} ")


def test_second_click_while_running_starts_nothing(qtbot, opened):
    _, widget, _ = opened
    widget.start()
    worker = widget.worker
    widget.start()
    assert widget.worker is worker
    wait_for_run(qtbot, widget)


def test_cancel_leaves_no_partial_layers_and_a_usable_viewer(
    qtbot, opened_wide, errors, monkeypatch
):
    import training.inference

    viewer, widget, layer = opened_wide
    names_before = [existing.name for existing in viewer.layers]
    real_segment, gate, seen = training.inference.segment, threading.Event(), []

    def held_after_first_band(*args, **kwargs):
        """The engine, held after its first band until the test has cancelled: mid-run for
        sure, however fast or loaded the machine."""
        inner = real_segment(*args, **kwargs)
        try:
            event = next(inner)
            while True:
                yield event
                if event.band is not None:
                    gate.wait(60)
                event = next(inner)
        except StopIteration as stop:
            return stop.value
        finally:
            inner.close()

    def cancel_on_first_band(event):
        if event.band is not None and not gate.is_set():
            seen.append(f"{probability_name(layer.name)} (running)" in viewer.layers)
            widget.cancel()
            gate.set()

    monkeypatch.setattr(training.inference, "segment", held_after_first_band)
    widget.start()
    widget.worker.yielded.connect(cancel_on_first_band)
    wait_for_run(qtbot, widget)
    assert seen == [True]  # a partial probability layer was up when Cancel was clicked
    assert [existing.name for existing in viewer.layers] == names_before
    assert widget.status.value == "cancelled" and not errors
    assert widget.run_button.enabled and not widget.cancel_button.enabled
    monkeypatch.setattr(training.inference, "segment", real_segment)
    widget.start()  # the viewer and widget still work
    wait_for_run(qtbot, widget)
    assert mask_name(layer.name) in viewer.layers


def test_threshold_keeps_edited_objects_and_undo_counts(qtbot, opened):
    viewer, widget, layer = opened
    widget.start()
    wait_for_run(qtbot, widget)
    mask = viewer.layers[mask_name(layer.name)]
    session = mask.metadata[_segment_widget.SESSION_KEY]
    free = np.argwhere(session.probability < 0.05)
    y, x = free[len(free) // 2]
    ys, xs = np.mgrid[y - 3 : y + 4, x - 3 : x + 4]
    new_id = int(mask.data.max()) + 1
    mask.data_setitem((ys.ravel(), xs.ravel()), new_id)  # a pathologist paints an FTU
    for threshold in (0.9, 0.2, 0.5):
        widget.threshold.value = threshold
        assert (mask.data[ys, xs] > 0).all(), threshold
        assert (mask.data[ys, xs] == mask.data[y, x]).all()
    assert "edited: 1" in widget.status.value
    mask.undo()  # no paint event: the comparison with the model still sees it
    qtbot.waitUntil(lambda: "edited: 0" in widget.status.value, timeout=10_000)
    assert (mask.data[ys, xs] == 0).all()


def test_a_run_shows_the_models_threshold_and_min_area(qtbot, opened, errors, tmp_path):
    import yaml

    from training.inference import probability_to_labels
    from training.models.default import DEFAULT_DIR

    viewer, widget, layer = opened
    manifest = yaml.safe_load((DEFAULT_DIR / "ensemble.yaml").read_text())
    for entry in manifest["members"]:
        entry["checkpoint"] = str(DEFAULT_DIR / entry["checkpoint"])
    manifest.update(thresholds={"kidney": 0.4}, min_area_um2={"kidney": 300.0})
    calibrated = tmp_path / "calibrated.yaml"
    calibrated.write_text(yaml.safe_dump(manifest))
    widget.add_model(calibrated)
    widget.organ.value = "kidney"
    widget.min_area.value = 5000.0  # before a run: the run's objects are still the model's
    widget.start()
    wait_for_run(qtbot, widget)
    assert not errors
    assert widget.threshold.value == pytest.approx(0.4) and widget.min_area.value == 300.0
    mask = viewer.layers[mask_name(layer.name)]
    session = mask.metadata[_segment_widget.SESSION_KEY]
    assert (session.threshold, session.min_area_um2) == (0.4, 300.0)
    expected = probability_to_labels(session.probability, 0.4, 300.0)  # 1 um/px: px = um²
    np.testing.assert_array_equal(mask.data > 0, expected > 0)
    widget.min_area.value = 0.0  # the spin box still re-derives
    assert int(mask.data.max()) >= int(expected.max())
    assert session.min_area_um2 == 0.0


def test_field_of_view_segments_only_what_is_on_screen(qtbot, opened, errors):
    viewer, widget, layer = opened
    camera_of(viewer).center = (100.0, 100.0)
    camera_of(viewer).zoom = float(min(viewer.canvas.size)) / 80.0  # about 80 um across
    widget.region.value = "field of view"
    widget.start()
    wait_for_run(qtbot, widget)
    assert not errors
    session = viewer.layers[mask_name(layer.name)].metadata[_segment_widget.SESSION_KEY]
    rows, cols = np.nonzero(session.probability)
    assert rows.min() >= 40 and rows.max() <= 160 and cols.min() >= 40 and cols.max() <= 160


def test_drawn_rectangle_region(qtbot, opened, errors):
    viewer, widget, layer = opened
    viewer.add_shapes([[[200, 40], [200, 120], [300, 120], [300, 40]]], shape_type="rectangle")
    widget.region.value = "drawn rectangle"
    widget.start()
    wait_for_run(qtbot, widget)
    assert not errors
    session = viewer.layers[mask_name(layer.name)].metadata[_segment_widget.SESSION_KEY]
    rows, cols = np.nonzero(session.probability)
    assert rows.min() >= 199 and rows.max() <= 301 and cols.min() >= 39 and cols.max() <= 121


def test_bad_inputs_show_notifications_and_leave_no_layers(
    qtbot, make_napari_viewer, tmp_path, errors
):
    viewer = make_napari_viewer()
    widget = SegmentWidget(viewer)
    widget.start()
    assert "open an image first" in errors[-1]
    viewer.add_image(np.full((200, 200, 3), 200, np.uint8), name="no size", rgb=True)
    widget.start()
    assert "pixel size" in errors[-1] and "unknown" in errors[-1]
    widget.pixel_size.value = "0.5"
    widget.start()
    assert "choose the organ of 'no size'" in errors[-1]
    widget.organ.value = "kidney"
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    widget.add_model(broken)
    widget.start()
    wait_for_run(qtbot, widget)
    assert "broken.pt" in errors[-1]
    assert [layer.name for layer in viewer.layers] == ["no size"]
    assert widget.run_button.enabled


def test_a_mask_with_work_on_another_grid_is_never_replaced(qtbot, opened, errors):
    from napari_ftu._ftu_layers import import_grid_of, show_imported

    viewer, widget, layer = opened
    labels = np.zeros((1024, 1024), np.int32)
    labels[100:200, 100:200] = 1  # imported annotations on the slide's level 0
    mask = show_imported(viewer, layer, labels, import_grid_of(layer), "kidney", "test.geojson")
    widget.start()  # the model's grid (1 um/px) is not the import's (0.4 um/px)
    wait_for_run(qtbot, widget)
    assert "holds edits or imported annotations" in errors[-1]
    assert viewer.layers[mask_name(layer.name)] is mask
    np.testing.assert_array_equal(mask.data, labels)


def test_out_of_memory_is_a_notification_with_no_partial_layers(qtbot, opened, errors, monkeypatch):
    import training.inference

    viewer, widget, _ = opened
    names_before = [existing.name for existing in viewer.layers]
    real_segment = training.inference.segment

    def runs_out_after_a_band(*args, **kwargs):
        for event in real_segment(*args, **kwargs):
            yield event
            if event.band is not None:
                raise MemoryError("cannot allocate 12.0 GiB")

    monkeypatch.setattr(training.inference, "segment", runs_out_after_a_band)
    widget.start()
    wait_for_run(qtbot, widget)
    assert "out of memory" in errors[-1] and "smaller region" in errors[-1]
    assert [existing.name for existing in viewer.layers] == names_before
    assert widget.run_button.enabled and widget.status.value == "failed"


def world_box(layer, data_box):
    """The world (um) extent of a layer's pixels ``(y0, x0, y1, x1)`` (end exclusive)."""
    scale, translate = np.asarray(layer.scale)[-2:], np.asarray(layer.translate)[-2:]
    y0, x0, y1, x1 = data_box
    start = (np.array([y0, x0]) - 0.5) * scale + translate
    stop = (np.array([y1, x1]) - 0.5) * scale + translate
    return (*start, *stop)


def test_a_region_run_overlays_the_slide_and_shares_the_whole_slide_store(
    qtbot, opened, kidney_slide, errors
):
    """0.4 um/px slide, model at 1 um/px: a drawn rectangle's result lies on the whole slide's
    working grid (2.5 level-0 px per mask px), exactly over the rectangle, and whole-slide and
    field-of-view runs after it paste into the same store and keep the layers."""
    from training.review.session import Grid
    from training.review.store import MaskStore, store_location

    viewer, widget, layer = opened
    top, left, bottom, right = 200.0, 40.0, 300.0, 120.0  # um (the slide is 409.6 um a side)
    viewer.add_shapes([[[top, left], [top, right], [bottom, right], [bottom, left]]])
    widget.region.value = "drawn rectangle"
    widget.start()
    wait_for_run(qtbot, widget)
    assert not errors
    mask = viewer.layers[mask_name(layer.name)]
    probability = viewer.layers[probability_name(layer.name)]
    for shown in (mask, probability):
        np.testing.assert_allclose(shown.scale, (1.0, 1.0))  # um per working pixel
        np.testing.assert_allclose(shown.translate, (0.4 * 0.75, 0.4 * 0.75))
    assert mask.data.shape == (410, 410)  # ceil(1024 * 0.4 / 1.0): the whole slide's grid
    # the run's map covers the level-0 pixels under the rectangle, whole working pixels out
    rows, cols = np.nonzero(np.asarray(probability.data))
    wy0, wx0, wy1, wx1 = world_box(mask, (rows.min(), cols.min(), rows.max() + 1, cols.max() + 1))
    assert top - 1.0 <= wy0 <= top and left - 1.0 <= wx0 <= left
    assert bottom <= wy1 <= bottom + 1.0 and right <= wx1 <= right + 1.0
    store = MaskStore.open(store_location(kidney_slide[0]))
    assert (store.shape, store.pixel_size_um, store.downsample) == ((410, 410), 1.0, 2.5)

    for region in ("whole slide", "field of view"):
        widget.region.value = region
        widget.start()
        wait_for_run(qtbot, widget)
        assert not errors, region
        assert viewer.layers[mask_name(layer.name)] is mask, region
        session = mask.metadata[_segment_widget.SESSION_KEY]
        assert session.grid == Grid((410, 410), 1.0, 2.5) and mask.data.shape == (410, 410)
    assert np.asarray(session.probability)[:150].max() > 0.5  # the whole slide was segmented


def test_a_store_for_another_grid_is_not_restored(make_napari_viewer, kidney_slide, errors):
    """What a region run wrote before the fix: the working grid's shape with a downsample of
    1; reopening the slide says so instead of drawing it at 40% of the slide's size."""
    from training.review.store import MaskStore, slide_identity, store_location

    path = kidney_slide[0]
    store = MaskStore.create(store_location(path), (410, 410), 1.0, 1.0, slide_identity(path))
    store.set_model(np.ones((410, 410), np.int32))
    viewer, _, layer = open_in_viewer(make_napari_viewer, path)
    assert mask_name(layer.name) not in viewer.layers
    assert "made for another grid" in errors[-1] and "remove it" in errors[-1]


def test_an_unknown_organ_is_asked_for_and_a_rerun_exports_its_own(
    qtbot, make_napari_viewer, kidney_slide, errors, tmp_path
):
    """No train.csv beside the slide: no organ until the user picks one; segmented as kidney,
    then again as lung, the store and the export (row and GeoJSON class) say lung."""
    import json

    from napari_ftu._export_widget import ExportWidget
    from training.data.catalog import read_catalog
    from training.review.store import MaskStore, store_location

    viewer, widget, layer = open_in_viewer(make_napari_viewer, kidney_slide[0], organ=None)
    assert widget.organ.value is None
    widget.start()
    assert "choose the organ" in errors[-1] and not widget.running
    assert mask_name(layer.name) not in viewer.layers
    for organ in ("kidney", "lung"):
        widget.organ.value = organ
        widget.start()
        wait_for_run(qtbot, widget)
    assert len(errors) == 1
    session = viewer.layers[mask_name(layer.name)].metadata[_segment_widget.SESSION_KEY]
    assert session.organ == "lung" and session.threshold == 0.7  # the lung run's
    session.flush()
    assert MaskStore.open(store_location(kidney_slide[0])).settings["organ"] == "lung"
    export = ExportWidget(viewer)
    export.folder.value, export.annotator.value = tmp_path / "out", "dr test"
    export.export()
    qtbot.waitUntil(lambda: not export.running, timeout=60_000)
    assert read_catalog(tmp_path / "out").iloc[0]["organ"] == "lung"
    (geojson,) = (tmp_path / "out" / "geojson").glob("*.geojson")
    features = json.loads(geojson.read_text())["features"]
    assert features and {f["properties"]["classification"]["name"] for f in features} == {
        "alveolus"
    }


def test_a_slide_reopened_shows_and_nudges_the_settings_its_mask_was_made_with(
    qtbot, make_napari_viewer, opened, kidney_slide, errors
):
    """The widget docked first, the slide opened after (File > Open): the controls show the
    saved threshold and minimum area (the default kidney model's 0.65 and 4000 um²), and a
    nudge of one re-derives with the other as saved."""
    from training.inference import probability_to_labels

    viewer, widget, layer = opened
    widget.start()
    wait_for_run(qtbot, widget)
    session = viewer.layers[mask_name(layer.name)].metadata[_segment_widget.SESSION_KEY]
    assert (session.threshold, session.min_area_um2) == (0.65, 4000.0)
    session.flush()

    reopened = make_napari_viewer()
    again = SegmentWidget(reopened)
    reopened.window.add_dock_widget(again, name="Segment FTUs")
    (slide,) = reopened.open(str(kidney_slide[0]), plugin="napari-ftu")
    restored = reopened.layers[mask_name(slide.name)]
    assert again.image.value == slide.name and again.organ.value == "kidney"
    assert again.threshold.value == pytest.approx(0.65) and again.min_area.value == 4000.0
    again.min_area.value = 4100.0  # a nudge: the threshold stays the saved one
    stored = restored.metadata[_segment_widget.SESSION_KEY]
    assert (stored.threshold, stored.min_area_um2) == (0.65, 4100.0)
    expected = probability_to_labels(stored.probability, 0.65, 4100.0)  # 1 um/px: px = um²
    np.testing.assert_array_equal(restored.data > 0, expected > 0)
    assert not errors


def test_objects_keep_their_ids_and_colours_as_the_sliders_move(qtbot, opened_wide, errors):
    """Each object that persists across a slider move keeps its id (napari colours by id).
    At 0.2 and no minimum area an object appears above two of the three in raster order
    (renumbered 1..N they would all change colour), at 0.05 another between them."""
    viewer, widget, layer = opened_wide
    widget.start()
    wait_for_run(qtbot, widget)
    mask = viewer.layers[mask_name(layer.name)]
    for threshold, min_area in ((0.2, 4000.0), (0.2, 0.0), (0.05, 0.0), (0.9, 100.0)):
        before = np.array(mask.data)
        widget.threshold.value, widget.min_area.value = threshold, min_area
        after = np.asarray(mask.data)
        kept = 0
        for old_id in np.unique(before[before > 0]):
            under = after[before == old_id]
            ids, counts = np.unique(under[under > 0], return_counts=True)
            if len(ids):
                new_id = ids[np.argmax(counts)]
                # the same object: its largest overlap both ways
                back, back_counts = np.unique(before[after == new_id], return_counts=True)
                if back[np.argmax(back_counts)] == old_id:
                    assert new_id == old_id, (threshold, min_area, old_id)
                    kept += 1
        assert kept, (threshold, min_area)
    assert not errors


def test_the_seeds_other_architectures_segment_from_the_model_list(
    qtbot, opened, errors, tmp_path
):
    """An ensemble of one Swin-Unet, one UNeXt and one MT-UNet (untrained, 128 px tiles at
    2 um/px) chosen in the model list runs like the shipped models."""
    import yaml

    from training.models import build_model, save_checkpoint

    names = ["swin_unet_micro", "unext_micro", "mt_unet_micro"]
    for name in names:
        model = build_model(name, input_size=128)
        save_checkpoint(tmp_path / f"{name}.pt", model, {"pixel_size_um": 2.0})
    manifest = tmp_path / "new.yaml"
    manifest.write_text(yaml.safe_dump({"members": [{"checkpoint": f"{n}.pt"} for n in names]}))
    viewer, widget, layer = opened
    widget.add_model(manifest)
    widget.start()
    wait_for_run(qtbot, widget)
    assert not errors
    probability = viewer.layers[probability_name(layer.name)]
    assert probability.data.shape == (205, 205)  # 1024 px at 0.4 um/px, seen at 2 um/px
    session = viewer.layers[mask_name(layer.name)].metadata[_segment_widget.SESSION_KEY]
    assert session.probability.shape == (205, 205)
