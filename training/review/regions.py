"""Writing a region of the mask store's labels in place, through a journal, so a region is
never half written; and the id helpers of an edited crop.

A region write (:meth:`RegionWrites.write_region`, for a slide too large to rewrite whole)
changes the saved generation in place: the crop it writes is first written, flushed, to a
journal (``region-journal.npz``, see :mod:`training.review.durable`), and a store opened with a
journal left behind writes that crop again before it is used.
"""

from __future__ import annotations

import logging
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from training.review import durable
from training.review.integrity import MaskStoreError, chunk_regions

log = logging.getLogger(__name__)


class RegionWrites:
    """:class:`~training.review.store.MaskStore`'s journaled region writes; mixed into the
    store, whose checks and reads it uses."""

    location: Path
    _attrs: dict[str, Any]

    def write_region(self, y: int, x: int, new: np.ndarray, old: np.ndarray) -> np.ndarray:
        """Write the edited crop ``new`` at ``(y, x)`` and return it as written.

        ``old`` is the crop as it was read; it must still be what the store holds (else another
        writer changed it and this write would undo their edits). Ids in ``new`` but not in
        ``old`` are objects painted in the crop: they are given fresh ids from ``next_id`` so
        they never collide with objects elsewhere in the slide. The overview levels are updated
        for this region only. The crop is journaled first, so a write cut short is completed
        when the store is next opened (see :mod:`training.review.regions`).
        """
        new, old = np.asarray(new), np.asarray(old)
        if new.shape != old.shape:
            raise ValueError(f"new {new.shape} and old {old.shape} crops differ in shape")
        box = self._box(y, x, *new.shape)
        labels = self._array("labels")
        if not np.array_equal(self._read("labels", box), old):
            raise MaskStoreError(
                f"the region at ({y}, {x}) changed in {self.location} since it was read; "
                "read it again before writing"
            )
        written = self._as_labels(new, shape=new.shape).copy()
        painted = painted_ids(written, old)
        if len(painted):
            first = self.next_id
            if first + len(painted) > np.iinfo(np.int32).max:
                raise MaskStoreError("no free label ids left in the mask store")
            # reserve the ids before writing: a crash leaves a gap, never a reused id
            self._update_attrs(next_id=first + len(painted))
            renumber(written, painted, first)
        origin = np.array([y, x, self.generation], np.int64)
        durable.write_journal(self.location, origin=origin, crop=written)
        self._write_crop(labels, y, x, written)
        durable.clear_journal(self.location)
        return written

    def _write_crop(self, labels: Any, y: int, x: int, crop: np.ndarray) -> None:
        """Write ``crop`` at ``(y, x)`` into the labels and the overview levels, flushed."""
        labels[self._box(y, x, *crop.shape)] = crop
        touched = [("labels", labels, self._box(y, x, *crop.shape))]
        for level, array in enumerate(self._overview_arrays(), start=1):
            box = _write_downsampled(array, y, x, crop, 2**level)
            if box is not None:
                touched.append((f"overview/{level}", array, box))
        durable.sync_files(
            self.location / self._path(name) / array.metadata.encode_chunk_key(index)
            for name, array, box in touched
            for index, _ in chunk_regions(array, box)
        )

    def _finish_region_write(self) -> None:
        """Write again the crop of a region write that a kill cut short (its journal is left)."""
        for stale in self.location.glob(f".{durable.JOURNAL}.*.partial"):  # killed mid-way
            stale.unlink(missing_ok=True)
        try:
            journal = durable.read_journal(self.location)
            if journal is not None:
                y, x, generation = (int(v) for v in journal["origin"])
                crop = self._as_labels(journal["crop"], shape=journal["crop"].shape)
                self._box(y, x, *crop.shape)  # 2-D and inside the labels
        except (OSError, ValueError, TypeError, KeyError, zipfile.BadZipFile) as exc:
            raise MaskStoreError(
                f"the mask store {self.location} has an unreadable region journal "
                f"({type(exc).__name__}: {exc}); move {durable.JOURNAL} aside to open it (the "
                "region last applied may be half written)"
            ) from exc
        if journal is None:
            return
        if generation != self.generation or not self.has_model:
            raise MaskStoreError(
                f"the mask store {self.location} has a region journal for generation "
                f"{generation}, not the saved one ({self.generation}); move "
                f"{durable.JOURNAL} aside to open it without that region's last edit"
            )
        log.warning("%s: completing a region write cut short at (%d, %d)", self.location, y, x)
        try:
            self._write_crop(self._array("labels"), y, x, crop)
        except OSError as exc:
            raise MaskStoreError(
                f"the mask store {self.location} has a region write cut short that cannot be "
                f"completed ({exc}); open it where it can be written"
            ) from exc
        durable.clear_journal(self.location)


def painted_ids(new: np.ndarray, old: np.ndarray) -> np.ndarray:
    """The ids (sorted, nonzero) in an edited crop ``new`` that its original ``old`` lacks: the
    objects painted in the crop."""
    painted = np.setdiff1d(np.unique(new), np.unique(old))
    return painted[painted != 0]


def renumber(labels: np.ndarray, ids: np.ndarray, first: int) -> None:
    """Give ``ids`` (sorted) the ids ``first``, ``first + 1``, ... in ``labels``, in place."""
    mask = np.isin(labels, ids)
    labels[mask] = first + np.searchsorted(ids, labels[mask])


def _write_downsampled(
    level: Any, y: int, x: int, crop: np.ndarray, step: int
) -> tuple[slice, slice] | None:
    """Write into an overview level (every ``step``-th pixel of level 0) the pixels it takes
    from ``crop``, placed at ``(y, x)`` in level 0; the box written (``None``: none)."""
    rows = (-(-y // step), -(-(y + crop.shape[0]) // step))
    cols = (-(-x // step), -(-(x + crop.shape[1]) // step))
    if rows[1] <= rows[0] or cols[1] <= cols[0]:
        return None
    box = slice(*rows), slice(*cols)
    level[box] = crop[rows[0] * step - y :: step, cols[0] * step - x :: step]
    return box
