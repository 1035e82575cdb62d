"""Measuring a whole slide's segmentation in bands: the probability and the slide's pixels are
read a band of rows at a time, at the working scale, so memory stays near the band's size
whatever the slide's.

Each object belongs to the band its top row falls in, and that band is read down to the
bottom of its lowest object: an object crossing a band border is measured once, whole, and
its row is the one a measurement of the whole map gives. An object taller than a band is
measured on its own, strip by strip (:mod:`training.measure.streamed`), so a band never grows
past twice its height.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
from scipy import ndimage

from training.measure.objects import Geometry, empty_objects, measure_crop, stain_od
from training.measure.streamed import measure_tall_object
from training.measure.summary import summarize

__all__ = ["BAND_MB", "measure_bands", "measure_labels", "measure_result"]

BAND_MB = 128.0  # the measurement's working memory per band, beyond the labels themselves
# bytes per map pixel of a band: uint8 RGB, float32 ODs, the float64 channels measured,
# the probability, the labels' crop and regionprops' own per-object copies
_BYTES_PER_PIXEL = 3 + 8 + 24 + 8 + 4 + 13


def measure_result(
    result: Any,
    slide: Any,
    labels: np.ndarray | None = None,
    *,
    image_id: str,
    band_mb: float = BAND_MB,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The objects table and the summary row of a segmentation ``result`` of ``slide``.

    ``labels``: the result's instance labels at its working scale (default: the result's own
    threshold and minimum area). The stain ODs are read from ``slide`` at the working scale;
    the tissue area is that of the engine's tissue thumbnail inside the analysed region.
    """
    if labels is None:
        labels = result.labels()
    shape = tuple(np.shape(result.probability)[:2])
    if labels.shape != shape:
        raise ValueError(
            f"{image_id}: the labels ({labels.shape[0]} x {labels.shape[1]}) are not on the "
            f"result's map ({shape[0]} x {shape[1]})"
        )
    _check_slide(result, slide, image_id)
    origin = tuple(getattr(result, "origin", (0, 0)))  # a region run's box in the working grid
    return measure_labels(
        labels,
        slide,
        image_id=image_id,
        downsample=float(result.downsample),
        origin=(origin[0] * result.downsample, origin[1] * result.downsample),
        probability=result.probability,
        band_mb=band_mb,
        tissue=getattr(result, "tissue", None),  # the run's own: no second thumbnail read
    )


