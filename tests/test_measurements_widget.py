"""The "Measurements" widget: the mask layer's features as a table (rows after a segmentation
or on a hand-made labels layer), numeric sorting, a row chosen centres and highlights its
object, edits refresh the rows they touch, CSV export."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from qtpy.QtCore import Qt

from napari_ftu import _measure_widget
from napari_ftu._ftu_layers import show_session
from napari_ftu._geometry import camera_of
from napari_ftu._measure_layer import SETTLE_MS, TISSUE_KEY, table_of, tracker
from napari_ftu._measure_widget import MeasurementsWidget
from napari_ftu._segment_widget import SegmentWidget, mask_name
from training.inference.tissue import tissue_area_mm2
from training.measure.objects import measure_objects
from training.review.session import FTUSession, Grid
from training.slides import open_slide, write_pyramid
from training.synthetic import make_phantom

pytestmark = pytest.mark.gui
RUN_TIMEOUT_MS = 180_000
SCALE, TRANSLATE = (0.5, 0.5), (10.0, 20.0)  # um per pixel, and where pixel (0, 0) lies
# three discs of radius 2, 6 and 20 px: areas whose text sorts in another order than their value
DISCS = {1: ((30, 30), 2), 2: ((30, 80), 6), 3: ((100, 60), 20)}


def disc(shape, centre, radius):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2


def hand_made() -> np.ndarray:
    labels = np.zeros((140, 130), np.uint16)
    for label, (centre, radius) in DISCS.items():
        labels[disc(labels.shape, centre, radius)] = label
    return labels


@pytest.fixture
def measured(make_napari_viewer, qtbot):
    """A hand-made labels layer (scaled and shifted in um) with the widget showing it."""
    viewer = make_napari_viewer()
    layer = viewer.add_labels(hand_made(), name="hand", scale=SCALE, translate=TRANSLATE)
    widget = MeasurementsWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Measurements")
    assert widget.mask.value == "hand"
    qtbot.waitUntil(lambda: widget.model.rowCount() == 3 and not widget.measuring)
    return viewer, widget, layer


def column(widget, name):
    return widget.model.columns.index(name)


def shown_column(widget, name) -> list[float]:
    """A column's numbers in the order the view shows them (through the sorting proxy)."""
    proxy, index = widget.proxy, column(widget, name)
    return [
        proxy.data(proxy.index(row, index), _measure_widget.SORT_ROLE)
        for row in range(proxy.rowCount())
    ]


def world_centroid(layer, label) -> np.ndarray:
    """The world position of object ``label``'s centroid, from its pixels."""
    return np.asarray(layer.data_to_world(np.argwhere(layer.data == label).mean(axis=0)))


def test_rows_of_a_hand_made_layer_in_micrometres(measured):
    _, widget, layer = measured
    table = table_of(layer)
    assert table["label"].tolist() == [1, 2, 3]
    pixels = [int((layer.data == label).sum()) for label in (1, 2, 3)]
    np.testing.assert_allclose(table["area_um2"], np.array(pixels) * 0.25)
    assert layer.features["index"].tolist() == [1, 2, 3]  # napari's row of each label
    assert (
        widget.summary.value.startswith("3 FTUs") and "tissue area unknown" in widget.summary.value
    )


def test_sorting_by_area_is_numeric(measured, qtbot):
    _, widget, layer = measured
    area = column(widget, "area_um2")
    texts = [widget.model.data(widget.model.index(r, area)) for r in range(3)]
    assert sorted(texts) != [
        texts[i] for i in np.argsort([float(t.replace(",", "")) for t in texts])
    ]
    widget.view.sortByColumn(area, Qt.SortOrder.AscendingOrder)
    shown = shown_column(widget, "area_um2")
    assert shown == sorted(shown) and shown[0] < 10 < 100 < shown[-1]
    widget.view.sortByColumn(area, Qt.SortOrder.DescendingOrder)
    assert shown_column(widget, "label") == [3.0, 2.0, 1.0]
    layer.paint((125, 110), 4)  # a new object of the brush's size (~80 px): sorted into place
    qtbot.waitUntil(lambda: widget.model.rowCount() == 4)
    assert shown_column(widget, "label")[:2] == [3.0, 2.0]  # the sort holds across edits
    areas = shown_column(widget, "area_um2")
    assert areas == sorted(areas, reverse=True) and shown_column(widget, "label")[2] == 4.0


