"""The whole loop a pathologist runs, through the widgets: segment with a tiny model, edit,
export, train one short epoch on the export, the new model is selected, segment again. On a
phantom slide file, and on a real kidney image from the shared data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import tiny_checkpoint

from napari_ftu import _export_widget, _segment_widget, _train_widget
from napari_ftu._export_widget import ExportWidget
from napari_ftu._ftu_layers import SESSION_KEY, mask_name
from napari_ftu._sample_data import SHARED_DATA_ENV, real_kidney_layers
from napari_ftu._segment_widget import SegmentWidget
from napari_ftu._train_widget import TrainWidget
from training.data import rle
from training.data.catalog import read_catalog, upsert_row
from training.inference import resize_labels
from training.slides import write_pyramid
from training.synthetic import make_phantom

pytestmark = pytest.mark.gui
RUN_TIMEOUT_MS = 300_000
TINY = "--samples-per-epoch 4 --batch-size 2 --workers 0 --tile 64 --no-progress"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("model") / "tiny.pt")


@pytest.fixture(scope="module")
def earlier(tmp_path_factory) -> Path:
    """Earlier corrections (two kidney phantoms), so the new export is not the only data."""
    folder = tmp_path_factory.mktemp("earlier") / "data"
    for seed in (5, 6):
        image, mask, meta = make_phantom("kidney", "hpa", 256, seed, pixel_size_um=2.0)
        row = {"id": f"earlier{seed}", "organ": "kidney", "data_source": meta["data_source"]}
        upsert_row(folder, {**row, "pixel_size": 2.0, "rle": rle.encode(mask)}, image=image)
    return folder


@pytest.fixture
def errors(monkeypatch) -> list[str]:
    shown: list[str] = []
    for module in (_segment_widget, _export_widget, _train_widget):
        monkeypatch.setattr(module, "_show_error", shown.append)
    return shown


def run_loop(viewer, qtbot, image, tiny_model, earlier, out: Path, errors) -> None:
    segment = SegmentWidget(viewer)
    viewer.window.add_dock_widget(segment, name="Segment FTUs")
    segment.image.value, segment.organ.value = image.name, "kidney"
    segment.add_model(tiny_model, "tiny")
    segment.threshold.value = 0.5
    segment.start()
    qtbot.waitUntil(lambda: not segment.running, timeout=RUN_TIMEOUT_MS)
    assert not errors, errors
    mask = viewer.layers[mask_name(image.name)]

    # the pathologist outlines one FTU and erases whatever the untrained model found elsewhere
    mask.data_setitem(tuple(np.nonzero(mask.data)), 0)
    ys, xs = np.mgrid[20:40, 30:60]
    mask.data_setitem((ys.ravel(), xs.ravel()), 1)
    edited = np.array(mask.data)

    exporter = ExportWidget(viewer)
    exporter.mask.value = mask.name
    exporter.folder.value = out
    exporter.export()
    qtbot.waitUntil(lambda: not exporter.running, timeout=60_000)
    assert not errors, errors
    (row,) = read_catalog(out).itertuples()
    height, width = row.img_height, row.img_width
    session = mask.metadata[SESSION_KEY]
    level0 = image.data[0] if image.multiscale else image.data
    assert (height, width) == tuple(level0.shape[:2])
    expected = resize_labels(edited, (height, width)) > 0  # the edited mask at level 0, exactly
    np.testing.assert_array_equal(rle.decode(row.rle, (height, width)), expected)

    trainer = TrainWidget(viewer)
    viewer.window.add_dock_widget(trainer, name="Train on corrections")
    trainer.corrections.value = out
    trainer.add_earlier_folder(earlier)
    trainer.out.value = out.parent / "run"
    trainer.epochs.value, trainer.device.value, trainer.flags.value = 1, "cpu", TINY
    trainer.start()  # 3 images leave one to validate on: a warning first, nothing started
    assert not trainer.running and trainer.train_button.text == "Train anyway"
    trainer.start()
    qtbot.waitUntil(lambda: not trainer.running, timeout=RUN_TIMEOUT_MS)
    assert not errors, trainer.log.value
    new_model = out.parent / "run" / "best.pt"
    offered = [value for value in segment.model.choices if value == str(new_model)]
    assert offered, segment.model.choices  # the new model is offered in "Segment FTUs"
    if "not selected" in trainer.status.value:  # it scored below the tiny model it started from
        assert segment.model.value == str(tiny_model), trainer.status.value
        segment.model.value = str(new_model)  # the pathologist picks it all the same
    else:  # at least as good on the same validation images: selected
        assert segment.model.value == str(new_model), trainer.status.value

    segment.start()  # segment again, with the new model
    qtbot.waitUntil(lambda: not segment.running, timeout=RUN_TIMEOUT_MS)
    assert not errors, errors
    assert session.model == str(new_model)
    assert viewer.layers[mask_name(image.name)] is mask


def test_the_loop_on_a_phantom_slide(
    make_napari_viewer, qtbot, tiny_model, earlier, tmp_path, errors
):
    image, _, _ = make_phantom("kidney", "hpa", 512, 3, pixel_size_um=1.0)
    path = write_pyramid(tmp_path / "slide.tiff", image, 1.0, tile=128)
    viewer = make_napari_viewer()
    (layer,) = viewer.open(str(path), plugin="napari-ftu")
    run_loop(viewer, qtbot, layer, tiny_model, earlier, tmp_path / "export", errors)


def test_the_loop_on_a_real_kidney_image(
    make_napari_viewer, qtbot, tiny_model, earlier, tmp_path, errors, shared_data, monkeypatch
):
    monkeypatch.setenv(SHARED_DATA_ENV, str(shared_data))
    (data, kwargs, _), _ = real_kidney_layers()
    viewer = make_napari_viewer()
    layer = viewer.add_image(data, **kwargs)
    run_loop(viewer, qtbot, layer, tiny_model, earlier, tmp_path / "export", errors)
