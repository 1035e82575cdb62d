"""The "Export corrections" and "Import annotations" widgets and the GeoJSON writer: an edited
phantom mask to a dataset folder and back, replacing only when asked, a large slide's reviewed
regions, QuPath GeoJSON in and out, and a real kidney image's expert outlines round-tripped."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from napari_ftu import _export_widget, _placement
from napari_ftu._export_widget import ExportWidget
from napari_ftu._ftu_layers import SESSION_KEY, mask_name, show_session
from napari_ftu._import_widget import ImportWidget
from napari_ftu._review_widget import ReviewWidget
from napari_ftu._writer import write_labels_geojson
from training.data.catalog import read_catalog
from training.data.geojson import rasterize
from training.data.geojson_export import labels_to_geojson
from training.data.rle import decode, nearest_indices
from training.review import session as _session
from training.review.session import FTUSession, Grid
from training.review.store import MaskStore
from training.slides import write_pyramid
from training.synthetic import make_phantom

pytestmark = pytest.mark.gui
SIZE = 384  # the phantom's level-0 side; the session's grid is half of it


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    return float(2 * (a & b).sum() / max(1, a.sum() + b.sum()))


def upscaled(labels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize by pixel centres (what the exported RLE must hold)."""
    rows = nearest_indices(labels.shape[0], shape[0])
    cols = nearest_indices(labels.shape[1], shape[1])
    return labels[np.ix_(rows, cols)]


def errors_since(start: int) -> list[str]:
    from napari.utils.notifications import notification_manager

    return [str(r.message) for r in notification_manager.records[start:]]


def notes() -> int:
    from napari.utils.notifications import notification_manager

    return len(notification_manager.records)


@pytest.fixture
def slide(tmp_path):
    image, _, _ = make_phantom("kidney", size=SIZE, seed=2)
    return write_pyramid(tmp_path / "kidney.tiff", image, 0.4, tile=128)


def open_with_session(viewer, path, store=None):
    """The slide opened and given a session at downsample 2 from the phantom's own mask, no
    model run (as tests/test_review_widget.py's ``reviewed`` fixture does)."""
    (image,) = viewer.open(str(path), plugin="napari-ftu")
    _, truth, _ = make_phantom("kidney", size=SIZE, seed=2)
    probability = truth[1::2, 1::2].astype(np.float32) * 0.9
    grid = Grid(probability.shape, 0.8, 2.0)
    session = FTUSession(image.name, "kidney", grid, threshold=0.5, store=store)
    session.add_result(probability, (0, 0))
    return image, session, show_session(viewer, image, session)


def export_widget(viewer, folder) -> ExportWidget:
    widget = ExportWidget(viewer)
    widget.folder.value = folder
    widget.annotator.value = "dr test"
    return widget


def run_export(widget, qtbot) -> None:
    widget.export()
    qtbot.waitUntil(lambda: not widget.running, timeout=60_000)


