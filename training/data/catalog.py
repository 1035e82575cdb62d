"""The dataset folder: ``train.csv`` plus ``train_images/<id>.tiff``, the competition's layout.

Reading validates every row and names the file, row and column of any problem. Writing is atomic
across files: :func:`upsert_row` changes one row by id and its image together, through a
journal (:class:`training.atomic.FileGroup`), so a write killed at any point leaves the folder
as it was or as it was to be: the next reader or writer finishes a committed write and removes
what an uncommitted one left. A replaced row is kept in ``train.backup.csv`` and a replaced
image in ``train_images/.backup/``, so an export never silently loses an earlier correction;
with ``replace=False`` an existing row is refused instead, under the lock, so that two writers
of one id cannot silently replace each other's row. Writers take turns through a lock file
beside the CSV (``.train.csv.lock``) that exists only while one writes.
"""

from __future__ import annotations

import csv
import datetime as dt
import os
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd

from training.atomic import FileGroup, backup_path, exclusive_lock, recover
from training.data import rle as rle_codec
from training.organs import ORGANS

__all__ = [
    "COLUMNS",
    "ORGANS",
    "CatalogError",
    "RowExistsError",
    "catalog_paths",
    "check_id",
    "image_path",
    "read_catalog",
    "upsert_row",
    "write_catalog",
]

COLUMNS = (
    "id",
    "organ",
    "data_source",
    "img_height",
    "img_width",
    "pixel_size",
    "tissue_thickness",
    "rle",
    "age",
    "sex",
)
CSV_NAME = "train.csv"
BACKUP_NAME = "train.backup.csv"
IMAGE_DIR = "train_images"
IMAGE_BACKUP_DIR = ".backup"
IMAGE_SUFFIXES = (".tiff", ".tif")
_INT_COLUMNS = ("img_height", "img_width")
_FLOAT_COLUMNS = ("pixel_size", "tissue_thickness")
# Temporary files of versions before the journal (``atomic_path`` names): of the CSVs beside
# them, of the images in ``train_images/``. Only catalogue writers write these names there, so
# under their lock they are strays. (Other ``.tmp.tiff`` files beside train.csv may be another
# command's, e.g. segment's label images, and are left alone.)
_OLD_CSV_TEMPORARY = re.compile(r"^\.train(\.backup)?\.csv\.[0-9a-f]{8}\.tmp$")
_OLD_IMAGE_TEMPORARY = re.compile(r"^\..+\.[0-9a-f]{8}\.tmp\.tiff$")


class CatalogError(ValueError):
    """A dataset folder or ``train.csv`` that does not follow the format."""


class RowExistsError(CatalogError):
    """``upsert_row(..., replace=False)`` found a row of that id: nothing was written."""


class _SizeMismatch(CatalogError):
    """An image whose size is not its row's (also what a reader sees mid-write)."""


def catalog_paths(location: str | os.PathLike) -> tuple[Path, Path]:
    """Return ``(csv_path, image_dir)`` for a dataset folder or a path to its CSV file."""
    path = Path(location)
    if path.is_dir() or not path.suffix:
        return path / CSV_NAME, path / IMAGE_DIR
    return path, path.parent / IMAGE_DIR


def image_path(location: str | os.PathLike, image_id: str) -> Path | None:
    """Return the image file of ``image_id`` in a dataset folder, or ``None`` if it has none."""
    _, image_dir = catalog_paths(location)
    for suffix in IMAGE_SUFFIXES:
        candidate = image_dir / f"{image_id}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def check_id(image_id: object) -> str:
    """``image_id`` as text if it can name ``train_images/<id>.tiff`` inside the folder, else
    a ``CatalogError`` saying why (a path separator, ``..``, a leading dot, ...)."""
    text = str(image_id)
    problem = _id_problem(text)
    if problem:
        raise CatalogError(f"id {text!r} is not a plain file name: {problem}")
    return text


def _id_problem(text: str) -> str | None:
    if text.strip() == "":
        return "it is empty"
    if text != text.strip():
        return "it begins or ends with white space"
    if any(ord(c) < 32 or ord(c) == 127 for c in text):
        return "it holds a control character (NUL, newline, ...)"
    if any(c in text for c in "/\\:"):
        return "it holds a path or drive separator (/ \\ :)"
    if text.startswith("."):
        return "it begins with '.' ('..' or a hidden file)"
    return None


