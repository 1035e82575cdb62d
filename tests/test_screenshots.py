"""Screenshots of the plugin on a real kidney image (HuBMAP PAS, held out from the default
model's training), for docs/: the docked widgets, and the FTU mask over the slide.

The PNGs go to a temporary folder, or to docs/images/ with NAPARI_FTU_DOCS_SCREENSHOTS=1.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from napari_ftu._export_widget import ExportWidget
from napari_ftu._geometry import camera_of
from napari_ftu._review_widget import ReviewWidget
from napari_ftu._sample_data import SHARED_DATA_ENV, real_kidney_layers
from napari_ftu._segment_widget import SegmentWidget, mask_name, probability_name
from napari_ftu._train_widget import TrainWidget
from napari_ftu.cli import build_viewer

pytestmark = pytest.mark.gui
DOCS_IMAGES = Path(__file__).resolve().parents[1] / "docs" / "images"


@pytest.fixture
def kidney_layers(shared_data, monkeypatch):
    monkeypatch.setenv(SHARED_DATA_ENV, str(shared_data))
    return real_kidney_layers()


@pytest.fixture
def out_dir(tmp_path) -> Path:
    return DOCS_IMAGES if os.environ.get("NAPARI_FTU_DOCS_SCREENSHOTS") else tmp_path


def test_screenshots_show_the_mask_where_the_glomeruli_are(
    make_napari_viewer, qtbot, kidney_layers, out_dir
):
    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1400, 900)
    (image_data, image_kw, _), (truth, _, _) = kidney_layers
    image = viewer.add_image(image_data, **image_kw)
    build_viewer(viewer, [])  # the widgets docked as the napari-ftu launcher docks them
    segment, review, exporter, trainer = (
        _docked(viewer, kind) for kind in (SegmentWidget, ReviewWidget, ExportWidget, TrainWidget)
    )
    qtbot.waitUntil(lambda: segment.native.isVisible())  # the launcher shows Segment first
    assert segment.organ.value == "kidney" and float(segment.pixel_size.value) > 0
    segment.start()
    qtbot.waitUntil(lambda: not segment.running, timeout=300_000)
    mask = viewer.layers[mask_name(image.name)]
    viewer.layers[probability_name(image.name)].visible = False
    mask.contour, mask.opacity = 4, 0.9  # outlines: the tissue stays visible under them
    viewer.reset_view()
    qtbot.wait(200)

    with_mask = viewer.screenshot(canvas_only=True, flash=False)
    mask.visible = False
    without = viewer.screenshot(canvas_only=True, flash=False)
    mask.visible = True
    window = viewer.screenshot(canvas_only=False, flash=False)
    Image.fromarray(window).save(out_dir / "plugin_kidney_window.png")
    Image.fromarray(with_mask).save(out_dir / "plugin_kidney_overlay.png")
    assert segment.native.grab().save(str(out_dir / "plugin_segment_widget.png"))

    # where the experts outlined glomeruli, the screenshot shows the mask's outlines
    shown = np.abs(with_mask[..., :3].astype(int) - without[..., :3]).sum(axis=-1) > 30
    truth_on_screen = _on_canvas(viewer, image, truth > 0, shown.shape)
    outlined = sum(bool(shown[_dilate(objects)].any()) for objects in _objects(truth_on_screen))
    assert outlined >= 0.6 * len(_objects(truth_on_screen)), "the mask misses the glomeruli"
    assert shown.mean() < 0.2  # and not everything else

    canvas_width = viewer.window._qt_viewer.canvas.native.width()
    review.build_queue()  # (moves the camera to the most doubtful object)
    for widget, name in ((review, "review"), (exporter, "export"), (trainer, "train")):
        _show_tab(widget)
        qtbot.waitUntil(lambda widget=widget: widget.native.isVisible())
        qtbot.wait(100)  # the layout follows the new text
        assert widget.native.grab().save(str(out_dir / f"plugin_{name}_widget.png"))
    # no tab's text widens the dock over the canvas (the Train note once left it 10 px wide)
    assert viewer.window._qt_viewer.canvas.native.width() >= 0.9 * canvas_width


def test_screenshot_of_the_measurements_of_a_real_kidneys_expert_glomeruli(
    make_napari_viewer, qtbot, kidney_layers, shared_data, out_dir
):
    """The expert outlines of the real kidney image, imported as an FTU mask (a dataset row),
    measured; the largest glomerulus chosen: centred, highlighted, marked in the histogram."""
    from qtpy.QtCore import Qt

    from napari_ftu._import_widget import ImportWidget
    from napari_ftu._measure_layer import table_of
    from napari_ftu._measure_widget import MeasurementsWidget

    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1400, 900)
    (image_data, image_kw, _), (truth, _, _) = kidney_layers
    image = viewer.add_image(image_data, **image_kw)
    importer = ImportWidget(viewer)
    importer.source.value = "dataset row"
    importer.dataset.value = shared_data / "hubmap-kidney-pas"
    importer.row_id.value = "279"
    mask = importer.import_annotations()
    assert mask is viewer.layers[mask_name(image.name)]
    widget = MeasurementsWidget(viewer)
    dock = viewer.window.add_dock_widget(widget, name="Measurements", area="right")
    viewer.window._qt_window.resizeDocks([dock], [640], Qt.Orientation.Horizontal)
    viewer.layers[probability_name(image.name)].visible = False  # (an import's: the mask)
    qtbot.waitUntil(lambda: widget.model.rowCount() > 0 and not widget.measuring)
    table = table_of(mask)
    from scipy import ndimage

    assert len(table) == ndimage.label(truth > 0)[1]  # one row per expert glomerulus
    areas = table["area_um2"]
    assert areas.median() > 3000  # glomeruli: some 100-200 um across
    widget.view.sortByColumn(widget.model.columns.index("area_um2"), Qt.SortOrder.DescendingOrder)
    widget.view.selectRow(0)
    assert widget.selected == int(table.loc[areas.idxmax(), "label"])
    qtbot.wait(200)  # the layout follows the new text
    assert widget.native.grab().save(str(out_dir / "plugin_measurements_widget.png"))
    window = viewer.screenshot(canvas_only=False, flash=False)
    Image.fromarray(window).save(out_dir / "plugin_measurements_window.png")


def _docked(viewer, kind):
    """The widget of type ``kind`` that the launcher docked in ``viewer``."""
    (widget,) = [w for w in viewer.window.dock_widgets.values() if isinstance(w, kind)]
    return widget


def _show_tab(widget) -> None:
    """Bring the dock tab holding ``widget`` to the front."""
    from qtpy.QtWidgets import QDockWidget

    dock = widget.native
    while not isinstance(dock, QDockWidget):
        dock = dock.parentWidget()
    dock.raise_()


def _on_canvas(viewer, layer, values: np.ndarray, canvas_shape) -> np.ndarray:
    """``values`` (the layer's pixels) resampled to canvas pixels (nearest)."""
    rows, cols = np.mgrid[: canvas_shape[0], : canvas_shape[1]]
    zoom, centre = camera_of(viewer).zoom, np.asarray(camera_of(viewer).center[-2:])
    world_y = centre[0] + (rows - canvas_shape[0] / 2) / zoom
    world_x = centre[1] + (cols - canvas_shape[1] / 2) / zoom
    y = np.round((world_y - layer.translate[0]) / layer.scale[0]).astype(int)
    x = np.round((world_x - layer.translate[1]) / layer.scale[1]).astype(int)
    inside = (y >= 0) & (y < values.shape[0]) & (x >= 0) & (x < values.shape[1])
    out = np.zeros(canvas_shape, bool)
    out[inside] = values[y[inside], x[inside]]
    return out


def _objects(mask: np.ndarray) -> list[np.ndarray]:
    from scipy import ndimage

    labels, count = ndimage.label(mask)
    return [labels == index for index in range(1, count + 1) if (labels == index).sum() > 20]


def _dilate(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    return ndimage.binary_dilation(mask, iterations=3)


# The colon member to show near a real colon image: the bundled one, or a checkpoint this names
COLON_CHECKPOINT_ENV = "NAPARI_FTU_COLON_CHECKPOINT"
COLON_IMAGE_ID = "GT2012915-1-400-001"  # a patient held out from the colon member's training


def _described(checkpoint: Path, records, out: Path) -> Path:
    """``checkpoint`` as it is when it describes its training data, else a copy described on
    ``records`` (the images it was trained on)."""
    from training.domain import describe_checkpoint
    from training.models import read_checkpoint

    if read_checkpoint(checkpoint)["meta"].get("domain"):
        return checkpoint
    describe_checkpoint(checkpoint, records, out)
    return out


def test_screenshot_warns_on_real_colon_for_the_kidney_member_not_the_colon_one(
    make_napari_viewer, qtbot, shared_data, out_dir, tmp_path
):
    from training.data.records import DataSpec, load_records

    colon_dir, kidney_dir = shared_data / "ebhi-colon-normal", shared_data / "hubmap-kidney-pas"
    bundled = Path(__file__).resolve().parents[1] / "training" / "models" / "default"
    colon_path = os.environ.get(COLON_CHECKPOINT_ENV) or str(bundled / "colon_coat_daformer.pt")
    if not Path(colon_path).is_file():
        pytest.skip(f"{colon_path}: no colon member ({COLON_CHECKPOINT_ENV} names another)")
    if not (colon_dir / "train.csv").is_file() or not (kidney_dir / "train.csv").is_file():
        pytest.skip(f"the real colon or kidney images are absent ({colon_dir}, {kidney_dir})")
    kidney_training = [r for r in load_records([DataSpec(kidney_dir)]) if int(r.id) < 245]
    patient = COLON_IMAGE_ID.rsplit("-", 2)[0]
    colon_training = [
        r for r in load_records([DataSpec(colon_dir)]) if not r.id.startswith(patient)
    ]
    kidney = _described(bundled / "kidney_coat_daformer.pt", kidney_training, tmp_path / "k.pt")
    colon = _described(Path(colon_path), colon_training, tmp_path / "colon.pt")

    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1400, 900)
    viewer.open(str(colon_dir / "train_images" / f"{COLON_IMAGE_ID}.tiff"), plugin="napari-ftu")
    build_viewer(viewer, [])
    segment = _docked(viewer, SegmentWidget)
    qtbot.waitUntil(lambda: segment.native.isVisible())
    assert segment.organ.value == "largeintestine"
    canvas_width = viewer.window._qt_viewer.canvas.native.width()
    for model, name, far in ((kidney, "kidney", True), (colon, "colon", False)):
        segment.add_model(model, f"{name} member")
        segment.start()
        qtbot.waitUntil(lambda: not segment.running, timeout=300_000)
        qtbot.wait(100)  # the layout follows the new text
        assert segment.notes.native.isVisible() is far, segment.notes.tooltip
        assert ("stain is unlike anything" in segment.notes.value) is far
        assert segment.native.grab().save(str(out_dir / f"plugin_domain_{name}_member.png"))
        assert viewer.window._qt_viewer.canvas.native.width() >= 0.9 * canvas_width
