"""The "adapt to unlabeled images" group of "Train on corrections".

It offers the open slides that have a file, and folders the user adds, as unlabeled target
images for ``python -m training.train --target PATH ... --adapt MODE``: the model is adapted
to the user's own lab while it is fine-tuned on the corrections. Nothing checked, or the mode
off, adds no flag. It never imports torch.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from magicgui.widgets import CheckBox, ComboBox, Container, Label, PushButton

from training.retrain_plan import ADAPT_MODES, check_adaptation

__all__ = ["DEFAULT_MODE", "OFF", "AdaptGroup", "layer_file"]

OFF = "off"
# The mode chosen when the first image is checked: both, the best row of the adaptation table
# (docs/benchmarks.md): adapting a phantom-trained model to unlabeled real colon, both lifted
# the held-out crypt Dice from 0.13 (the same time without adaptation) to 0.36, pseudo-labels
# alone to 0.31, grl alone to 0.17; on real PAS kidney no mode helped (all 0.03).
DEFAULT_MODE = "both"
MODE_TIP = (
    "how the model is adapted to the checked images, which need no masks. align features "
    "(grl): the encoder learns features a small classifier cannot tell apart between the "
    "corrections and these images; pseudo-labels: the model's own confident pixels on them are "
    "trained on; both: the two together. Checking an image chooses both, which did best in the "
    "project's measurements (docs/benchmarks.md, the domain-adaptation table). "
    "Each step also trains on a batch of these images: about twice the time."
)
PROBABILITY = " FTU probability"  # the plugin's output layers: not slides


class AdaptGroup(Container):
    """Mode and target images of unsupervised adaptation, kept in step with the open slides."""

    def __init__(self, viewer: Any) -> None:
        self.viewer = viewer
        self.mode = ComboBox(
            label="mode",
            choices=[(OFF, OFF), *((label, key) for key, label in ADAPT_MODES.items())],
            value=OFF,
            tooltip=MODE_TIP,
        )
        self.images = Container(label="images", labels=False)
        self.add_folder_button = PushButton(text="Add folder...")
        self.note = Label(value="")
        title = Label(value="<b>Adapt to unlabeled images</b> (no masks needed)")
        super().__init__(
            label="", widgets=[title, self.mode, self.images, self.add_folder_button, self.note]
        )
        for label in (title, self.note):
            _fit(label)
        self._folders: list[Path] = []
        self._checked: dict[Path, bool] = {}  # kept while the list is rebuilt
        self._listed: list[tuple[Path, CheckBox]] = []
        self.add_folder_button.changed.connect(lambda: self.add_folder())
        self.mode.changed.connect(self._show_note)
        self._events = (viewer.layers.events.inserted, viewer.layers.events.removed)
        for event in self._events:
            event.connect(self.refresh)
        self.native.destroyed.connect(self._disconnect)
        self.refresh()

    def add_folder(self, folder: str | Path | None = None) -> None:
        """Offer ``folder`` (of slides or images, or a dataset folder), checked; without one,
        ask for it."""
        folder = _ask_folder(self.native) if folder is None else folder
        if not folder:
            return
        path = Path(folder).resolve()
        if path not in self._folders:
            self._folders.append(path)
        self._check(path, True)
        self.refresh()

    def refresh(self, _: Any = None) -> None:
        """Rebuild the list from the open slides with a file and the folders added."""
        offered = {}
        for layer in self.viewer.layers:
            path = layer_file(layer)
            if path is not None and not layer.name.endswith(PROBABILITY):
                offered.setdefault(path, layer.name)
        for folder in self._folders:
            offered.setdefault(folder, f"{folder.name}/ (folder)")
        self.images.clear()
        self._listed = []
        for path, name in offered.items():
            box = CheckBox(text=name, value=self._checked.get(path, False), tooltip=str(path))
            box.changed.connect(lambda value, path=path: self._check(path, value))
            self.images.append(_fit(box))
            self._listed.append((path, box))
        if not offered:
            none = Label(value="no open slide with a file: open one, or add a folder")
            self.images.append(_fit(none))
        self._show_note()
        self.changed.emit(self)  # the targets may have changed: the widget re-plans

    def targets(self) -> tuple[Path, ...]:
        """The checked images and folders, in the list's order."""
        return tuple(path for path, box in self._listed if box.value)

    def choice(self) -> tuple[tuple[Path, ...], str | None]:
        """``(target, adapt)`` for the request: ``((), None)`` when off; ``ValueError`` in one
        line when a mode is chosen with nothing checked, or a checked path is gone."""
        if self.mode.value == OFF:
            return (), None
        targets = self.targets()
        check_adaptation(targets, self.mode.value)
        return targets, self.mode.value

    def _check(self, path: Path, value: bool) -> None:
        self._checked[path] = bool(value)
        if value and self.mode.value == OFF:  # checking an image means adapting to it
            self.mode.value = DEFAULT_MODE
        self._show_note()

    def _show_note(self, _: Any = None) -> None:
        count = len(self.targets())
        if self.mode.value == OFF:
            self.note.value = "off: the checked images are not used" if count else ""
        elif count == 0:
            self.note.value = (
                "nothing checked: check an open slide or add a folder, or choose off "
                "(Train refuses until then)"
            )
        else:
            unsized = [p.name for p in self.targets() if p.is_file() and _no_pixel_size(p)]
            self.note.value = f"{count} checked: adapted to while training on the corrections" + (
                f"; {', '.join(unsized)}: no pixel size in the file, give --target-pixel-size UM "
                "in more flags"
                if unsized
                else ""
            )

    def _disconnect(self, *_: Any) -> None:
        for event in self._events:
            event.disconnect(self.refresh)


def layer_file(layer: Any) -> Path | None:
    """The file an image layer shows: the reader's ``metadata["path"]``, napari's
    ``source.path``, or a sample's ``metadata["source"]``; None for images without one."""
    if getattr(layer, "_type_string", None) != "image":
        return None
    meta = layer.metadata or {}
    source = getattr(getattr(layer, "source", None), "path", None)
    for candidate in (meta.get("path"), source, meta.get("source")):
        if isinstance(candidate, str) and candidate and Path(candidate).is_file():
            return Path(candidate).resolve()
    return None


def _no_pixel_size(path: Path) -> bool:
    """Whether an image file carries no pixel size (the trainer then needs
    ``--target-pixel-size``); False when it cannot be read (the trainer says why)."""
    try:
        stat = path.stat()
    except OSError:
        return False
    return _unsized(str(path), stat.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _unsized(path: str, _mtime_ns: int) -> bool:
    # cached per file version: the note is redrawn on every check
    from training.slides import SlideError, open_slide

    try:
        with open_slide(path) as slide:
            return slide.pixel_size_um is None
    except (SlideError, OSError):
        return False


def _fit(widget: Any) -> Any:
    """Keep a long name or note from widening the dock: labels wrap, a checkbox's long layer
    name is cut at the dock's edge (its tooltip gives the path)."""
    from qtpy.QtWidgets import QSizePolicy

    from napari_ftu._train_widget import wrap_label  # loaded: the widget imports this module

    if isinstance(widget, Label):
        wrap_label(widget.native)
    else:
        widget.native.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
    return widget


def _ask_folder(parent: Any) -> str:
    from qtpy.QtWidgets import QFileDialog

    return QFileDialog.getExistingDirectory(parent, "Folder of unlabeled slides or images")