def read_catalog(
    location: str | os.PathLike, *, check_images: bool = True, check_rle: bool = True
) -> pd.DataFrame:
    """Read and validate ``train.csv`` of a dataset folder (or a CSV file given directly).

    ``id`` is kept as text and ``rle`` as text (``""`` for an empty mask). With ``check_images``,
    every image present in ``train_images/`` must match its row's ``img_height``/``img_width``
    (only the file header is read). With ``check_rle``, every mask must decode at the row's size.
    A write that was killed after its commit point is finished first.
    """
    csv_path, image_dir = catalog_paths(location)
    if _journal_path(csv_path).exists():
        try:
            with _writer_turn(csv_path, image_dir):
                pass
        except OSError as exc:
            raise CatalogError(
                f"{csv_path}: a write to this folder was interrupted and cannot be finished "
                f"here ({exc.strerror or exc}); open it once where the folder can be written"
            ) from None
    try:
        return _read(csv_path, image_dir, check_images, check_rle)
    except _SizeMismatch:
        # A writer may have replaced an image between our reading its row and its header; once
        # no writer is inside, the folder says what it holds.
        if not os.access(csv_path.parent, os.W_OK):
            raise
        with _writer_turn(csv_path, image_dir):
            return _read(csv_path, image_dir, check_images, check_rle)


def _read(csv_path: Path, image_dir: Path, check_images: bool, check_rle: bool) -> pd.DataFrame:
    if not csv_path.is_file():
        raise CatalogError(f"{csv_path}: no such catalogue file")
    try:
        frame = pd.read_csv(
            csv_path, dtype={"id": str, "rle": str}, keep_default_na=False, na_values={}
        )
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise CatalogError(f"{csv_path}: not a readable CSV file ({exc})") from None
    _validate(frame, csv_path)
    if check_rle:
        for index, row in frame.iterrows():
            try:
                rle_codec.parse_runs(row["rle"], (row["img_height"], row["img_width"]))
            except ValueError as exc:
                raise CatalogError(_where(csv_path, index, row["id"], "rle") + str(exc)) from None
    if check_images and image_dir.is_dir():
        for index, row in frame.iterrows():
            path = image_path(csv_path, row["id"])
            if path is not None:
                _check_image_size(path, row, _where(csv_path, index, row["id"], "img_height"))
    return frame


def write_catalog(location: str | os.PathLike, frame: pd.DataFrame) -> Path:
    """Validate ``frame`` and write it as ``train.csv``, replacing the old file atomically."""
    csv_path, image_dir = catalog_paths(location)
    frame = _ordered(frame)
    _validate(frame, csv_path)
    with _writer_turn(csv_path, image_dir):
        group = FileGroup(_journal_path(csv_path))
        try:
            _stage_csv(group, csv_path, frame)
            group.commit()
        finally:
            group.discard()
    return csv_path


def upsert_row(
    location: str | os.PathLike,
    row: Mapping[str, object],
    image: np.ndarray | None = None,
    *,
    replace: bool = True,
) -> pd.DataFrame:
    """Add or replace the row whose ``id`` matches ``row["id"]``; return the new catalogue.

    Other rows are left as they are. A replaced row is appended to ``train.backup.csv`` with a
    ``replaced_at`` time stamp. With ``image`` (``(H, W, C)``), it is written as
    ``train_images/<id>.tiff`` (pyramidal, pixel size from the row) and ``img_height``/
    ``img_width`` are taken from it; a replaced image is kept under ``train_images/.backup/``
    (named in the backup row's ``image_backup``). Without ``image``, a row whose size is not
    that of the id's image already in the folder is refused. Row and image change together:
    a kill at any point leaves the old row and image or the new ones. With ``replace=False``, a
    row of that id already in the catalogue is a ``RowExistsError`` and nothing is written: the
    check and the write happen under one lock, so of two such writers exactly one adds the row.
    """
    csv_path, image_dir = catalog_paths(location)
    record = dict(row)
    if "id" not in record or str(record["id"]).strip() == "":
        raise CatalogError(f"{csv_path}: the row to add has no 'id'")
    try:
        record["id"] = check_id(record["id"])
    except CatalogError as exc:
        raise CatalogError(f"{csv_path}: the row to add, column 'id': {exc}") from None
    if image is not None:
        image = np.asarray(image)
        record["img_height"], record["img_width"] = int(image.shape[0]), int(image.shape[1])
    record.setdefault("rle", "")
    _validate(_ordered(pd.DataFrame([record])), csv_path, partial=True)
    try:
        rle_codec.parse_runs(str(record["rle"]), (record["img_height"], record["img_width"]))
    except ValueError as exc:
        raise CatalogError(f"{csv_path}: row {record['id']!r}, column 'rle': {exc}") from None
    # Read, change and write under the folder's lock: ranks of a torchrun job (or two exports)
    # adding rows at the same time would otherwise each write back a file without the other's.
    with _writer_turn(csv_path, image_dir):
        group = FileGroup(_journal_path(csv_path))
        try:
            frame = _merge_row(group, csv_path, image_dir, record, image, replace=replace)
            group.commit()
        finally:
            group.discard()
    return frame


