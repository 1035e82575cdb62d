"""Object measurements as QuPath holds them: the ``measurements`` property of a GeoJSON feature.

QuPath 0.4 and later write ``"measurements": {"Area µm^2": 1234.5, ...}`` (a name -> number
object) and read that or the list of ``{"name": ..., "value": ...}`` pairs older versions wrote
(``qupath.lib.io.PathObjectTypeAdapters.MeasurementListTypeAdapter``). Names follow QuPath's
own (``"Area µm^2"``, ``"Perimeter µm"``, ``"Centroid X µm"``); values are numbers, so a flag is
1 or 0 and a value not measured (NaN) is left out: JSON has no NaN.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import pandas as pd

__all__ = ["QUPATH_NAMES", "from_qupath", "measurements_of", "to_qupath"]

QUPATH_NAMES: dict[str, str] = {  # objects-table column -> QuPath measurement name
    "area_um2": "Area µm^2",
    "perimeter_um": "Perimeter µm",
    "equivalent_diameter_um": "Equivalent diameter µm",
    "major_axis_um": "Major axis µm",
    "minor_axis_um": "Minor axis µm",
    "eccentricity": "Eccentricity",
    "solidity": "Solidity",
    "circularity": "Circularity",
    "centroid_x_um": "Centroid X µm",
    "centroid_y_um": "Centroid Y µm",
    "mean_probability": "FTU probability: Mean",
    "touches_edge": "Touches region edge",
    "od_hematoxylin": "Hematoxylin OD: Mean",
    "od_eosin": "Eosin OD: Mean",
}
_COLUMNS = {name: column for column, name in QUPATH_NAMES.items()}


def to_qupath(objects: pd.DataFrame) -> dict[int, dict[str, float]]:
    """Each object's measurements under QuPath's names, by label (NaN values left out)."""
    if "label" not in objects.columns:
        raise ValueError("the objects table has no 'label' column to match objects by")
    columns = [column for column in QUPATH_NAMES if column in objects.columns]
    out: dict[int, dict[str, float]] = {}
    for record in objects[["label", *columns]].to_dict("records"):
        values = {QUPATH_NAMES[c]: float(record[c]) for c in columns}
        out[int(record["label"])] = {k: v for k, v in values.items() if math.isfinite(v)}
    return out


def measurements_of(features: Any) -> dict[int, dict[str, float]] | None:
    """QuPath measurements from a Labels layer's ``features`` when they hold an objects table
    (a ``label`` column and measured columns); ``None`` for anything else."""
    if not isinstance(features, pd.DataFrame) or "label" not in features.columns:
        return None
    if not any(column in features.columns for column in QUPATH_NAMES) or features.empty:
        return None
    return to_qupath(features)


def from_qupath(measurements: Any, where: str = "a feature") -> dict[str, float]:
    """A feature's ``measurements`` (QuPath's object or older list of name/value pairs) as
    ``{column or QuPath name: number}``: names this package writes become its column names,
    others are kept as they are. ``ValueError`` (naming ``where``) for a malformed one."""
    if measurements is None:
        return {}
    if isinstance(measurements, Mapping):
        pairs = list(measurements.items())
    elif isinstance(measurements, list):
        pairs = []
        for item in measurements:
            if not (isinstance(item, Mapping) and "name" in item and "value" in item):
                raise ValueError(
                    f"{where}: a measurement is not a {{'name': ..., 'value': ...}} pair"
                )
            pairs.append((item["name"], item["value"]))
    else:
        raise ValueError(
            f"{where}: 'measurements' must be an object of name -> number (or a list of "
            f"name/value pairs); got {type(measurements).__name__}"
        )
    out = {}
    for name, value in pairs:
        if value is None or (isinstance(value, str) and value.strip().lower() == "nan"):
            number = math.nan  # QuPath may write a missing value as NaN or null
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        else:
            raise ValueError(f"{where}: measurement {name!r} is not a number ({value!r})")
        out[_COLUMNS.get(str(name), str(name))] = number
    return out
