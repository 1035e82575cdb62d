"""``open_slide``: which reader opens a file, and the one clear line for a file none can."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from training.slides.slide import Slide, SlideError, plausible
from training.slides.tiff import open_tiff

# TIFF-based scanner formats tifffile reads as pyramids: Hamamatsu NDPI, Leica SCN, PerkinElmer
# QPTIFF. Roche BIF is left out: tifffile does not stitch its overlapping tiles (seams).
TIFF_SUFFIXES = (".tif", ".tiff", ".svs", ".btf", ".tf8", ".ndpi", ".scn", ".qptiff")
RASTER_SUFFIXES = (".png", ".jpg", ".jpeg")
# Formats recognised only to be refused with the reason (a wrong image is worse than an error)
REFUSED_SUFFIXES = {
    ".bif": (
        "Roche/Ventana BIF tiles overlap and are not stitched when read with tifffile, so the "
        "image would show seams; convert it to OME-TIFF (e.g. QuPath's export or bfconvert) "
        "and open that"
    ),
}
SLIDE_SUFFIXES = TIFF_SUFFIXES + RASTER_SUFFIXES
MIN_SIDE = 8


def open_slide(path: str | os.PathLike, pixel_size_um: float | None = None) -> Slide:
    """Open a slide lazily; ``pixel_size_um`` overrides what the file says.

    Raises :class:`SlideError` for a missing, empty, truncated, corrupt, non-image or too small
    file, naming the file and the problem.
    """
    path = Path(path)
    if path.suffix.lower() in REFUSED_SUFFIXES:
        raise SlideError(f"{path.name}: {REFUSED_SUFFIXES[path.suffix.lower()]}")
    if path.is_dir():
        raise SlideError(f"{path}: is a directory, not a slide file")
    if not path.is_file():
        raise SlideError(f"{path}: no such file")
    size = path.stat().st_size
    if size == 0:
        raise SlideError(f"{path.name} is empty (0 bytes)")
    with open(path, "rb") as handle:
        magic = handle.read(8)
    if magic[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        slide = open_tiff(path, size)
    elif magic.startswith(b"\x89PNG") or magic[:3] == b"\xff\xd8\xff":
        slide = open_raster(path)
    else:
        raise SlideError(
            f"{path.name} is not a TIFF, PNG or JPEG image (first bytes {magic[:4]!r}); "
            f"supported: {', '.join(SLIDE_SUFFIXES)}"
        )
    height, width = slide.shape[:2]
    if min(height, width) < MIN_SIDE:
        slide.close()
        raise SlideError(
            f"{path.name} is {height}x{width} pixels; a slide must be at least "
            f"{MIN_SIDE}x{MIN_SIDE}"
        )
    if pixel_size_um is not None:
        if not (math.isfinite(pixel_size_um) and pixel_size_um > 0):
            slide.close()
            raise ValueError(f"pixel_size_um must be a positive number; got {pixel_size_um}")
        slide.pixel_size_um = float(pixel_size_um)
    return slide


def open_raster(path: Path) -> Slide:
    """Decode a PNG or JPEG once (no random access in either format)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            info = dict(img.info)
            mode = img.mode
            img.load()
            if mode not in ("L", "RGB", "I;16"):
                img = img.convert("RGB")
            array = np.asarray(img)
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError, SyntaxError) as exc:
        raise SlideError(
            f"{path.name} cannot be decoded ({exc}); the file may be truncated"
        ) from exc
    axes = "YXS" if array.ndim == 3 else "YX"
    pixel_size = None
    dpi = info.get("dpi")
    if dpi and dpi[0]:
        pixel_size = plausible(25400.0 / float(dpi[0]))
    return Slide(
        path,
        [array],
        axes,
        pixel_size,
        {"format": path.suffix.lstrip(".").lower(), "mode": mode, "axes": axes},
    )
