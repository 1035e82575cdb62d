"""The "Export corrections" dock widget: an FTU mask, as corrected, to a dataset folder
(``train.csv`` + ``train_images/``, what training reads) and to QuPath GeoJSON.

A mask small enough to edit in place exports its whole image; a larger one exports the regions
a pathologist reviewed and applied, each its own row. The writing is
:func:`training.data.export.export_job`, run in a worker; an id or file that exists is replaced
only after a yes to :func:`confirm_overwrite`, and what it replaces is kept as a backup.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, Label, LineEdit, PushButton

from napari_ftu._ftu_layers import (
    LEVEL0_KEY,
    SESSION_KEY,
    level0,
    level0_shape,
    mask_layer_names,
)

__all__ = ["ExportWidget", "confirm_overwrite"]


def confirm_overwrite(ids: list[str]) -> bool:
    """Ask whether to replace rows and files that exist (a Qt question; tests replace it)."""
    from qtpy.QtWidgets import QMessageBox

    shown = ", ".join(ids[:8]) + (f" and {len(ids) - 8} more" if len(ids) > 8 else "")
    answer = QMessageBox.question(
        None,
        "Export corrections",
        f"The output folder already has {shown}.\nReplace? The replaced rows go to "
        "train.backup.csv, the replaced images and GeoJSON to .backup/ folders.",
        QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
        QMessageBox.StandardButton.No,
    )
    return answer == QMessageBox.StandardButton.Yes


class ExportWidget(Container):
    """Export the chosen FTU mask to a dataset folder and/or QuPath GeoJSON."""

    def __init__(self, napari_viewer: Any) -> None:
        self.viewer = napari_viewer
        self.mask = ComboBox(label="FTU mask", choices=self._mask_choices)
        self.image_id = LineEdit(label="id", tooltip="row id and file name of the export")
        self.folder = FileEdit(label="output folder", mode="d")
        self.data_source = LineEdit(label="data source", value="napari-ftu")
        self.annotator = LineEdit(label="annotator")
        self.thickness = LineEdit(label="tissue thickness (um)", tooltip="may be left empty")
        self.dataset = CheckBox(text="dataset folder (train.csv + train_images/)", value=True)
        self.geojson = CheckBox(text="QuPath GeoJSON (geojson/<id>.geojson)", value=True)
        self.export_button = PushButton(text="Export")
        self.status = Label(value="")
        super().__init__(
            widgets=[
                self.mask, self.image_id, self.folder, self.data_source, self.annotator,
                self.thickness, self.dataset, self.geojson, self.export_button, self.status,
            ]
        )  # fmt: skip
        self.worker: Any = None
        self.written: Any = None  # the last export's ExportResult
        self._folder: Path | None = None  # the folder being written
        self.mask.changed.connect(self._prefill)
        self.export_button.changed.connect(self.export)
        for event in (napari_viewer.layers.events.inserted, napari_viewer.layers.events.removed):
            event.connect(self._layers_changed)
        self._prefill()

    def _mask_choices(self, _: Any = None) -> list[str]:
        return mask_layer_names(self.viewer)

    def _layers_changed(self, _: Any = None) -> None:
        self.mask.reset_choices()

    def _prefill(self, _: Any = None) -> None:
        from training.data.export import safe_id

        session, image = self._session_and_image()
        if session is None:
            return
        path = (image.metadata or {}).get("path") if image is not None else None
        self.image_id.value = safe_id(Path(path).name.split(".")[0] if path else session.name)

    def _session_and_image(self) -> tuple[Any, Any]:
        name = self.mask.value
        if name not in self.viewer.layers:
            return None, None
        session = self.viewer.layers[name].metadata.get(SESSION_KEY)
        layers = self.viewer.layers
        image = layers[session.name] if session.name in layers else None  # noqa: SIM401
        return session, image

    @property
    def running(self) -> bool:
        """Whether an export is being written."""
        return self.worker is not None

    def export(self, _: Any = None) -> None:
        """Check, ask before replacing anything, then write in a worker; problems are error
        notifications and write nothing."""
        if self.running:
            return
        try:
            plan = self._plan()
        except ValueError as exc:  # ExportError, CatalogError, a bad field
            self.status.value = f"nothing written: {exc}"  # not the last export's "wrote ..."
            _show_error(f"Export corrections: {exc}")
            return
        if plan is None:
            return
        self.status.value = "writing..."
        from napari.qt.threading import thread_worker

        worker = thread_worker(_write, start_thread=False, ignore_errors=True)(plan)
        worker.yielded.connect(self._on_progress)
        worker.returned.connect(self._on_returned)
        worker.errored.connect(self._on_error)
        worker.finished.connect(self._on_finished)
        self.worker, self._folder = worker, plan["folder"]
        self.export_button.enabled = False
        worker.start()

    def _plan(self) -> dict[str, Any] | None:
        """What to write, checked; ``None`` when the user declines to replace."""
        from napari_ftu._writer import session_pieces
        from training.data.export import (
            ExportInfo,
            check_writable,
            existing_outputs,
            safe_id,
        )
        from training.measure.qupath import measurements_of

        session, image = self._session_and_image()
        if session is None:
            raise ValueError("there is no FTU mask to export (segment or import one first)")
        if image is None:
            raise ValueError(f"the image layer {session.name!r} of the mask is not open")
        if not (self.dataset.value or self.geojson.value):
            raise ValueError("tick dataset folder, QuPath GeoJSON or both")
        folder_text = str(self.folder.value).strip()
        if folder_text in ("", "."):
            raise ValueError("choose an output folder")
        if not Path(folder_text).expanduser().is_absolute():  # would land where napari started
            raise ValueError(f"choose an output folder by its full path (not {folder_text!r})")
        image_id = safe_id(str(self.image_id.value) or session.name)
        info = ExportInfo(
            organ=session.organ,
            pixel_size_um=session.grid.pixel_size_um / session.grid.downsample,
            data_source=str(self.data_source.value).strip(),
            tissue_thickness=_thickness(str(self.thickness.value)),
            annotator=str(self.annotator.value).strip(),
            measurements=measurements_of(self.viewer.layers[self.mask.value].features),
        )
        if session.store is not None:
            session.flush()  # a large mask's regions are read from its store
        mask = self.viewer.layers[self.mask.value]
        shape0 = mask.metadata.get(LEVEL0_KEY) or level0_shape(image)
        pieces = session_pieces(session, image_id, tuple(shape0))
        folder = check_writable(folder_text)
        geojson_id = image_id if self.geojson.value else None
        ids = [p.image_id for p in pieces] if self.dataset.value else []
        existing = existing_outputs(folder, ids, geojson_id)
        if existing and not confirm_overwrite(existing):
            self.status.value = "nothing written (replacing was declined)"
            return None
        path = (image.metadata or {}).get("path")
        source = path if path else level0(image)
        return {
            "folder": folder,
            "pieces": pieces,
            "source": source,
            "info": info,
            "geojson_id": geojson_id,
            "dataset": bool(self.dataset.value),
        }

    def _on_progress(self, message: str) -> None:
        self.status.value = message

    def _on_returned(self, result: Any) -> None:
        from napari.utils.notifications import show_info

        self.written = result
        parts = []
        if result.rows:
            parts.append(f"{len(result.rows)} row(s) ({', '.join(r['id'] for r in result.rows)})")
        parts += [str(f.relative_to(self._folder)) for f in result.files if f.suffix == ".geojson"]
        self.status.value = "wrote " + " and ".join(parts)
        show_info(f"Export corrections: wrote {' and '.join(parts)} in {self._folder}")

    def _on_error(self, exc: BaseException) -> None:
        self.status.value = "failed"
        _show_error(f"Export corrections failed: {type(exc).__name__}: {exc}")

    def _on_finished(self) -> None:
        self.worker = None
        self.export_button.enabled = True


def _write(plan: dict[str, Any]) -> Any:
    """The worker's job: open the slide (a file) or wrap the array, and write."""
    from training.data.export import export_job
    from training.slides import Slide, open_slide

    source, info = plan["source"], plan["info"]
    if isinstance(source, str):
        slide = open_slide(source)
    else:
        slide = Slide.from_array(source, info.pixel_size_um)
    try:
        return (
            yield from export_job(
                plan["folder"],
                plan["pieces"],
                slide,
                info,
                plan["geojson_id"],
                plan["dataset"],
            )
        )
    finally:
        if isinstance(source, str):
            slide.close()


def _thickness(text: str) -> float | None:
    text = text.strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"the tissue thickness {text!r} is not a number") from None
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"the tissue thickness must be positive; got {text}")
    return value


def _show_error(message: str) -> None:
    from napari.utils.notifications import show_error

    show_error(message)
