"""Corrected FTU masks to a dataset folder and to QuPath GeoJSON, without Qt or a session.

An export is a list of :class:`Piece`: labels at the working scale and the level-0 box of the
slide they cover. A whole image is one piece; a slide too large to export whole gives one piece
per region a pathologist reviewed, each its own row ``<image>_r<y>_<x>`` (level-0 top-left).
Each piece becomes ``train_images/<id>.tiff`` (cut from the slide's level 0) and a ``train.csv``
row whose RLE is the labels resized nearest-neighbour to the image's size
(:func:`training.data.rle.encode_upscaled`), written through
:func:`training.data.catalog.upsert_row` (atomic; a replaced row and image are kept). The
GeoJSON of the pieces lies on the slide's level-0 pixels, so QuPath opens it on the slide.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import tempfile
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from training.data import rle
from training.data.catalog import (
    ORGANS,
    CatalogError,
    catalog_paths,
    check_id,
    read_catalog,
    upsert_row,
)

__all__ = [
    "ExportError",
    "ExportInfo",
    "ExportResult",
    "Piece",
    "check_writable",
    "existing_outputs",
    "export_job",
    "export_rows",
    "geojson_path",
    "level0_box",
    "piece_row",
    "pieces_geojson",
    "region_pieces",
    "safe_id",
    "whole_image",
    "write_geojson",
]

Box = tuple[int, int, int, int]  # (y, x, h, w)
GEOJSON_DIR = "geojson"  # OUT/geojson/<id>.geojson, the layout of the shared kidney set


class ExportError(ValueError):
    """An export that cannot be done as asked; nothing has been written."""


@dataclass(frozen=True)
class ExportInfo:
    """What every exported row says besides its mask."""

    organ: str
    pixel_size_um: float  # level-0 micrometres per pixel
    data_source: str = "napari-ftu"
    tissue_thickness: float | None = None
    annotator: str = ""
    updated_at: str = field(
        default_factory=lambda: dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    )
    # per label, QuPath's names (training.measure.qupath.to_qupath): carried by the GeoJSON
    measurements: Mapping[int, Mapping[str, float]] | None = None


@dataclass(frozen=True)
class Piece:
    """One image to export: labels at the working scale and the level-0 box they cover."""

    image_id: str
    labels: np.ndarray
    box: Box


@dataclass
class ExportResult:
    """What an export wrote: the rows (in ``train.csv``) and every file."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)


def safe_id(name: str) -> str:
    """``name`` as a row id that is also a file name: letters, digits, ``.``, ``_``, ``-``."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", name.strip()).strip("._")
    return cleaned or "image"


def _check_export_id(image_id: str) -> None:
    # safe_id makes the plugin's ids; anything else that reaches an export must still name a
    # file inside the folder.
    try:
        check_id(image_id)
    except CatalogError as exc:
        raise ExportError(f"{exc}; safe_id() makes one from any name") from None


def level0_box(box: Box, downsample: float, shape: Sequence[int]) -> Box:
    """The level-0 pixels a working box covers: its edges times ``downsample``, rounded to the
    nearest pixel (so neighbouring boxes share their edge), clipped to the slide's ``shape``."""
    y, x, h, w = box
    y0, x0 = round(y * downsample), round(x * downsample)
    y1 = min(int(shape[0]), round((y + h) * downsample))
    x1 = min(int(shape[1]), round((x + w) * downsample))
    if y1 <= y0 or x1 <= x0:
        raise ExportError(f"the region {box} (working pixels) lies outside the slide")
    return y0, x0, y1 - y0, x1 - x0


def whole_image(image_id: str, labels: np.ndarray, shape: Sequence[int]) -> Piece:
    """The whole image as one piece (``shape``: its level-0 ``(H, W)``)."""
    return Piece(image_id, np.asarray(labels), (0, 0, int(shape[0]), int(shape[1])))


def region_pieces(
    image_id: str,
    regions: Sequence[Box],
    read_labels: Callable[[Box], np.ndarray],
    downsample: float,
    shape: Sequence[int],
) -> list[Piece]:
    """One piece per reviewed region (working boxes), id ``<image_id>_r<y>_<x>`` (level 0)."""
    pieces = []
    for region in regions:
        box = level0_box(region, downsample, shape)
        pieces.append(Piece(f"{image_id}_r{box[0]}_{box[1]}", read_labels(region), box))
    return pieces


def piece_row(piece: Piece, info: ExportInfo) -> dict[str, Any]:
    """The ``train.csv`` row of a piece, its mask as RLE at the image's level 0."""
    _check_export_id(piece.image_id)
    if info.organ not in ORGANS:
        raise ExportError(f"unknown organ {info.organ!r}; expected one of {', '.join(ORGANS)}")
    if not (np.isfinite(info.pixel_size_um) and info.pixel_size_um > 0):
        raise ExportError(f"the pixel size must be positive; got {info.pixel_size_um}")
    thickness = info.tissue_thickness
    if thickness is not None and not (np.isfinite(thickness) and thickness > 0):
        raise ExportError(f"the tissue thickness must be positive or empty; got {thickness}")
    height, width = piece.box[2], piece.box[3]
    labels = piece.labels
    same = labels.shape == (height, width)
    return {
        "id": piece.image_id,
        "organ": info.organ,
        "data_source": info.data_source,
        "img_height": height,
        "img_width": width,
        "pixel_size": float(info.pixel_size_um),
        "tissue_thickness": "" if thickness is None else thickness,
        "rle": rle.encode(labels) if same else rle.encode_upscaled(labels, (height, width)),
        "age": "",
        "sex": "",
        "annotator": info.annotator,
        "updated_at": info.updated_at,
    }


