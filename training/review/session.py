"""One image's FTUs as the plugin keeps them between clicks, without Qt.

At the model's working scale over the whole image the session holds the probability the model
gave (runs over a region paste into it), a *reference* and the labels the pathologist sees and
edits. The reference is the model's labels at the current threshold and minimum area, less the
objects set aside for an edit, with -1 where the pathologist erased something: an erasure is
remembered even where the model no longer finds an object, so it never comes back when the
threshold moves. Edits are whatever differs from the reference (compared, never tracked through
paint events, so undo and redo count).

Moving the threshold re-derives every object nobody edited and keeps the edited ones as they
are; a new model object that touches an edited object or an erasure is left out.

An *imported* session (QuPath GeoJSON, a dataset row) has no model behind it: its probability
is the imported mask (1 inside, 0 outside), its reference the imported objects, so edits are
counted from the import; the threshold and minimum area change nothing until a model run pastes
a probability into it (then the imported objects are treated as the model's).

Small masks (up to :data:`EDIT_LIMIT_PIXELS`) live in memory, the mask layer edits them in
place, and :meth:`FTUSession.save` writes them to the slide's mask store. Larger ones live in
the store only; the viewer shows a read-only overview and edits a region at a time.
"""

from __future__ import annotations

import math
import zlib
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from training.inference.postprocess import probability_to_labels
from training.review.edits import match_ids, rederive
from training.review.store import ERASED, MaskStore, MaskStoreError, painted_ids, renumber

EDIT_LIMIT_PIXELS = 8192 * 8192  # above this, the mask is edited region by region
LABEL_DTYPE = np.uint16  # of a mask edited in place: up to 65535 objects
BAND_ROWS = 1024  # rows read at a time from a stored mask


@dataclass(frozen=True)
class Grid:
    """The working grid of a session: its shape, um per pixel, level-0 pixels per pixel."""

    shape: tuple[int, int]
    pixel_size_um: float
    downsample: float

    @property
    def direct_edit(self) -> bool:
        """Whether the whole mask is small enough to edit in place."""
        return self.shape[0] * self.shape[1] <= EDIT_LIMIT_PIXELS


def import_grid(shape: tuple[int, int], pixel_size_um: float) -> Grid:
    """The grid of a mask imported onto an image with no model run: the image's level 0 when
    it fits the direct-edit limit, else the finest whole-number downsample that does."""
    from training.data.instances import grid_shape

    downsample = 1
    while math.prod(grid_shape(shape, downsample)) > EDIT_LIMIT_PIXELS:
        downsample += 1
    return Grid(grid_shape(shape, downsample), pixel_size_um * downsample, float(downsample))


@dataclass(frozen=True)
class Counts:
    """Objects in the mask, objects a pathologist edited, erased areas."""

    objects: int
    edited: int
    erased: int


