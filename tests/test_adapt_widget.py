""""Train on corrections" adapting to unlabeled images: the open slides with a file and added
folders offered as ``--target``, the mode as ``--adapt``, the plan, the refusal of a mode with
nothing checked, the versions table, and (once ``training.train`` has ``--target``) a real run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
from helpers import phantom_dataset, tiny_checkpoint
from PIL import Image

import training.retrain
from napari_ftu import _adapt_group, _train_widget
from napari_ftu._adapt_group import DEFAULT_MODE, OFF
from napari_ftu._train_widget import TrainWidget
from training.models.versions import ModelVersion, list_versions, register
from training.slides import write_pyramid
from training.synthetic import make_phantom

pytestmark = pytest.mark.gui
RUN_TIMEOUT_MS = 240_000
TINY = "--samples-per-epoch 4 --batch-size 2 --workers 0 --tile 64 --no-progress"


class Recorder:
    """Stands in for the child process: records the command the widget starts, which then
    ends at once with exit status 2 (nothing trains)."""

    commands: ClassVar[list[list[str]]] = []

    def __init__(self, argv: list[str], env: dict[str, str] | None = None) -> None:
        self.commands.append(list(argv))
        self.pid = 0

    def output(self):
        return iter(())

    def wait(self) -> int:
        return 2

    def stop(self) -> None:
        pass


@pytest.fixture
def started(monkeypatch) -> list[list[str]]:
    """The commands the widget starts (none runs)."""
    monkeypatch.setattr(Recorder, "commands", [])
    monkeypatch.setattr(training.retrain, "ChildProcess", Recorder)
    return Recorder.commands


@pytest.fixture
def errors(monkeypatch) -> list[str]:
    shown: list[str] = []
    monkeypatch.setattr(_train_widget, "_show_error", shown.append)
    monkeypatch.setattr(_train_widget, "_show_warning", lambda _: None)
    return shown


@pytest.fixture(scope="module")
def corrections(tmp_path_factory) -> Path:
    return phantom_dataset(tmp_path_factory.mktemp("export") / "corrections", ("kidney",), 128)


@pytest.fixture(scope="module")
def start_checkpoint(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("init") / "start.pt")


@pytest.fixture(scope="module")
def slides(tmp_path_factory) -> dict[str, Path]:
    """A colon phantom as a slide (TIFF, our reader), one as a PNG (napari's own reader), and a
    folder of two more PNGs, one text file and a subfolder."""
    root = tmp_path_factory.mktemp("slides")
    images = [make_phantom("largeintestine", "hpa", 96, s, pixel_size_um=2.0)[0] for s in range(4)]
    folder = root / "lab"
    (folder / "deeper").mkdir(parents=True)
    for seed in (2, 3):
        Image.fromarray(images[seed]).save(folder / f"slide{seed}.png")
    (folder / "notes.txt").write_text("not an image")
    Image.fromarray(images[1]).save(root / "plain.png")
    return {
        "tiff": write_pyramid(root / "colon.tiff", images[0], 2.0),
        "png": root / "plain.png",
        "folder": folder,
    }


@pytest.fixture
def train(make_napari_viewer, start_checkpoint, corrections, tmp_path) -> TrainWidget:
    viewer = make_napari_viewer()
    widget = TrainWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Train on corrections")
    widget.start_from.value = "file"
    widget.checkpoint.value = start_checkpoint
    widget.corrections.value = corrections
    widget.out.value = tmp_path / "run"
    widget.epochs.value = 1
    widget.device.value = "cpu"
    widget.flags.value = TINY
    yield widget
    if widget._job is not None:  # a failed test must not leave a child training
        widget._job.cancel()


def boxes(train: TrainWidget) -> dict[str, object]:
    """The group's checkboxes by their text."""
    return {box.text: box for box in train.adaptation.images if hasattr(box, "text")}


def click_train(qtbot, train: TrainWidget) -> None:
    """Train, past the one-validation-image warning of three images, until the job ends."""
    train.train_button.clicked.emit()
    if train.train_button.text == "Train anyway":
        train.train_button.clicked.emit()
    qtbot.waitUntil(lambda: not train.running, timeout=10_000)


def test_the_group_lists_the_open_slides_with_a_file(train, slides):
    viewer = train.viewer
    assert train.adaptation.mode.value == OFF and "no open slide" in str(
        train.adaptation.images[0].value
    )
    (tiff,) = viewer.open(str(slides["tiff"]), plugin="napari-ftu")  # metadata["path"]
    viewer.open(str(slides["png"]), plugin="napari")  # napari's reader: only source.path
    viewer.add_image(np.zeros((32, 32, 3), np.uint8), rgb=True, name="in memory")  # no file
    listed = boxes(train)
    assert list(listed) == ["colon", "plain"]
    assert [Path(b.tooltip) for b in listed.values()] == [slides["tiff"], slides["png"]]
    assert not any(b.value for b in listed.values())
    listed["colon"].value = True
    note = train.adaptation.note
    assert note.value.startswith("1 checked") and "pixel size" not in note.value
    listed["plain"].value = True  # a PNG: the trainer needs its pixel size, the note says so
    assert "plain.png: no pixel size in the file, give --target-pixel-size UM" in note.value
    viewer.layers.remove("plain")  # closed: gone, the check of the other kept
    assert list(boxes(train)) == ["colon"] and boxes(train)["colon"].value
    assert note.value.startswith("1 checked") and "pixel size" not in note.value
    viewer.layers.remove(tiff)
    assert boxes(train) == {}


def test_a_checked_slide_and_mode_reach_the_command(qtbot, train, slides, started, errors):
    train.viewer.open(str(slides["tiff"]), plugin="napari-ftu")
    boxes(train)["colon"].value = True
    assert train.adaptation.mode.value == DEFAULT_MODE  # checking an image chooses the mode
    assert f"adapting to 1 unlabeled image(s) ({DEFAULT_MODE})" in train.plan_note.value
    train.adaptation.mode.value = "pseudo"
    assert "(pseudo)" in train.plan_note.value
    click_train(qtbot, train)
    (command,) = started
    at = command.index("--target")
    assert command[at : at + 4] == ["--target", str(slides["tiff"]), "--adapt", "pseudo"]
    assert errors == ["Train on corrections failed: it ended with exit status 2"]


def test_nothing_checked_or_mode_off_adds_no_flag(qtbot, train, slides, started, errors):
    train.viewer.open(str(slides["tiff"]), plugin="napari-ftu")
    click_train(qtbot, train)  # listed, not checked
    boxes(train)["colon"].value = True
    train.adaptation.mode.value = OFF  # checked, but off
    assert train.adaptation.note.value == "off: the checked images are not used"
    assert "adapting" not in train.plan_note.value
    click_train(qtbot, train)
    assert len(started) == 2
    for command in started:
        assert "--target" not in command and "--adapt" not in command


def test_an_added_folder_is_listed_checked_and_counted(
    qtbot, train, slides, started, errors, monkeypatch
):
    train.viewer.open(str(slides["tiff"]), plugin="napari-ftu")
    boxes(train)["colon"].value = True
    monkeypatch.setattr(_adapt_group, "_ask_folder", lambda parent: str(slides["folder"]))
    train.adaptation.add_folder_button.clicked.emit()
    listed = boxes(train)
    assert list(listed) == ["colon", "lab/ (folder)"] and listed["lab/ (folder)"].value
    # the slide and the folder's two images (not its text file, nor its subfolder)
    assert f"adapting to 3 unlabeled image(s) ({DEFAULT_MODE})" in train.plan_note.value
    monkeypatch.setattr(_adapt_group, "_ask_folder", lambda parent: "")  # dialog cancelled
    train.adaptation.add_folder_button.clicked.emit()
    assert list(boxes(train)) == ["colon", "lab/ (folder)"]
    click_train(qtbot, train)
    (command,) = started
    at = command.index("--target")
    assert command[at : at + 5] == [
        "--target", str(slides["tiff"]), str(slides["folder"]), "--adapt", DEFAULT_MODE
    ]  # fmt: skip


def test_a_mode_with_nothing_checked_is_refused_in_one_line(qtbot, train, started, errors):
    train.adaptation.mode.value = "both"
    assert "nothing checked" in train.adaptation.note.value
    assert train.plan_note.value == ""  # no plan for a form that cannot run
    train.train_button.clicked.emit()
    assert not train.running and started == []
    assert errors == [
        "Train on corrections: adapting (both) needs unlabeled target images: check an open "
        "slide or add a folder, or turn adaptation off"
    ]


def test_the_versions_table_says_what_a_version_was_adapted_to(train, start_checkpoint):
    register(ModelVersion(str(start_checkpoint), "2026-12-04T23:00:00", "i.pt", ["corr"], 0.8))
    register(
        ModelVersion(
            str(start_checkpoint), "2026-12-04T23:30:00", "i.pt", ["corr"], 0.9,
            adapt="grl", target_images=3,
        )
    )  # fmt: skip
    train.refresh_versions()
    table = train.versions.to_dict("dict")
    assert list(table["adapted"].values()) == ["grl, 3 unlabeled images", "-"]  # newest first


def test_long_names_and_notes_do_not_widen_the_dock(qtbot, make_napari_viewer, slides, tmp_path):
    from qtpy.QtWidgets import QApplication

    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1200, 800)
    train = TrainWidget(viewer)
    dock = viewer.window.add_dock_widget(train, name="Train on corrections")

    def settle() -> None:  # let the posted layout requests run, up to the main window
        for _ in range(10):
            QApplication.processEvents()

    settle()
    width = dock.width()
    long = tmp_path / f"{'a very long slide name from the scanner ' * 4}.tiff"
    long.write_bytes(slides["tiff"].read_bytes())
    viewer.open(str(long), plugin="napari-ftu")
    train.adaptation.add_folder(slides["folder"])
    train.adaptation.mode.value = "both"
    for box in boxes(train).values():
        box.value = False
    assert "nothing checked" in train.adaptation.note.value
    settle()
    assert dock.width() <= width and dock.minimumSizeHint().width() <= width