def geojson_path(folder: str | os.PathLike, image_id: str) -> Path:
    """Where an export writes the GeoJSON of ``image_id``: ``DIR/geojson/<id>.geojson``."""
    return Path(folder) / GEOJSON_DIR / f"{image_id}.geojson"


def existing_outputs(
    folder: str | os.PathLike, ids: Sequence[str], geojson_id: str | None = None
) -> list[str]:
    """Which of ``ids`` already have a row in the folder's ``train.csv``, and the GeoJSON file
    (relative to the folder) when ``geojson_id``'s exists: what an export would replace."""
    csv_path, _ = catalog_paths(folder)
    found = []
    if csv_path.is_file():
        rows = set(read_catalog(folder, check_images=False, check_rle=False)["id"])
        found = [i for i in ids if i in rows]
    if geojson_id is not None and geojson_path(folder, geojson_id).exists():
        found.append(str(geojson_path(folder, geojson_id).relative_to(folder)))
    return found


def pieces_geojson(
    pieces: Sequence[Piece],
    organ: str,
    measurements: Mapping[int, Mapping[str, float]] | None = None,
) -> dict[str, Any]:
    """A QuPath FeatureCollection of every piece's objects on the slide's level-0 pixels; an
    object in several pieces (overlapping regions) is one annotation. ``measurements``: by
    label, each feature's QuPath ``measurements``."""
    from training.data.geojson_export import (
        geometries_to_geojson,
        label_geometries,
        merge_geometries,
    )

    parts = []
    for piece in pieces:
        y, x, h, w = piece.box
        scale = (h / piece.labels.shape[0], w / piece.labels.shape[1])
        parts.append(label_geometries(piece.labels, scale, (y, x)))
    return geometries_to_geojson(merge_geometries(parts), organ, measurements)


def write_geojson(path: str | os.PathLike, collection: dict[str, Any]) -> Path:
    """Write a FeatureCollection atomically; a file it replaces is kept in ``.backup/`` beside
    it under a name no other backup has (UTC time to the nanosecond)."""
    import json

    from training.atomic import atomic_path, keep_backup

    path = Path(path)
    if path.exists():
        keep_backup(path, path.parent / ".backup")
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as handle:
        json.dump(collection, handle)
    return path


def check_writable(folder: str | os.PathLike) -> Path:
    """Create ``folder`` if needed and make sure a file can be written in it."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".napari-ftu-check-"):
            pass
    except OSError as exc:
        raise ExportError(f"cannot write in {folder}: {exc.strerror or exc}") from None
    return folder


def export_job(
    folder: str | os.PathLike,
    pieces: Sequence[Piece],
    slide: Any,
    info: ExportInfo,
    geojson_id: str | None = None,
    dataset: bool = True,
) -> Generator[str, None, ExportResult]:
    """Write the pieces as rows and images of the dataset folder (when ``dataset``) and their
    GeoJSON as ``geojson/<geojson_id>.geojson`` (when ``geojson_id``); yield a message per step,
    return what was written. ``slide``: anything with ``read_region(y, x, h, w)`` at level 0.

    Every row is built and checked (RLE, organ, sizes) and the folder tried before the first
    write, so a bad export writes nothing.
    """
    if not pieces:
        raise ExportError("nothing to export")
    if geojson_id is not None:
        _check_export_id(geojson_id)
    folder = check_writable(folder)
    rows = [piece_row(piece, info) for piece in pieces] if dataset else []
    collection = None
    if geojson_id is not None:
        collection = pieces_geojson(pieces, info.organ, info.measurements)
    result = ExportResult()
    csv_path, image_dir = catalog_paths(folder)
    for piece, row in zip(pieces, rows, strict=False):
        yield f"writing {piece.image_id}"
        y, x, h, w = piece.box
        upsert_row(folder, row, image=np.asarray(slide.read_region(y, x, h, w)))
        result.rows.append(row)
        result.files.append(image_dir / f"{piece.image_id}.tiff")
    if dataset:
        result.files.append(csv_path)
    if collection is not None:
        yield f"writing {geojson_id}.geojson"
        result.files.append(write_geojson(geojson_path(folder, geojson_id), collection))
    return result


def export_rows(
    folder: str | os.PathLike,
    pieces: Sequence[Piece],
    slide: Any,
    info: ExportInfo,
    geojson_id: str | None = None,
    dataset: bool = True,
) -> ExportResult:
    """:func:`export_job` run to the end (scripts, the CLI): what was written."""
    job = export_job(folder, pieces, slide, info, geojson_id, dataset)
    while True:
        try:
            next(job)
        except StopIteration as stop:
            return stop.value
