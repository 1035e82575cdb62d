"""FTU instance labels from a dataset row, on a working grid (what the plugin imports).

A ``train.csv`` row holds one binary mask: objects are its connected components (4-connected),
so FTUs that touch come back as one object. QuPath GeoJSON keeps one outline per object:
:func:`training.data.geojson.rasterize_labels`.
"""

from __future__ import annotations

import math
import os

import numpy as np
from scipy import ndimage

from training.data.catalog import CatalogError, read_catalog
from training.data.rle import decode

__all__ = ["grid_shape", "pick_centres", "row_labels"]


def grid_shape(shape: tuple[int, int], downsample: float) -> tuple[int, int]:
    """The working grid over a level-0 ``shape``: ``ceil(side / downsample)`` pixels a side."""
    return (max(1, math.ceil(shape[0] / downsample)), max(1, math.ceil(shape[1] / downsample)))


def pick_centres(labels: np.ndarray, downsample: float) -> np.ndarray:
    """Level-0 labels on the grid ``downsample`` times coarser: each working pixel takes the
    level-0 pixel under its centre (working pixel ``i`` covers ``[i * d, (i + 1) * d)``)."""
    if downsample == 1:
        return labels
    height, width = grid_shape(labels.shape, downsample)
    rows = np.minimum(
        ((np.arange(height) + 0.5) * downsample).astype(np.int64), labels.shape[0] - 1
    )
    cols = np.minimum(((np.arange(width) + 0.5) * downsample).astype(np.int64), labels.shape[1] - 1)
    return labels[np.ix_(rows, cols)]


def row_labels(
    location: str | os.PathLike, image_id: str, downsample: float = 1.0
) -> tuple[np.ndarray, dict]:
    """The objects of row ``image_id`` of a dataset folder as int32 labels on the working grid
    ``downsample`` times coarser than the row's image, and the row itself."""
    frame = read_catalog(location, check_images=False)
    match = frame[frame["id"] == str(image_id)]
    if match.empty:
        raise CatalogError(f"{location}: no row with id {image_id!r}")
    row = match.iloc[0].to_dict()
    mask = decode(row["rle"], (int(row["img_height"]), int(row["img_width"])))
    labels = np.empty(mask.shape, np.int32)
    ndimage.label(mask, output=labels)
    return pick_centres(labels, downsample), row
