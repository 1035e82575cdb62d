"""The pictures of a slide report: the thumbnail with FTU outlines, object crops, the size
histogram, and the whole report as one PNG (matplotlib, no display needed).

Outlines are shapely geometries in level-0 pixel coordinates (x then y), as the run's QuPath
GeoJSON holds them, drawn onto images read at their own scale: a whole slide's report never
reads level 0 except for the crops' small boxes.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import shapely
from PIL import Image, ImageDraw

from training.organs import FTU_COLOURS
from training.slides import as_rgb_uint8

THUMB_SIDE = 1200  # the longest side of the slide thumbnail, in pixels
CROP_SIDE = 224  # the side of an object crop, in pixels
CROP_MARGIN = 0.3  # the context around an object in its crop, as a fraction of its box
EDGE_COLOUR = "#9a9a9a"  # objects touching the analysed region's edge (sizes cut short)


def colour(organ: str) -> tuple[int, int, int]:
    """The outline colour of ``organ``'s FTUs (QuPath's class colour)."""
    return FTU_COLOURS.get(organ, (0, 200, 0))


def read_scaled(
    slide: Any, box: Sequence[float], side: int
) -> tuple[np.ndarray, tuple[float, float], float]:
    """The level-0 ``box`` ``(y, x, h, w)`` of ``slide`` read with its longest side ``side``
    pixels at most (from the best pyramid level; parts off the slide are white), as RGB uint8;
    with the level-0 ``(y, x)`` of its top-left corner and its pixels per level-0 pixel."""
    y, x, h, w = box
    scale = min(1.0, side / max(h, w))
    # on the grid of the read's pixel size, so the corner is where that grid puts it
    top, left = math.floor(y * scale), math.floor(x * scale)
    size = max(1, round(h * scale)), max(1, round(w * scale))
    if scale < 1:
        region = slide.read_region_at(slide.pixel_size_um / scale, top, left, *size)
    else:
        region = slide.read_region(top, left, *size)
    return as_rgb_uint8(np.asarray(region)).copy(), (top / scale, left / scale), scale


def draw_outlines(
    image: np.ndarray,
    geometries: Iterable[Any],
    origin: tuple[float, float],
    scale: float,
    rgb: tuple[int, int, int],
) -> np.ndarray:
    """``image`` with the ``geometries`` (level-0 x, y) outlined; ``origin`` is the level-0
    ``(y, x)`` of its top-left corner and ``scale`` its pixels per level-0 pixel."""
    picture = Image.fromarray(image)
    pen = ImageDraw.Draw(picture)
    width = max(2, round(max(image.shape[:2]) / 400))
    for ring in _rings(geometries):
        xy = (np.asarray(ring)[:, :2] - (origin[1], origin[0])) * scale
        pen.line([tuple(p) for p in xy.tolist()], fill=rgb, width=width, joint="curve")
    return np.asarray(picture)


def _rings(geometries: Iterable[Any]) -> Iterable[Any]:
    for geometry in geometries:
        for polygon in getattr(geometry, "geoms", [geometry]):
            yield polygon.exterior.coords
            yield from (hole.coords for hole in polygon.interiors)


def thumbnail(
    slide: Any,
    geometries: Sequence[Any],
    organ: str,
    region: Sequence[int] | None = None,
    side: int = THUMB_SIDE,
) -> np.ndarray:
    """The whole slide at most ``side`` pixels long with the FTU outlines and, for a region
    run, the analysed box ``(y, x, h, w)`` (level 0) in black."""
    height, width = slide.shape[:2]
    image, origin, scale = read_scaled(slide, (0, 0, height, width), side)
    image = draw_outlines(image, geometries, origin, scale, colour(organ))
    if region:
        y, x, h, w = region
        box = shapely.box(x, y, x + w, y + h)
        image = draw_outlines(image, [box], origin, scale, (0, 0, 0))
    return image


def crop(
    slide: Any, row: pd.Series, geometries: Sequence[Any], organ: str, side: int = CROP_SIDE
) -> np.ndarray:
    """A square crop of the slide around the object ``row`` (an objects-table row: level-0
    bounding box) with a margin, at most ``side`` pixels, outlines drawn."""
    h, w = float(row["bbox_height_px"]), float(row["bbox_width_px"])
    extent = max(h, w) * (1 + 2 * CROP_MARGIN)
    y = float(row["bbox_y_px"]) + h / 2 - extent / 2
    x = float(row["bbox_x_px"]) + w / 2 - extent / 2
    image, origin, scale = read_scaled(slide, (y, x, extent, extent), side)
    window = shapely.box(x, y, x + extent, y + extent)
    near = [g for g in geometries if g.intersects(window)]
    return draw_outlines(image, near, origin, scale, colour(organ))


def png_bytes(image: np.ndarray) -> bytes:
    """``image`` (RGB uint8) encoded as PNG."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def histogram(axes: Any, objects: pd.DataFrame, ftu: str, organ: str) -> None:
    """Draw the object areas (µm²) on ``axes``: whole objects in the organ's colour, objects
    touching the analysed region's edge (their areas cut short) stacked in grey."""
    areas = objects["area_um2"].to_numpy(float)
    edge = objects["touches_edge"].to_numpy(bool)
    axes.set_xlabel(f"{ftu} area (µm²)")
    axes.set_ylabel("objects")
    if not len(areas):
        axes.text(0.5, 0.5, "no objects", ha="center", va="center", transform=axes.transAxes)
        return
    bins = np.histogram_bin_edges(areas, bins=min(30, max(5, len(areas) // 2)))
    whole = np.array(colour(organ)) / 255
    axes.hist(
        [areas[~edge], areas[edge]],
        bins=bins,
        stacked=True,
        color=[whole, EDGE_COLOUR],
        label=["whole", "touching the edge"],
    )
    from matplotlib.ticker import MaxNLocator

    axes.yaxis.set_major_locator(MaxNLocator(integer=True))  # counts of objects
    median = float(np.median(areas))
    axes.axvline(median, color="black", lw=1, ls="--", label=f"median {median:,.0f} µm²")
    axes.legend(frameon=False, fontsize=8)


def histogram_png(objects: pd.DataFrame, ftu: str, organ: str) -> bytes:
    """The size histogram as a PNG (for the HTML page)."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5.0, 3.2), dpi=100, layout="constrained")
    histogram(figure.add_subplot(), objects, ftu, organ)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()