def test_a_chosen_row_centres_the_camera_on_its_object_and_highlights_it(measured, qtbot):
    viewer, widget, layer = measured
    widget.view.sortByColumn(column(widget, "area_um2"), Qt.SortOrder.DescendingOrder)
    widget.view.selectRow(1)  # the middle-sized disc, by a click on its row
    assert widget.selected == 2
    np.testing.assert_allclose(camera_of(viewer).center[-2:], world_centroid(layer, 2), atol=1e-6)
    assert layer.selected_label == 2 and layer.show_selected_label
    widget.select_label(3)
    np.testing.assert_allclose(camera_of(viewer).center[-2:], world_centroid(layer, 3), atol=1e-6)
    assert widget.view.selectionModel().selectedRows()[0].row() == 0  # its row, shown chosen

    def marked() -> list[float]:  # where the histogram's line for the chosen object is
        return [line.get_xdata()[0] for axes in widget.figure.axes for line in axes.lines]

    area = table_of(layer).set_index("label").loc[3, "area_um2"]
    qtbot.waitUntil(lambda: marked() == [area])
    widget.highlight.value = False
    assert not layer.show_selected_label


def test_an_edit_during_a_whole_measurement_is_not_hidden_by_its_stale_table(measured, qtbot):
    viewer, _, layer = measured
    keeper = tracker(viewer, layer)
    keeper.remeasure()  # (its table comes back through the event loop)
    layer.data_setitem(tuple(np.nonzero(layer.data == 1)), 0)
    keeper._edited()  # the edit's rows first, as when the worker is slower than the edit
    assert table_of(layer)["label"].tolist() == [2, 3]
    qtbot.waitUntil(lambda: table_of(layer)["label"].tolist() == [2, 3] and not keeper.busy)
    pd.testing.assert_frame_equal(table_of(layer), measure_objects(layer.data, SCALE[0]))


def test_a_duplicated_layer_keeps_its_own_rows(measured, qtbot):
    viewer, widget, layer = measured
    viewer.layers.selection = {layer}
    from napari.layers._layer_actions import _duplicate_layer

    _duplicate_layer(viewer.layers)  # Layers > Duplicate: the metadata dict is shared
    copy = viewer.layers["hand copy"]
    widget.mask.value = copy.name
    copy.data_setitem(tuple(np.nonzero(copy.data == 1)), 0)
    qtbot.waitUntil(lambda: table_of(copy)["label"].tolist() == [2, 3])
    assert table_of(layer)["label"].tolist() == [1, 2, 3]  # the original's rows stay


def test_edits_refresh_the_rows_they_touch(measured, qtbot):
    _, widget, layer = measured
    before = table_of(layer).set_index("label")
    layer.paint((30, 86), 2)  # a brush stroke on disc 2's right edge (brush size 10)
    assert (layer.data == 2).sum() > (hand_made() == 2).sum()
    layer.data_setitem(tuple(np.nonzero(layer.data == 1)), 0)  # disc 1 erased
    qtbot.waitUntil(lambda: widget.model.rowCount() == 2)  # (once the loop turns)
    after = table_of(layer).set_index("label")
    assert after.index.tolist() == [2, 3] and widget.model.rowCount() == 2
    assert after.loc[2, "area_um2"] == pytest.approx((layer.data == 2).sum() * 0.25)
    assert after.loc[2, "area_um2"] > before.loc[2, "area_um2"]
    pd.testing.assert_series_equal(after.loc[3], before.loc[3])  # untouched: the same row
    layer.paint((2, 120), 9)  # an object at the mask's border: cut by the edge, not the crop's
    qtbot.waitUntil(lambda: 9 in table_of(layer)["label"].tolist())
    whole = measure_objects(layer.data, SCALE[0])  # the rows refreshed are the whole mask's
    pd.testing.assert_frame_equal(table_of(layer), whole)
    assert table_of(layer).set_index("label").loc[9, "touches_edge"]
    assert not table_of(layer).set_index("label").loc[2, "touches_edge"]
    # painting a new object adds its row; undo (no paint event in napari) re-measures it all
    layer.paint((120, 110), 7)
    qtbot.waitUntil(lambda: 7 in table_of(layer)["label"].tolist())
    layer.undo()
    layer.undo()
    layer.undo()
    qtbot.waitUntil(lambda: table_of(layer)["label"].tolist() == [1, 2, 3] and not widget.measuring)
    restored = table_of(layer).set_index("label").sort_index()
    pd.testing.assert_frame_equal(restored.loc[[1, 3]], before.loc[[1, 3]])


