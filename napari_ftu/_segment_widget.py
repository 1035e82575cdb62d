"""The "Segment FTUs" dock widget: pick an image, organ, model and region; run; tune the mask.

The run happens in a generator ``thread_worker`` (``_segment_job.segment_job``); this module
only turns its events into layers, on the main thread: a probability layer that fills in band
by band while tiles finish, then the probability and the FTU mask (one label per FTU) laid
exactly over the slide. Cancel, errors and a second click are handled so that the viewer stays
usable and no partial layer is left behind.
"""

from __future__ import annotations

import importlib.util
import math
import threading
from pathlib import Path
from typing import Any

import numpy as np
from magicgui.widgets import (
    ComboBox,
    Container,
    FileEdit,
    FloatSlider,
    FloatSpinBox,
    Label,
    LineEdit,
    PushButton,
)
from qtpy.QtCore import QTimer

from napari_ftu import _placement
from napari_ftu._ftu_layers import (
    SESSION_KEY,
    Preview,
    level0,
    level0_shape,
    mask_name,
    probability_name,
    session_of,
    show_mask,
    show_probability,
    show_session,
)
from napari_ftu._geometry import camera_of
from napari_ftu._refine_group import RefineGroup
from napari_ftu._segment_job import JobResult, SegmentRequest, segment_job, slide_hints
from training.organs import ORGANS

__all__ = ["SESSION_KEY", "SegmentWidget", "mask_name", "probability_name"]

# no organ until something says which (the slide's train.csv or metadata, its saved mask, the
# user): a guess would label exported training data wrongly without a word
ORGAN_CHOICES = [("choose...", None), *((organ, organ) for organ in ORGANS)]
REGIONS = ("whole slide", "field of view", "drawn rectangle")
AUTOSAVE_MS = 2000
THRESHOLD_STEP = 0.01
MASK_DELAY_MS = 30


def default_model_path() -> Path:
    """The bundled ensemble's manifest, found without importing torch (plugin discovery)."""
    package = Path(importlib.util.find_spec("training").origin).parent
    return package / "models" / "default" / "ensemble.yaml"


