from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from napari_ftu._geometry import Box, camera_of, field_of_view, region_in_view
from training.slides import write_pyramid
from training.synthetic import make_phantom


def test_field_of_view_is_the_canvas_around_the_camera_centre():
    box = field_of_view((0.0, 100.0, 200.0), zoom=2.0, canvas_size=(400, 600))
    assert box == Box(top=0.0, left=50.0, bottom=200.0, right=350.0)
    with pytest.raises(ValueError):
        field_of_view((0, 0), 0.0, (10, 10))


def test_region_covers_the_box_and_lies_over_the_source_pixels():
    # scale 0.5, translate (10, 20): pixel (i, j) is centred on world (10 + i/2, 20 + j/2)
    box = Box(top=20.0, left=25.0, bottom=40.0, right=45.0)
    region = region_in_view(box, (0.5, 0.5), (10.0, 20.0), [(100, 120, 3)], zoom=2.0)
    assert (region.level, region.step) == (0, 1)
    # pixels 20..60 and 10..50: the edge pixels' halves reach into the box
    assert (region.y0, region.y1, region.x0, region.x1) == (20, 61, 10, 51)
    assert region.scale == (0.5, 0.5) and region.translate == (20.0, 25.0)
    assert region.shape == (41, 41)
    outside = Box(top=-100.0, left=-100.0, bottom=-50.0, right=-50.0)
    assert region_in_view(outside, (0.5, 0.5), (10.0, 20.0), [(100, 120, 3)], 2.0) is None


def test_region_reads_the_level_of_the_screen_resolution_within_a_pixel_budget():
    shapes = [(4000, 4000, 3), (2000, 2000, 3), (1000, 1000, 3)]
    whole = Box(0.0, 0.0, 4000.0, 4000.0)
    # 0.3 screen pixels per level-0 pixel: level 1 (2x) is the coarsest still as fine as the screen
    region = region_in_view(whole, (1.0, 1.0), (0.0, 0.0), shapes, zoom=0.3)
    assert region.level == 1 and region.step == 1 and region.shape == (2000, 2000)
    # level-1 pixel j covers level-0 pixels [2j, 2j + 2): centred on 2j + 0.5
    assert region.scale == (2.0, 2.0) and region.translate == (0.5, 0.5)
    # a budget of one megapixel: the 1000 x 1000 level
    assert region_in_view(whole, (1.0, 1.0), (0.0, 0.0), shapes, 0.3, 1_000_000).level == 2
    # a single-scale image over the budget: every n-th pixel, scaled to match
    single = region_in_view(whole, (1.0, 1.0), (0.0, 0.0), shapes[:1], 1.0, 1_000_000)
    assert single.step == 4 and single.shape == (1000, 1000) and single.scale == (4.0, 4.0)
    assert single.translate == (1.5, 1.5)


# ---- the widget (a napari viewer under Xvfb) ----


@pytest.fixture
def phantom() -> np.ndarray:
    image, _, _ = make_phantom("kidney", "hpa", size=384, seed=1)
    return image


def _widget(viewer):
    from napari_ftu._stain_widget import StainPreviewWidget

    return StainPreviewWidget(viewer)


def _errors(monkeypatch) -> list[str]:
    import napari.utils.notifications as notifications

    messages: list[str] = []
    monkeypatch.setattr(notifications, "show_error", messages.append)
    return messages


@pytest.mark.gui
def test_preview_overlays_the_field_of_view(make_napari_viewer, qtbot, phantom):
    viewer = make_napari_viewer()
    viewer.add_image(phantom, name="tissue", rgb=True, scale=(0.5, 0.5), translate=(10, 20))
    camera_of(viewer).center = (10 + 192 * 0.5, 20 + 192 * 0.5)  # the image centre
    camera_of(viewer).zoom = 8.0  # 8 screen pixels per um: level 0, a region smaller than the image
    widget = _widget(viewer)
    widget.method.setCurrentText("Reinhard")
    widget.preview()
    qtbot.waitUntil(lambda: "tissue stain preview" in viewer.layers, timeout=60000)
    layer = viewer.layers["tissue stain preview"]
    assert layer.rgb and tuple(layer.scale) == (0.5, 0.5)
    # the preview's first pixel lies exactly on a source pixel, inside the field of view
    origin = (np.asarray(layer.translate) - (10, 20)) / 0.5
    np.testing.assert_array_equal(origin, np.round(origin))
    box = field_of_view(camera_of(viewer).center, camera_of(viewer).zoom, viewer.canvas.size)
    top_left = np.asarray(layer.translate)
    bottom_right = top_left + (np.asarray(layer.data.shape[:2]) - 1) * 0.5
    assert box.top - 0.5 <= top_left[0] <= box.top + 0.5
    assert box.left - 0.5 <= top_left[1] <= box.left + 0.5
    assert box.bottom - 0.5 <= bottom_right[0] <= box.bottom + 0.5
    assert box.right - 0.5 <= bottom_right[1] <= box.right + 0.5
    assert layer.data.shape[0] < phantom.shape[0]  # only what is in view
    (y, x), (h, w) = origin.astype(int), layer.data.shape[:2]
    assert np.abs(layer.data.astype(int) - phantom[y : y + h, x : x + w]).mean() > 1  # normalised


