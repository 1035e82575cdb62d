"""The "Train on corrections" widget in a real viewer: a tiny fine-tuning run in a child
process, the new model offered in "Segment FTUs" (selected only when it scored no lower than
the model before), before/after Dice, switch back, the run's plan and its validation warning, a
bad dataset, cancel, closing the viewer during a run, and the layout."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from helpers import phantom_dataset, tiny_checkpoint

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
    return tiny_checkpoint(tmp_path_factory.mktemp("init") / "start.pt")


@pytest.fixture(scope="module")
def blank_checkpoint(tmp_path_factory) -> Path:
    """A tiny model that finds nothing (validation Dice 0): any trained model scores no lower."""
    model = build_model("swin_micro_upernet", input_size=64)
    with torch.no_grad():
        model.head[1].weight.zero_()
        model.head[1].bias.fill_(-50.0)
    path = tmp_path_factory.mktemp("blank") / "blank.pt"
    return save_checkpoint(path, model, {"pixel_size_um": 2.0, "tile_size": 64})


@pytest.fixture
def errors(monkeypatch) -> list[str]:
    shown: list[str] = []
    monkeypatch.setattr(_train_widget, "_show_error", shown.append)
    return shown


@pytest.fixture
def warnings_shown(monkeypatch) -> list[str]:
    shown: list[str] = []
    monkeypatch.setattr(_train_widget, "_show_warning", shown.append)
    return shown


def train_anyway(train: TrainWidget) -> None:
    """Click Train, then "Train anyway" past the one-validation-image warning of 3 images."""
    train.train_button.clicked.emit()
    assert not train.running and train.train_button.text == "Train anyway"
    train.train_button.clicked.emit()


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


def test_training_offers_the_new_model_and_switches_back(
    qtbot, widgets, corrections, blank_checkpoint, start_checkpoint, errors, warnings_shown
):
    segment, train = widgets
    segment.add_model(blank_checkpoint, "blank")  # the model in use finds nothing
    before = segment.model.value
    run = Path(train.out.value)
    train.corrections.value = corrections
    assert train.start_note.value == "starts from blank.pt"
    train.start_from.value = "file"
    train.checkpoint.value = start_checkpoint
    train_anyway(train)
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
    assert version.val_images == 1 and version.init == str(start_checkpoint)
    assert version.before_val_dice == 0 and "not selected" not in train.status.value
    assert train.progress.value == 100 and "epoch 1/1 done" in train.log.value
    assert "1/1 done at" in train.plan_note.value and "crops/s here" in train.plan_note.value
    # listed in the versions table, and in any Segment FTUs made later
    assert train.versions.shape[0] == 1
    assert version.label in SegmentWidget(segment.viewer)._models
    # one click back to the model used before
    assert train.switch_back.enabled and "blank.pt" in train.switch_back.text
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
    train.start()  # one image, none to validate on: a warning first
    assert not train.running and "no validation image" in train.status.value
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
    train_anyway(train)
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


def test_a_model_scoring_below_the_previous_is_offered_not_selected(
    qtbot, widgets, corrections, blank_checkpoint, errors, warnings_shown
):
    segment, train = widgets
    segment.model.value = str(default_model_path())  # finds the phantoms' glomeruli
    train.corrections.value = corrections
    train.start_from.value = "file"
    train.checkpoint.value = blank_checkpoint  # finds nothing, nor after 4 crops of training
    train_anyway(train)
    qtbot.waitUntil(lambda: not train.running, timeout=RUN_TIMEOUT_MS)
    assert errors == [], train.log.value
    (version,) = list_versions()
    assert version.best_val_dice < version.before_val_dice
    # offered in Segment FTUs, the model used before stays selected, and the status says why
    assert version.label in segment._models
    assert segment.model.value == str(default_model_path())
    assert "not selected" in train.status.value and "below the previous" in train.status.value
    assert not train.switch_back.enabled


def test_the_plan_sizes_a_few_images_to_minutes_and_warns_first(
    widgets, shared_data, tmp_path, errors, warnings_shown
):
    """One real corrected kidney image and the default model: a run of about a minute at the
    rate the kidney specialist trained at (512 px tiles), and a warning before anything runs."""
    import shutil

    segment, train = widgets
    segment.model.value = str(default_model_path())
    source = shared_data / "hubmap-kidney-pas"
    header, first = (source / "train.csv").read_text().splitlines()[:2]
    folder = tmp_path / "one"
    (folder / "train_images").mkdir(parents=True)
    (folder / "train.csv").write_text(f"{header}\n{first}\n")
    image = next((source / "train_images").glob(first.split(",")[0] + ".*"))
    shutil.copy(image, folder / "train_images" / image.name)
    train.flags.value = ""
    train.epochs.value = 4  # the widget's default
    train.corrections.value = folder
    plan = train.plan_note.value
    assert "1 training + 0 validation image(s); 4 epoch(s) of 25 crops of 512 px" in plan
    assert "about 1 min of training" in plan and "no validation image" in plan
    assert "--samples-per-epoch" in (command := train_command_of(train))
    assert command[command.index("--samples-per-epoch") + 1] == "25"
    train.train_button.clicked.emit()
    assert not train.running and list_versions() == []
    assert len(warnings_shown) == 1 and "no validation image" in warnings_shown[0]
    assert "not started" in train.status.value and train.train_button.text == "Train anyway"
    train.epochs.value = 2  # a changed form: the plan again, and the warning again
    assert train.train_button.text == "Train" and "2 epoch(s)" in train.plan_note.value


def train_command_of(train: TrainWidget) -> list[str]:
    from training.retrain import train_command

    return train_command(train.request())


def test_closing_the_viewer_during_a_run_stops_the_child(
    qtbot, widgets, corrections, errors, warnings_shown
):
    _, train = widgets
    train.corrections.value = corrections
    train.flags.value = TINY.replace("--samples-per-epoch 4", "--samples-per-epoch 100000")
    train_anyway(train)
    qtbot.waitUntil(lambda: "validation images" in train.log.value, timeout=RUN_TIMEOUT_MS)
    pid, worker = train._job._child.pid, train.worker
    with qtbot.waitSignal(worker.finished, timeout=60_000):
        train.viewer.close()  # Qt keeps running: the worker ends on its own, touching no widget
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)


def test_long_notes_wrap_and_versions_show_their_columns(
    qtbot, make_napari_viewer, corrections, start_checkpoint
):
    from qtpy.QtWidgets import QApplication

    from training.models.versions import ModelVersion, register

    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1200, 800)
    segment, train = SegmentWidget(viewer), TrainWidget(viewer)
    viewer.window.add_dock_widget(segment, name="Segment FTUs")
    dock = viewer.window.add_dock_widget(train, name="Train on corrections", tabify=True)
    canvas = viewer.window._qt_viewer.canvas.native

    def settle() -> None:  # let the posted layout requests run, up to the main window
        for _ in range(10):
            QApplication.processEvents()

    settle()
    width = dock.width()
    train.corrections.value = corrections  # the default ensemble's long note, and the plan
    assert len(train.start_note.value) > 150 and len(train.plan_note.value) > 100
    settle()
    assert dock.width() <= width and dock.minimumSizeHint().width() <= width
    assert canvas.width() > 500
    register(ModelVersion(str(start_checkpoint), "2026-12-04T20:40:00", "init.pt", ["corr"], 0.8))
    train.refresh_versions()
    table = train.versions
    assert list(table.column_headers) == [
        "created", "val Dice", "before", "data", "started from", "adapted", "checkpoint"
    ]  # fmt: skip
    assert table.shape == (1, 7) and table.data[0][1] == "0.800" and table.data[0][5] == "-"