class SegmentWidget(Container):
    """Segment FTUs in the chosen image with the chosen model; then threshold and min area."""

    def __init__(self, napari_viewer: Any) -> None:
        self.viewer = napari_viewer
        self._models: dict[str, Path] = {"default model (bundled)": default_model_path()}
        self._models.update(_registered_models())  # the models a user trained, oldest first
        self.image = ComboBox(label="image", choices=self._image_choices)
        self.organ = ComboBox(label="organ", choices=ORGAN_CHOICES, value=None)
        self.pixel_size = LineEdit(label="pixel size (um)", tooltip="um per level-0 pixel")
        self.model = ComboBox(label="model", choices=self._model_choices)
        self.model_file = FileEdit(
            label="add model",
            mode="r",
            filter="*.pt *.yaml *.yml *.json",
            tooltip=("a checkpoint (.pt) or an ensemble manifest (.yaml/.json)"),
        )
        self.device = ComboBox(label="device", choices=("auto", "cpu", "cuda"))
        self.region = ComboBox(label="region", choices=REGIONS)
        self.rectangles = ComboBox(label="rectangle layer", choices=self._shapes_choices)
        self.overlap = FloatSpinBox(label="tile overlap", min=0.0, max=0.75, step=0.05, value=0.25)
        self.tta = ComboBox(
            label="TTA", choices=[("none", 1), ("flips (x4)", 4), ("flips + transposes (x8)", 8)]
        )
        self.refine = RefineGroup()  # BPR
        self.run_button = PushButton(text="Segment FTUs")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.threshold = FloatSlider(
            label="threshold", min=0.01, max=0.99, step=THRESHOLD_STEP, value=0.5
        )
        self.min_area = FloatSpinBox(label="min area (um²)", min=0.0, max=1e7, step=100.0)
        self.status = Label(value="")
        # the domain check's warning after a run on an image unlike the model's training data
        self.notes = Label(value="", visible=False)
        self.notes.native.setWordWrap(True)  # a long warning must not widen the dock
        super().__init__(
            widgets=[
                self.image, self.organ, self.pixel_size, self.model, self.model_file,
                self.device, self.region, self.rectangles, self.overlap, self.tta,
                self.refine, self.run_button, self.cancel_button, self.threshold, self.min_area,
                self.status, self.notes,
            ]
        )  # fmt: skip
        self.worker: Any = None
        self._showing = False  # the result's mask layer is yet to be added
        self._cancel = threading.Event()
        self._progress: Any = None
        self._preview: Any = None  # the probability layer filling in during a run (Preview)
        self._request: SegmentRequest | None = None
        self._image_name = ""

        self.image.changed.connect(self._prefill)
        self.model.changed.connect(self.refine.show_model)
        self.refine.show_model(self.model.value)
        self.model_file.changed.connect(self._add_model_file)
        self.run_button.changed.connect(self.start)
        self.cancel_button.changed.connect(self.cancel)
        self.threshold.changed.connect(self._settings_changed)
        self.min_area.changed.connect(self._settings_changed)
        self.region.changed.connect(self._show_rectangles)
        for event in (napari_viewer.layers.events.inserted, napari_viewer.layers.events.removed):
            event.connect(self._layers_changed)
        napari_viewer.layers.events.inserted.connect(self._restore_inserted)
        self._show_rectangles()
        for layer in list(napari_viewer.layers):
            if layer._type_string == "image":
                self.restore(layer)
        self._prefill()
        # edits in the mask layer (painting, undo, redo: none reliably signals) reach the disk
        # within a couple of seconds; the save is skipped when nothing changed
        self._autosave = QTimer(self.native)
        self._autosave.setInterval(AUTOSAVE_MS)
        self._autosave.timeout.connect(self.save_edits)
        self._autosave.start()

    # ------------------------------------------------------------------ choices and prefill
    def _image_choices(self, _: Any = None) -> list[str]:
        return [
            layer.name
            for layer in self.viewer.layers
            if layer._type_string == "image" and not layer.name.endswith(" FTU probability")
        ]

    def _shapes_choices(self, _: Any = None) -> list[str]:
        return [layer.name for layer in self.viewer.layers if layer._type_string == "shapes"]

    def _model_choices(self, _: Any = None) -> list[tuple[str, str]]:
        return [(name, str(path)) for name, path in self._models.items()]

    def _layers_changed(self, _: Any = None) -> None:
        self.image.reset_choices()
        self.rectangles.reset_choices()

    def _restore_inserted(self, event: Any) -> None:
        layer = event.value
        if layer._type_string == "image" and not layer.name.endswith(" FTU probability"):
            self.restore(layer)

    def _show_rectangles(self, _: Any = None) -> None:
        self.rectangles.visible = self.region.value == "drawn rectangle"

    def add_model(self, path: str | Path, label: str | None = None) -> None:
        """Offer a checkpoint or ensemble manifest in the model list and select it."""
        path = Path(path)
        label = label or path.name
        self._models[label] = path
        self.model.reset_choices()
        self.model.value = str(path)

    def refresh_models(self) -> None:
        """Add the model versions registered since (by "Train on corrections"); the selected
        model stays selected."""
        for label, path in _registered_models().items():
            self._models.setdefault(label, path)
        self.model.reset_choices()

    def _add_model_file(self, value: Any) -> None:
        if value and Path(value).is_file():
            self.add_model(value)

    def _prefill(self, _: Any = None) -> None:
        layer = self._image_layer()
        if layer is None:
            return
        meta = layer.metadata or {}
        hints = slide_hints(meta.get("path"))
        organ = meta.get("organ") or hints.get("organ")
        self.organ.value = organ if organ in ORGANS else None
        size = meta.get("pixel_size_um") or hints.get("pixel_size_um")
        self.pixel_size.value = f"{size:g}" if size else ""
        session = self.session()
        if session is not None:
            self._show_settings(session)  # its organ: the one its mask was last made for

    def _image_layer(self) -> Any:
        name = self.image.value
        return self.viewer.layers[name] if name in self.viewer.layers else None  # noqa: SIM401

    # ------------------------------------------------------------------ the run
    @property
    def running(self) -> bool:
        """Whether a segmentation is under way (its layers included)."""
        return self.worker is not None or self._showing

    def start(self, _: Any = None) -> None:
        """Start a segmentation; a click while one runs does nothing."""
        if self.running:
            return
        try:
            request = self.request()
        except ValueError as exc:
            _show_error(str(exc))
            return
        from napari.qt.threading import thread_worker

        self._request, self._image_name = request, self.image.value
        self._preview = Preview(self.viewer, self._image_layer())
        self._cancel = threading.Event()
        # errors become notifications here (_on_error), not tracebacks re-raised in the GUI
        worker = thread_worker(segment_job, start_thread=False, ignore_errors=True)(
            request, self._cancel
        )
        worker.yielded.connect(self._on_progress)
        worker.returned.connect(self._on_returned)
        worker.errored.connect(self._on_error)
        worker.finished.connect(self._on_finished)
        self.worker = worker
        self.run_button.enabled, self.cancel_button.enabled = False, True
        self.status.value = "starting..."
        self._show_domain(None)
        worker.start()

    def cancel(self, _: Any = None) -> None:
        """Stop the run between batches; its partial layers are removed."""
        if self.running:
            self._cancel.set()
            self.status.value = "cancelling..."

    def request(self) -> SegmentRequest:
        """The run the widget's fields describe; ``ValueError`` naming what is missing."""
        layer = self._image_layer()
        if layer is None:
            raise ValueError("Segment FTUs: open an image first (there is no image layer)")
        text = str(self.pixel_size.value).strip()
        try:
            pixel_size = float(text)
        except ValueError:
            raise ValueError(
                f"Segment FTUs: the pixel size of {layer.name!r} is unknown; enter it in um "
                "per pixel (e.g. 0.5)"
            ) from None
        if not (math.isfinite(pixel_size) and pixel_size > 0):
            raise ValueError(f"Segment FTUs: the pixel size must be positive; got {text}")
        if self.organ.value not in ORGANS:
            raise ValueError(
                f"Segment FTUs: choose the organ of {layer.name!r} (neither a train.csv beside "
                "the slide nor its metadata says which)"
            )
        model = Path(self.model.value)
        if not model.is_file():
            raise ValueError(f"Segment FTUs: the model file {model} does not exist")
        path = (layer.metadata or {}).get("path")
        # a slide file is read lazily, level by level; an image without one is taken whole
        image = path if path else np.asarray(level0(layer))
        return SegmentRequest(
            image=image,
            pixel_size_um=pixel_size,
            organ=self.organ.value,
            model=model,
            device=self.device.value,
            region=self._region_box(layer),
            overlap=float(self.overlap.value),
            tta=int(self.tta.value),
            stain=_active_normaliser(self.viewer),
            refine=self.refine.choice(),
        )

    def _region_box(self, layer: Any) -> tuple[int, int, int, int] | None:
        if self.region.value == "whole slide":
            return None
        if self.region.value == "field of view":
            corners = _screen_corners(self.viewer)
            where = "the field of view"
        else:
            name = self.rectangles.value
            shapes = self.viewer.layers[name] if name in self.viewer.layers else None  # noqa: SIM401
            corners = _placement.drawn_rectangle(shapes)
            if corners is None:
                raise ValueError(
                    "Segment FTUs: draw a rectangle in a Shapes layer first (region: drawn "
                    "rectangle)"
                )
            where = "the drawn rectangle"
        shape = level0_shape(layer)
        box = _placement.world_to_pixels(*corners, layer.scale, layer.translate, shape)
        if box is None:
            raise ValueError(f"Segment FTUs: {where} does not cover any of {layer.name!r}")
        return box

    def _on_progress(self, event: Any) -> None:
        from napari.utils import progress

        if self.worker is None:  # an event queued behind the end of the run
            return
        if event.band is not None:
            self._preview.show(event.band, self._request.pixel_size_um)
        self.status.value = event.message
        # last: napari's progress bar may process Qt events, among them the run's end
        if self._progress is None:
            self._progress = progress(total=event.total, desc="Segment FTUs")
        bar = self._progress
        bar.total = event.total  # grows when boundary refinement adds its patches
        bar.update(event.done - bar.n)
        bar.set_description(event.message)

    def _on_returned(self, job: JobResult | None) -> None:
        if job is None:
            self._preview.remove()
            self.status.value = "cancelled"
            return
        try:
            self._show_domain(job.domain)
            self._show_result(job)
        finally:
            job.result.close()
            self._preview.remove()  # a preview not taken over by the result

    def _on_error(self, exc: BaseException) -> None:
        self._preview.remove()
        self.status.value = "failed"
        _show_error(f"Segment FTUs failed: {_describe(exc)}")

    def _on_finished(self) -> None:
        if self._progress is not None:
            self._progress.close()
            self._progress = None
        self.worker = None
        self._idle()

    def _idle(self) -> None:
        if not self.running:
            self.run_button.enabled, self.cancel_button.enabled = True, False

    def _show_domain(self, check: Any) -> None:
        """The domain check's warning under the status line and as a notification when the
        image is far from the model's training data; nothing otherwise."""
        far = check is not None and check.far
        self.notes.value = f"⚠ {check.message}" if far else ""
        self.notes.tooltip = check.line(self._image_name) if check is not None else ""
        self.notes.visible = far
        if far:
            from napari.utils.notifications import show_warning

            show_warning(f"Segment FTUs: {self._image_name}: {check.message}")

    # ------------------------------------------------------------------ results and tuning
    def session(self, image: str | None = None) -> Any:
        """The FTU session of an image layer (its mask layer's), or ``None``."""
        return session_of(self.viewer, image or self.image.value)

    def _show_result(self, job: JobResult) -> None:
        from napari_ftu._ftu_layers import new_session

        result, name, grid = job.result, self._image_name, job.grid
        layer = self.viewer.layers[name]
        session = self.session(name)
        if session is None or session.grid != grid:
            if session is not None and _has_work(session):  # never replaced silently
                _show_error(
                    f"Segment FTUs: the FTU mask of {name!r} holds edits or imported annotations "
                    "on another grid than this model's; export them (Export corrections) or "
                    "remove the mask layer, then segment again"
                )
                return
            if session is not None:  # another model scale: the old layers cannot take it
                for old in (probability_name(name), mask_name(name)):
                    if old in self.viewer.layers:
                        self.viewer.layers.remove(old)
            try:
                session = new_session(layer, result, grid)
            except ValueError as exc:  # e.g. a saved mask store made for another slide
                _show_error(f"Segment FTUs: {exc}")
                return
        # a run's objects are the model's: its threshold and minimum area, as the job found them;
        # the organ is the latest run's (an export labels the mask with it)
        session.threshold, session.min_area_um2 = result.threshold, result.min_area_um2
        session.model, session.organ = str(job.model), result.organ
        session.add_result(np.asarray(result.probability), job.origin, job.labels)
        self._save(session)  # on disk as soon as it is shown (the saving runs in the background)
        show_probability(self.viewer, layer, session, self._preview)
        # the mask layer in the next turn of the event loop: adding both layers at once
        # stalls the viewer for longer than either (the run counts as running until then)
        self._showing = True
        # (after a pause, so that input and painting get their turn between the two)
        tissue = job.tissue_area_mm2  # (None after a region run: the slide's stays as it was)
        QTimer.singleShot(MASK_DELAY_MS, lambda: self._show_mask(layer, session, tissue))

    def _show_mask(self, layer: Any, session: Any, tissue_mm2: float | None = None) -> None:
        from napari_ftu._measure_layer import TISSUE_KEY

        try:
            if layer in self.viewer.layers:
                mask = show_mask(self.viewer, layer, session)
                if tissue_mm2 is not None:  # the Measurements summary's density
                    mask.metadata = {**mask.metadata, TISSUE_KEY: tissue_mm2}
                self._update_status(session, session.derived_counts)
                self._show_settings(session)
        finally:
            self._showing = False
            self._idle()

    def restore(self, layer: Any) -> bool:
        """Show the FTUs saved for a slide file (edits included); whether there were any."""
        from napari_ftu._ftu_layers import saved_session

        if mask_name(layer.name) in self.viewer.layers:
            return False
        try:
            session = saved_session(layer)
        except (ValueError, OSError) as exc:
            _show_error(f"napari-ftu: the saved FTU mask of {layer.name!r} is not used: {exc}")
            return False
        if session is None:
            return False
        show_session(self.viewer, layer, session)
        if layer.name == self.image.value:
            # a slide opened after the widget was prefilled (without this session): the controls
            # show what the mask was made with, so a nudge re-derives from those values
            self._show_settings(session)
            self._update_status(session)
        return True

    def save_edits(self) -> None:
        """Write every in-memory mask that changed to its slide's mask store."""
        for layer in list(self.viewer.layers):
            session = (layer.metadata or {}).get(SESSION_KEY)
            if session is None or layer.name != mask_name(session.name):
                continue
            if self._save(session) and session.name == self.image.value:
                self._update_status(session)

    def _save(self, session: Any) -> bool:
        """``session.save()``; a failed save is an error notification (once for the same
        error) and stays on the status line until a save succeeds."""
        from training.review.store import MaskStoreError

        before = session.save_error
        try:
            changed = session.save()
        except MaskStoreError as exc:
            if str(exc) != before:
                _show_error(f"napari-ftu: {exc}")
            changed = False
        if session.name != self.image.value:
            return changed
        if session.save_error:
            self.status.value = f"NOT SAVED: {session.save_error}"
            return False
        return changed or self.status.value.startswith("NOT SAVED")  # saved since: the counts

    def _show_settings(self, session: Any) -> None:
        """Show a session's organ, threshold and minimum area, without re-deriving its objects
        from a half-updated pair on the way."""
        if session.organ in ORGANS:
            self.organ.value = session.organ
        with self.threshold.changed.blocked(), self.min_area.changed.blocked():
            self.threshold.value = round(session.threshold, 2)
            self.min_area.value = session.min_area_um2

    def _settings_changed(self, _: Any = None) -> None:
        session = self.session()
        if session is None or self.running:
            return
        threshold, min_area = float(self.threshold.value), float(self.min_area.value)
        # the slider shows the stored threshold rounded to its step: that is no change
        same_threshold = abs(threshold - session.threshold) < THRESHOLD_STEP / 2 + 1e-9
        if same_threshold and min_area == session.min_area_um2:
            return
        session.rederive(threshold, min_area)
        mask = self.viewer.layers[mask_name(session.name)]
        if not session.grid.direct_edit:
            mask.data = session.mask_data()
        mask.refresh()
        self._update_status(session, session.derived_counts)

    def _update_status(self, session: Any, counts: Any = None) -> None:
        counts = counts or session.counts()
        self.status.value = (
            f"FTUs: {counts.objects} · edited: {counts.edited} · erased: {counts.erased}"
        )


