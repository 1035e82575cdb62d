"""The "Train on corrections" dock widget: fine-tune a model on an exported dataset folder.

Training runs as a child process (``python -m training.train``, then ``python -m
training.evaluate`` for the score before), driven by :class:`training.retrain.RetrainJob` in a
generator ``thread_worker``; this module turns its events into the log, the progress bar and,
on the main thread, the new model offered in "Segment FTUs". It never imports torch.
"""

from __future__ import annotations

import contextlib
import shlex
from pathlib import Path
from typing import Any

from magicgui.widgets import (
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    Label,
    LineEdit,
    ProgressBar,
    PushButton,
    SpinBox,
    Table,
    TextEdit,
)

from napari_ftu._adapt_group import AdaptGroup
from napari_ftu._segment_widget import SegmentWidget, default_model_path

__all__ = ["TrainWidget"]

SELECTED, FILE = "selected", "file"
TRAIN, TRAIN_ANYWAY = "Train", "Train anyway"
LOG_LINES = 5000  # the log keeps this many lines


class TrainWidget(Container):
    """Fine-tune on corrections in a child process; offer the result in "Segment FTUs"."""

    def __init__(self, napari_viewer: Any) -> None:
        from training.models.versions import next_run_dir

        self.viewer = napari_viewer
        self.corrections = FileEdit(
            label="corrections", mode="d", tooltip="the exported dataset folder (train.csv)"
        )
        self.earlier = Container(label="earlier data", labels=False)
        self.add_earlier = PushButton(text="add earlier data folder")
        self.start_from = ComboBox(
            label="start from",
            choices=[("the model selected in Segment FTUs", SELECTED), ("a checkpoint", FILE)],
        )
        self.checkpoint = FileEdit(label="checkpoint", mode="r", filter="*.pt", visible=False)
        self.start_note = Label(value="")
        self.epochs = SpinBox(label="epochs", min=1, max=1000, value=4)
        self.time_limit = FloatSpinBox(
            label="time limit (min)", min=0, max=100_000, step=5, value=0, tooltip="0: none"
        )
        self.device = ComboBox(label="device", choices=("auto", "cpu", "cuda"))
        self.out = FileEdit(label="output folder", mode="d", value=next_run_dir())
        self.flags = LineEdit(
            label="more flags",
            tooltip="further flags of python -m training.train, e.g. --lr 1e-4 "
            "--samples-per-epoch 500 (docs/training.md)",
        )
        self.adaptation = AdaptGroup(napari_viewer)  # --target/--adapt: open slides, folders
        self.plan_note = Label(value="")
        self.train_button = PushButton(text=TRAIN)
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(label="progress", min=0, max=100, value=0)
        self.status = Label(value="")
        self.log = TextEdit(label="log")
        self.comparison = Table(label="validation Dice")
        self.comparison_note = Label(value="")
        self.switch_back = PushButton(text="switch back", enabled=False)
        self.versions = Table(label="model versions")
        super().__init__(
            widgets=[
                self.corrections, self.earlier, self.add_earlier, self.start_from,
                self.checkpoint, self.start_note, self.epochs, self.time_limit, self.device,
                self.out, self.flags, self.adaptation, self.plan_note, self.train_button,
                self.cancel_button, self.progress, self.status, self.log, self.comparison,
                self.comparison_note, self.switch_back, self.versions,
            ]
        )  # fmt: skip
        notes = (self.start_note, self.plan_note, self.status, self.comparison_note)
        for note in (*notes, self.adaptation.note):
            wrap_label(note.native)
        self.log.native.setReadOnly(True)
        self.log.native.document().setMaximumBlockCount(LOG_LINES)
        self.worker: Any = None
        self._job: Any = None
        self._previous: Path | None = None  # the model selected before the last training
        self._warned: Any = None  # the request whose validation warning the user has seen
        self._plan: Any = None  # the running job's plan

        self.add_earlier.changed.connect(self.add_earlier_folder)
        self.start_from.changed.connect(self._show_start)
        self.corrections.changed.connect(self._show_start)
        self.checkpoint.changed.connect(self._show_start)
        for field in (self.epochs, self.time_limit, self.flags, self.adaptation):
            field.changed.connect(self._show_plan)
        self.train_button.changed.connect(self.start)
        self.cancel_button.changed.connect(self.cancel)
        self.switch_back.changed.connect(self.use_previous)
        self.native.destroyed.connect(self._stop_job)  # closing napari stops the child too
        self.refresh_versions()

    # ------------------------------------------------------------------ the form
    def add_earlier_folder(self, folder: str | Path | None = None, weight: float = 1.0) -> None:
        """Add a row for an earlier dataset folder trained on too, drawn ``weight`` as often."""
        path = FileEdit(mode="d", value=folder or "", label="folder")
        share = FloatSpinBox(value=weight, min=0.01, max=100, step=0.5, label="weight")
        remove = PushButton(text="remove")
        row = Container(layout="horizontal", widgets=[path, share, remove], labels=False)
        remove.changed.connect(lambda: self.earlier.remove(row))
        self.earlier.append(row)

    def earlier_folders(self) -> tuple[tuple[Path, float], ...]:
        """The earlier dataset folders given, with their weights."""
        rows = []
        for row in self.earlier:
            path, share, _ = row
            if str(path.value).strip() not in ("", "."):
                rows.append((Path(path.value), float(share.value)))
        return tuple(rows)

    def segment_widget(self) -> SegmentWidget | None:
        """The "Segment FTUs" widget docked in the same viewer, if any."""
        window = getattr(self.viewer, "window", None)
        docked = getattr(window, "dock_widgets", {}) or {}
        return next((w for w in docked.values() if isinstance(w, SegmentWidget)), None)

    def current_model(self) -> Path:
        """The model selected in "Segment FTUs", else the bundled default."""
        segment = self.segment_widget()
        return Path(segment.model.value) if segment is not None else default_model_path()

    def start_model(self) -> tuple[Path, str]:
        """The checkpoint training starts from and a note saying which (an ensemble's member
        for the corrections' organ, since an ensemble cannot be fine-tuned as a whole)."""
        from training.retrain import folder_organ, start_checkpoint

        if self.start_from.value == FILE:
            path = Path(self.checkpoint.value)
            if not path.is_file():
                raise ValueError("choose the checkpoint (.pt) to start from")
            return path, ""
        organ = folder_organ(Path(self.corrections.value))
        return start_checkpoint(self.current_model(), organ)

    def _show_start(self, _: Any = None) -> None:
        self.checkpoint.visible = self.start_from.value == FILE
        try:
            path, note = self.start_model()
        except ValueError as exc:
            self.start_note.value = str(exc)
            return
        self.start_note.value = note or f"starts from {path.name}"
        self._show_plan()

    def plan(self) -> Any:
        """The size of the run the form describes (:func:`training.retrain.plan_run`);
        ``ValueError`` naming what is missing."""
        from training.retrain import plan_run

        return plan_run(self.request())

    def _show_plan(self, _: Any = None) -> None:
        self.train_button.text = TRAIN
        try:
            plan = self.plan()
        except ValueError:
            self.plan_note.value = ""
            return
        warning = f" Warning: {plan.warning}" if plan.warning else ""
        self.plan_note.value = f"plan: {plan.describe()}.{warning}"

    def request(self) -> Any:
        """The run the form describes; ``ValueError`` naming what is missing."""
        from training.retrain import RetrainRequest

        corrections = Path(self.corrections.value)
        if str(self.corrections.value).strip() in ("", ".") or not corrections.is_dir():
            raise ValueError("Train on corrections: choose the exported dataset folder")
        try:
            init, _ = self.start_model()
            extra = tuple(shlex.split(str(self.flags.value)))
            target, adapt = self.adaptation.choice()
        except ValueError as exc:
            raise ValueError(f"Train on corrections: {exc}") from None
        limit = float(self.time_limit.value)
        return RetrainRequest(
            corrections=corrections,
            init=init,
            out=Path(self.out.value),
            previous=self.current_model(),
            earlier=self.earlier_folders(),
            epochs=int(self.epochs.value),
            time_limit_min=limit if limit > 0 else None,
            device=str(self.device.value),
            extra=extra,
            target=target,
            adapt=adapt,
        )

    # ------------------------------------------------------------------ the run
    @property
    def running(self) -> bool:
        """Whether a training run (or its scoring) is under way."""
        return self.worker is not None

    def start(self, _: Any = None) -> None:
        """Start training in a child process; a click while one runs does nothing."""
        if self.running:
            return
        try:
            request = self.request()
        except ValueError as exc:
            _show_error(str(exc))
            return
        from napari.qt.threading import thread_worker

        from training.retrain import RetrainJob, plan_run

        self._show_start()
        plan = plan_run(request)
        if plan.warning and self._warned != request:  # the next click on the same form trains
            self._warned = request
            self.train_button.text = TRAIN_ANYWAY
            self.status.value = f"not started: {plan.warning}; click {TRAIN_ANYWAY!r} to train"
            _show_warning(f"Train on corrections: {plan.warning}")
            return
        self._warned, self._plan = None, plan
        self._job = RetrainJob(request)
        self._previous = request.previous
        worker = thread_worker(self._job.run, start_thread=False, ignore_errors=True)()
        for signal, slot in self._slots(worker):
            signal.connect(slot)
        self.worker = worker
        self.train_button.enabled, self.cancel_button.enabled = False, True
        self.progress.value, self.status.value = 0, "training..."
        self.log.native.clear()
        self.log.native.append(f"plan: {plan.describe()}")
        worker.start()

    def cancel(self, _: Any = None) -> None:
        """Stop the child process and its children; nothing is offered or registered."""
        if self.running and self._job is not None:
            self._job.cancel()
            self.status.value = "cancelling..."

    def _stop_job(self, *_: Any) -> None:
        """The widget is being deleted (napari closes): stop the child, and let the worker end
        on its own without calling back into widgets Qt has deleted (a slot raising there
        aborts the process while Qt keeps running)."""
        worker, job = self.worker, self._job
        self.worker, self._job = None, None
        if worker is not None:
            for signal, slot in self._slots(worker):
                with contextlib.suppress(TypeError, RuntimeError):  # already disconnected
                    signal.disconnect(slot)
            worker.quit()
        if job is not None:
            job.cancel()

    def _slots(self, worker: Any) -> list[tuple[Any, Any]]:
        return [
            (worker.yielded, self._on_event),
            (worker.returned, self._on_result),
            (worker.errored, self._on_error),
            (worker.finished, self._on_finished),
        ]

    def _on_event(self, event: Any) -> None:
        if event.fraction is not None:
            self.progress.value = round(100 * event.fraction)
        if event.redraw:  # a progress bar's update: shown, not logged
            self.status.value = event.text.strip()[:120]
        else:
            self.log.native.append(event.text)
            left = self._plan.left(event.text) if self._plan is not None else ""
            if left:  # the plan's minutes were at the rate the model trained at elsewhere
                self.plan_note.value = f"plan: {self._plan.describe()}. {left}."

    def _on_result(self, result: Any) -> None:
        if result.status == "failed":
            self.status.value = "failed"
            self.log.native.append(f"failed: {result.message}")
            _show_error(f"Train on corrections failed: {result.message}")
        elif result.status == "cancelled":
            self.status.value = "cancelled"
            self.log.native.append(
                f"cancelled: {result.run_dir} is left as the trainer left it (marked CANCELLED)"
            )
        else:
            self._offer(result)

    def _on_error(self, exc: BaseException) -> None:
        self.status.value = "failed"
        self.log.native.append(f"failed: {exc}")
        _show_error(f"Train on corrections failed: {exc}")

    def _on_finished(self) -> None:
        from training.models.versions import next_run_dir

        self.worker, self._job = None, None
        self.train_button.enabled, self.cancel_button.enabled = True, False
        if Path(self.out.value).exists():  # the next run gets a folder of its own
            self.out.value = next_run_dir()

    # ------------------------------------------------------------------ results
    def _offer(self, result: Any) -> None:
        from training.models.versions import why_not_selected

        version = result.version
        veto = why_not_selected(version)
        self.progress.value = 100
        self.status.value = f"done: {version.label}" + (f"; {veto}" if veto else "")
        self.log.native.append(f"new model: {version.path}" + (f" ({veto})" if veto else ""))
        self._show_comparison(result)
        self.refresh_versions()
        segment = self.segment_widget()
        if segment is None:
            self.log.native.append('open "Segment FTUs": the new model is listed there')
            return
        kept = segment.model.value
        segment.add_model(version.path, _label_of(Path(version.path), version.label))
        if veto:  # offered in the list, the model used before stays selected
            segment.model.value = kept
            self.switch_back.enabled = False
            return
        previous = self._previous
        self.switch_back.text = f"switch back to {previous.name}" if previous else "switch back"
        self.switch_back.enabled = previous is not None

    def use_previous(self, _: Any = None) -> None:
        """Select, in "Segment FTUs", the model selected before the last training."""
        segment = self.segment_widget()
        if segment is None or self._previous is None:
            return
        try:
            segment.model.value = str(self._previous)
        except ValueError:  # no longer offered there: offer it again
            segment.add_model(self._previous)

    def _show_comparison(self, result: Any) -> None:
        after, before = result.after, result.before
        if after is None:
            self.comparison.value = {"before": [], "after": []}
            self.comparison_note.value = result.before_note
            return
        organs = sorted(set(after.organs) | set(before.organs if before else {}))
        rows = ["all", *organs]

        def column(scores: Any) -> list[str]:
            if scores is None:
                return ["-"] * len(rows)
            values = [scores.dice, *(scores.organs.get(o) for o in organs)]
            return ["-" if v is None else f"{v:.3f}" for v in values]

        self.comparison.value = {
            "data": list(zip(column(before), column(after), strict=True)),
            "index": rows,
            "columns": ["before", "after"],
        }
        previous = self._previous.name if self._previous else "the previous model"
        self.comparison_note.value = (
            f"on the {after.images} validation image(s) the trainer held out of the training "
            f"folders; before: {previous}" + (f" ({result.before_note})" if before is None else "")
        )

    def refresh_versions(self) -> None:
        """Show the registered model versions, the newest first (missing files say so)."""
        from training.models.versions import VersionsError, describe, list_versions

        try:
            rows = [describe(v) for v in reversed(list_versions())]
        except VersionsError as exc:
            self.versions.value = {"problem": [str(exc)]}
            _show_error(f"napari-ftu: {exc}")
            return
        columns = ["created", "val Dice", "before", "data", "started from", "adapted", "checkpoint"]
        # a dict of columns: magicgui reads {"data": ..., "columns": ...} without "index" as two
        # columns named "data" and "columns"
        self.versions.value = {column: [row[column] for row in rows] for column in columns}


def wrap_label(label: Any) -> None:
    """Let a QLabel's long text wrap to the dock's width instead of widening the dock (an
    unwrapped line, or a wrapped label's preferred width, pushes the canvas off the screen)."""
    from qtpy.QtWidgets import QSizePolicy

    label.setWordWrap(True)
    label.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)


def _label_of(path: Path, label: str) -> str:
    """The label "Segment FTUs" lists a registered model under (unique among versions)."""
    from training.models.versions import VersionsError, available_models, list_versions

    try:
        labels = {p: name for name, p in available_models(list_versions()).items()}
    except VersionsError:
        return label
    return labels.get(path, label)


def _show_error(message: str) -> None:
    from napari.utils.notifications import show_error

    show_error(message)


def _show_warning(message: str) -> None:
    from napari.utils.notifications import show_warning

    show_warning(message)
