"""The "Stain normalisation preview" widget: normalise what the canvas shows of an image towards
a reference H&E, as a layer laid over it, and offer the fitted normaliser to segmentation."""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QWidget,
)

from napari_ftu._geometry import Region, camera_of, field_of_view, region_in_view

BUILTIN_REFERENCE = Path(__file__).parent / "resources" / "he_reference.png"
METHOD_NAMES = {"Reinhard": "reinhard", "Macenko": "macenko", "Vahadane": "vahadane"}
REFERENCES = ("Built-in H&E", "Image layer", "File")
REFERENCE_MAX_SIDE = 2048  # reference pixels read from a layer, at most, per side

# viewer -> its docked stain widget; weak both ways round, so neither outlives napari's own refs
_WIDGETS: weakref.WeakKeyDictionary[Any, StainPreviewWidget] = weakref.WeakKeyDictionary()


def active_normaliser(viewer: Any) -> Any:
    """The fitted ``StainNormalizer`` that segmentation in ``viewer`` should use: the stain
    widget's when it is docked there and "Segment on the normalised image" is checked, else
    ``None``. Fits it now, on the caller's thread, if no preview has; raises ``StainError``
    (or ``OSError``) when the chosen reference cannot be used."""
    widget = _WIDGETS.get(viewer)
    try:
        if widget is None or not widget.segment_normalised.isChecked():
            return None
    except RuntimeError:  # the widget was closed: its Qt object is gone
        return None
    return widget.normaliser()


@dataclass(frozen=True)
class PreviewJob:
    """What a preview needs, gathered on the main thread: arrays, never layers."""

    name: str
    source: Any  # the pyramid level's array
    region: Region
    fit: _Fit


@dataclass(frozen=True)
class _Fit:
    method: str
    reference: Any  # a file path or an array-like
    key: tuple[Any, ...]  # what identifies the fit, to reuse one


def fit_normaliser(fit: _Fit) -> Any:
    """A ``StainNormalizer`` fitted to the reference of ``fit``."""
    from training.stain import StainNormalizer

    reference = fit.reference
    if not isinstance(reference, (str, Path)):
        reference = np.asarray(reference)
    return StainNormalizer(fit.method).fit(reference)


def run_preview(job: PreviewJob, normaliser: Any = None) -> tuple[Any, np.ndarray | str]:
    """Fit (unless ``normaliser`` is given) and normalise the job's region; returns the
    normaliser and the RGB pixels, or an error message instead of the pixels. Runs off the main
    thread: it touches no Qt object and no layer."""
    from training.slides import SlideError
    from training.stain import StainError

    try:
        if normaliser is None:
            normaliser = fit_normaliser(job.fit)
        pixels = np.asarray(job.source[job.region.slices])
        return normaliser, normaliser.transform(pixels)
    except (StainError, SlideError, OSError, ValueError) as exc:
        return normaliser, f"stain preview of {job.name}: {exc}"