class FTUSession:
    """Probability, reference and edited labels of one image at the working scale."""

    def __init__(
        self,
        name: str,
        organ: str | None,
        grid: Grid,
        threshold: float,
        min_area_um2: float = 0.0,
        store: MaskStore | None = None,
    ) -> None:
        if not grid.direct_edit and store is None:
            raise ValueError("a mask above the direct-edit limit needs a mask store on disk")
        self.name, self.organ, self.grid = name, organ, grid
        self.threshold, self.min_area_um2 = threshold, min_area_um2
        self.store = store
        self.model: str | None = None
        self.imported = False  # a mask brought in from a file: no model behind it (see above)
        self.reviewed_regions: list[tuple[int, int, int, int]] = []  # see mark_reviewed
        if grid.direct_edit:
            self.probability: Any = np.zeros(grid.shape, np.float32)
            self.reference = np.zeros(grid.shape, np.int32)
            # edited in place by the layer; 16-bit: napari draws it without a per-refresh copy
            self.labels: Any = np.zeros(grid.shape, LABEL_DTYPE)
        else:
            self.probability = store.probability()
            self.reference = self.labels = None
        self._saved = None  # checksum of what the store holds
        self.derived_counts: Counts | None = None  # see rederive
        self._pool: ThreadPoolExecutor | None = None  # writes saves off the GUI thread
        self._writes: list[Future] = []
        self.save_error: str | None = None  # why the labels are not on disk (None once saved)

    # ------------------------------------------------------------------ reopening
    @classmethod
    def restore(cls, name: str, store: MaskStore) -> FTUSession:
        """The session a store holds (the slide opened again)."""
        settings = dict(store.settings)
        grid = Grid(store.shape, float(store.pixel_size_um), store.downsample)
        session = cls(
            name,
            settings.get("organ"),  # none saved: unknown (an export refuses), never a guess
            grid,
            float(settings.get("threshold", 0.5)),
            float(settings.get("min_area_um2", 0.0)),
            store,
        )
        session.model = settings.get("model")
        session.reviewed_regions = [tuple(box) for box in settings.get("reviewed_regions", [])]
        if grid.direct_edit:
            session.probability[...] = np.asarray(store.probability()[...])
            session.reference[...] = store.model_array()
            session.labels[...] = _fits(store.labels_array())
            session._saved = session._checksum()
        return session

    @classmethod
    def from_labels(
        cls, name: str, organ: str, grid: Grid, labels: np.ndarray, source: str = ""
    ) -> FTUSession:
        """An imported session (see the module's docstring): ``labels`` on ``grid``, in memory
        (the grid must fit the direct-edit limit: :func:`import_grid`)."""
        if not grid.direct_edit:
            raise ValueError(f"an imported mask of {grid.shape} is above the direct-edit limit")
        if tuple(labels.shape) != grid.shape:
            raise ValueError(f"labels of shape {labels.shape} for a grid of {grid.shape}")
        session = cls(name, organ, grid, threshold=0.5)
        session.imported, session.model = True, source or "imported"
        session.labels[...] = _fits(labels)
        session.reference = np.asarray(labels, np.int32).copy()
        session.probability[...] = labels > 0
        session._saved = session._checksum()
        return session

    # ------------------------------------------------------------------ model output
    def add_result(
        self, probability: np.ndarray, origin: tuple[int, int], labels: np.ndarray | None = None
    ) -> None:
        """Paste a run's probability at ``origin`` and re-derive the objects (edits kept).
        ``labels``: the run's objects at the session's threshold and minimum area, already
        found (off the GUI thread); used as they are when the run covers a new session."""
        y, x = origin
        block = np.asarray(probability, np.float32)
        if min(y, x) < 0 or y + block.shape[0] > self.grid.shape[0] or (
            x + block.shape[1] > self.grid.shape[1]
        ):  # numpy would clip the paste silently, shifting nothing but losing the overhang
            raise ValueError(
                f"a run's map of {block.shape} at {origin} does not fit the working grid "
                f"{self.grid.shape} of {self.name!r}"
            )
        self.imported = False  # a model's probability from now on: the threshold applies
        if self.store is not None:
            self.flush()  # the store's probability is written after the saves before it
            self.store.write_probability(y, x, block)
        fresh = self.grid.direct_edit and not self.labels.any() and not self.reference.any()
        if self.grid.direct_edit:
            self.probability[y : y + block.shape[0], x : x + block.shape[1]] = block
        if fresh and labels is not None and labels.shape == self.grid.shape:
            self.labels[...] = _fits(labels)
            self.reference = labels.copy()
            self.derived_counts = Counts(int(labels.max()), 0, 0)  # numbered 1..N
            return
        self.rederive(self.threshold, self.min_area_um2)

    def rederive(self, threshold: float, min_area_um2: float) -> None:
        """Objects from the probability at ``threshold`` and ``min_area_um2``; what a
        pathologist edited or erased stays as it is."""
        if self.imported:  # no model probability to re-derive from: the objects stay
            self.threshold, self.min_area_um2 = threshold, min_area_um2
            return
        min_area_px = min_area_um2 / self.grid.pixel_size_um**2
        if not self.grid.direct_edit and not self.store.has_model:  # a first run: no edits
            new_labels = probability_to_labels(self.probability, threshold, min_area_px)
            self.threshold, self.min_area_um2 = threshold, min_area_um2
            self.store.set_model(new_labels, new_labels, self._settings())
            return
        unedited = (
            np.array_equal(self.labels, self.reference)
            if self.grid.direct_edit
            else not self.store.has_edits()  # compared band by band, never loaded whole
        )
        if unedited:  # the model's labels as they are
            new_labels = probability_to_labels(self.probability, threshold, min_area_px)
            count = int(new_labels.max())  # numbered 1..N (until matched)
            # objects that persist keep their ids, so their colours do not change as it moves
            match_ids(new_labels, self._model_labels())
            reference = new_labels if not self.grid.direct_edit else new_labels.copy()
        else:
            labels, reference = self._arrays()
            erased = (labels == 0) & (reference != 0)  # earlier erasures and new ones
            new_labels, model = rederive(
                self.probability, threshold, min_area_px, labels, reference
            )
            # model objects left out for touching an edit are not erasures of the pathologist's:
            # the reference keeps only the model objects taken, which are equal in both
            reference = np.where(new_labels == model, model, 0).astype(np.int32)
            reference[erased & (new_labels == 0)] = ERASED
            count = None
        self.threshold, self.min_area_um2 = threshold, min_area_um2
        if self.grid.direct_edit:
            self.labels[...] = _fits(new_labels)  # in place: the layer keeps its data object
            self.reference = reference  # saved by the next save(), off the slider's path
        else:
            self.store.set_model(reference, new_labels, self._settings())
        # what a status line can show at once, without counting (None: count them)
        self.derived_counts = Counts(count, 0, 0) if count is not None else None

    def _model_labels(self) -> Any:
        """The model's labels as they are (the reference), lazily for a stored mask."""
        return self.reference if self.grid.direct_edit else self.store.model_array_lazy()

    def _arrays(self) -> tuple[np.ndarray, np.ndarray]:
        if self.grid.direct_edit:
            return self.labels, self.reference
        return self.store.labels_array(), self.store.model_array()

    # ------------------------------------------------------------------ regions
    def read_labels(self, box: tuple[int, int, int, int]) -> np.ndarray:
        """A copy of the labels in ``box`` (working pixels ``y, x, h, w``)."""
        y, x, h, w = box
        if self.grid.direct_edit:
            return np.array(self.labels[y : y + h, x : x + w])
        return self.store.read(y, x, h, w)

    def write_labels(self, y: int, x: int, new: np.ndarray, old: np.ndarray) -> np.ndarray:
        """Write an edited crop back and return it as written: objects painted in it get ids
        unused in the whole mask."""
        if self.grid.direct_edit:
            written = np.array(new, np.int32)
            painted = painted_ids(written, old)
            if len(painted):
                renumber(written, painted, int(max(self.labels.max(), self.reference.max())) + 1)
            self.labels[y : y + new.shape[0], x : x + new.shape[1]] = _fits(written)
            self.mark_reviewed((y, x, *new.shape))
            self.save()
            return written
        written = self.store.write_region(y, x, new, old)
        self.mark_reviewed((y, x, *new.shape))
        return written

    def mark_reviewed(self, box: tuple[int, int, int, int]) -> None:
        """Record a region (working pixels ``y, x, h, w``) a pathologist reviewed and applied:
        a slide too large to export whole exports these regions."""
        box = tuple(int(v) for v in box)
        if box not in self.reviewed_regions:
            self.reviewed_regions.append(box)
            self._save_settings()

    def mask_data(self) -> Any:
        """What the mask layer shows: the labels, or the store's read-only overview pyramid."""
        return self.labels if self.grid.direct_edit else self.store.overview_levels()

    # ------------------------------------------------------------------ saving and counting
    def save(self) -> bool:
        """Write the labels (small masks) to the store, if there is one, when they changed
        since the last call; whether they had changed. A snapshot is written on a background
        thread, so the viewer does not wait for the disk; :meth:`flush` waits for it. A
        background save that failed since the last call raises here (:class:`MaskStoreError`);
        the labels then count as unsaved, so the next call writes them again."""
        self._collect_writes(wait=False)
        if not self.grid.direct_edit:
            return False
        checksum = self._checksum()
        if checksum == self._saved:
            return False
        self._saved = checksum
        if self.store is not None:
            snapshot = (self.reference.copy(), self.labels.copy(), self._settings())
            self._writes.append(self._writer().submit(self._write, *snapshot))
        return True

    def flush(self) -> None:
        """Wait until every save has reached the disk; a failed one raises here
        (:class:`MaskStoreError`, naming the store and the cause)."""
        self._collect_writes(wait=True)

    def _writer(self) -> ThreadPoolExecutor:
        if self._pool is None:  # one thread: saves reach the disk in the order they were made
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="napari-ftu-save")
        return self._pool

    def _collect_writes(self, wait: bool) -> None:
        """Forget the finished saves (all of them, waiting, with ``wait``); raise the first
        that failed."""
        failed: BaseException | None = None
        pending = []
        for write in self._writes:
            if not wait and not write.done():
                pending.append(write)
            elif write.exception() is not None and failed is None:
                failed = write.exception()
        self._writes = pending
        if failed is not None:
            self._saved = None  # not on disk: the next save writes the labels again
            self.save_error = (
                f"the FTU mask of {self.name!r} was not saved to {self.store.location}: "
                f"{type(failed).__name__}: {failed}"
            )
            raise MaskStoreError(self.save_error) from failed

    def _write(self, reference: np.ndarray, labels: np.ndarray, settings: dict) -> None:
        # one commit for labels and settings: a kill leaves the last save whole (MaskStore)
        self.store.set_model(reference, labels, settings)
        self.save_error = None

    def _save_settings(self) -> None:
        if self.store is not None:
            self.store.settings.update(self._settings())

    def _settings(self) -> dict[str, Any]:
        return {
            "organ": self.organ,
            "threshold": self.threshold,
            "min_area_um2": self.min_area_um2,
            "model": self.model,
            "reviewed_regions": [list(box) for box in self.reviewed_regions],
        }

    def _checksum(self) -> tuple[Any, ...]:
        # the settings too: a re-run for another organ may leave the labels as they were
        return (
            zlib.crc32(self.labels),
            zlib.crc32(self.reference),
            self.threshold,
            self.min_area_um2,
            self.organ,
            self.model,
        )

    def counts(self) -> Counts:
        """Objects, edited objects (any pixel differing from the reference) and erased areas;
        a stored mask is counted band by band, never loaded whole."""
        if self.grid.direct_edit:
            return _counts(self.labels, self.reference)
        labels, reference = self.store.labels_array_lazy(), self.store.model_array_lazy()
        ids: set[int] = set()
        edited: set[int] = set()
        erased = _Components()
        for y in range(0, self.grid.shape[0], BAND_ROWS):
            band = np.asarray(labels[y : y + BAND_ROWS])
            changed = band != np.asarray(reference[y : y + BAND_ROWS])
            ids.update(np.unique(band).tolist())
            edited.update(np.unique(band[changed & (band > 0)]).tolist())
            erased.add_band(changed & (band == 0))
        ids.discard(0)
        return Counts(len(ids), len(edited), erased.count())


