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

Small masks (up to :data:`EDIT_LIMIT_PIXELS`) live in memory, the mask layer edits them in
place, and :meth:`FTUSession.save` writes them to the slide's mask store. Larger ones live in
the store only; the viewer shows a read-only overview and edits a region at a time.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from training.review.edits import rederive
from training.review.store import ERASED, MaskStore

EDIT_LIMIT_PIXELS = 8192 * 8192  # above this, the mask is edited region by region


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
        organ: str,
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
        if grid.direct_edit:
            self.probability: Any = np.zeros(grid.shape, np.float32)
            self.reference = np.zeros(grid.shape, np.int32)
            self.labels: Any = np.zeros(grid.shape, np.int32)  # edited in place by the layer
        else:
            self.probability = store.probability()
            self.reference = self.labels = None
        self._saved = None  # checksum of what the store holds

    # ------------------------------------------------------------------ reopening
    @classmethod
    def restore(cls, name: str, store: MaskStore) -> FTUSession:
        """The session a store holds (the slide opened again)."""
        settings = dict(store.settings)
        grid = Grid(store.shape, float(store.pixel_size_um), store.downsample)
        session = cls(
            name,
            settings.get("organ", "kidney"),
            grid,
            float(settings.get("threshold", 0.5)),
            float(settings.get("min_area_um2", 0.0)),
            store,
        )
        session.model = settings.get("model")
        if grid.direct_edit:
            session.probability[...] = np.asarray(store.probability()[...])
            session.reference[...] = store.model_array()
            session.labels[...] = store.labels_array()
            session._saved = session._checksum()
        return session

    # ------------------------------------------------------------------ model output
    def add_result(self, probability: np.ndarray, origin: tuple[int, int]) -> None:
        """Paste a run's probability at ``origin`` and re-derive the objects (edits kept)."""
        y, x = origin
        block = np.asarray(probability, np.float32)
        if self.store is not None:
            self.store.write_probability(y, x, block)
        if self.grid.direct_edit:
            self.probability[y : y + block.shape[0], x : x + block.shape[1]] = block
        self.rederive(self.threshold, self.min_area_um2)

    def rederive(self, threshold: float, min_area_um2: float) -> None:
        """Objects from the probability at ``threshold`` and ``min_area_um2``; what a
        pathologist edited or erased stays as it is."""
        labels, reference = self._arrays()
        erased = (labels == 0) & (reference != 0)  # earlier erasures and new ones
        min_area_px = min_area_um2 / self.grid.pixel_size_um**2
        new_labels, model = rederive(self.probability, threshold, min_area_px, labels, reference)
        # model objects left out for touching an edit are not erasures of the pathologist's
        taken = np.isin(model, np.unique(new_labels))
        reference = np.where(taken, model, 0).astype(np.int32)
        reference[erased & (new_labels == 0)] = ERASED
        self.threshold, self.min_area_um2 = threshold, min_area_um2
        if self.grid.direct_edit:
            self.labels[...] = new_labels  # in place: the mask layer keeps its data object
            self.reference = reference
            self.save()
        else:
            self.store.set_model(reference, new_labels)
            self._save_settings()

    def _arrays(self) -> tuple[np.ndarray, np.ndarray]:
        if self.grid.direct_edit:
            return self.labels, self.reference
        if not self.store.has_model:  # the first run: nothing to keep yet
            empty = np.zeros(self.grid.shape, np.int32)
            return empty, empty
        return self.store.labels_array(), self.store.model_array()

    # ------------------------------------------------------------------ regions
    def read_labels(self, box: tuple[int, int, int, int]) -> np.ndarray:
        """A copy of the labels in ``box`` (working pixels ``y, x, h, w``)."""
        y, x, h, w = box
        if self.grid.direct_edit:
            return np.array(self.labels[y : y + h, x : x + w])
        return self.store.read(y, x, h, w)

    def write_labels(self, y: int, x: int, new: np.ndarray, old: np.ndarray) -> None:
        """Write an edited crop back; objects painted in it get ids unused in the whole mask."""
        if self.grid.direct_edit:
            written = np.array(new, np.int32)
            painted = np.setdiff1d(np.unique(written), np.unique(old))
            painted = painted[painted != 0]
            if len(painted):
                first = int(max(self.labels.max(), self.reference.max())) + 1
                mask = np.isin(written, painted)
                written[mask] = first + np.searchsorted(painted, written[mask])
            self.labels[y : y + new.shape[0], x : x + new.shape[1]] = written
            self.save()
        else:
            self.store.write_region(y, x, new, old)

    def mask_data(self) -> Any:
        """What the mask layer shows: the labels, or the store's read-only overview pyramid."""
        return self.labels if self.grid.direct_edit else self.store.overview_levels()

    # ------------------------------------------------------------------ saving and counting
    def save(self) -> bool:
        """Write the labels (small masks) to the store, if there is one, when they changed
        since the last call; whether they had changed."""
        if not self.grid.direct_edit:
            return False
        checksum = self._checksum()
        if checksum == self._saved:
            return False
        if self.store is not None:
            self.store.set_model(self.reference, self.labels)
            self.store.write_probability(0, 0, self.probability)
            self._save_settings()
        self._saved = checksum
        return True

    def _save_settings(self) -> None:
        if self.store is not None:
            settings = {"organ": self.organ, "threshold": self.threshold, "model": self.model}
            self.store.settings.update({**settings, "min_area_um2": self.min_area_um2})

    def _checksum(self) -> tuple[int, int, float, float]:
        return (
            zlib.crc32(self.labels),
            zlib.crc32(self.reference),
            self.threshold,
            self.min_area_um2,
        )

    def counts(self) -> Counts:
        """Objects, edited objects (any pixel differing from the reference) and erased areas."""
        labels, reference = self._arrays()
        changed = labels != reference
        objects = np.unique(labels)
        edited = np.unique(labels[changed & (labels > 0)])
        erased_areas = ndimage.label(changed & (labels == 0))[1]
        return Counts(int((objects > 0).sum()), len(edited), int(erased_areas))