class StainPreviewWidget(QWidget):
    """Preview stain normalisation of the field of view; optionally segment on it."""

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self._fitted: tuple[tuple[Any, ...], Any] | None = None
        self.worker: Any = None
        self.image = QComboBox()
        self.method = QComboBox()
        self.method.addItems(list(METHOD_NAMES))
        self.method.setCurrentText("Macenko")
        self.reference = QComboBox()
        self.reference.addItems(list(REFERENCES))
        self.reference_layer = QComboBox()
        self.reference_file = QLineEdit()
        self.reference_file.setPlaceholderText("reference image (PNG, JPEG, TIFF, ...)")
        browse = QPushButton("Browse...")
        browse.clicked.connect(self._browse)
        file_row = QHBoxLayout()
        file_row.addWidget(self.reference_file)
        file_row.addWidget(browse)
        self.segment_normalised = QCheckBox("Segment on the normalised image")
        self.preview_button = QPushButton("Preview")
        self.preview_button.clicked.connect(self.preview)
        self.status = QLabel("")
        self.status.setWordWrap(True)

        form = QFormLayout(self)
        form.addRow("image", self.image)
        form.addRow("method", self.method)
        form.addRow("reference", self.reference)
        form.addRow("reference layer", self.reference_layer)
        form.addRow("reference file", file_row)
        form.addRow(self.segment_normalised)
        form.addRow(self.preview_button)
        form.addRow(self.status)

        self.reference.currentTextChanged.connect(self._show_reference_choice)
        self._show_reference_choice()
        events = self.viewer.layers.events
        for event in (events.inserted, events.removed, events.changed):
            event.connect(self._refresh_layers)
        self._refresh_layers()
        _WIDGETS[self.viewer] = self

    def preview(self) -> None:
        """Normalise the chosen image's field of view in a worker; the layer comes back in
        :meth:`_show`, on the main thread."""
        from napari.qt.threading import create_worker
        from napari.utils.notifications import show_error

        try:
            job = self._job()
        except (LookupError, ValueError) as exc:
            show_error(f"stain preview: {exc}")
            return
        cached = self._fitted[1] if self._fitted and self._fitted[0] == job.fit.key else None
        self.preview_button.setEnabled(False)
        self.status.setText(f"normalising {job.name} ({job.fit.method})...")
        self.worker = create_worker(run_preview, job, cached)
        self.worker.returned.connect(lambda result: self._show(job, *result))
        self.worker.finished.connect(lambda: self.preview_button.setEnabled(True))
        self.worker.start()

    def normaliser(self) -> Any:
        """The normaliser fitted to the chosen method and reference (fitted now if needed)."""
        fit = self._fit()
        if self._fitted is None or self._fitted[0] != fit.key:
            self._fitted = (fit.key, fit_normaliser(fit))
        return self._fitted[1]

    def _show(self, job: PreviewJob, normaliser: Any, pixels: np.ndarray | str) -> None:
        from napari.utils.notifications import show_error

        if isinstance(pixels, str):
            self.status.setText("")
            show_error(pixels)
            return
        self._fitted = (job.fit.key, normaliser)
        name = f"{job.name} stain preview"
        region = job.region
        if name in self.viewer.layers and getattr(self.viewer.layers[name], "rgb", False):
            layer = self.viewer.layers[name]
            layer.data = pixels
            layer.scale, layer.translate = region.scale, region.translate
        else:
            if name in self.viewer.layers:
                self.viewer.layers.remove(name)
            layers = self.viewer.layers
            source = layers[job.name] if job.name in layers else None  # noqa: SIM401
            layer = self.viewer.add_image(
                pixels,
                name=name,
                rgb=True,
                scale=region.scale,
                translate=region.translate,
                units=None if source is None else source.units,  # pixel units beside um: napari
            )  # warns "Inconsistent units" and drops the units
        layer.metadata.update(stain_method=job.fit.method, pyramid_level=region.level)
        height, width = pixels.shape[:2]
        self.status.setText(f"{name}: {width} x {height} px from level {region.level}")

    def _job(self) -> PreviewJob:
        layer = self._layer(self.image.currentText(), "no image layer to preview")
        levels = list(layer.data) if layer.multiscale else [layer.data]
        box = field_of_view(
            camera_of(self.viewer).center, camera_of(self.viewer).zoom, self.viewer.canvas.size
        )
        region = region_in_view(
            box,
            layer.scale,
            layer.translate,
            [level.shape for level in levels],
            camera_of(self.viewer).zoom,
        )
        if region is None:
            raise ValueError(f"{layer.name} is not in view; pan or zoom to it")
        return PreviewJob(layer.name, levels[region.level], region, self._fit())

    def _fit(self) -> _Fit:
        method = METHOD_NAMES[self.method.currentText()]
        choice = self.reference.currentText()
        if choice == "Image layer":
            layer = self._layer(self.reference_layer.currentText(), "no reference image layer")
            reference = _reference_pixels(layer)
            return _Fit(method, reference, (method, "layer", id(layer.data)))
        if choice == "File":
            text = self.reference_file.text().strip()
            if not text:
                raise ValueError("choose a reference file")
            return _Fit(method, Path(text), (method, "file", text))
        return _Fit(method, BUILTIN_REFERENCE, (method, "builtin"))

    def _layer(self, name: str, missing: str) -> Any:
        if name not in self.viewer.layers:
            raise LookupError(missing)
        return self.viewer.layers[name]

    def _refresh_layers(self, event: Any = None) -> None:
        from napari.layers import Image

        names = [layer.name for layer in self.viewer.layers if isinstance(layer, Image)]
        for combo in (self.image, self.reference_layer):
            current = combo.currentText()
            combo.blockSignals(True)
            combo.clear()
            combo.addItems([n for n in names if not n.endswith(" stain preview")])
            if current in names:
                combo.setCurrentText(current)
            combo.blockSignals(False)

    def _show_reference_choice(self) -> None:
        choice = self.reference.currentText()
        self.reference_layer.setEnabled(choice == "Image layer")
        self.reference_file.setEnabled(choice == "File")

    def _browse(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Stain reference image")
        if path:
            self.reference_file.setText(path)
            self.reference.setCurrentText("File")


def _reference_pixels(layer: Any) -> Any:
    """The finest level of ``layer`` at most REFERENCE_MAX_SIDE a side (every n-th pixel of the
    coarsest when none is), lazy: it is read in the worker."""
    levels = list(layer.data) if layer.multiscale else [layer.data]
    for level in levels:
        if max(level.shape[:2]) <= REFERENCE_MAX_SIDE:
            return level
    coarsest = levels[-1]
    step = -(-max(coarsest.shape[:2]) // REFERENCE_MAX_SIDE)
    return coarsest[::step, ::step]
