"""FTU labels to QuPath GeoJSON: one annotation per object, valid geometry only.

Outlines follow the pixel edges: each object is the union of its pixels' squares (pixel ``(i,
j)`` covers ``[j, j + 1) x [i, i + 1)``), so filling the polygons back by pixel centres
(:func:`training.data.geojson.rasterize`, the ``"qupath"`` convention, also QuPath's own) gives
the mask pixel for pixel at the labels' scale. Holes are interior rings; an object in several
parts is a MultiPolygon. QuPath (0.6) refuses self-intersecting polygons, so every geometry is
built by a union (valid by construction) and checked, never traced from sub-pixel contours.

Coordinates are level-0 pixels of the slide, x then y. Labels at a coarser working scale are
stretched by ``level0 size / labels size`` per axis when the level-0 shape is given: the same
nearest-neighbour resize as :func:`training.data.rle.encode_upscaled`, so a slide's GeoJSON and
its ``train.csv`` RLE describe the same pixels.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import shapely
from scipy import ndimage

from training.organs import FTU_COLOURS, FTU_NAMES

__all__ = [
    "FTU_COLOURS",
    "FTU_NAMES",
    "geometries_to_geojson",
    "label_geometries",
    "labels_to_geojson",
    "merge_geometries",
    "organ_of_class",
]

DECIMALS = 4  # of the written coordinates: far below a pixel, far above float noise


def organ_of_class(name: str | None) -> str | None:
    """The organ whose FTU a QuPath class names (``"Glomerulus"`` -> ``"kidney"``), or ``None``."""
    if not name:
        return None
    wanted = name.strip().casefold()
    return next((organ for organ, ftu in FTU_NAMES.items() if ftu.casefold() == wanted), None)


def label_geometries(
    labels: np.ndarray,
    scale: float | Sequence[float] = 1.0,
    origin: Sequence[float] = (0.0, 0.0),
) -> dict[int, Any]:
    """A valid shapely (Multi)Polygon per non-zero label: the union of its pixels' squares,
    stretched by ``scale`` (``(sy, sx)`` or one factor) and moved by ``origin`` (``(y, x)``)."""
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be 2-D; got shape {labels.shape}")
    sy, sx = (float(scale), float(scale)) if np.isscalar(scale) else map(float, scale)
    factor, offset = np.array([sx, sy]), np.array([float(origin[1]), float(origin[0])])
    geometries = {}
    for index, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        geometry = _pixel_union(labels[box] == index)
        corner = np.array([box[1].start, box[0].start])
        geometry = shapely.transform(
            geometry, lambda xy, c=corner: np.round((xy + c) * factor + offset, DECIMALS)
        )
        if not geometry.is_valid:  # rounding moved a vertex onto an edge: rare, repaired
            geometry = _polygonal(shapely.make_valid(geometry))
        geometries[index] = shapely.orient_polygons(geometry)  # shells counter-clockwise
    return geometries


def _pixel_union(inside: np.ndarray) -> Any:
    """The union of the squares of the pixels set in ``inside``, in its own pixel coordinates.

    Each row's runs become rectangles, and a run repeated in the rows below grows its rectangle
    instead of starting a new one, so a compact object is a few dozen rectangles, not one per
    pixel. The union is an overlay, not a coverage union: neighbouring rectangles share only
    parts of their edges, which a coverage union would leave unmerged and invalid.
    """
    padded = np.zeros((inside.shape[0], inside.shape[1] + 2), np.int8)
    padded[:, 1:-1] = inside
    step = np.diff(padded, axis=1)
    rows, starts = np.nonzero(step == 1)
    ends = np.nonzero(step == -1)[1]
    boxes: list[list[int]] = []  # x0, y0, x1, y1
    open_runs: dict[tuple[int, int], int] = {}  # (x0, x1) -> its box, while it goes on
    for row, x0, x1 in zip(rows.tolist(), starts.tolist(), ends.tolist(), strict=True):
        index = open_runs.get((x0, x1))
        if index is not None and boxes[index][3] == row:
            boxes[index][3] = row + 1
        else:
            open_runs[(x0, x1)] = len(boxes)
            boxes.append([x0, row, x1, row + 1])
    corners = np.array(boxes, np.float64)
    squares = shapely.box(corners[:, 0], corners[:, 1], corners[:, 2], corners[:, 3])
    union = shapely.union_all(squares)
    return shapely.simplify(union, 0)  # drops the vertices left in the middle of straight edges


def _polygonal(geometry: Any) -> Any:
    """The polygons of a geometry (a repair can leave lines and points beside them)."""
    parts = shapely.get_parts(geometry)
    polygons = [p for p in parts if p.geom_type in ("Polygon", "MultiPolygon")]
    return shapely.union_all(polygons)


Measurements = Mapping[int, Mapping[str, float]]  # label -> QuPath measurement name -> value


def geometries_to_geojson(
    geometries: dict[int, Any], organ: str, measurements: Measurements | None = None
) -> dict[str, Any]:
    """A QuPath FeatureCollection: one classified annotation per geometry, in label order;
    ``measurements`` (by label, QuPath's names: :func:`training.measure.qupath.to_qupath`)
    become each feature's ``measurements`` property, as QuPath 0.4+ writes and reads it."""
    name = FTU_NAMES.get(organ, "FTU")
    colour = list(FTU_COLOURS.get(organ, (0, 200, 0)))
    features = []
    for label in sorted(geometries):
        geometry = geometries[label]
        if geometry.is_empty:
            continue
        features.append(
            {
                "type": "Feature",
                "id": str(uuid.uuid4()),  # QuPath (0.4 and later) identifies objects by UUID
                "geometry": shapely.geometry.mapping(geometry),
                "properties": {
                    "objectType": "annotation",
                    "name": f"{name} {label}",
                    "classification": {"name": name, "color": colour},
                    "label": int(label),
                    "area_px_level0": round(float(geometry.area), 2),
                },
            }
        )
        if measurements is not None and label in measurements:
            features[-1]["properties"]["measurements"] = {  # JSON has no NaN: left out
                str(name): float(value)
                for name, value in measurements[label].items()
                if math.isfinite(float(value))
            }
    return {"type": "FeatureCollection", "features": features}


def labels_to_geojson(
    labels: np.ndarray,
    downsample: float,
    organ: str,
    *,
    shape: Sequence[int] | None = None,
    origin: Sequence[float] = (0, 0),
    measurements: Measurements | None = None,
) -> dict[str, Any]:
    """QuPath FeatureCollection of the FTUs in ``labels``, in level-0 pixel coordinates.

    ``downsample``: level-0 pixels per labels pixel. ``shape``: the level-0 ``(H, W)`` the
    labels cover; when given it sets the stretch per axis (``H / labels height``, as the RLE's
    nearest-neighbour resize does) instead of ``downsample``. ``origin``: where the labels'
    top-left lies in level-0 pixels ``(y, x)``, for a region of a slide. ``measurements``: by
    label, as :func:`geometries_to_geojson` takes them.
    """
    labels = np.asarray(labels)
    scale: Any = downsample
    if shape is not None:
        scale = (shape[0] / labels.shape[0], shape[1] / labels.shape[1])
    return geometries_to_geojson(label_geometries(labels, scale, origin), organ, measurements)


def merge_geometries(parts: Iterable[dict[int, Any]]) -> dict[int, Any]:
    """One geometry per label from several maps of them (regions of one slide whose label ids
    are the slide's): an object cut by two regions' borders becomes one annotation."""
    merged: dict[int, list[Any]] = {}
    for geometries in parts:
        for label, geometry in geometries.items():
            merged.setdefault(label, []).append(geometry)
    out = {}
    for label, pieces in merged.items():
        geometry = pieces[0] if len(pieces) == 1 else shapely.union_all(pieces)
        if not geometry.is_valid:
            geometry = _polygonal(shapely.make_valid(geometry))
        out[label] = shapely.orient_polygons(geometry)
    return out
