"""The "Refine boundaries (BPR)" row of "Segment FTUs".

Checked and enabled when the chosen model is a manifest that names a refiner (its ``refiner:``
key); otherwise a file chooser offers a refiner checkpoint (``python -m
training.train_refiner``) and checking the box without one is an error naming it. It never
imports torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from magicgui.widgets import CheckBox, Container, FileEdit, Label

__all__ = ["RefineGroup", "manifest_refiner"]

TIP = (
    "Boundary Patch Refinement: after the tiles, a small network re-predicts patches along "
    "each object's outline at the slide's finer pixel size (the 1/4-resolution decoders leave "
    "blocky outlines). It adds to the run's time: the progress bar counts its patches."
)


class RefineGroup(Container):
    """Whether to refine boundaries after a run, and with which refiner."""

    def __init__(self) -> None:
        self.enabled_box = CheckBox(text="Refine boundaries (BPR)", value=False, tooltip=TIP)
        self.file = FileEdit(
            label="refiner", mode="r", filter="*.pt", tooltip="a refiner checkpoint (.pt)"
        )
        self.note = Label(value="")
        super().__init__(label="", widgets=[self.enabled_box, self.file, self.note])
        self._own: Path | None = None  # the model's own refiner, if its manifest names one

    def show_model(self, model: str | Path | None) -> None:
        """Follow the chosen model: its own refiner checked, else the file chooser offered."""
        self._own = manifest_refiner(model) if model else None
        self.file.visible = self._own is None
        if self._own is not None:
            self.enabled_box.value = True
            self.note.value = f"the model's own: {self._own.name}"
        else:
            self.enabled_box.value = False
            self.note.value = ""

    def choice(self) -> Any:
        """What the engine's ``refiner`` takes: ``None`` (the model's own), ``False`` (none)
        or a refiner file; ``ValueError`` when the box is checked without a refiner."""
        if not self.enabled_box.value:
            return False
        if self._own is not None:
            return None
        chosen = Path(str(self.file.value)) if str(self.file.value).strip() else None
        if chosen is None or not chosen.is_file():
            raise ValueError(
                "Segment FTUs: Refine boundaries is checked but the model has no refiner; "
                "choose a refiner checkpoint (.pt) or uncheck it"
            )
        return chosen


def manifest_refiner(model: str | Path) -> Path | None:
    """The refiner checkpoint a manifest names (``refiner:``), if the file is there."""
    from training.models.ensemble import is_manifest, read_manifest

    path = Path(model)
    if not is_manifest(path) or not path.is_file():
        return None
    try:
        name = read_manifest(path).get("refiner")
    except ValueError:  # a broken manifest is reported when the run loads it
        return None
    refiner = path.parent / name if isinstance(name, str) and name else None
    return refiner if refiner is not None and refiner.is_file() else None