def _registered_models() -> dict[str, Path]:
    """Label -> checkpoint of the trained model versions whose file exists."""
    from training.models.versions import VersionsError, available_models, list_versions

    try:
        return available_models(list_versions())
    except VersionsError as exc:
        _show_error(f"napari-ftu: the list of trained models is not used: {exc}")
        return {}


def _has_work(session: Any) -> bool:
    """Whether a session holds anything a pathologist would lose with its layers."""
    if getattr(session, "imported", False):
        return True
    counts = session.counts()
    return bool(counts.edited or counts.erased)


def _screen_corners(viewer: Any) -> tuple[np.ndarray, np.ndarray]:
    """The world corners (top left, bottom right) of what the canvas shows."""
    from napari_ftu._geometry import field_of_view

    camera = camera_of(viewer)
    box = field_of_view(camera.center, camera.zoom, viewer.canvas.size)
    return np.array([box.top, box.left]), np.array([box.bottom, box.right])


def _active_normaliser(viewer: Any) -> Any:
    """The stain preview's normaliser when "segment on the normalised image" is ticked."""
    from napari_ftu._stain_widget import active_normaliser
    from training.stain import StainError

    try:
        return active_normaliser(viewer)
    except (StainError, OSError) as exc:
        raise ValueError(f"Segment FTUs: the stain normalisation cannot be used: {exc}") from None


def _describe(exc: BaseException) -> str:
    if isinstance(exc, MemoryError) or "out of memory" in str(exc).lower():
        return f"out of memory ({exc}); try the CPU, a smaller region, or no TTA"
    return f"{type(exc).__name__}: {exc}" if not str(exc) else str(exc)


def _show_error(message: str) -> None:
    from napari.utils.notifications import show_error

    show_error(message)