@contextmanager
def _writer_turn(csv_path: Path, image_dir: Path) -> Iterator[None]:
    """The folder's lock, with whatever a killed writer left finished or removed."""
    with exclusive_lock(_lock_path(csv_path)):
        try:
            recover(_journal_path(csv_path), [csv_path.parent, image_dir, _backup_dir(image_dir)])
        except ValueError as exc:
            raise CatalogError(str(exc)) from None
        for folder, pattern in (
            (csv_path.parent, _OLD_CSV_TEMPORARY),
            (image_dir, _OLD_IMAGE_TEMPORARY),
        ):
            for entry in folder.iterdir() if folder.is_dir() else ():
                if pattern.match(entry.name) and entry.is_file():
                    entry.unlink(missing_ok=True)
        yield


def _merge_row(
    group: FileGroup,
    csv_path: Path,
    image_dir: Path,
    record: dict[str, object],
    image: np.ndarray | None,
    *,
    replace: bool,
) -> pd.DataFrame:
    """Stage the new CSV, backup CSV and image in ``group``; return the new catalogue."""
    new_row = pd.DataFrame([record])
    if csv_path.exists():
        frame = _read(csv_path, image_dir, check_images=False, check_rle=False)
    else:
        csv_path.parent.mkdir(parents=True, exist_ok=True)
        frame = pd.DataFrame(columns=list(COLUMNS))
    stamp = dt.datetime.now(dt.timezone.utc).isoformat(timespec="microseconds")
    existing = frame.index[frame["id"] == record["id"]]
    if len(existing) and not replace:
        raise RowExistsError(
            f"{csv_path}: row {record['id']!r} exists and is not replaced (nothing written)"
        )
    kept_image = ""
    if image is not None:
        kept_image = _stage_image(group, csv_path, image_dir, record, image)
    else:
        _check_row_fits_image(csv_path, image_dir, record)
    if len(existing):
        old = frame.loc[existing].copy()
        old["replaced_at"] = stamp
        old["image_backup"] = kept_image
        _stage_backup_rows(group, csv_path.parent / BACKUP_NAME, old)
        for column in new_row.columns:
            if column not in frame.columns:
                frame[column] = ""
            frame[column] = frame[column].astype(object)
            frame.loc[existing[0], column] = new_row.loc[0, column]
    else:
        frame = pd.concat([frame, new_row], ignore_index=True)
    frame = _ordered(frame.fillna(""))
    _validate(frame, csv_path)
    _stage_csv(group, csv_path, frame)
    return frame


