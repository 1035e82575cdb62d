"""Slides read through OpenSlide (the ``openslide-python`` and ``openslide-bin`` wheels).

OpenSlide reads what tifffile cannot, or reads wrong: 3DHISTECH MIRAX (``.mrxs``), Hamamatsu
VMS/VMU, Roche/Ventana BIF (whose overlapping tiles it stitches), Sakura SVSlide, Philips TIFF,
DICOM (OpenSlide 4), and the TIFF-based formats tifffile also reads. Each level is read through
``read_region`` and composited over white glass (OpenSlide leaves unscanned areas transparent);
the pixel size is OpenSlide's ``openslide.mpp-x``/``mpp-y``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from training.slides.slide import RegionLevel, Slide, SlideError, plausible, rgb_on_white

INSTALL = "pip install openslide-python openslide-bin"
# Pixels of one level are square within this relative tolerance (the engine reads square pixels)
SQUARE_TOLERANCE = 0.01
# Tile side for levels OpenSlide gives no tile size for (the lazy view's chunks)
DEFAULT_TILE = 512


def openslide_vendor(path: str | Path) -> str | None:
    """OpenSlide's name for the format of ``path`` (``"mirax"``, ``"ventana"``, ``"dicom"``,
    ``"generic-tiff"``, ...), or ``None`` when OpenSlide does not know it or is not installed."""
    openslide = _import_openslide(Path(path), required=False)
    if openslide is None:
        return None
    try:
        return openslide.OpenSlide.detect_format(str(path))
    except Exception:  # OpenSlide raises for unreadable files; they are simply not its format
        return None


def open_openslide(path: Path) -> Slide:
    """Open ``path`` through OpenSlide as a :class:`Slide` (RGB, white background)."""
    openslide = _import_openslide(path, required=True)
    try:
        handle = openslide.OpenSlide(str(path))
    except Exception as exc:  # OpenSlideError, OpenSlideUnsupportedFormatError, OSError
        raise SlideError(
            f"{path.name}: OpenSlide cannot read it ({type(exc).__name__}: {exc})"
        ) from exc
    try:
        properties = dict(handle.properties)
        sources = [
            RegionLevel(
                (height, width, 3),
                (
                    int(properties.get(f"openslide.level[{i}].tile-height", DEFAULT_TILE)),
                    int(properties.get(f"openslide.level[{i}].tile-width", DEFAULT_TILE)),
                ),
                _LevelReader(handle, i, handle.level_downsamples[i]),
            )
            for i, (width, height) in enumerate(handle.level_dimensions)
        ]
        pixel_size = square_pixel_size(
            path,
            _number(properties.get("openslide.mpp-x")),
            _number(properties.get("openslide.mpp-y")),
        )
        vendor = properties.get("openslide.vendor", "unknown")
        metadata = {"format": vendor, "reader": "openslide", "axes": "YXS"}
        return Slide(path, sources, "YXS", pixel_size, metadata, handle=handle)
    except Exception:
        handle.close()
        raise


class _LevelReader:
    """``(y, x, h, w)`` of one OpenSlide level -> RGB pixels over white."""

    def __init__(self, handle: Any, level: int, downsample: float) -> None:
        self.handle, self.level, self.downsample = handle, level, downsample

    def __call__(self, y: int, x: int, h: int, w: int) -> np.ndarray:
        # OpenSlide places regions in level-0 coordinates at every level: exact for whole-number
        # downsamples (2, 4, ...); a floored level (4.001) is placed to within half a level-0
        # pixel, as OpenSlide's own readers are
        origin = (round(x * self.downsample), round(y * self.downsample))
        image = self.handle.read_region(origin, self.level, (w, h))
        return rgb_on_white(np.asarray(image))


def square_pixel_size(path: Path, x_um: float | None, y_um: float | None) -> float | None:
    """The pixel size from a reader's x and y sizes in µm: ``None`` when unknown or
    implausible; a :class:`SlideError` when the pixels are not square."""
    x_um, y_um = (plausible(v) if v else None for v in (x_um, y_um))
    if x_um and y_um and not math.isclose(x_um, y_um, rel_tol=SQUARE_TOLERANCE):
        raise SlideError(
            f"{path.name} has pixels of {x_um:g} x {y_um:g} um (not square); napari-ftu reads "
            "square pixels only"
        )
    return x_um or y_um


def _number(text: Any) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) and value > 0 else None


def _import_openslide(path: Path, required: bool) -> Any:
    try:
        import openslide
    except (ImportError, OSError) as exc:  # OSError: the library itself is missing
        if not required:
            return None
        raise SlideError(
            f"{path.name} is read through OpenSlide, which is not installed ({exc}); "
            f"install it with `{INSTALL}`"
        ) from exc
    return openslide