def _counts(labels: np.ndarray, reference: np.ndarray) -> Counts:
    changed = labels != reference
    edited = np.unique(labels[changed & (labels > 0)])
    erased_areas = ndimage.label(changed & (labels == 0))[1] if changed.any() else 0
    return Counts(_count_ids(labels), len(edited), int(erased_areas))


class _Components:
    """Connected components (4-connected) of a mask given band by band: each band is labelled
    alone, and components that meet across a band border are joined (union-find)."""

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.last_row: np.ndarray | None = None  # global ids of the previous band's last row

    def _find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def add_band(self, mask: np.ndarray) -> None:
        """Add the next band of rows."""
        local, count = ndimage.label(mask)
        offset = len(self.parent)
        self.parent.extend(range(offset, offset + count))
        ids = np.where(local > 0, local + offset - 1, -1)
        if self.last_row is not None and count:
            both = (self.last_row >= 0) & (ids[0] >= 0)
            pairs = zip(self.last_row[both].tolist(), ids[0][both].tolist(), strict=True)
            for a, b in set(pairs):
                self.parent[self._find(a)] = self._find(b)
        self.last_row = ids[-1] if len(ids) else self.last_row

    def count(self) -> int:
        """How many components there are."""
        return len({self._find(i) for i in range(len(self.parent))})


def _count_ids(labels: np.ndarray) -> int:
    """How many distinct non-zero ids ``labels`` holds (a histogram while the ids are small)."""
    top = int(labels.max(initial=0))
    if top < 4 * labels.size:
        return int(np.count_nonzero(np.bincount(labels.ravel(), minlength=top + 1)[1:]))
    return int(np.count_nonzero(np.unique(labels)))


def _fits(labels: np.ndarray) -> np.ndarray:
    """``labels`` as the in-place mask's type; an error (never wrapped ids) when an id is too
    large for it."""
    top = int(labels.max(initial=0))
    if top > np.iinfo(LABEL_DTYPE).max:
        raise ValueError(
            f"object id {top} is above {np.iinfo(LABEL_DTYPE).max}, the most a mask edited in "
            "place holds; raise the threshold or the minimum area (too many specks?)"
        )
    return labels.astype(LABEL_DTYPE, copy=False)
