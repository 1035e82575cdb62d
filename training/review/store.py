"""The slide's mask store: a zarr v3 group on disk, so edits persist and come back when the
slide is reopened. :class:`MaskStore` makes, opens, checks and reads it; the pieces it is made
of live beside it:

- :mod:`training.review.layout`: the arrays and attributes on disk, the format version;
- :mod:`training.review.generations`: the two copies of the labels, so a save interrupted by a
  kill or a power loss never loses the last complete save;
- :mod:`training.review.regions`: region writes in place through a journal, never half written;
- :mod:`training.review.settings`: the settings kept in the attributes.

A store is never silently applied to the wrong slide (its identity is checked) and never reads
missing arrays or chunks as background: since version 2 every chunk is written, empty ones too
(``probability`` at creation, the labels with the model), so a missing chunk raises
:class:`~training.review.integrity.MaskStoreDamaged`, as does one that does not decode (see
:mod:`training.review.integrity`). A version-1 store (empty chunks not written) is read without
the presence check. A store written before version 3 and left mid-save by a kill is damage,
set aside.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import threading
from pathlib import Path
from typing import Any

import numpy as np

from training.review import edits
from training.review.generations import Generations
from training.review.integrity import (
    MaskStoreDamaged,
    MaskStoreError,
    check_present,
    identity_differences,
    read_checked,
    slide_identity,
    verify_array,
)
from training.review.layout import (
    ARRAYS,
    ERASED,
    FORMAT,
    PROBABILITY,
    ROWS,
    VERSION,
    create_group,
    overview_shapes,
)
from training.review.location import set_aside, store_location
from training.review.regions import RegionWrites, painted_ids, renumber
from training.review.settings import StoreSettings

__all__ = [
    "ERASED",
    "MaskStore",
    "MaskStoreDamaged",
    "MaskStoreError",
    "painted_ids",
    "renumber",
    "set_aside",
    "slide_identity",
    "store_location",
]

log = logging.getLogger(__name__)


class MaskStore(Generations, RegionWrites):
    """A slide's labels on disk; make one with :meth:`create`, :meth:`open` or
    :meth:`open_or_create`. Whole saves (:meth:`set_model`, :attr:`generation`) come from
    :class:`~training.review.generations.Generations`, region writes (:meth:`write_region`) from
    :class:`~training.review.regions.RegionWrites`."""

    def __init__(self, location: Path, group: Any) -> None:
        self.location = location
        self._group = group
        self._attrs: dict[str, Any] = dict(group.attrs)
        self.settings = StoreSettings(self)
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
        location = Path(location)
        if location.exists():
            raise FileExistsError(f"{location} exists; open it instead")
        shape = (int(shape[0]), int(shape[1]))
        location.parent.mkdir(parents=True, exist_ok=True)
        partial = location.parent / f".{location.name}.{secrets.token_hex(4)}.partial"
        try:
            attrs = {
                "shape": list(shape),
                "pixel_size_um": pixel_size_um,
                "downsample": float(downsample),
                "slide_identity": dict(slide_identity),
                "settings": {},
                "next_id": 1,
                "has_model": False,
            }
            create_group(partial, shape, attrs)
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

    # ---- reading and writing -------------------------------------------------------------------

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

    def _array(self, which: str) -> Any:
        if which not in ARRAYS:
            raise ValueError(f"which must be one of {ARRAYS}; got {which!r}")
        self._check_present(which)
        if not self.has_model:
            raise MaskStoreError(f"the mask store {self.location} has no labels yet (no model)")
        return self._get(which)

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


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return bool(np.isclose(a, b))
    return a == b
