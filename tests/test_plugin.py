from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from napari_ftu._reader import napari_get_reader
from napari_ftu._sample_data import SHARED_DATA_ENV, phantom_layers, real_kidney_layers
from napari_ftu.cli import build_viewer, widget_names
from training.slides import DICOM_SUFFIXES, REFUSED_SUFFIXES, SLIDE_SUFFIXES, write_pyramid

MANIFEST = Path(__file__).resolve().parents[1] / "napari_ftu" / "napari.yaml"


def test_every_manifest_command_imports():
    manifest = yaml.safe_load(MANIFEST.read_text())
    names = [c["python_name"] for c in manifest["contributions"]["commands"]]
    assert names
    for name in names:
        module, attribute = name.split(":")
        assert callable(getattr(importlib.import_module(module), attribute)), name


def test_every_manifest_module_imports_without_torch():
    manifest = yaml.safe_load(MANIFEST.read_text())
    modules = sorted(
        {c["python_name"].split(":")[0] for c in manifest["contributions"]["commands"]}
    )
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in {'torch', 'timm'})\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_manifest_is_valid_for_npe2():
    npe2 = Path(sys.executable).with_name("npe2")
    result = subprocess.run(
        [str(npe2), "validate", str(MANIFEST)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_reader_patterns_are_the_slide_suffixes():
    manifest = yaml.safe_load(MANIFEST.read_text())
    (reader,) = manifest["contributions"]["readers"]
    patterns = reader["filename_patterns"]
    claimed = SLIDE_SUFFIXES + DICOM_SUFFIXES + tuple(REFUSED_SUFFIXES)
    assert {"*" + suffix for suffix in claimed} <= set(patterns)
    assert all(p.removeprefix("*").removeprefix(".ome").lower() in claimed for p in patterns)
    assert reader["accepts_directories"]  # DICOM slides are folders
    for name in ("a.ome.tif", "a.ome.tiff", "a.ndpi", "a.scn", "a.qptiff", "a.mrxs", "a.dcm"):
        assert napari_get_reader(name) is not None, name


def test_plugin_discovery_and_core_stay_light():
    code = (
        "import sys, training, training.slides, training.synthetic, training.data.catalog, "
        "training.data.rle, napari_ftu._reader, napari_ftu._sample_data\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'torch', 'timm', 'napari', 'qtpy', 'PyQt5', 'PyQt6', 'PySide2', 'PySide6'})\n"
        "print(heavy)\nassert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_reader_declines_what_is_not_a_slide(tmp_path):
    assert napari_get_reader(str(tmp_path / "notes.csv")) is None
    assert napari_get_reader([str(tmp_path / "a.tiff"), str(tmp_path / "b.zarr")]) is None
    assert napari_get_reader(str(tmp_path / "a.SVS")) is not None


def test_reader_layer_data_is_a_micrometre_scaled_pyramid(tmp_path):
    path = tmp_path / "slide.tiff"
    write_pyramid(path, np.full((700, 600, 3), 180, np.uint8), 0.5, tile=128)
    ((data, kwargs, kind),) = napari_get_reader(str(path))(str(path))
    assert kind == "image" and kwargs["multiscale"] and kwargs["rgb"]
    assert [d.shape for d in data][:2] == [(700, 600, 3), (350, 300, 3)]
    assert kwargs["scale"] == (0.5, 0.5)
    assert kwargs["metadata"]["pixel_size_um"] == 0.5
    assert kwargs["metadata"]["path"] == str(path.resolve())


def test_sample_data_is_a_phantom_with_ground_truth():
    (image, image_kw, image_kind), (mask, mask_kw, mask_kind) = phantom_layers("lung", size=256)
    assert image_kind == "image" and mask_kind == "labels"
    assert image.shape == (256, 256, 3) and mask.shape == (256, 256)
    assert image_kw["scale"] == mask_kw["scale"] == (0.4, 0.4)


def test_real_kidney_sample_is_a_held_out_image_with_its_truth(shared_data, monkeypatch):
    monkeypatch.setenv(SHARED_DATA_ENV, str(shared_data))
    (image, image_kw, image_kind), (labels, labels_kw, labels_kind) = real_kidney_layers()
    assert (image_kind, labels_kind) == ("image", "labels")
    assert image.shape == (1200, 1600, 3) and labels.shape == (1200, 1600)
    assert image_kw["scale"] == labels_kw["scale"] == (0.65, 0.65)
    meta = image_kw["metadata"]
    assert meta["organ"] == "kidney" and meta["real"] and meta["pixel_size_um"] == 0.65
    assert int(Path(meta["source"]).stem) >= 245  # held out from the default model's training
    assert labels.max() >= 2  # one label per glomerulus


def test_real_kidney_sample_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setenv(SHARED_DATA_ENV, str(tmp_path))
    with pytest.raises(FileNotFoundError, match=SHARED_DATA_ENV) as error:
        real_kidney_layers()
    assert str(tmp_path) in str(error.value)


@pytest.mark.gui
def test_viewer_opens_a_pyramidal_slide(make_napari_viewer, tmp_path):
    path = tmp_path / "pyr.tiff"
    image = np.random.default_rng(0).integers(0, 255, (1200, 900, 3), dtype=np.uint8)
    write_pyramid(path, image, 0.4, tile=256)
    viewer = make_napari_viewer()
    layers = viewer.open(str(path), plugin="napari-ftu")
    assert len(layers) == 1
    layer = layers[0]
    assert layer.multiscale and layer.rgb
    assert tuple(layer.scale) == (0.4, 0.4)
    assert layer.metadata["pixel_size_um"] == 0.4
    np.testing.assert_array_equal(np.asarray(layer.data[0][10:20, 30:40]), image[10:20, 30:40])


@pytest.mark.gui
def test_viewer_sample_data(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-ftu", "phantom_kidney")
    assert [type(layer).__name__ for layer in viewer.layers] == ["Image", "Labels"]


@pytest.mark.gui
def test_viewer_real_kidney_sample(make_napari_viewer, shared_data, monkeypatch):
    monkeypatch.setenv(SHARED_DATA_ENV, str(shared_data))
    viewer = make_napari_viewer()
    viewer.open_sample("napari-ftu", "kidney_real")
    image, labels = viewer.layers
    assert image.metadata["real"] and tuple(labels.scale) == (0.65, 0.65)


@pytest.mark.gui
def test_launcher_docks_every_widget_and_opens_the_slides(make_napari_viewer, tmp_path):
    from napari.utils.notifications import notification_manager

    from napari_ftu._stain_widget import StainPreviewWidget

    path = tmp_path / "slide.tiff"
    write_pyramid(path, np.full((300, 400, 3), 200, np.uint8), 0.5, tile=128)
    missing = tmp_path / "absent.ndpi"
    viewer = make_napari_viewer()
    records = len(notification_manager.records)
    failed = build_viewer(viewer, [path, missing])
    assert failed == [str(missing)]
    names = widget_names()
    assert "Stain normalisation preview" in names
    docked = dict(viewer.window.dock_widgets)
    assert len(docked) == len(names)
    assert any(isinstance(widget, StainPreviewWidget) for widget in docked.values())
    assert [layer.name for layer in viewer.layers] == ["slide"]
    messages = [record.message for record in notification_manager.records[records:]]
    assert any("no such file" in m and "absent.ndpi" in m for m in messages), messages
    viewer.open(str(path), plugin="napari-ftu")  # still usable
    assert len(viewer.layers) == 2


@pytest.mark.gui
def test_a_format_no_reader_reads_is_refused_with_the_conversion(
    make_napari_viewer, tmp_path, monkeypatch
):
    import napari.utils.notifications as notifications

    from napari_ftu.cli import open_slides

    path = tmp_path / "scan.czi"
    path.write_bytes(b"ZISRAWFILE")
    assert napari_get_reader(str(path)) is not None  # claimed, to say why it is not read
    viewer = make_napari_viewer()
    shown: list[str] = []
    monkeypatch.setattr(notifications, "show_error", shown.append)
    assert open_slides(viewer, [path]) == [str(path)]
    assert "Zeiss CZI" in shown[0] and "bfconvert" in shown[0] and not len(viewer.layers)


def test_a_region_job_pastes_what_the_whole_slide_job_has_there(monkeypatch):
    """The job of a drawn rectangle reads its region on the whole slide's working grid: with a
    model that sees each pixel alone, its map equals the whole slide's at its origin, and both
    jobs name the same grid (so they share one mask store)."""
    import threading

    import torch
    from helpers import member
    from torch import nn

    import training.models.ensemble
    from napari_ftu._segment_job import SegmentRequest, segment_job
    from training.models.ensemble import Ensemble
    from training.synthetic import make_phantom

    class Pointwise(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return (x[:, :1] - x[:, 1:2]) / 32

    ensemble = Ensemble([member(Pointwise(), pixel_size=1.0, tile=64)])
    monkeypatch.setattr(training.models.ensemble, "load_ensemble", lambda *_: ensemble)
    image = make_phantom("kidney", size=500, seed=2, pixel_size_um=0.4, tissue_fraction=1.0)[0]

    def job(region):
        request = SegmentRequest(image, 0.4, "kidney", Path("pointwise"), "cpu", region)
        steps = segment_job(request, threading.Event())
        while True:
            try:
                next(steps)
            except StopIteration as stop:
                return stop.value

    whole, part = job(None), job((101, 37, 203, 150))  # level-0 pixels, 0.4 um each
    assert whole.grid == part.grid and whole.grid.shape == (200, 200)
    assert whole.grid.downsample == pytest.approx(2.5) and whole.grid.pixel_size_um == 1.0
    assert part.origin == (40, 14)  # floor(101 / 2.5), floor(37 / 2.5)
    got = np.asarray(part.result.probability)
    assert got.shape == (82, 61)  # up to ceil(304 / 2.5) = 122 and ceil(187 / 2.5) = 75
    y, x = part.origin
    expected = np.asarray(whole.result.probability)[y : y + got.shape[0], x : x + got.shape[1]]
    np.testing.assert_allclose(got, expected, atol=1e-5)


@pytest.mark.gui
def test_launcher_shows_the_segment_tab_first_with_readable_titles(make_napari_viewer):
    from qtpy.QtWidgets import QApplication, QTabBar

    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1280, 900)
    build_viewer(viewer, [])
    for _ in range(10):  # the tab bar is laid out from posted events
        QApplication.processEvents()
    (bar,) = [
        bar
        for bar in viewer.window._qt_window.findChildren(QTabBar)
        if bar.isVisible() and bar.count() == len(widget_names())
    ]
    titles = [bar.tabText(i) for i in range(bar.count())]
    assert titles == ["Segment", "Review", "Measurements", "Export", "Import", "Train", "Stain"]
    assert bar.tabText(bar.currentIndex()) == "Segment"
    for i, title in enumerate(titles):  # wide enough for the whole title: not elided
        assert bar.tabRect(i).width() > bar.fontMetrics().horizontalAdvance(title), title


@pytest.mark.gui
def test_a_slide_without_a_pixel_size_shares_the_micrometre_units(make_napari_viewer, tmp_path):
    import tifffile

    tifffile.imwrite(tmp_path / "plain.tiff", np.full((64, 64, 3), 200, np.uint8))
    write_pyramid(tmp_path / "slide.tiff", np.full((64, 64, 3), 200, np.uint8), 0.5)
    viewer = make_napari_viewer()
    (plain,) = viewer.open(str(tmp_path / "plain.tiff"), plugin="napari-ftu")
    viewer.open(str(tmp_path / "slide.tiff"), plugin="napari-ftu")
    assert plain.metadata["pixel_size_um"] is None and tuple(plain.scale) == (1.0, 1.0)
    assert viewer.layers.extent.units is not None  # None: napari's "Inconsistent units"
