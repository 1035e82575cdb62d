"""Measurement files: ``<id>.objects.csv`` (one row per object) and ``summary.csv`` (one row per
slide), written atomically; a summary row another run wrote is refused unless ``overwrite``."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from training.atomic import atomic_path, exclusive_lock
from training.measure.objects import OBJECT_COLUMNS, empty_objects
from training.measure.summary import SUMMARY_COLUMNS

__all__ = [
    "SUMMARY_NAME",
    "existing_measurements",
    "measure_and_write",
    "objects_path",
    "read_objects",
    "read_summary",
    "summary_has",
    "write_measurements",
]

SUMMARY_NAME = "summary.csv"


def objects_path(out_dir: str | os.PathLike, image_id: str) -> Path:
    """Where a slide's objects table is written: ``OUT/<id>.objects.csv``."""
    return Path(out_dir) / f"{image_id}.objects.csv"


def write_measurements(
    out_dir: str | os.PathLike,
    image_id: str,
    objects: pd.DataFrame,
    summary: Mapping[str, Any],
    *,
    overwrite: bool,
) -> list[Path]:
    """Write ``OUT/<id>.objects.csv`` and add the slide's row to ``OUT/summary.csv``; returns
    both paths.

    Both files are replaced atomically, under the summary's lock (ranks and runs writing into
    one folder take turns). Without ``overwrite``, an existing objects table or a summary row of
    the same id is a ``FileExistsError`` and nothing is written.
    """
    out_dir = Path(out_dir)
    if str(summary.get("id")) != str(image_id):
        raise ValueError(f"the summary row is of {summary.get('id')!r}, not of {image_id!r}")
    missing = [column for column in OBJECT_COLUMNS if column not in objects.columns]
    if missing:
        raise ValueError(f"{image_id}: the objects table lacks {', '.join(missing)}")
    table_path, summary_path = objects_path(out_dir, image_id), out_dir / SUMMARY_NAME
    out_dir.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(out_dir / f".{SUMMARY_NAME}.lock"):
        frame = read_summary(summary_path) if summary_path.exists() else _empty_summary()
        if not overwrite:
            if table_path.exists():
                raise FileExistsError(f"{table_path} exists (--overwrite replaces it)")
            if str(image_id) in set(frame["id"]):
                raise FileExistsError(
                    f"{summary_path}: row {image_id} exists, written by another run "
                    "(--overwrite replaces it)"
                )
        with atomic_path(table_path) as tmp:
            objects.to_csv(tmp, index=False)
        row = pd.DataFrame([{column: summary.get(column, math.nan) for column in frame.columns}])
        kept = frame[frame["id"] != str(image_id)]
        merged = pd.concat([kept, row], ignore_index=True) if len(kept) else row
        with atomic_path(summary_path) as tmp:
            merged.to_csv(tmp, index=False)
    return [table_path, summary_path]


def measure_and_write(
    out_dir: str | os.PathLike,
    image_id: str,
    result: Any,
    slide: Any,
    labels: Any = None,
    *,
    overwrite: bool,
) -> pd.DataFrame:
    """Measure a segmentation ``result`` of ``slide`` (:func:`training.measure.slide.
    measure_result`) and write its objects table and summary row; returns the objects."""
    from training.measure.slide import measure_result

    objects, summary = measure_result(result, slide, labels, image_id=image_id)
    write_measurements(out_dir, image_id, objects, summary, overwrite=overwrite)
    return objects


def existing_measurements(out_dir: str | os.PathLike, image_ids: list[str]) -> list[str]:
    """What measuring ``image_ids`` into ``out_dir`` would replace: objects tables and summary
    rows, one line each (a summary.csv that cannot be read is a ``ValueError``)."""
    found = [str(objects_path(out_dir, i)) for i in image_ids if objects_path(out_dir, i).exists()]
    path = Path(out_dir) / SUMMARY_NAME
    if path.exists():
        known = set(read_summary(path)["id"])
        found += [f"{path}: row {i}" for i in image_ids if str(i) in known]
    return found


def read_objects(path: str | os.PathLike) -> pd.DataFrame:
    """An objects table written by :func:`write_measurements` (typed; extra columns kept)."""
    path = Path(path)
    try:
        frame = pd.read_csv(path, dtype={"touches_edge": str})
    except pd.errors.EmptyDataError:
        raise ValueError(f"{path}: empty file, not an objects table") from None
    except pd.errors.ParserError as exc:
        raise ValueError(f"{path}: not a CSV table ({exc})") from None
    missing = [column for column in OBJECT_COLUMNS if column not in frame.columns]
    if missing:
        raise ValueError(f"{path}: not an objects table; it lacks {', '.join(missing)}")
    flags = frame["touches_edge"].str.strip().str.lower()
    if not flags.isin(["true", "false"]).all():
        raise ValueError(f"{path}: column touches_edge must hold True or False")
    frame["touches_edge"] = flags == "true"
    try:
        typed = frame.astype(empty_objects().dtypes.to_dict())
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"{path}: a column of the objects table has a wrong value ({exc})"
        ) from None
    extra = [column for column in frame.columns if column not in OBJECT_COLUMNS]
    return typed[list(OBJECT_COLUMNS) + extra]


def read_summary(path: str | os.PathLike) -> pd.DataFrame:
    """``summary.csv`` as a table (ids as text), one row per slide."""
    path = Path(path)
    try:
        frame = pd.read_csv(path, dtype={"id": str}, keep_default_na=False, na_values=[""])
    except (pd.errors.EmptyDataError, pd.errors.ParserError) as exc:
        raise ValueError(f"{path}: not a summary table ({exc})") from None
    missing = [column for column in SUMMARY_COLUMNS if column not in frame.columns]
    if missing:
        raise ValueError(f"{path}: not a summary table; it lacks {', '.join(missing)}")
    return frame


def summary_has(out_dir: str | os.PathLike, image_id: str) -> bool:
    """Whether ``OUT/summary.csv`` holds a row for ``image_id``."""
    path = Path(out_dir) / SUMMARY_NAME
    return path.exists() and str(image_id) in set(read_summary(path)["id"])


def _empty_summary() -> pd.DataFrame:
    return pd.DataFrame({column: pd.Series(dtype=object) for column in SUMMARY_COLUMNS})