def test_export_writes_the_edited_mask_at_level0_and_replaces_only_when_asked(
    make_napari_viewer, qtbot, slide, tmp_path, monkeypatch
):
    viewer = make_napari_viewer()
    _, _, mask = open_with_session(viewer, slide)
    first = int(mask.data.max())
    mask.data_setitem(tuple(np.nonzero(mask.data == first)), 0)  # erase one object
    mask.data_setitem((np.arange(5, 15).repeat(10), np.tile(np.arange(5, 15), 10)), first + 7)
    out = tmp_path / "out"
    widget = export_widget(viewer, out)
    assert widget.mask.value == mask.name and widget.image_id.value == "kidney"
    run_export(widget, qtbot)
    assert "wrote 1 row(s) (kidney)" in widget.status.value
    row = read_catalog(out).iloc[0]
    assert (row["id"], row["img_height"], row["img_width"]) == ("kidney", SIZE, SIZE)
    assert row["pixel_size"] == pytest.approx(0.4) and row["organ"] == "kidney"
    assert row["annotator"] == "dr test" and row["data_source"] == "napari-ftu"
    assert row["tissue_thickness"] == "" and row["updated_at"].startswith("20")
    edited = np.array(mask.data)
    np.testing.assert_array_equal(
        decode(row["rle"], (SIZE, SIZE)), upscaled(edited, (SIZE,) * 2) > 0
    )
    collection = json.loads((out / "geojson" / "kidney.geojson").read_text())
    assert dice(rasterize(collection, (SIZE, SIZE)), upscaled(edited, (SIZE,) * 2)) == 1.0

    mask.data_setitem((np.arange(100, 110).repeat(10), np.tile(np.arange(100, 110), 10)), 1)
    before = (out / "train.csv").read_bytes(), (out / "train_images" / "kidney.tiff").read_bytes()
    asked = []
    monkeypatch.setattr(_export_widget, "confirm_overwrite", lambda ids: asked.append(ids) or False)
    run_export(widget, qtbot)
    assert asked == [["kidney", "geojson/kidney.geojson"]]
    assert (out / "train.csv").read_bytes() == before[0]
    assert (out / "train_images" / "kidney.tiff").read_bytes() == before[1]
    assert not (out / "train.backup.csv").exists() and "declined" in widget.status.value

    monkeypatch.setattr(_export_widget, "confirm_overwrite", lambda ids: True)
    run_export(widget, qtbot)
    row = read_catalog(out).iloc[0]
    assert len(read_catalog(out)) == 1
    np.testing.assert_array_equal(
        decode(row["rle"], (SIZE, SIZE)), upscaled(np.array(mask.data), (SIZE,) * 2) > 0
    )
    backup = read_catalog(out / "train.backup.csv", check_images=False)
    np.testing.assert_array_equal(
        decode(backup.iloc[0]["rle"], (SIZE, SIZE)), upscaled(edited, (SIZE,) * 2) > 0
    )
    assert len(list((out / "train_images" / ".backup").glob("kidney.*.tiff"))) == 1
    assert len(list((out / "geojson" / ".backup").glob("kidney.*.geojson"))) == 1

    widget.dataset.value = False  # GeoJSON only: train.csv is left alone
    csv_before = (out / "train.csv").read_bytes()
    run_export(widget, qtbot)
    assert widget.status.value == "wrote geojson/kidney.geojson"
    assert (out / "train.csv").read_bytes() == csv_before


def test_export_errors_are_notifications_and_write_nothing(
    make_napari_viewer, qtbot, slide, tmp_path
):
    viewer = make_napari_viewer()
    widget = export_widget(viewer, tmp_path / "out")
    start = notes()
    widget.export()  # no mask yet
    assert any("no FTU mask" in m for m in errors_since(start))
    open_with_session(viewer, slide)
    widget.mask.reset_choices()
    (tmp_path / "a file").write_text("")
    widget.folder.value = tmp_path / "a file" / "out"
    start = notes()
    widget.export()
    assert any("cannot write in" in m for m in errors_since(start)) and not widget.running
    widget.folder.value = tmp_path / "out"
    widget.thickness.value = "thick"
    start = notes()
    widget.export()
    assert any("not a number" in m for m in errors_since(start))
    assert not (tmp_path / "out").exists()


