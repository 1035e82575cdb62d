"""Writing a segmentation: a train.csv row (RLE at level 0), label TIFF, QuPath GeoJSON (the
writer is :mod:`training.data.geojson_export`, shared with the plugin's export)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from training.atomic import atomic_path
from training.data import rle
from training.data.geojson_export import FTU_NAMES, labels_to_geojson
from training.inference.engine import SegmentationResult

__all__ = ["FTU_NAMES", "labels_to_geojson", "result_row", "write_json", "write_overlay"]


def result_row(
    image_id: str,
    result: SegmentationResult,
    labels: np.ndarray,
    slide_pixel_size_um: float,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A ``train.csv`` row for a slide: the mask as RLE at the slide's level-0 size.

    The level-0 mask is never built (for a 50k x 50k slide it would be 10 GB of labels): the RLE
    is encoded from the working-scale ``labels`` column block by column block.
    """
    height, width = (int(n) for n in result.slide_shape)
    same_size = labels.shape == (height, width)
    mask_rle = rle.encode(labels) if same_size else rle.encode_upscaled(labels, (height, width))
    return {
        "id": image_id,
        "organ": result.organ,
        "data_source": "",
        "img_height": height,
        "img_width": width,
        "pixel_size": slide_pixel_size_um,
        "tissue_thickness": "",
        "rle": mask_rle,
        "age": "",
        "sex": "",
        **(extra or {}),
    }


def write_json(path: Path, payload: dict[str, Any], overwrite: bool = False) -> None:
    """Write JSON atomically; refuse to replace an existing file unless ``overwrite``."""
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; napari-ftu does not overwrite results")
    with atomic_path(path) as tmp, open(tmp, "w") as handle:
        json.dump(payload, handle)


OVERLAY_SIDE = 2048  # the longest side of an overlay PNG, in pixels


def write_overlay(
    path: Path, slide: Any, labels: np.ndarray, overwrite: bool = False, side: int = OVERLAY_SIDE
) -> None:
    """A PNG of the slide (at most ``side`` pixels long) with the FTU outlines in green.

    The slide is read at the overlay's scale from its best pyramid level, so a whole-slide
    overlay never loads level 0.
    """
    from PIL import Image

    from training.inference.postprocess import outlines, resize_labels
    from training.slides import as_rgb_uint8

    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; napari-ftu does not overwrite results")
    height, width = slide.shape[:2]
    scale = min(1.0, side / max(height, width))
    shape = (max(1, round(height * scale)), max(1, round(width * scale)))
    if scale < 1:
        if slide.pixel_size_um is None:  # any pixel size will do for reading at a ratio
            slide = slide.with_pixel_size(1.0)
        image = slide.read_region_at(slide.pixel_size_um / scale, 0, 0, *shape)
    else:
        image = slide.read_region(0, 0, height, width)
    image = as_rgb_uint8(np.asarray(image)).copy()
    outline = ndimage.binary_dilation(
        outlines(resize_labels(labels, shape)), iterations=max(1, min(shape) // 600)
    )
    image[outline] = (0, 220, 0)
    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")