def measure_labels(
    labels: np.ndarray,
    slide: Any,
    *,
    image_id: str,
    downsample: float = 1.0,
    origin: tuple[float, float] = (0.0, 0.0),
    probability: Any = None,
    band_mb: float = BAND_MB,
    tissue: Any = None,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The objects table and summary row of instance ``labels`` on a grid ``downsample``
    times coarser than ``slide``'s level 0 whose pixel ``(0, 0)`` lies at level-0 ``origin``
    (the analysed region is the labels' box); ``probability``: on the labels' grid, or
    ``None``. Stain ODs from the slide's pixels on that grid; tissue area inside the box (from
    ``tissue``, a run's ``SegmentationResult.tissue``, where given)."""
    from training.inference.tissue import tissue_area_mm2

    if slide.pixel_size_um is None:
        raise ValueError(f"{image_id}: the slide's pixel size is unknown; give it (um per pixel)")
    geometry = Geometry(
        slide.pixel_size_um * downsample,
        (float(origin[0]), float(origin[1])),
        downsample,
        labels.shape,
    )
    reader = _SlideReader(slide, geometry)
    objects = measure_bands(labels, geometry, probability, reader, band_mb)
    height, width = labels.shape
    box = (*geometry.origin, height * downsample, width * downsample)
    return objects, summarize(objects, image_id, tissue_area_mm2(slide, box, tissue))


def measure_bands(
    labels: np.ndarray,
    geometry: Geometry,
    probability: Any = None,
    read_rgb: Any = None,
    band_mb: float = BAND_MB,
) -> pd.DataFrame:
    """Measure every object of ``labels`` (the whole analysed region), a band of rows at a
    time; ``probability``: an array-like on the labels' grid (numpy or zarr) or ``None``;
    ``read_rgb(y, x, h, w)``: the slide's uint8 RGB over that box of the grid, or ``None``."""
    slices = ndimage.find_objects(labels)
    found = [(value, box) for value, box in enumerate(slices, start=1) if box is not None]
    if not found:
        return empty_objects()
    rows = max(1, int(band_mb * 2**20 // (labels.shape[1] * _BYTES_PER_PIXEL)))
    frames = []
    # an object taller than a band is read strip by strip on its own (memory stays a band's)
    tall = [(value, box) for value, box in found if box[0].stop - box[0].start > rows]
    found = [(value, box) for value, box in found if box[0].stop - box[0].start <= rows]
    for value, box in tall:
        frames.append(
            measure_tall_object(labels, value, box, geometry, probability, read_rgb, rows)
        )
    found.sort(key=lambda item: item[1][0].start)
    band_of = np.array([box[0].start // rows for _, box in found], dtype=np.int64)
    for band in np.unique(band_of):
        members = [found[i] for i in np.flatnonzero(band_of == band)]
        y0 = min(box[0].start for _, box in members)
        y1 = max(box[0].stop for _, box in members)
        x0 = min(box[1].start for _, box in members)
        x1 = max(box[1].stop for _, box in members)
        crop = labels[y0:y1, x0:x1]
        values = np.array(sorted(value for value, _ in members), dtype=crop.dtype)
        crop = np.where(np.isin(crop, values), crop, 0)  # objects of other bands: not here
        channels = []
        if probability is not None:
            channels.append(np.asarray(probability[y0:y1, x0:x1], np.float64)[..., None])
        if read_rgb is not None:
            channels.append(stain_od(read_rgb(y0, x0, y1 - y0, x1 - x0)))
        intensity = np.concatenate(channels, axis=-1) if channels else None
        frames.append(measure_crop(crop, geometry, (y0, x0), intensity, probability is not None))
    return pd.concat(frames, ignore_index=True).sort_values("label", ignore_index=True)


class _SlideReader:
    """Reads the slide's RGB over a box of a label grid (:class:`Geometry`), on that grid."""

    def __init__(self, slide: Any, geometry: Geometry) -> None:
        self.slide = slide
        self.pixel_size_um = geometry.pixel_size_um
        # the grid's own origin, in its pixels (whole for a region run's map)
        self.origin = tuple(round(v / geometry.downsample) for v in geometry.origin)

    def __call__(self, y: int, x: int, h: int, w: int) -> np.ndarray:
        from training.slides import as_rgb_uint8

        region = self.slide.read_region_at(
            self.pixel_size_um, self.origin[0] + y, self.origin[1] + x, h, w
        )
        return as_rgb_uint8(np.asarray(region))


def _check_slide(result: Any, slide: Any, image_id: str) -> None:
    """Refuse a slide that is not the one the result was made from (size, pixel size)."""
    if tuple(slide.shape[:2]) != tuple(result.slide_shape):
        raise ValueError(
            f"{image_id}: the slide is {slide.shape[0]} x {slide.shape[1]} px but the result was "
            f"made from a {result.slide_shape[0]} x {result.slide_shape[1]} px slide"
        )
    if slide.pixel_size_um is None:
        raise ValueError(f"{image_id}: the slide's pixel size is unknown; give it (um per pixel)")
    level0_um = result.pixel_size_um / result.downsample
    if not math.isclose(level0_um, slide.pixel_size_um, rel_tol=1e-3):
        raise ValueError(
            f"{image_id}: the result was made at {level0_um:g} um per level-0 pixel, the slide "
            f"has {slide.pixel_size_um:g}"
        )