def test_a_large_mask_exports_only_its_reviewed_regions(
    make_napari_viewer, qtbot, slide, tmp_path, monkeypatch
):
    monkeypatch.setattr(_session, "EDIT_LIMIT_PIXELS", 100 * 100)  # the 192 x 192 mask is large
    store = MaskStore.create(tmp_path / "mask.ftu.zarr", (192, 192), 0.8, 2.0, {})
    viewer = make_napari_viewer()
    _, session, mask = open_with_session(viewer, slide, store)
    assert not session.grid.direct_edit and not mask.editable
    widget = export_widget(viewer, tmp_path / "out")
    start = notes()
    widget.export()
    assert any("no region of it was reviewed" in m for m in errors_since(start))
    assert not (tmp_path / "out").exists()
    old = session.read_labels((10, 20, 60, 50))
    new = old.copy()
    new[:5, :5] = 0
    session.write_labels(10, 20, new, old)  # applied: a reviewed region
    session.mark_reviewed((101, 121, 71, 71))  # reaches the slide's edge at level 0
    run_export(widget, qtbot)
    frame = read_catalog(tmp_path / "out")
    assert list(frame["id"]) == ["kidney_r20_40", "kidney_r202_242"]
    assert list(frame["img_height"]) == [120, 142] and list(frame["img_width"]) == [100, 142]
    for (_, row), box in zip(frame.iterrows(), session.reviewed_regions, strict=True):
        shape = (row["img_height"], row["img_width"])
        expected = upscaled(session.read_labels(box), shape) > 0
        np.testing.assert_array_equal(decode(row["rle"], shape), expected)
    collection = json.loads((tmp_path / "out" / "geojson" / "kidney.geojson").read_text())
    painted = rasterize(collection, (SIZE, SIZE))
    assert painted[40:240].any() and not painted[:20].any()  # the regions only, on the slide


