"""An existing mask of a slide as instance labels on a grid over it: a labels TIFF (what
``napari-ftu segment --labels-tiff`` writes, or any label or binary image), a dataset folder's
row, or QuPath GeoJSON."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

__all__ = ["GEOJSON_MAX_PIXELS", "MaskLabels", "load_mask"]

GEOJSON_MAX_PIXELS = 2**26  # GeoJSON outlines are filled on a grid of at most this many pixels
_GEOJSON_SUFFIXES = (".geojson", ".json")
_TIFF_SUFFIXES = (".tif", ".tiff", ".ome.tif", ".ome.tiff")


@dataclass(frozen=True)
class MaskLabels:
    """Instance labels over a slide: ``downsample`` level-0 pixels per label pixel, what they
    were read from (for messages) and the level-0 pixel size the mask gives, if any."""

    labels: np.ndarray
    downsample: float
    source: str
    pixel_size_um: float | None = None  # of level 0, when the mask says (a dataset row)


def load_mask(mask: str | os.PathLike, slide_shape: tuple[int, int], image_id: str) -> MaskLabels:
    """The objects of ``mask`` over a slide of level-0 ``slide_shape``.

    ``mask``: a labels TIFF on the slide's grid or a coarser one (a binary mask is split into
    its 4-connected objects), a dataset folder (its ``train.csv`` row ``image_id``, at level 0)
    or a QuPath GeoJSON file (one object per feature; level-0 coordinates). ``ValueError``
    with one line for a mask that is not one of these or does not fit the slide.
    """
    path = Path(mask)
    height, width = (int(v) for v in slide_shape[:2])
    if path.is_dir():
        return _dataset_row(path, image_id, (height, width))
    if not path.is_file():
        raise ValueError(f"{path}: no such file or folder")
    name = path.name.lower()
    if name.endswith(_GEOJSON_SUFFIXES):
        return _geojson(path, (height, width))
    if name.endswith(_TIFF_SUFFIXES):
        return _labels_tiff(path, (height, width))
    raise ValueError(
        f"{path}: not a mask napari-ftu reads (a labels TIFF, a dataset folder or QuPath GeoJSON)"
    )


def _dataset_row(folder: Path, image_id: str, shape: tuple[int, int]) -> MaskLabels:
    from training.data.catalog import as_number
    from training.data.instances import row_labels

    labels, row = row_labels(folder, image_id)
    pixel_size = as_number(row.get("pixel_size"), float)
    if labels.shape != shape:
        raise ValueError(
            f"{folder}: row {image_id} is {labels.shape[0]} x {labels.shape[1]} px, the slide "
            f"{shape[0]} x {shape[1]}"
        )
    return MaskLabels(labels, 1.0, f"{folder} row {image_id}", pixel_size)


def _geojson(path: Path, shape: tuple[int, int]) -> MaskLabels:
    from training.data.geojson import rasterize_labels
    from training.data.instances import grid_shape

    downsample = max(1.0, math.sqrt(shape[0] * shape[1] / GEOJSON_MAX_PIXELS))
    labels = rasterize_labels(path, grid_shape(shape, downsample), downsample=downsample)
    return MaskLabels(labels, downsample, str(path))


def _labels_tiff(path: Path, shape: tuple[int, int]) -> MaskLabels:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            labels = tif.series[0].levels[0].asarray()
    except (tifffile.TiffFileError, OSError, ValueError, IndexError) as exc:
        raise ValueError(f"{path}: cannot be read as a TIFF ({exc})") from None
    labels = np.squeeze(labels)
    if labels.ndim != 2 or labels.dtype.kind not in "uib":
        raise ValueError(
            f"{path}: not a label image (shape {labels.shape}, {labels.dtype}); expected one "
            "channel of integers"
        )
    if labels.dtype.kind == "i" and labels.size and labels.min() < 0:
        raise ValueError(f"{path}: a label image has no negative values")
    downsample = shape[0] / labels.shape[0]
    # the engine's grid over the slide: ceil(side / downsample) pixels a side, both sides
    fits = all(
        math.ceil(round(side / downsample, 6)) == grid
        for side, grid in zip(shape, labels.shape, strict=True)
    )
    if not fits:
        raise ValueError(
            f"{path}: the mask ({labels.shape[0]} x {labels.shape[1]} px) is not the slide "
            f"({shape[0]} x {shape[1]} px) at one scale; is it this slide's mask?"
        )
    top = int(labels.max()) if labels.size else 0
    binary = top <= 1 or (top == 255 and not np.any((labels > 0) & (labels < 255)))
    if binary:
        split = np.empty(labels.shape, np.int32)  # a binary mask: its connected objects
        ndimage.label(labels > 0, output=split)
        labels = split
    return MaskLabels(labels.astype(np.int32, copy=False), downsample, str(path))
