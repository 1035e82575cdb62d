"""What a slide report is made from, read back from a run folder: the run record, the objects
table, the slide's summary row, and the FTU outlines (from the run's QuPath GeoJSON, else its
label TIFF). Each missing or unreadable part is one :class:`ReportError` line naming it."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from training.report.record import ReportError, RunRecord, read_run_record, record_path

# the objects-table columns a report uses (training.measure.objects.OBJECT_COLUMNS has them all)
REPORT_COLUMNS = (
    "label",
    "area_um2",
    "mean_probability",
    "bbox_y_px",
    "bbox_x_px",
    "bbox_height_px",
    "bbox_width_px",
    "touches_edge",
)


@dataclass
class ReportInputs:
    """One slide's run, read back: everything its report shows."""

    folder: Path
    record: RunRecord
    objects: pd.DataFrame  # one row per object (training.measure's columns)
    summary: dict[str, Any]  # training.measure.summary.summarize's keys
    outlines: list[Any]  # shapely geometries in level-0 pixels (x, y)


def load_inputs(folder: Path, image_id: str) -> ReportInputs:
    """Read what the report of ``image_id`` needs from the run folder ``folder``."""
    folder = Path(folder)
    record = read_run_record(record_path(folder, image_id))
    if record.id != image_id:  # a renamed or copied record would report another slide's run
        raise ReportError(f"{record_path(folder, image_id)}: the record is of {record.id!r}")
    objects_path = record.output(folder, "objects")
    if objects_path is None:
        raise ReportError(
            f"{folder}: no objects table of {image_id} ({image_id}.objects.csv); segment with "
            "--measure or --report"
        )
    from training.measure.io import read_objects

    try:
        objects = read_objects(objects_path)
    except (OSError, ValueError) as exc:
        raise ReportError(f"{objects_path}: {exc}") from None
    lacking = [c for c in REPORT_COLUMNS if c not in objects.columns]
    if lacking:
        raise ReportError(f"{objects_path}: lacks the column(s) {', '.join(lacking)}")
    return ReportInputs(
        folder,
        record,
        objects,
        read_summary(folder, image_id, objects),
        read_outlines(folder, record),
    )


def read_summary(folder: Path, image_id: str, objects: pd.DataFrame) -> dict[str, Any]:
    """The slide's row of ``folder/summary.csv``; without one (a run measured elsewhere), the
    summary of ``objects`` with the tissue area unknown."""
    from training.measure.summary import summarize

    row = summary_row(folder, image_id)
    return summarize(objects, image_id, None) if row is None else row


def summary_row(folder: Path, image_id: str) -> dict[str, Any] | None:
    """The row of ``image_id`` in ``folder/summary.csv``, or None."""
    from training.measure.io import read_summary

    path = Path(folder) / "summary.csv"
    if not path.is_file():
        return None
    try:
        frame = read_summary(path)
    except (OSError, ValueError) as exc:
        raise ReportError(f"{path}: not a readable summary table ({exc})") from None
    rows = frame[frame["id"] == image_id]
    return {k: _plain(v) for k, v in rows.iloc[-1].to_dict().items()} if len(rows) else None


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


RLE_PIXELS = 100_000_000  # the largest level-0 mask drawn from a train.csv row (1 byte a pixel)


def read_outlines(folder: Path, record: RunRecord) -> list[Any]:
    """The FTU outlines of the run, in level-0 pixels: its GeoJSON's polygons, else its label
    TIFF's objects (stretched to level 0 as the GeoJSON writer does), else its ``train.csv``
    row's mask when that is small enough to decode whole."""
    geojson = record.output(folder, "geojson")
    if geojson is not None:
        return geojson_outlines(geojson)
    labels = record.output(folder, "labels")
    if labels is not None:
        return label_outlines(labels, record)
    height, width = record.slide_shape
    rle = _catalog_rle(folder, record.id) if height * width <= RLE_PIXELS else None
    if rle is None:
        raise ReportError(
            f"{folder}: no outlines of {record.id} (its .geojson or .labels.tiff, or a "
            f"train.csv row of a slide under {RLE_PIXELS // 1_000_000} Mpx); segment with "
            "--report, --geojson or --labels-tiff"
        )
    from scipy import ndimage

    from training.data import rle as rle_codec
    from training.data.geojson_export import label_geometries

    try:
        mask = rle_codec.decode(rle, (height, width))
    except ValueError as exc:
        raise ReportError(f"{folder / 'train.csv'}: row {record.id}: {exc}") from None
    return list(label_geometries(ndimage.label(mask)[0]).values())


def _catalog_rle(folder: Path, image_id: str) -> str | None:
    from training.data.catalog import read_catalog

    if not (folder / "train.csv").is_file():
        return None
    try:
        frame = read_catalog(folder, check_images=False, check_rle=False)
    except ValueError as exc:
        raise ReportError(str(exc)) from None
    rows = frame[frame["id"] == image_id]
    return str(rows.iloc[-1]["rle"]) if len(rows) else None


def geojson_outlines(path: Path) -> list[Any]:
    """The polygons of a QuPath GeoJSON file (a FeatureCollection or a list of features)."""
    import shapely.geometry

    try:
        data = json.loads(Path(path).read_text())
        features = data["features"] if isinstance(data, dict) else data
        shapes = [shapely.geometry.shape(feature["geometry"]) for feature in features]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ReportError(f"{path}: not a readable GeoJSON of outlines ({exc})") from None
    return [s for s in shapes if s.geom_type in ("Polygon", "MultiPolygon") and not s.is_empty]


def label_outlines(path: Path, record: RunRecord) -> list[Any]:
    """The objects of a label TIFF the run wrote (at the working scale) as level-0 polygons."""
    import numpy as np

    from training.data.geojson_export import label_geometries
    from training.slides import SlideError, open_slide

    try:
        with open_slide(path) as labels_file:
            labels = np.asarray(labels_file.read_region(0, 0, *labels_file.shape[:2]))[..., 0]
    except SlideError as exc:
        raise ReportError(str(exc)) from None
    if record.region:
        y, x, height, width = record.region
    else:
        (y, x), (height, width) = (0, 0), record.slide_shape
    scale = (height / labels.shape[0], width / labels.shape[1])
    if not math.isclose(scale[0], scale[1], rel_tol=0.05):
        raise ReportError(
            f"{path}: {labels.shape[1]} x {labels.shape[0]} labels do not cover the slide's "
            f"{width} x {height} px region"
        )
    return list(label_geometries(labels, scale, (y, x)).values())
