"""The slide's mask store: a zarr v3 group on disk, so edits persist and come back when the
slide is reopened.

Layout: ``labels`` (the current labels, with the pathologist's edits) and ``model`` (the
model's labels, where -1 marks pixels a pathologist erased, remembered even where the model no
longer finds an object), both int32 at the working scale, chunks of 1024 x 1024, fill 0;
``probability`` (float32, the model's probability, so thresholds can be tuned after reopening);
``overview/1``,
``overview/2``, ... the labels downsampled 2x, 4x, ... (nearest neighbour) until the long side
is at most 1024 px, for a read-only multiscale Labels layer. Attributes: ``format``,
``shape``, ``pixel_size_um`` (of the working scale), ``downsample`` (level-0 px per working px),
``slide_identity``, ``settings`` (threshold, min area, ...), ``next_id``, ``has_model`` and
``generation``.

A save interrupted by a kill or a power loss never loses the last complete save. Since version 3
the labels, the model and the overview levels are kept twice: generation 0 at the top of the
group (where versions 1 and 2 keep them) and generation 1 in the group ``generation1``. The
attribute ``generation`` names the one that holds the saved labels; :meth:`MaskStore.set_model`
writes the other one whole, flushes it to the disk and then commits it by one attribute update
(zarr writes ``zarr.json`` to a temporary file renamed into place: old or new, never torn). A
kill before the commit leaves the previous save; after it, the new one. A region write
(:meth:`MaskStore.write_region`, for a slide too large to rewrite whole) changes the saved
generation in place: the crop it writes is first written, flushed, to a journal
(``region-journal.npz``), and a store opened with a journal left behind writes that crop again
before it is used, so a region is never half written. The second generation costs one more
(compressed) copy of the labels and the model, never of the probability.

A store is never silently applied to the wrong slide (its identity is checked) and never reads
missing arrays or chunks as background: since version 2 every chunk is written, empty ones too
(``probability`` at creation, the labels with the model), so a missing chunk raises
:class:`~training.review.integrity.MaskStoreDamaged`, as does one that does not decode (see
:mod:`training.review.integrity`). A version-1 store (empty chunks not written) is read without
the presence check.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import threading
import zipfile
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any

import numpy as np

from training.review import durable, edits
from training.review.integrity import (
    MaskStoreDamaged,
    MaskStoreError,
    check_present,
    chunk_regions,
    identity_differences,
    read_checked,
    slide_identity,
    verify_array,
)
from training.review.location import set_aside, store_location

__all__ = [
    "MaskStore",
    "MaskStoreDamaged",
    "MaskStoreError",
    "set_aside",
    "slide_identity",
    "store_location",
]

log = logging.getLogger(__name__)

FORMAT = "napari-ftu mask store"
VERSION = 3  # 2: every chunk written (a missing one is damage, not background); 3: generations
SECOND = "generation1"  # the group that holds generation 1
CHUNK = 1024
OVERVIEW_SIDE = 1024  # the smallest overview level's long side is at most this
ROWS = 1024  # rows per band when whole arrays are compared
ARRAYS = ("labels", "model")
PROBABILITY = "probability"
ERASED = -1  # in ``model``: a pixel the pathologist erased
EVERY_CHUNK = {"write_empty_chunks": True}  # zarr skips chunks of fill values by default


def overview_shapes(shape: tuple[int, int]) -> list[tuple[int, int]]:
    """The shapes of the overview levels 1, 2, ... for labels of ``shape`` (none when its long
    side is at most :data:`OVERVIEW_SIDE`)."""
    shapes = []
    step = 1
    while max(-(-shape[0] // step), -(-shape[1] // step)) > OVERVIEW_SIDE:
        step *= 2
        shapes.append((-(-shape[0] // step), -(-shape[1] // step)))
    return shapes


class MaskStore:
    """A slide's labels on disk; make one with :meth:`create`, :meth:`open` or
    :meth:`open_or_create`."""

    def __init__(self, location: Path, group: Any) -> None:
        self.location = location
        self._group = group
        self._attrs: dict[str, Any] = dict(group.attrs)
        self.settings = _Settings(self)
        # the autosave's commit (a thread) and a setting changed meanwhile rewrite one zarr.json
        self._attrs_lock = threading.Lock()

    # ---- making and opening --------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        location: str | os.PathLike,
        shape: tuple[int, int],
        pixel_size_um: float | None,
        downsample: float,
        slide_identity: dict[str, Any],
    ) -> MaskStore:
        """Create an empty store (no model yet) at ``location``; it is built in a temporary
        folder beside it and renamed into place, so a store is never seen half made."""
        import zarr

        location = Path(location)
        if location.exists():
            raise FileExistsError(f"{location} exists; open it instead")
        shape = (int(shape[0]), int(shape[1]))
        location.parent.mkdir(parents=True, exist_ok=True)
        partial = location.parent / f".{location.name}.{secrets.token_hex(4)}.partial"
        try:
            group = zarr.open_group(str(partial), mode="w-")
            for name in ARRAYS:
                _create_int_array(group, name, shape)
            chunks = (min(shape[0], CHUNK), min(shape[1], CHUNK))
            probability = group.create_array(
                PROBABILITY,
                shape=shape,
                chunks=chunks,
                dtype="float32",
                fill_value=0.0,
                config=EVERY_CHUNK,
            )
            for y in range(0, shape[0], ROWS):  # every chunk on disk from the start
                probability[y : y + ROWS] = np.zeros(
                    (min(ROWS, shape[0] - y), shape[1]), np.float32
                )
            overview = group.require_group("overview")
            for level, level_shape in enumerate(overview_shapes(shape), start=1):
                _create_int_array(overview, str(level), level_shape)
            group.attrs.update(
                {
                    "format": FORMAT,
                    "version": VERSION,
                    "shape": list(shape),
                    "pixel_size_um": pixel_size_um,
                    "downsample": float(downsample),
                    "slide_identity": dict(slide_identity),
                    "settings": {},
                    "next_id": 1,
                    "has_model": False,
                }
            )
            os.rename(partial, location)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        return cls.open(location)

    @classmethod
    def open(
        cls, location: str | os.PathLike, slide_identity: dict[str, Any] | None = None
    ) -> MaskStore:
        """Open the store at ``location``; with ``slide_identity`` (see :func:`slide_identity`)
        check that it was made for that version of the slide."""
        import zarr

        location = Path(location)
        if not location.is_dir():
            raise FileNotFoundError(f"no mask store at {location}")
        try:
            group = zarr.open_group(str(location), mode="r+")
        except (FileNotFoundError, KeyError, ValueError) as exc:
            problem = f"cannot be read ({type(exc).__name__}: {exc})"
            raise MaskStoreDamaged(location, "", None, problem) from exc
        if group.attrs.get("format") != FORMAT:
            raise MaskStoreError(f"{location} is not a napari-ftu mask store")
        if int(group.attrs.get("version", 1)) > VERSION:
            raise MaskStoreError(
                f"the mask store {location} has format version {group.attrs['version']}, newer "
                f"than this napari-ftu reads ({VERSION}); update napari-ftu to open it"
            )
        store = cls(location, group)
        store._check_arrays()
        store._check_not_cut_short()
        store._finish_region_write()
        store._check_chunks()
        if slide_identity is not None:
            store._check_identity(slide_identity)
        return store

    @classmethod
    def open_or_create(
        cls,
        location: str | os.PathLike,
        shape: tuple[int, int],
        pixel_size_um: float | None,
        downsample: float,
        slide_identity: dict[str, Any],
    ) -> MaskStore:
        """Open the store at ``location`` (checking the slide's identity and that it has this
        shape, pixel size and downsample), or create it when there is none."""
        if not Path(location).exists():
            return cls.create(location, shape, pixel_size_um, downsample, slide_identity)
        store = cls.open(location, slide_identity)
        wanted = {"shape": tuple(int(n) for n in shape), "pixel_size_um": pixel_size_um}
        wanted["downsample"] = float(downsample)
        found = {"shape": store.shape, "pixel_size_um": store.pixel_size_um}
        found["downsample"] = store.downsample
        differ = [key for key in wanted if not _same(wanted[key], found[key])]
        if differ:
            raise MaskStoreError(
                f"the mask store {location} was made for another working scale: "
                + ", ".join(f"{key} {found[key]} (wanted {wanted[key]})" for key in differ)
            )
        return store

    # ---- what the store holds ------------------------------------------------------------------

    @property
    def shape(self) -> tuple[int, int]:
        """The labels' shape (working scale)."""
        return tuple(self._attrs["shape"])

    @property
    def pixel_size_um(self) -> float | None:
        """The working scale's pixel size in micrometres (``None`` when unknown)."""
        return self._attrs["pixel_size_um"]

    @property
    def downsample(self) -> float:
        """Level-0 pixels per working pixel."""
        return float(self._attrs["downsample"])

    @property
    def identity(self) -> dict[str, Any]:
        """The identity of the slide the store was made for."""
        return dict(self._attrs["slide_identity"])

    @property
    def next_id(self) -> int:
        """The id the next new object gets."""
        return int(self._attrs["next_id"])

    @property
    def has_model(self) -> bool:
        """Whether :meth:`set_model` has completed (before that there are no labels)."""
        return bool(self._attrs["has_model"])

    @property
    def generation(self) -> int:
        """Which copy of the labels and the model holds the last complete save (0 or 1)."""
        return int(self._attrs.get("generation", 0))

    # ---- reading and writing -------------------------------------------------------------------

    def set_model(
        self,
        model_labels: np.ndarray,
        labels: np.ndarray | None = None,
        settings: dict[str, Any] | None = None,
    ) -> None:
        """Store the model's labels and the current labels (by default the model's), whole,
        with the overview levels, and ``settings`` (merged into :attr:`settings`) with them.

        They are written into the generation not in use and committed by one attribute update
        once on disk, so a save interrupted at any point leaves the previous one (see the
        module's docstring)."""
        model_labels = self._as_labels(model_labels, erased=True)
        labels = model_labels.clip(0) if labels is None else self._as_labels(labels)
        self._check_arrays()
        # before any model there is nothing to keep: the current generation is written
        target = 1 - self.generation if self.has_model else self.generation
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
        if self._every_chunk:  # a version-1 store may lack empty probability chunks: stays 1
            commit["version"] = VERSION
        if settings:
            commit["settings"] = {**self._attrs.get("settings", {}), **settings}
        self._update_attrs(**commit)
        durable.sync_files([self.location / "zarr.json"])

    def read(self, y: int, x: int, h: int, w: int, which: str = "labels") -> np.ndarray:
        """The ``h`` x ``w`` crop at ``(y, x)`` of ``labels`` or ``model``."""
        return self._read(which, self._box(y, x, h, w))

    def labels_array_lazy(self) -> Any:
        """The current labels as a zarr array (index it to read a part)."""
        return self._array("labels")

    def model_array_lazy(self) -> Any:
        """The model's labels as a zarr array (index it to read a part)."""
        return self._array("model")

    def labels_array(self) -> np.ndarray:
        """The current labels, whole."""
        return self._read("labels", self._box(0, 0, *self.shape))

    def model_array(self) -> np.ndarray:
        """The model's labels, whole."""
        return self._read("model", self._box(0, 0, *self.shape))

    def verify(self) -> None:
        """Read every chunk of every array once (one chunk in memory at a time):
        :class:`MaskStoreDamaged` names the first one missing or unreadable. Labels, model and
        overview are checked once the store has a model (before that they are unwritten)."""
        names = [PROBABILITY]
        if self.has_model:
            names += [*ARRAYS, *self._overview_names()]
        for name in names:
            self._check_present(name)
            path = self._path(name)
            verify_array(self.location, path, self._get(name), present=self._every_chunk)

    def write_region(self, y: int, x: int, new: np.ndarray, old: np.ndarray) -> np.ndarray:
        """Write the edited crop ``new`` at ``(y, x)`` and return it as written.

        ``old`` is the crop as it was read; it must still be what the store holds (else another
        writer changed it and this write would undo their edits). Ids in ``new`` but not in
        ``old`` are objects painted in the crop: they are given fresh ids from ``next_id`` so
        they never collide with objects elsewhere in the slide. The overview levels are updated
        for this region only. The crop is journaled first, so a write cut short is completed
        when the store is next opened (see the module's docstring).
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

    def probability(self) -> Any:
        """The stored probability map (a zarr array: index it to read)."""
        self._check_present(PROBABILITY)
        return self._get(PROBABILITY)

    def write_probability(self, y: int, x: int, values: np.ndarray) -> None:
        """Write a run's probability at ``(y, x)``."""
        values = np.asarray(values, np.float32)
        self.probability()[self._box(y, x, *values.shape)] = values

    def overview_levels(self) -> list[Any]:
        """The labels as a pyramid for a read-only multiscale Labels layer: level 0 is the
        labels array itself, then each level halves it (nearest neighbour)."""
        return [self._array("labels"), *self._overview_arrays()]

    def has_edits(self) -> bool:
        """Whether the labels differ anywhere from the model's (compared band by band)."""
        height, width = self.shape
        for y in range(0, height, ROWS):
            band = self._box(y, 0, min(ROWS, height - y), width)
            if np.any(self._read("labels", band) != self._read("model", band)):
                return True
        return False

    def edit_summary(self) -> edits.EditSummary:
        """:func:`training.review.edits.edit_summary` of the stored labels against the model.
        Both arrays are loaded whole (two int32 images at the working scale)."""
        return edits.edit_summary(self.labels_array(), self.model_array())

    # ---- internals -----------------------------------------------------------------------------

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

    def _check_not_cut_short(self) -> None:
        """A store written before version 3 marked itself as without a model while a save
        rewrote its labels in place: one left so with labels on disk was cut short, and may
        hold a mix of two saves. :class:`MaskStoreDamaged` (it is set aside, never used)."""
        if self.has_model or int(self._attrs.get("version", 1)) >= 3:
            return
        if any((self.location / name / "c").is_dir() for name in ARRAYS):
            raise MaskStoreDamaged(
                self.location,
                "labels",
                None,
                "was being saved when napari-ftu stopped (the store, written by an older "
                "napari-ftu, says it has no labels; those on disk may mix two saves)",
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

    def _require_generation(self, generation: int) -> None:
        """Create the arrays of ``generation`` that are not on disk (generation 1 of a store
        saved before version 3)."""
        names = [*ARRAYS, *self._overview_names()]
        for name in names:
            path = self._path(name, generation)
            if not (self.location / path / "zarr.json").is_file():
                shape = (
                    self.shape
                    if name in ARRAYS
                    else overview_shapes(self.shape)[int(name.split("/")[1]) - 1]
                )
                _create_int_array(self._group, path, shape, overwrite=True)

    def _path(self, name: str, generation: int | None = None) -> str:
        """Where an array lies in the group: labels, model and overview levels in the saved
        generation (or ``generation``)."""
        generation = self.generation if generation is None else generation
        return f"{SECOND}/{name}" if generation and name != PROBABILITY else name

    def _array(self, which: str) -> Any:
        if which not in ARRAYS:
            raise ValueError(f"which must be one of {ARRAYS}; got {which!r}")
        self._check_present(which)
        if not self.has_model:
            raise MaskStoreError(f"the mask store {self.location} has no labels yet (no model)")
        return self._get(which)

    def _get(self, name: str, generation: int | None = None) -> Any:
        # the array configuration is not stored: every opening asks again for every chunk
        return self._group[self._path(name, generation)].with_config(EVERY_CHUNK)

    @property
    def _every_chunk(self) -> bool:
        return int(self._attrs.get("version", 1)) >= 2

    def _read(self, which: str, box: tuple[slice, slice]) -> np.ndarray:
        array = self._array(which)
        path = self._path(which)
        return read_checked(self.location, path, array, box, present=self._every_chunk)

    def _overview_names(self) -> list[str]:
        return [f"overview/{level}" for level in range(1, len(overview_shapes(self.shape)) + 1)]

    def _overview_arrays(self) -> list[Any]:
        for name in self._overview_names():
            self._check_present(name)
        return [self._get(name) for name in self._overview_names()]

    def _check_present(self, name: str) -> None:
        # An opened zarr array reads a deleted chunk as its fill value (0, background): look
        # for the array's metadata on disk at every use, so a deleted store raises instead.
        if not (self.location / self._path(name) / "zarr.json").is_file():
            raise MaskStoreDamaged(
                self.location,
                self._path(name),
                None,
                "is missing (deleted?); its labels cannot be read",
            )

    def _check_chunks(self) -> None:
        """Every chunk that should exist is on disk (a directory listing, nothing decoded)."""
        if not self._every_chunk:
            log.warning("%s is a version-1 mask store: a missing chunk reads as 0", self.location)
            return
        names = [PROBABILITY, *ARRAYS, *self._overview_names()] if self.has_model else [PROBABILITY]
        for name in names:
            check_present(self.location, self._path(name), self._group[self._path(name)], None)

    def _check_arrays(self) -> None:
        expected = {name: self.shape for name in ARRAYS}
        for level, shape in enumerate(overview_shapes(self.shape), start=1):
            expected[f"overview/{level}"] = shape
        self._check_present(PROBABILITY)
        if tuple(self._group[PROBABILITY].shape) != self.shape:
            raise MaskStoreError(f"the mask store {self.location} has a malformed probability")
        for name, shape in expected.items():
            self._check_present(name)
            try:
                array = self._group[self._path(name)]
            except (KeyError, ValueError) as exc:
                problem = f"has unreadable metadata ({type(exc).__name__}: {exc})"
                raise MaskStoreDamaged(self.location, self._path(name), None, problem) from exc
            if tuple(array.shape) != shape or array.dtype != np.int32:
                raise MaskStoreError(
                    f"the mask store {self.location} has a malformed {name!r}: "
                    f"{array.dtype} {tuple(array.shape)}, expected int32 {shape}"
                )

    def _check_identity(self, identity: dict[str, Any]) -> None:
        differ = identity_differences(self.identity, identity)
        if differ:
            raise MaskStoreError(
                f"the mask store {self.location} was made for another version of the slide: "
                + ", ".join(differ)
            )

    def _update_attrs(self, **values: Any) -> None:
        with self._attrs_lock:
            self._group.attrs.update(values)
            self._attrs.update(values)

    def _box(self, y: int, x: int, h: int, w: int) -> tuple[slice, slice]:
        height, width = self.shape
        if h <= 0 or w <= 0 or y < 0 or x < 0 or y + h > height or x + w > width:
            raise ValueError(f"region ({y}, {x}, {h}, {w}) is not inside {self.shape}")
        return slice(y, y + h), slice(x, x + w)

    def _as_labels(
        self, values: np.ndarray, shape: tuple[int, ...] | None = None, erased: bool = False
    ) -> np.ndarray:
        values = np.asarray(values)
        if values.shape != (shape or self.shape):
            raise ValueError(f"labels of shape {values.shape}; expected {shape or self.shape}")
        lowest = ERASED if erased else 0
        if values.size and (values.min() < lowest or values.max() > np.iinfo(np.int32).max):
            raise ValueError(f"label ids must be in {lowest} .. 2**31 - 1")
        return values.astype(np.int32, copy=False)

    def __repr__(self) -> str:
        return f"MaskStore({str(self.location)!r}, shape={self.shape})"


class _Settings(MutableMapping):
    """``store.settings``: a dict persisted in the store's attributes on every change."""

    def __init__(self, store: MaskStore) -> None:
        self._store = store

    def _values(self) -> dict[str, Any]:
        return dict(self._store._attrs.get("settings", {}))

    def __getitem__(self, key: str) -> Any:
        return self._values()[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self._store._update_attrs(settings={**self._values(), key: value})

    def __delitem__(self, key: str) -> None:
        values = self._values()
        del values[key]
        self._store._update_attrs(settings=values)

    def __iter__(self) -> Iterator[str]:
        return iter(self._values())

    def __len__(self) -> int:
        return len(self._values())

    def __repr__(self) -> str:
        return repr(self._values())


def painted_ids(new: np.ndarray, old: np.ndarray) -> np.ndarray:
    """The ids (sorted, nonzero) in an edited crop ``new`` that its original ``old`` lacks: the
    objects painted in the crop."""
    painted = np.setdiff1d(np.unique(new), np.unique(old))
    return painted[painted != 0]


def renumber(labels: np.ndarray, ids: np.ndarray, first: int) -> None:
    """Give ``ids`` (sorted) the ids ``first``, ``first + 1``, ... in ``labels``, in place."""
    mask = np.isin(labels, ids)
    labels[mask] = first + np.searchsorted(ids, labels[mask])


def _create_int_array(
    group: Any, name: str, shape: tuple[int, int], overwrite: bool = False
) -> Any:
    chunks = (min(shape[0], CHUNK), min(shape[1], CHUNK))
    return group.create_array(
        name,
        shape=shape,
        chunks=chunks,
        dtype="int32",
        fill_value=0,
        config=EVERY_CHUNK,
        overwrite=overwrite,
    )


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


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return bool(np.isclose(a, b))
    return a == b
