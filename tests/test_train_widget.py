"""The "Train on corrections" widget in a real viewer: a tiny fine-tuning run in a child
process, the new model offered in "Segment FTUs", before/after Dice, switch back, a bad dataset
and cancel."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers import phantom_dataset

from napari_ftu import _train_widget
from napari_ftu._segment_widget import SegmentWidget
from napari_ftu._train_widget import TrainWidget
from training.data.catalog import upsert_row
from training.models import build_model, save_checkpoint
from training.models.default import default_model_path
from training.models.versions import list_versions

pytestmark = pytest.mark.gui
RUN_TIMEOUT_MS = 240_000
TINY = "--samples-per-epoch 4 --batch-size 2 --workers 0 --tile 64 --no-progress"


@pytest.fixture(scope="module")
def corrections(tmp_path_factory) -> Path:
    """Three kidney phantoms of 256 px at 2 um/px, as an exported dataset folder."""
    return phantom_dataset(tmp_path_factory.mktemp("export") / "corrections", ("kidney",), 256)


@pytest.fixture(scope="module")
def start_checkpoint(tmp_path_factory) -> Path:
    model = build_model("swin_micro_upernet", input_size=64)
    path = tmp_path_factory.mktemp("init") / "start.pt"
    return save_checkpoint(path, model, {"pixel_size_um": 2.0, "tile_size": 64})


@pytest.fixture
def errors(monkeypatch) -> list[str]:
    shown: list[str] = []
    monkeypatch.setattr(_train_widget, "_show_error", shown.append)
    return shown


@pytest.fixture
def widgets(make_napari_viewer, start_checkpoint, tmp_path):
    """Segment FTUs (the tiny checkpoint selected) and Train on corrections, docked together."""
    viewer = make_napari_viewer()
    segment = SegmentWidget(viewer)
    viewer.window.add_dock_widget(segment, name="Segment FTUs")
    segment.add_model(start_checkpoint, "start")
    train = TrainWidget(viewer)
    viewer.window.add_dock_widget(train, name="Train on corrections")
    train.out.value = tmp_path / "run"
    train.epochs.value = 1
    train.device.value = "cpu"
    train.flags.value = TINY
    yield segment, train
    if train._job is not None:  # a failed test must not leave a child training
        train._job.cancel()


def test_training_offers_the_new_model_and_switches_back(qtbot, widgets, corrections, errors):
    segment, train = widgets
    before = segment.model.value
    run = Path(train.out.value)
    train.corrections.value = corrections
    assert train.start_note.value == "starts from start.pt"
    train.start()
    assert train.running and not train.train_button.enabled
    qtbot.waitUntil(lambda: not train.running, timeout=RUN_TIMEOUT_MS)
    assert errors == [], train.log.value
    (version,) = list_versions()
    checkpoint = Path(version.path)
    assert checkpoint == run / "best.pt" and checkpoint.is_file()
    # offered and selected in Segment FTUs under a label with its date and score
    assert segment.model.value == str(checkpoint)
    combo = segment.model.native
    labels = [combo.itemText(i) for i in range(combo.count())]
    assert version.label in labels and version.label.startswith("trained ")
    assert "val Dice" in version.label
    # before and after side by side, on the same validation image
    table = train.comparison.to_dict("dict")
    assert set(table) == {"before", "after"}
    assert all(value != "-" for value in table["before"].values())
    assert table["after"]["all"] == f"{version.best_val_dice:.3f}"
    assert table["before"]["all"] == f"{version.before_val_dice:.3f}"
    assert "1 validation image" in train.comparison_note.value
    assert version.val_images == 1 and version.init == before
    assert train.progress.value == 100 and "epoch 1/1 done" in train.log.value
    # listed in the versions table, and in any Segment FTUs made later
    assert train.versions.shape[0] == 1
    assert version.label in SegmentWidget(segment.viewer)._models
    # one click back to the model used before
    assert train.switch_back.enabled and "start.pt" in train.switch_back.text
    train.switch_back.clicked.emit()
    assert segment.model.value == before
    assert Path(train.out.value) != checkpoint.parent  # the next run gets a new folder


def test_a_bad_dataset_shows_the_trainers_message_and_keeps_the_model(
    qtbot, widgets, corrections, tmp_path, errors
):
    segment, train = widgets
    selected = segment.model.value
    bad = tmp_path / "bad"
    row = {"id": "lost", "organ": "kidney", "data_source": "HPA", "pixel_size": 2.0, "rle": ""}
    upsert_row(bad, {**row, "img_height": 256, "img_width": 256})  # a row without its image
    train.corrections.value = bad
    train.start()
    qtbot.waitUntil(lambda: not train.running, timeout=RUN_TIMEOUT_MS)
    assert len(errors) == 1 and "image lost has no file in train_images" in errors[0]
    assert "failed:" in train.log.value and train.status.value == "failed"
    assert segment.model.value == selected and list_versions() == []
    assert not train.switch_back.enabled


def test_cancel_stops_the_child_and_its_run(qtbot, widgets, corrections, errors):
    segment, train = widgets
    selected = segment.model.value
    run = Path(train.out.value)
    train.corrections.value = corrections
    train.flags.value = TINY.replace("--samples-per-epoch 4", "--samples-per-epoch 100000")
    train.start()
    qtbot.waitUntil(lambda: "validation images" in train.log.value, timeout=RUN_TIMEOUT_MS)
    pid = train._job._child.pid
    train.cancel_button.clicked.emit()
    qtbot.waitUntil(lambda: not train.running, timeout=60_000)
    assert train.status.value == "cancelled" and errors == []
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)  # neither the trainer nor any child of its group is left
    assert (run / "CANCELLED").is_file() and not (run / "best.pt").exists()
    assert segment.model.value == selected and list_versions() == []


def test_an_ensemble_starts_from_its_member_for_the_organ(widgets, corrections, errors):
    segment, train = widgets
    segment.model.value = str(default_model_path())
    train.corrections.value = corrections
    path, note = train.start_model()
    assert path.name == "kidney_coat_daformer.pt" and "ensemble" in note and "kidney" in note
    assert train.start_note.value == note
    assert train.request().previous == default_model_path()
    train.add_earlier_folder(corrections.parent, 0.5)
    train.add_earlier_folder()  # left empty: not used
    assert train.request().earlier == ((corrections.parent, 0.5),)
    train.earlier[0][2].clicked.emit()  # remove
    assert train.request().earlier == ()
    train.start_from.value = "file"
    assert not train.checkpoint.native.isHidden()
    train.start()  # no checkpoint chosen: a notification, nothing started
    assert not train.running and "checkpoint" in errors[-1]