def _validate(frame: pd.DataFrame, csv_path: Path, *, partial: bool = False) -> None:
    required = ("id", "organ", "img_height", "img_width") if partial else COLUMNS
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise CatalogError(f"{csv_path}: missing column(s) {', '.join(missing)}")
    for index, row in frame.iterrows():
        where = _where(csv_path, index, row["id"], "")
        problem = _id_problem(str(row["id"]))
        if problem:
            raise CatalogError(
                f"{where}column 'id': {row['id']!r} is not a plain file name: {problem}"
            )
        if row["organ"] not in ORGANS:
            raise CatalogError(
                f"{where}column 'organ': unknown organ {row['organ']!r} "
                f"(expected one of {', '.join(ORGANS)})"
            )
        for column in _INT_COLUMNS:
            value = as_number(row[column], int)
            if value is None or value <= 0:
                raise CatalogError(
                    f"{where}column '{column}': {row[column]!r} is not a positive integer"
                )
        for column in _FLOAT_COLUMNS:
            if column in frame.columns and row[column] != "":
                value = as_number(row[column], float)
                if value is None or not value > 0:
                    raise CatalogError(
                        f"{where}column '{column}': {row[column]!r} is not a positive number"
                    )
    for column in _INT_COLUMNS:
        frame[column] = frame[column].astype(np.int64)
    duplicated = frame["id"].duplicated(keep="first")
    if duplicated.any():
        index = int(np.flatnonzero(duplicated.to_numpy())[0])
        first = int(np.flatnonzero((frame["id"] == frame["id"].iloc[index]).to_numpy())[0])
        raise CatalogError(
            f"{_where(csv_path, index, frame['id'].iloc[index], 'id')}duplicate id, "
            f"first used on line {first + 2}"
        )


def _where(csv_path: Path, index: object, image_id: object, column: str) -> str:
    line = int(index) + 2  # the header is line 1
    place = f"{csv_path}: line {line} (id {image_id})"
    return f"{place}, column '{column}': " if column else f"{place}, "


def as_number(value: object, kind: type) -> float | int | None:
    """``value`` as a finite ``kind`` (``int`` only for whole numbers), else ``None``."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    if not np.isfinite(number) or (kind is int and number != int(number)):
        return None
    return kind(number)


def _ordered(frame: pd.DataFrame) -> pd.DataFrame:
    known = [c for c in COLUMNS if c in frame.columns]
    extra = [c for c in frame.columns if c not in COLUMNS]
    return frame[known + extra].reset_index(drop=True)


def _check_image_size(path: Path, row: Mapping[str, object], where: str) -> None:
    from training.slides import SlideError, open_slide

    try:
        with open_slide(path) as slide:
            height, width = slide.shape[:2]
    except SlideError as exc:
        raise CatalogError(f"{where}image {path.name} cannot be read: {exc}") from None
    if (height, width) != (row["img_height"], row["img_width"]):
        raise _SizeMismatch(
            f"{where}image {path.name} is {height}x{width} (HxW) but the row says "
            f"{row['img_height']}x{row['img_width']}"
        )


def _check_row_fits_image(csv_path: Path, image_dir: Path, record: Mapping[str, object]) -> None:
    # A row without its image must still describe the image on disk, or the folder it leaves
    # is one that read_catalog and training refuse.
    path = image_path(csv_path, str(record["id"]))
    if path is not None:
        where = f"{csv_path}: row {record['id']!r}, column 'img_height': "
        _check_image_size(path, record, where)


def _lock_path(csv_path: Path) -> Path:
    return csv_path.parent / f".{csv_path.name}.lock"


def _journal_path(csv_path: Path) -> Path:
    return csv_path.parent / f".{csv_path.name}.journal"


def _backup_dir(image_dir: Path) -> Path:
    return image_dir / IMAGE_BACKUP_DIR


def _stage_csv(group: FileGroup, path: Path, frame: pd.DataFrame) -> None:
    with open(group.stage(path), "w", newline="") as handle:
        frame.to_csv(handle, index=False, quoting=csv.QUOTE_MINIMAL)


def _stage_backup_rows(group: FileGroup, path: Path, rows: pd.DataFrame) -> None:
    if path.exists():
        previous = pd.read_csv(path, dtype=str, keep_default_na=False)
        rows = pd.concat([previous, rows.astype(str)], ignore_index=True)
    _stage_csv(group, path, rows.fillna(""))


def _stage_image(
    group: FileGroup,
    csv_path: Path,
    image_dir: Path,
    record: Mapping[str, object],
    image: np.ndarray,
) -> str:
    """Stage the image and, when it replaces one, the old image's backup; return the backup's
    path relative to the folder (``""`` when there was no image)."""
    from training.slides import write_pyramid

    target = image_dir / f"{record['id']}.tiff"
    kept = ""
    if target.exists():
        backup = backup_path(_backup_dir(image_dir), target.name)
        group.stage_copy(target, backup)
        kept = backup.relative_to(csv_path.parent).as_posix()
    write_pyramid(
        group.stage(target, ".tiff"), image, as_number(record.get("pixel_size", ""), float)
    )
    return kept