def make_annotations(shape) -> np.ndarray:
    """Objects with holes and objects touching each other."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    labels = np.zeros(shape, np.int32)
    labels[(yy - 80) ** 2 + (xx - 80) ** 2 < 50**2] = 1
    labels[(yy - 80) ** 2 + (xx - 80) ** 2 < 20**2] = 0  # a hole
    labels[150:220, 40:120] = 2
    labels[150:220, 120:180] = 3  # touches 2
    labels[180:200, 60:80] = 0  # a hole in 2
    labels[30:90, 200:260] = 4
    return labels


def test_imported_geojson_is_an_editable_mask_that_exports_back(
    make_napari_viewer, qtbot, slide, tmp_path
):
    viewer = make_napari_viewer()
    (image,) = viewer.open(str(slide), plugin="napari-ftu")
    original = make_annotations((SIZE, SIZE))
    path = tmp_path / "qupath.geojson"
    path.write_text(json.dumps(labels_to_geojson(original, 1.0, "spleen")))
    widget = ImportWidget(viewer)
    widget.geojson_file.value = path
    assert widget.organ.value == "spleen"  # from the classification
    layer = widget.import_annotations()
    assert layer is viewer.layers[mask_name(image.name)] and layer.editable
    session = layer.metadata[SESSION_KEY]
    assert session.imported and session.grid.downsample == 1 and session.organ == "spleen"
    assert "4 object(s)" in widget.status.value
    for label in range(1, 5):  # equal up to the numbering: one imported object per original
        (ids,) = {tuple(np.unique(layer.data[original == label]))}
        assert len(ids) == 1 and (layer.data == ids[0]).sum() == (original == label).sum()
    assert ((layer.data > 0) == (original > 0)).all()
    scale, translate = _placement.overlay(image.scale, image.translate, 1.0)
    np.testing.assert_allclose(layer.scale, scale)
    np.testing.assert_allclose(layer.translate, translate)
    session.rederive(0.9, 1e6)  # the threshold leaves an imported mask alone
    assert ((layer.data > 0) == (original > 0)).all()
    review = ReviewWidget(viewer)
    review.build_queue()  # the review tools work on it
    assert len(review.queue.candidates) == 4
    second = widget.import_annotations()  # a second import: a layer to compare, beside it
    assert SESSION_KEY not in second.metadata and viewer.layers[mask_name(image.name)] is layer

    layer.data_setitem((np.arange(300, 310).repeat(10), np.tile(np.arange(300, 310), 10)), 9)
    assert session.counts().edited == 1
    export = export_widget(viewer, tmp_path / "out")
    run_export(export, qtbot)
    row = read_catalog(tmp_path / "out").iloc[0]
    np.testing.assert_array_equal(decode(row["rle"], (SIZE, SIZE)), layer.data > 0)
    saved = tmp_path / "saved.geojson"
    (written,) = write_labels_geojson(str(saved), layer.data, {"metadata": layer.metadata})
    assert dice(rasterize(written, (SIZE, SIZE)), layer.data) == 1.0


def test_the_npe2_writer_saves_labels_layers_as_geojson(make_napari_viewer, slide, tmp_path):
    viewer = make_napari_viewer()
    _, _, mask = open_with_session(viewer, slide)  # downsample 2: level-0 coordinates
    viewer.layers.selection = {mask}
    (saved,) = viewer.layers.save(
        str(tmp_path / "mask.geojson"), selected=True, plugin="napari-ftu"
    )
    expected = upscaled(np.array(mask.data), (SIZE, SIZE))
    assert dice(rasterize(saved, (SIZE, SIZE)), expected) == 1.0
    plain = viewer.add_labels(make_annotations((SIZE, SIZE)), metadata={"organ": "prostate"})
    (saved,) = write_labels_geojson(
        str(tmp_path / "plain.geojson"), plain.data, {"metadata": plain.metadata}
    )
    collection = json.loads(Path(saved).read_text())
    assert collection["features"][0]["properties"]["classification"]["name"] == "gland"
    np.testing.assert_array_equal(rasterize(collection, (SIZE, SIZE)), plain.data > 0)


def test_import_of_a_dataset_row_and_onto_a_coarser_grid(
    make_napari_viewer, slide, tmp_path, monkeypatch
):
    from training.data.catalog import upsert_row
    from training.data.rle import encode

    original = make_annotations((SIZE, SIZE))
    row = {"id": "kidney", "organ": "lung", "img_height": SIZE, "img_width": SIZE}
    upsert_row(tmp_path / "set", {**row, "pixel_size": 0.4, "rle": encode(original)})
    monkeypatch.setattr(_session, "EDIT_LIMIT_PIXELS", 200 * 200)  # 384 x 384 is too large
    viewer = make_napari_viewer()
    (image,) = viewer.open(str(slide), plugin="napari-ftu")
    widget = ImportWidget(viewer)
    widget.source.value = "dataset row"
    widget.dataset.value = tmp_path / "set"
    widget.row_id.value = "kidney"
    layer = widget.import_annotations()
    session = layer.metadata[SESSION_KEY]
    assert session.grid.downsample == 2 and session.grid.shape == (192, 192)
    assert session.organ == "lung" and layer.editable
    np.testing.assert_array_equal(layer.data > 0, original[1::2, 1::2] > 0)
    # objects are the mask's connected parts: the touching pair is one
    assert len(np.unique(layer.data)) - 1 == ndimage.label(original > 0)[1] == 3
    scale, translate = _placement.overlay(image.scale, image.translate, 2.0)
    np.testing.assert_allclose(layer.scale, scale)
    np.testing.assert_allclose(layer.translate, translate)


def test_a_real_kidney_images_expert_geojson_round_trips(
    make_napari_viewer, qtbot, shared_data, tmp_path
):
    folder = shared_data / "hubmap-kidney-pas"
    image_id = "279"
    path = folder / "train_images" / f"{image_id}.tiff"
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    truth_row = read_catalog(folder, check_images=False).set_index("id").loc[image_id]
    shape = (int(truth_row["img_height"]), int(truth_row["img_width"]))
    truth = decode(truth_row["rle"], shape)
    viewer = make_napari_viewer()
    viewer.open(str(path), plugin="napari-ftu")
    widget = ImportWidget(viewer)
    widget.geojson_file.value = folder / "geojson" / f"{image_id}.geojson"
    assert widget.organ.value == "kidney"
    layer = widget.import_annotations()
    assert layer.editable and dice(layer.data, truth) >= 0.99
    export = export_widget(viewer, tmp_path / "out")
    assert export.image_id.value == image_id
    run_export(export, qtbot)
    row = read_catalog(tmp_path / "out").iloc[0]
    assert (row["img_height"], row["img_width"]) == shape
    assert dice(decode(row["rle"], shape), truth) >= 0.99
    collection = json.loads((tmp_path / "out" / "geojson" / f"{image_id}.geojson").read_text())
    assert dice(rasterize(collection, shape), truth) >= 0.99


def test_an_empty_or_relative_folder_and_a_failed_export_write_nothing_and_say_so(
    make_napari_viewer, qtbot, slide, tmp_path, monkeypatch
):
    started = tmp_path / "napari started here"
    started.mkdir()
    monkeypatch.chdir(started)
    viewer = make_napari_viewer()
    open_with_session(viewer, slide)
    widget = export_widget(viewer, tmp_path / "out")
    run_export(widget, qtbot)
    assert widget.status.value.startswith("wrote 1 row(s)")
    for typed in ("", "out"):  # cleared, or a name alone: relative to where napari started
        widget.folder.line_edit.value = typed
        start = notes()
        widget.export()
        shown = errors_since(start)
        assert not widget.running and any("choose an output folder" in m for m in shown)
        assert "wrote" not in widget.status.value and "nothing written" in widget.status.value
    assert list(started.iterdir()) == []
    widget.folder.value = tmp_path / "out"
    widget.thickness.value = "thick"
    widget.export()
    assert widget.status.value == "nothing written: the tissue thickness 'thick' is not a number"


def test_expert_geojson_onto_an_image_with_a_mask_is_a_second_layer_to_compare(
    make_napari_viewer, slide, tmp_path
):
    viewer = make_napari_viewer()
    image, _, mask = open_with_session(viewer, slide)  # the model's mask, at downsample 2
    model_mask = np.array(mask.data)
    expert = make_annotations((SIZE, SIZE))
    path = tmp_path / "expert.geojson"
    path.write_text(json.dumps(labels_to_geojson(expert, 1.0, "kidney")))
    widget = ImportWidget(viewer)
    widget.geojson_file.value = path
    layer = widget.import_annotations()
    assert layer is not None and layer.name == f"{image.name} imported (expert.geojson)"
    assert "4 object(s)" in widget.status.value and "to compare" in widget.status.value
    # on the image's level-0 grid, placed over it, in outlines; the FTU mask is untouched and
    # stays the one the review and export tools list
    np.testing.assert_array_equal(layer.data > 0, expert > 0)
    scale, translate = _placement.overlay(image.scale, image.translate, 1.0)
    np.testing.assert_allclose(layer.scale, scale)
    np.testing.assert_allclose(layer.translate, translate)
    assert layer.contour > 0 and SESSION_KEY not in layer.metadata
    np.testing.assert_array_equal(mask.data, model_mask)
    assert ExportWidget(viewer).mask.choices == (mask.name,)


def test_an_import_onto_a_slide_nothing_names_asks_for_the_organ(
    make_napari_viewer, slide, tmp_path
):
    """Nothing names the organ (no train.csv beside the slide, a GeoJSON class that is no
    organ's): the import asks for it instead of labelling the mask kidney."""
    viewer = make_napari_viewer()
    viewer.open(str(slide), plugin="napari-ftu")
    path = tmp_path / "unclassified.geojson"
    path.write_text(json.dumps(labels_to_geojson(make_annotations((SIZE, SIZE)), 1.0, "kidney")))
    collection = json.loads(path.read_text())
    for feature in collection["features"]:
        feature["properties"].pop("classification", None)
    path.write_text(json.dumps(collection))
    widget = ImportWidget(viewer)
    widget.geojson_file.value = path
    assert widget.organ.value is None
    assert widget.import_annotations() is None  # an error notification, nothing imported
    assert mask_name(viewer.layers[0].name) not in viewer.layers
    widget.organ.value = "prostate"
    layer = widget.import_annotations()
    assert layer.metadata[SESSION_KEY].organ == "prostate"
