"""The mask store's two generations and their commit: a save interrupted by a kill or a power
loss never loses the last complete save.

Since version 3 the labels, the model and the overview levels are kept twice: generation 0 at
the top of the group (where versions 1 and 2 keep them) and generation 1 in the group
``generation1``. The attribute ``generation`` names the one that holds the saved labels;
:meth:`Generations.set_model` writes the other one whole, flushes it to the disk and then
commits it by one attribute update (zarr writes ``zarr.json`` to a temporary file renamed into
place: old or new, never torn). A kill before the commit leaves the previous save; after it,
the new one. The second generation costs one more (compressed) copy of the labels and the
model, never of the probability.

The attribute ``previous_complete`` says whether the generation not in use holds the complete
save before the current one: a save clears it (flushed) before it writes a chunk there and sets
it with its commit. When the current generation is damaged, :meth:`Generations.previous_save`
finds that earlier save (every chunk read) and :meth:`Generations.restore_previous` makes it the
current one. A store written before this attribute has no earlier save to offer.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Self

import numpy as np

from training.review import durable
from training.review.integrity import (
    MaskStoreError,
    identity_differences,
    verify_array,
)
from training.review.layout import (
    ARRAYS,
    EVERY_CHUNK,
    FORMAT,
    PROBABILITY,
    VERSION,
    array_path,
    create_int_array,
    overview_shapes,
)


class Generations:
    """:class:`~training.review.store.MaskStore`'s saves into the generation not in use, and
    where each array of a generation lies; mixed into the store, whose checks it uses."""

    location: Path
    _group: Any
    _attrs: dict[str, Any]

    @property
    def generation(self) -> int:
        """Which copy of the labels and the model holds the last complete save (0 or 1)."""
        return int(self._attrs.get("generation", 0))

    @property
    def previous_complete(self) -> bool:
        """Whether the generation not in use holds the complete save before the current one."""
        return bool(self._attrs.get("previous_complete", False))

    def set_model(
        self,
        model_labels: np.ndarray,
        labels: np.ndarray | None = None,
        settings: dict[str, Any] | None = None,
    ) -> None:
        """Store the model's labels and the current labels (by default the model's), whole,
        with the overview levels, and ``settings`` (merged into :attr:`settings`) with them.

        They are written into the generation not in use and committed by one attribute update
        once on disk, so a save interrupted at any point leaves the previous one (see
        :mod:`training.review.generations`)."""
        model_labels = self._as_labels(model_labels, erased=True)
        labels = model_labels.clip(0) if labels is None else self._as_labels(labels)
        self._check_arrays()
        # before any model there is nothing to keep: the current generation is written
        target = 1 - self.generation if self.has_model else self.generation
        if self.has_model:  # the earlier save is about to be overwritten: no longer offered
            self._update_attrs(previous_complete=False)
            durable.sync_files([self.location / "zarr.json"])
        # a version-1 store's generation left behind lacks its empty chunks: never offered
        left_complete = self.has_model and self._every_chunk
        self._require_generation(target)
        for name in [*ARRAYS, *self._overview_names()]:  # files of saves killed before
            for stale in (self.location / self._path(name, target)).rglob("*.partial"):
                stale.unlink(missing_ok=True)
        self._get("model", target)[...] = model_labels
        self._get("labels", target)[...] = labels
        for level, name in enumerate(self._overview_names(), start=1):
            step = 2**level
            self._get(name, target)[...] = labels[::step, ::step]
        for name in [*ARRAYS, *self._overview_names()]:
            durable.sync_tree(self.location / self._path(name, target))
        top = max(int(model_labels.max(initial=0)), int(labels.max(initial=0)))
        commit: dict[str, Any] = {"has_model": True, "next_id": top + 1, "generation": target}
        commit["previous_complete"] = left_complete
        if self._every_chunk:  # a version-1 store may lack empty probability chunks: stays 1
            commit["version"] = VERSION
        if settings:
            commit["settings"] = {**self._attrs.get("settings", {}), **settings}
        self._update_attrs(**commit)
        durable.sync_files([self.location / "zarr.json"])

    @classmethod
    def previous_save(
        cls, location: str | os.PathLike, slide_identity: dict[str, Any]
    ) -> Self | None:
        """The store at ``location`` (made for the slide of ``slide_identity``) opened without
        the checks of its current generation, when the generation not in use holds a complete
        earlier save whose every chunk, and every chunk of the probability, is on disk and
        decodes; else ``None``. For a store whose current generation is damaged: see
        :meth:`restore_previous`."""
        import zarr

        location = Path(location)
        try:
            group = zarr.open_group(str(location), mode="r")
            store = cls(location, group)
            if (
                group.attrs.get("format") != FORMAT
                or not store.previous_complete
                or identity_differences(store.identity, slide_identity)
                or (location / durable.JOURNAL).is_file()  # an edit of the damaged one
            ):
                return None
            store._verify_generation(1 - store.generation)
        except (MaskStoreError, OSError, KeyError, ValueError, TypeError):
            return None
        return cls(location, zarr.open_group(str(location), mode="r+"))

    def restore_previous(self) -> None:
        """Make the earlier save in the generation not in use the current one, by one attribute
        update; the generation left (the damaged one) is no longer a save to go back to. Edits
        made since that save are lost. Call it on a store :meth:`previous_save` gave."""
        if not self.previous_complete:
            raise MaskStoreError(f"the mask store {self.location} has no earlier save to restore")
        self._update_attrs(generation=1 - self.generation, previous_complete=False)
        durable.sync_files([self.location / "zarr.json"])

    def _verify_generation(self, generation: int) -> None:
        """Read every chunk of ``generation`` and of the probability: :class:`MaskStoreDamaged`
        names the first one missing or unreadable, ``MaskStoreError`` an array of another
        shape."""
        shapes = {PROBABILITY: self.shape, **{name: self.shape for name in ARRAYS}}
        shapes |= dict(zip(self._overview_names(), overview_shapes(self.shape), strict=True))
        for name, shape in shapes.items():
            path = self._path(name, generation)
            array = self._group[path].with_config(EVERY_CHUNK)
            if tuple(array.shape) != shape:
                raise MaskStoreError(f"{self.location}: {path} has the shape {array.shape}")
            verify_array(self.location, path, array)

    def _require_generation(self, generation: int) -> None:
        """Create the arrays of ``generation`` that are not on disk (generation 1 of a store
        saved before version 3) or whose metadata does not read (a damaged generation left by
        :meth:`restore_previous`: it is about to be written whole)."""
        names = [*ARRAYS, *self._overview_names()]
        for name in names:
            path = self._path(name, generation)
            if not _readable(self._group, path):
                shape = (
                    self.shape
                    if name in ARRAYS
                    else overview_shapes(self.shape)[int(name.split("/")[1]) - 1]
                )
                create_int_array(self._group, path, shape, overwrite=True)

    def _path(self, name: str, generation: int | None = None) -> str:
        """Where an array lies in the group: labels, model and overview levels in the saved
        generation (or ``generation``)."""
        return array_path(name, self.generation if generation is None else generation)

    def _get(self, name: str, generation: int | None = None) -> Any:
        # the array configuration is not stored: every opening asks again for every chunk
        return self._group[self._path(name, generation)].with_config(EVERY_CHUNK)


def _readable(group: Any, path: str) -> bool:
    """Whether the array at ``path`` in ``group`` is there and its metadata reads."""
    try:
        group[path]
    except (KeyError, ValueError):  # a JSONDecodeError is a ValueError
        return False
    return True