def test_export_writes_the_table_and_never_replaces_a_file_silently(
    measured, tmp_path, monkeypatch, qtbot
):
    _, widget, layer = measured
    target = tmp_path / "hand.objects.csv"
    assert widget.export_csv(target) == target
    written = pd.read_csv(target)
    assert written.columns.tolist() == table_of(layer).columns.tolist()  # no napari index
    np.testing.assert_allclose(written["area_um2"], table_of(layer)["area_um2"])
    layer.data_setitem(tuple(np.nonzero(layer.data == 1)), 0)
    qtbot.waitUntil(lambda: len(table_of(layer)) == 2)
    asked = []
    monkeypatch.setattr(_measure_widget, "confirm_overwrite", lambda p: asked.append(p) or False)
    assert widget.export_csv(target) is None and asked == [target]
    assert len(pd.read_csv(target)) == 3 and "not replaced" in widget.status.value
    monkeypatch.setattr(_measure_widget, "confirm_overwrite", lambda p: True)
    assert widget.export_csv(target) == target and len(pd.read_csv(target)) == 2
    assert widget.export_csv("relative.csv") is None and "full path" in widget.status.value


def test_an_ftu_mask_on_a_coarser_grid_is_measured_and_centred_over_its_slide(
    make_napari_viewer, qtbot
):
    """A session whose grid is 2 level-0 pixels per pixel: rows carry the model's confidence,
    and a chosen object is centred where the slide shows it."""
    viewer = make_napari_viewer()
    image = viewer.add_image(
        np.full((280, 260, 3), 200, np.uint8),
        name="img",
        rgb=True,
        scale=SCALE,
        translate=TRANSLATE,
    )
    probability = np.where(hand_made() > 0, 0.8, 0.0).astype(np.float32)
    session = FTUSession("img", "kidney", Grid((140, 130), 1.0, 2.0), threshold=0.5)
    session.add_result(probability, (0, 0))
    mask = show_session(viewer, image, session)
    widget = MeasurementsWidget(viewer)
    assert widget.mask.value == mask_name("img")
    qtbot.waitUntil(lambda: widget.model.rowCount() == 3 and not widget.measuring)
    table = table_of(mask)
    np.testing.assert_allclose(table["mean_probability"], 0.8, rtol=1e-6)
    label = int(mask.data[100, 60])
    widget.select_label(label)
    np.testing.assert_allclose(
        camera_of(viewer).center[-2:], world_centroid(mask, label), atol=1e-6
    )
    # the same place on the slide: level-0 pixel (2 * 100 + 0.5, 2 * 60 + 0.5) of the image
    centre = image.data_to_world(np.argwhere(mask.data == label).mean(axis=0) * 2 + 0.5)
    np.testing.assert_allclose(camera_of(viewer).center[-2:], centre, atol=1e-6)


