"""The measurement table of a mask (labels) layer, kept in its ``features``: one row per object
(:data:`training.measure.objects.OBJECT_COLUMNS`), measured in a worker when the layer appears
or its data is replaced, and row by row for the objects a paint or fill touches.

napari's own ``index`` column is added (a copy of ``label``), so the status bar shows each
object's own row. Layers are touched on the main thread only; workers get copies.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from napari_ftu._ftu_layers import SESSION_KEY, image_pixel_size, level0

MEASURE_KEY = "napari_ftu_measurements"  # the layer's metadata key for its LayerMeasurements
TISSUE_KEY = "napari_ftu_tissue_area_mm2"  # and for its image's tissue area, when a run knew it
SETTLE_MS = 300  # a burst of set_data events (a slider drag) is measured once, after it


@dataclass(frozen=True)
class Placement:
    """How a labels layer's pixels sit on its slide: um per labels pixel and level-0 pixels
    per labels pixel."""

    pixel_size_um: float
    downsample: float

    def to_data(self, level0_yx: tuple[float, float]) -> tuple[float, float]:
        """Labels-pixel coordinates of a level-0 position (pixel centres at whole numbers)."""
        d = self.downsample
        return tuple((v - (d - 1) / 2) / d for v in level0_yx)


def placement_of(layer: Any) -> Placement:
    """The placement of an FTU mask (its session's grid) or of any other labels layer (its
    metadata's pixel size, else its scale: the reader scales slides in micrometres)."""
    session = (layer.metadata or {}).get(SESSION_KEY)
    if session is not None:
        return Placement(float(session.grid.pixel_size_um), float(session.grid.downsample))
    return Placement(image_pixel_size(layer), 1.0)


def image_id(layer: Any) -> str:
    """The name a layer's table is exported and summarised under (its image's, for a mask)."""
    session = (layer.metadata or {}).get(SESSION_KEY)
    return str(session.name if session is not None else layer.name)


def tracker(viewer: Any, layer: Any) -> LayerMeasurements:
    """The layer's :class:`LayerMeasurements`, made (and a first measurement started) once."""
    existing = (layer.metadata or {}).get(MEASURE_KEY)
    if existing is None or existing.layer is not layer:  # a duplicate shares the metadata
        existing = LayerMeasurements(viewer, layer)
        layer.metadata = {**(layer.metadata or {}), MEASURE_KEY: existing}
        existing.remeasure()
    return existing


class LayerMeasurements:
    """Keeps a labels layer's ``features`` equal to the measurements of its objects."""

    def __init__(self, viewer: Any, layer: Any) -> None:
        from qtpy.QtCore import QTimer

        self.viewer, self.layer = viewer, layer
        self.placement = placement_of(layer)
        self.worker: Any = None
        self.rgb: np.ndarray | None = None  # the slide on the labels grid (stain ODs), once read
        self._measured: int | None = None  # checksum of the labels the table describes
        self._measuring: int | None = None  # and of those the worker measures
        self._again = False  # the data changed while a worker measured
        self._quiet = False  # inside display_only
        self._timer = QTimer()
        self._timer.setSingleShot(True)
        self._timer.setInterval(SETTLE_MS)
        self._timer.timeout.connect(self._data_changed)
        self._pending: tuple[tuple[int, int, int, int], set[int]] | None = None  # edits to measure
        self._edit_timer = QTimer()
        self._edit_timer.setSingleShot(True)
        self._edit_timer.setInterval(0)
        self._edit_timer.timeout.connect(self._edited)
        layer.events.paint.connect(self._painted)
        layer.events.set_data.connect(self._settle)  # undo, redo, a new threshold, a run

    @property
    def busy(self) -> bool:
        """Whether a worker is measuring the whole layer."""
        return self.worker is not None

    def labels(self) -> Any:
        """The labels measured: the layer's own array, or a stored mask's full grid."""
        session = self._session()
        if session is not None and not session.grid.direct_edit:
            return None  # read by the worker from the store
        return self.layer.data

    def _session(self) -> Any:
        return (self.layer.metadata or {}).get(SESSION_KEY)

    def _probability(self) -> Any:
        session = self._session()  # an imported mask's "probability" is the mask itself
        return None if session is None or session.imported else session.probability

    # ------------------------------------------------------------------ whole layer
    def remeasure(self) -> None:
        """Measure every object again, in a worker (the table is replaced when it returns)."""
        from napari.qt.threading import thread_worker

        if self.busy:
            self._again = True
            return
        labels = self.labels()
        copy = None if labels is None else np.array(labels)
        self._measuring = _checksum(copy)  # of the labels the worker measures
        job = MeasureJob(
            copy, self._probability(), self.placement, self._session(), self._image_source()
        )
        worker = thread_worker(job.run, start_thread=False, ignore_errors=True)()
        worker.returned.connect(self._on_measured)
        worker.errored.connect(self._on_error)
        worker.finished.connect(self._on_finished)
        self.worker = worker
        worker.start()

    def _image_source(self) -> Any:
        """What the worker reads the slide's pixels from on the labels grid: a slide file or
        the image layer's level 0 with its pixel size; ``None`` without an image (or a mask
        too large to hold its pixels beside it)."""
        session = self._session()
        if (
            session is None
            or not session.grid.direct_edit
            or session.name not in self.viewer.layers
        ):
            return None
        image = self.viewer.layers[session.name]
        if not getattr(image, "rgb", False):
            return None
        path = (image.metadata or {}).get("path")
        return path or (level0(image), image_pixel_size(image))

    def _on_measured(self, done: tuple[Any, np.ndarray | None]) -> None:
        table, rgb = done
        if rgb is not None:
            self.rgb = rgb
        labels = self.labels()
        if labels is not None and _checksum(np.asarray(labels)) != self._measuring:
            self._again = True  # edited meanwhile: a stale table would hide the edit's rows
            return
        set_table(self.layer, table)
        self._measured = self._measuring

    def _on_error(self, exc: BaseException) -> None:
        from napari.utils.notifications import show_error

        show_error(f"napari-ftu: measuring {self.layer.name!r} failed: {type(exc).__name__}: {exc}")

    def _on_finished(self) -> None:
        self.worker = None
        if self._again:  # edited while measured (a stored mask: a set_data said so)
            self._again = False
            self.remeasure()

    def _changed(self) -> bool:
        """Whether the labels differ from those measured (a stored mask: assumed after a
        ``set_data``, as its overview is refreshed only when the store changed)."""
        labels = self.labels()
        return labels is None or _checksum(np.asarray(labels)) != self._measured

    def _settle(self, _: Any = None) -> None:
        if not self._quiet:
            self._timer.start()

    @contextmanager
    def display_only(self) -> Iterator[None]:
        """Changes of how the layer is drawn (the selected label, show selected): napari
        announces them as ``set_data``, which must not measure a stored mask all over again."""
        self._quiet = True
        try:
            yield
        finally:
            self._quiet = False

    def _data_changed(self) -> None:
        if self.layer not in self.viewer.layers:
            return
        if self.busy:
            self._again = True
        elif self._changed():  # a refresh that changed nothing (e.g. the contour) costs a checksum
            self.remeasure()

    # ------------------------------------------------------------------ edits
    def _painted(self, event: Any) -> None:
        """Re-measure the objects a paint, fill or ``data_setitem`` touched (napari's history
        item: the box and the values before and after), once the edit is in the data: napari
        announces it before writing it."""
        box, touched = _touched(event.value)
        if box is None or not touched:
            return
        if self._pending is not None:  # several edits before the loop turns: one refresh
            old_box, old_touched = self._pending
            box = (*np.minimum(box[:2], old_box[:2]), *np.maximum(box[2:], old_box[2:]))
            touched = touched | old_touched
        self._pending = (tuple(int(v) for v in box), touched)
        self._edit_timer.start()

    def _edited(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None and self.layer in self.viewer.layers:
            self.refresh(pending[1], pending[0])

    @property
    def pending(self) -> bool:
        """Whether an edit waits to be measured (the next turn of the event loop)."""
        return self._pending is not None

    def refresh(self, touched: set[int], box: tuple[int, int, int, int]) -> None:
        """Re-measure the objects ``touched`` (labels) after an edit inside ``box`` (labels
        pixels ``y0, x0, y1, x1``); erased objects lose their row, the others keep theirs."""
        from training.measure.objects import OBJECT_COLUMNS, measure_objects

        labels = self.labels()
        if labels is None:
            return
        table = table_of(self.layer)
        y0, x0, y1, x1 = self._extent(table, touched, box, labels.shape)
        crop = np.asarray(labels[y0:y1, x0:x1])
        d = self.placement.downsample
        probability = self._probability()
        rgb = self.rgb
        rows = measure_objects(
            crop,
            self.placement.pixel_size_um,
            probability=None if probability is None else np.asarray(probability[y0:y1, x0:x1]),
            rgb=None if rgb is None else rgb[y0:y1, x0:x1],
            origin=(y0 * d, x0 * d),
            downsample=d,
            only=sorted(touched),
        )
        # the edge is the whole mask's, not the crop's
        rows["touches_edge"] = _touches_edge(crop, rows["label"], (y0, x0), labels.shape)
        kept = table[~table["label"].isin(touched)]
        parts = [part for part in (kept, rows) if len(part)]
        merged = _concat(parts) if parts else rows
        set_table(self.layer, merged.sort_values("label")[list(OBJECT_COLUMNS)])
        self._measured = _checksum(np.asarray(labels))

    def _extent(
        self, table: Any, touched: set[int], box: tuple[int, int, int, int], shape: tuple
    ) -> tuple[int, int, int, int]:
        """The labels-pixel box holding every touched object now: the edit's box and each
        object's box before it (its pixels now lie in one or the other)."""
        y0, x0, y1, x1 = box
        d = self.placement.downsample
        before = table[table["label"].isin(touched)]
        if len(before):
            y0 = min(y0, math.floor(before["bbox_y_px"].min() / d) - 1)
            x0 = min(x0, math.floor(before["bbox_x_px"].min() / d) - 1)
            y1 = max(y1, math.ceil((before["bbox_y_px"] + before["bbox_height_px"]).max() / d) + 1)
            x1 = max(x1, math.ceil((before["bbox_x_px"] + before["bbox_width_px"]).max() / d) + 1)
        return max(0, y0), max(0, x0), min(shape[0], y1), min(shape[1], x1)


class MeasureJob:
    """A whole layer's measurement, run in a worker on copies (or on a stored mask's store), a
    band of rows at a time (within the measure core's memory budget)."""

    def __init__(
        self, labels: Any, probability: Any, placement: Placement, session: Any, image: Any
    ) -> None:
        self.labels, self.placement, self.session, self.image = labels, placement, session, image
        # an in-memory map is copied (a new run pastes into it); a stored one is read lazily
        in_memory = isinstance(probability, np.ndarray)
        self.probability = np.array(probability) if in_memory else probability

    def run(self) -> tuple[Any, np.ndarray | None]:
        """The table, and the slide's pixels on the labels grid (``None`` without an image)."""
        from training.measure.objects import Geometry
        from training.measure.slide import measure_bands

        labels = self.labels
        if labels is None:  # a stored mask: its labels from the store (as the review queue)
            labels = self.session.store.labels_array()
        labels = np.asarray(labels)
        rgb = self._rgb(labels.shape)
        geometry = Geometry(
            self.placement.pixel_size_um, (0.0, 0.0), self.placement.downsample, labels.shape
        )
        read_rgb = None if rgb is None else (lambda y, x, h, w: rgb[y : y + h, x : x + w])
        return measure_bands(labels, geometry, self.probability, read_rgb), rgb

    def _rgb(self, shape: tuple[int, int]) -> np.ndarray | None:
        from training.slides import Slide, open_slide

        if self.image is None:
            return None
        if isinstance(self.image, str):
            slide = open_slide(self.image)
        else:
            slide = Slide.from_array(np.asarray(self.image[0]), self.image[1])
        with slide:
            pixels = slide.read_region_at(self.placement.pixel_size_um, 0, 0, *shape)
        return np.asarray(pixels)[..., :3]


def table_of(layer: Any) -> Any:
    """The layer's measurement table (without napari's ``index`` column); an empty table with
    the measurement columns when it has none yet."""
    import pandas as pd

    from training.measure.objects import OBJECT_COLUMNS

    features = layer.features
    if "label" not in features:
        return pd.DataFrame({name: [] for name in OBJECT_COLUMNS})
    return features.drop(columns=["index"], errors="ignore").reset_index(drop=True)


def set_table(layer: Any, table: Any) -> None:
    """Put ``table`` in the layer's ``features``, napari's ``index`` column mapping labels to
    rows (without it, napari would show row ``i`` for label ``i``)."""
    features = table.reset_index(drop=True).copy()
    features.insert(0, "index", features["label"].to_numpy())
    layer.features = features


def _concat(parts: list[Any]) -> Any:
    import pandas as pd

    return pd.concat(parts, ignore_index=True)


def _checksum(labels: np.ndarray | None) -> int | None:
    return None if labels is None else zlib.crc32(np.ascontiguousarray(labels))


def _touched(item: Any) -> tuple[tuple[int, int, int, int] | None, set[int]]:
    """The labels-pixel box (``y0, x0, y1, x1``) and the labels (before and after) of a napari
    history item: a list of masked paint atoms and ``(indices, old, new)`` tuples."""
    boxes, labels = [], set()
    for atom in item or []:
        if hasattr(atom, "slice_key"):  # a paint, fill or polygon
            rows, cols = atom.slice_key[-2:]
            boxes.append((rows.start, cols.start, rows.stop, cols.stop))
            labels.update(np.unique(atom.old_values).tolist())
            labels.add(int(atom.new_value))
        else:  # data_setitem: (fancy indices, old values, new value(s))
            indices, old, new = atom
            rows, cols = (np.asarray(i) for i in indices[-2:])
            if rows.size:
                boxes.append((rows.min(), cols.min(), rows.max() + 1, cols.max() + 1))
            labels.update(np.unique(old).tolist())
            labels.update(np.unique(new).tolist())
    labels.discard(0)
    if not boxes:
        return None, labels
    stacked = np.array(boxes, int)
    box = (*stacked[:, :2].min(axis=0).tolist(), *stacked[:, 2:].max(axis=0).tolist())
    return tuple(int(v) for v in box), {int(v) for v in labels}


def _touches_edge(
    crop: np.ndarray, labels: Any, offset: tuple[int, int], shape: tuple[int, int]
) -> list[bool]:
    """Whether each object of ``crop`` (cut at ``offset`` from a mask of ``shape``) touches the
    mask's border."""
    from scipy import ndimage

    boxes = ndimage.find_objects(crop)
    edge = []
    for label in labels:
        rows, cols = boxes[int(label) - 1]
        edge.append(
            rows.start + offset[0] == 0
            or cols.start + offset[1] == 0
            or rows.stop + offset[0] == shape[0]
            or cols.stop + offset[1] == shape[1]
        )
    return edge