@pytest.mark.gui
def test_preview_of_a_pyramid_reads_the_level_of_the_screen(make_napari_viewer, qtbot, tmp_path):
    image, _, _ = make_phantom("kidney", "hpa", size=1024, seed=2)
    path = tmp_path / "slide.tiff"
    write_pyramid(path, image, 0.4, tile=128)
    viewer = make_napari_viewer()
    viewer.open(str(path), plugin="napari-ftu")
    camera_of(viewer).center = (512 * 0.4, 512 * 0.4)
    camera_of(viewer).zoom = 1.0  # 0.4 screen pixels per slide pixel: the 2x level
    widget = _widget(viewer)
    widget.preview()
    qtbot.waitUntil(lambda: "slide stain preview" in viewer.layers, timeout=60000)
    layer = viewer.layers["slide stain preview"]
    assert layer.metadata["pyramid_level"] == 1
    np.testing.assert_allclose(layer.scale, (0.8, 0.8))


@pytest.mark.gui
def test_reference_from_another_layer(make_napari_viewer, qtbot, phantom):
    from napari_ftu._stain_widget import BUILTIN_REFERENCE

    viewer = make_napari_viewer()
    viewer.add_image(phantom, name="tissue", rgb=True)
    viewer.add_image(np.asarray(Image.open(BUILTIN_REFERENCE)), name="reference", rgb=True)
    widget = _widget(viewer)
    widget.image.setCurrentText("tissue")
    widget.reference.setCurrentText("Image layer")
    widget.reference_layer.setCurrentText("reference")
    widget.preview()
    qtbot.waitUntil(lambda: "tissue stain preview" in viewer.layers, timeout=60000)
    assert widget._fitted[0][1] == "layer" and widget._fitted[1].fitted


@pytest.mark.gui
def test_a_bad_reference_file_is_a_notification_and_no_layer(
    make_napari_viewer, qtbot, phantom, tmp_path, monkeypatch
):
    errors = _errors(monkeypatch)
    bad = tmp_path / "reference.png"
    bad.write_bytes(b"not an image at all")
    viewer = make_napari_viewer()
    viewer.add_image(phantom, name="tissue", rgb=True)
    widget = _widget(viewer)
    widget.reference_file.setText(str(bad))
    widget.reference.setCurrentText("File")
    widget.preview()
    qtbot.waitUntil(lambda: bool(errors), timeout=60000)
    qtbot.waitUntil(widget.preview_button.isEnabled, timeout=10000)
    assert "reference.png" in errors[0]
    assert [layer.name for layer in viewer.layers] == ["tissue"]


@pytest.mark.gui
def test_no_image_layer_is_a_notification(make_napari_viewer, monkeypatch):
    errors = _errors(monkeypatch)
    viewer = make_napari_viewer()
    _widget(viewer).preview()
    assert errors and "no image layer" in errors[0]
    assert len(viewer.layers) == 0


@pytest.mark.gui
def test_active_normaliser_only_when_checked(make_napari_viewer, qtbot, phantom):
    from napari_ftu._stain_widget import active_normaliser

    viewer = make_napari_viewer()
    assert active_normaliser(viewer) is None  # no stain widget in this viewer
    viewer.add_image(phantom, name="tissue", rgb=True)
    widget = _widget(viewer)
    assert active_normaliser(viewer) is None  # unchecked
    widget.segment_normalised.setChecked(True)
    normaliser = active_normaliser(viewer)
    assert normaliser.fitted and normaliser.method == "macenko"
    assert active_normaliser(viewer) is normaliser  # fitted once, then reused
    widget.method.setCurrentText("Reinhard")
    assert active_normaliser(viewer).method == "reinhard"
    widget.preview()  # a preview with the same settings reuses the fit as well
    qtbot.waitUntil(lambda: "tissue stain preview" in viewer.layers, timeout=60000)
    assert active_normaliser(viewer).method == "reinhard"
    widget.segment_normalised.setChecked(False)
    assert active_normaliser(viewer) is None


@pytest.mark.gui
def test_the_preview_shares_the_slides_units(make_napari_viewer, qtbot, phantom):
    viewer = make_napari_viewer()
    viewer.add_image(phantom, name="tissue", rgb=True, scale=(0.5, 0.5), units=("um", "um"))
    widget = _widget(viewer)
    widget.method.setCurrentText("Reinhard")
    widget.preview()
    qtbot.waitUntil(lambda: "tissue stain preview" in viewer.layers, timeout=60000)
    assert viewer.layers["tissue stain preview"].units == viewer.layers["tissue"].units
    assert viewer.layers.extent.units is not None  # None: napari's "Inconsistent units"