def test_rows_after_a_segmentation_with_the_slides_tissue_area(make_napari_viewer, qtbot, tmp_path):
    image, _, _ = make_phantom("kidney", size=1024, seed=3)
    path = write_pyramid(tmp_path / "kidney.tiff", image, 0.4, tile=256)
    viewer = make_napari_viewer()
    (layer,) = viewer.open(str(path), plugin="napari-ftu")
    segment = SegmentWidget(viewer)
    segment.organ.value = "kidney"
    widget = MeasurementsWidget(viewer)
    segment.start()
    qtbot.waitUntil(lambda: not segment.running, timeout=RUN_TIMEOUT_MS)
    mask = viewer.layers[mask_name(layer.name)]
    widget.mask.value = mask.name
    qtbot.waitUntil(lambda: widget.model.rowCount() > 0 and not widget.measuring)
    table = table_of(mask)
    assert sorted(table["label"]) == sorted(set(np.unique(mask.data).tolist()) - {0})
    assert table["mean_probability"].between(0.5, 1).all()  # above the model's threshold
    assert np.isfinite(table["od_hematoxylin"]).all()  # the slide read on the mask's grid
    tissue = mask.metadata[TISSUE_KEY]
    with open_slide(path) as slide:  # the same tissue area as `napari-ftu segment --measure`
        assert tissue == pytest.approx(tissue_area_mm2(slide))
    assert 0 < tissue <= 1024 * 1024 * 0.4**2 / 1e6
    assert "FTUs/mm²" in widget.summary.value and f"{tissue:.2f} mm²" in widget.summary.value


def test_a_mask_above_the_direct_edit_limit_is_measured_from_its_store(
    make_napari_viewer, qtbot, monkeypatch, tmp_path
):
    from training.review import session as _session
    from training.review.store import MaskStore

    monkeypatch.setattr(_session, "EDIT_LIMIT_PIXELS", 100 * 100)  # 140 x 130 is "large"
    viewer = make_napari_viewer()
    image = viewer.add_image(np.full((140, 130, 3), 200, np.uint8), name="img", rgb=True)
    grid = Grid((140, 130), 1.0, 1.0)
    store = MaskStore.create(tmp_path / "mask.ftu.zarr", grid.shape, 1.0, 1.0, {})
    session = FTUSession("img", "kidney", grid, threshold=0.5, store=store)
    session.add_result(np.where(hand_made() > 0, 0.7, 0.0).astype(np.float32), (0, 0))
    mask = show_session(viewer, image, session)
    assert not mask.editable  # an overview: measured from the store in the worker
    widget = MeasurementsWidget(viewer)
    qtbot.waitUntil(lambda: widget.model.rowCount() == 3 and not widget.measuring)
    table = table_of(mask)
    np.testing.assert_allclose(table["mean_probability"], 0.7, rtol=1e-6)
    pixels = sorted(int((hand_made() == label).sum()) for label in DISCS)
    assert sorted(table["area_um2"]) == pixels
    keeper, measured = tracker(viewer, mask), []
    remeasure = keeper.remeasure
    monkeypatch.setattr(keeper, "remeasure", lambda: measured.append(1) or remeasure())
    widget.select_label(int(table["label"].iloc[0]))  # napari says set_data: not a change
    qtbot.wait(2 * SETTLE_MS)
    assert measured == []
    mask.refresh()  # as Apply region edits does: measured again from the store
    qtbot.waitUntil(lambda: measured == [1] and not keeper.busy)


def test_imported_annotations_are_measured_without_a_confidence(
    make_napari_viewer, qtbot, tmp_path
):
    import json

    from napari_ftu._import_widget import ImportWidget
    from training.data.geojson_export import labels_to_geojson

    viewer = make_napari_viewer()
    image = viewer.add_image(
        np.full((140, 130, 3), 200, np.uint8), name="img", rgb=True, metadata={"pixel_size_um": 0.5}
    )
    path = tmp_path / "qupath.geojson"
    path.write_text(json.dumps(labels_to_geojson(hand_made(), 1.0, "kidney")))
    importer = ImportWidget(viewer)
    importer.geojson_file.value = path
    mask = importer.import_annotations()
    assert mask is viewer.layers[mask_name(image.name)]
    widget = MeasurementsWidget(viewer)
    qtbot.waitUntil(lambda: widget.model.rowCount() == 3 and not widget.measuring)
    table = table_of(mask)
    assert table["mean_probability"].isna().all()  # an import's "probability" is the mask
    pixels = sorted(int((hand_made() == label).sum()) * 0.25 for label in DISCS)
    np.testing.assert_allclose(sorted(table["area_um2"]), pixels, rtol=0.05)  # as rasterised
    assert np.isfinite(table["od_hematoxylin"]).all()  # stain read from the image layer
