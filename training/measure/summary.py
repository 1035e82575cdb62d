"""One row per slide (or region): how many FTUs, how much of the tissue they take, their sizes."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["SUMMARY_COLUMNS", "summarize"]

SUMMARY_COLUMNS: tuple[str, ...] = (
    "id",
    "ftu_count",
    "ftu_area_mm2",
    "tissue_area_mm2",
    "ftus_per_mm2",
    "ftu_area_fraction",
    "area_um2_median",
    "area_um2_p10",
    "area_um2_p90",
    "edge_objects",
)

UM2_PER_MM2 = 1e6


def summarize(
    objects: pd.DataFrame, image_id: str, tissue_area_mm2: float | None
) -> dict[str, Any]:
    """The slide's summary row (keys :data:`SUMMARY_COLUMNS`) from its objects table.

    Every object counts, those cut by the region's border too (``edge_objects`` says how many
    are). ``ftus_per_mm2`` and ``ftu_area_fraction`` are NaN when the tissue area is unknown or
    0; the size percentiles are NaN without objects.
    """
    missing = {"area_um2", "touches_edge"} - set(objects.columns)
    if missing:
        raise ValueError(f"the objects table lacks the column(s) {', '.join(sorted(missing))}")
    areas = objects["area_um2"].to_numpy(np.float64)
    ftu_area = float(areas.sum()) / UM2_PER_MM2
    tissue = math.nan if tissue_area_mm2 is None else float(tissue_area_mm2)
    if tissue < 0:
        raise ValueError(f"{image_id}: the tissue area cannot be negative; got {tissue} mm²")
    known = tissue > 0  # False for NaN too
    p10, median, p90 = np.percentile(areas, [10, 50, 90]) if len(areas) else (math.nan,) * 3
    return {
        "id": str(image_id),
        "ftu_count": len(areas),
        "ftu_area_mm2": ftu_area,
        "tissue_area_mm2": tissue,
        "ftus_per_mm2": len(areas) / tissue if known else math.nan,
        "ftu_area_fraction": ftu_area / tissue if known else math.nan,
        "area_um2_median": float(median),
        "area_um2_p10": float(p10),
        "area_um2_p90": float(p90),
        "edge_objects": int(objects["touches_edge"].astype(bool).sum()),
    }