@pytest.fixture(scope="module")
def train_has_target() -> None:
    """Skip unless ``python -m training.train`` has ``--target`` (branch feat/adapt)."""
    helped = subprocess.run(
        [sys.executable, "-m", "training.train", "--help"], capture_output=True, text=True
    )
    if "--target" not in helped.stdout:
        pytest.skip("python -m training.train has no --target yet (issue 22, branch feat/adapt)")


def test_a_real_run_adapts_and_registers_the_adaptation(
    qtbot, train_has_target, train, slides, errors
):
    """The whole loop with the flags: trains, is scored before/after and registered with the
    number of unlabeled images the checkpoint records."""
    train.flags.value = TINY + " --target-pixel-size 2"  # the PNGs carry no pixel size
    train.viewer.open(str(slides["tiff"]), plugin="napari-ftu")
    boxes(train)["colon"].value = True
    train.adaptation.add_folder(slides["folder"])
    train.train_button.clicked.emit()
    train.train_button.clicked.emit()  # past the one-validation-image warning
    assert train.running
    qtbot.waitUntil(lambda: not train.running, timeout=RUN_TIMEOUT_MS)
    assert errors == [], train.log.value
    assert "--target" in train.log.value and train.status.value.startswith("done")
    (version,) = list_versions()
    assert (version.adapt, version.target_images) == (DEFAULT_MODE, 3)
    assert train.versions.to_dict("dict")["adapted"] == {0: f"{DEFAULT_MODE}, 3 unlabeled images"}
    assert set(train.comparison.to_dict("dict")) == {"before", "after"}
