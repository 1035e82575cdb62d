"""``open_slide``: which reader opens a file, and the one clear line for a file none can.

- tifffile (``training.slides.tiff``): TIFF, OME-TIFF, SVS, NDPI, SCN, QPTIFF, BigTIFF;
- OpenSlide (``training.slides.openslide_reader``): MIRAX, Hamamatsu VMS/VMU, Ventana BIF (also
  a TIFF whose first directory carries Ventana's ``iScan`` XMP, whatever its name), SVSlide,
  and TIFF-based formats tifffile fails on and only OpenSlide knows (Philips, Trestle);
- wsidicom (``training.slides.dicom_reader``): DICOM WSI, a folder or one of its files;
- Pillow: PNG, JPEG (decoded once).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from training.slides.dicom_reader import (
    DICOM_SUFFIXES,
    is_dicom_file,
    is_dicom_folder,
    open_dicom,
    slide_files,
)
from training.slides.openslide_reader import open_openslide, openslide_vendor
from training.slides.slide import Slide, SlideError, plausible
from training.slides.tiff import is_ventana, open_tiff

# TIFF-based scanner formats tifffile reads as pyramids: Hamamatsu NDPI, Leica SCN, PerkinElmer
# QPTIFF. Roche BIF goes to OpenSlide: tifffile does not stitch its overlapping tiles (seams).
TIFF_SUFFIXES = (".tif", ".tiff", ".svs", ".btf", ".tf8", ".ndpi", ".scn", ".qptiff")
RASTER_SUFFIXES = (".png", ".jpg", ".jpeg")
# Formats only OpenSlide reads (MIRAX, Hamamatsu VMS/VMU, Ventana BIF, Sakura SVSlide)
OPENSLIDE_SUFFIXES = (".mrxs", ".vms", ".vmu", ".bif", ".svslide")
# Single-file slides (a DICOM slide is a folder of files, one per level: DICOM_SUFFIXES)
SLIDE_SUFFIXES = TIFF_SUFFIXES + RASTER_SUFFIXES + OPENSLIDE_SUFFIXES
_BIOFORMATS = "convert it to OME-TIFF with bfconvert (Bio-Formats) or QuPath, and open that"
_VENDOR = "export it as SVS or TIFF with the scanner maker's viewer, and open that"
# Formats recognised only to be refused with what to convert them with (one line each)
REFUSED_SUFFIXES = {
    ".czi": f"Zeiss CZI is not read here; {_BIOFORMATS}",
    ".zvi": f"Zeiss ZVI is not read here; {_BIOFORMATS}",
    ".lif": f"Leica LIF is not read here; {_BIOFORMATS}",
    ".nd2": f"Nikon ND2 is not read here; {_BIOFORMATS}",
    ".vsi": f"Olympus/Evident VSI (cellSens) is not read here; {_BIOFORMATS}",
    ".oib": f"Olympus OIB is not read here; {_BIOFORMATS}",
    ".oif": f"Olympus OIF is not read here; {_BIOFORMATS}",
    ".ims": f"Imaris IMS is not read here; {_BIOFORMATS}",
    ".isyntax": (
        "Philips iSyntax is not read here; convert it to OME-TIFF with Glencoe Software's "
        "isyntax2raw and raw2ometiff, and open that"
    ),
    ".kfb": f"KFBio KFB is not read here; {_VENDOR} (KFBio's K-Viewer)",
    ".sdpc": f"SQRAY SDPC is not read here; {_VENDOR} (SQRAY's viewer)",
}
READERS = ("tifffile", "openslide", "wsidicom")
MIN_SIDE = 8
# OpenSlide's names of the formats tifffile reads itself (generic TIFF, SVS, NDPI, SCN)
_TIFFFILE_VENDORS = ("generic-tiff", "aperio", "hamamatsu", "leica")
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def open_slide(
    path: str | os.PathLike, pixel_size_um: float | None = None, reader: str | None = None
) -> Slide:
    """Open a slide lazily; ``pixel_size_um`` overrides what the file says.

    ``reader`` (``"tifffile"``, ``"openslide"`` or ``"wsidicom"``) forces a reader; by default
    the format chooses (see the module's docstring). Raises :class:`SlideError` for a missing,
    empty, truncated, corrupt, non-image, unsupported or too small file, naming the file and
    the problem.
    """
    path = Path(path)
    if reader is not None and reader not in READERS:
        raise ValueError(f"reader must be one of {', '.join(READERS)}; got {reader!r}")
    if path.suffix.lower() in REFUSED_SUFFIXES:
        raise SlideError(f"{path.name}: {REFUSED_SUFFIXES[path.suffix.lower()]}")
    if path.is_dir():
        if reader is None and not is_dicom_folder(path):
            raise SlideError(f"{path}: is a directory, not a slide file nor a DICOM slide")
    elif not path.is_file():
        raise SlideError(f"{path}: no such file")
    elif path.stat().st_size == 0:
        raise SlideError(f"{path.name} is empty (0 bytes)")
    slide = _open(path, reader)
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


def _open(path: Path, reader: str | None) -> Slide:
    """The slide at ``path`` opened by ``reader``, or by the reader its format calls for."""
    if reader == "wsidicom" or (reader is None and path.is_dir()):
        return open_dicom(path)
    if reader == "openslide":
        return open_openslide(_first_dicom_file(path) if path.is_dir() else path)
    if path.is_dir():
        raise SlideError(f"{path}: is a directory; tifffile reads single files")
    if reader is None and path.suffix.lower() in OPENSLIDE_SUFFIXES:
        return _open_openslide_format(path)
    with open(path, "rb") as handle:
        magic = handle.read(8)
    if magic[:4] in _TIFF_MAGIC:
        if is_ventana(path):
            if reader == "tifffile":  # a wrong image is worse than an error
                raise SlideError(
                    f"{path.name} is a Roche/Ventana BIF, whose overlapping tiles tifffile does "
                    "not stitch (seams); open it with OpenSlide (the default reader)"
                )
            return _open_openslide_format(path)
        return _open_tiff(path, fallback=reader is None)
    if reader == "tifffile":
        raise SlideError(f"{path.name} is not a TIFF (first bytes {magic[:4]!r})")
    if magic.startswith(b"\x89PNG") or magic[:3] == b"\xff\xd8\xff":
        return open_raster(path)
    if is_dicom_file(path):
        return open_dicom(path)
    if openslide_vendor(path):
        return open_openslide(path)
    raise SlideError(
        f"{path.name} is not a TIFF, PNG, JPEG or DICOM image, nor a format OpenSlide reads "
        f"(first bytes {magic[:4]!r}); supported: {', '.join(SLIDE_SUFFIXES + DICOM_SUFFIXES)}"
    )


def _open_tiff(path: Path, fallback: bool) -> Slide:
    """tifffile's reading of ``path``; where it fails on a scanner format OpenSlide knows and
    tifffile does not (Philips, Trestle), (``fallback``) OpenSlide's. Formats tifffile reads
    itself keep its error: a damaged file is named at open, not at the first region."""
    try:
        return open_tiff(path, path.stat().st_size)
    except SlideError:
        vendor = openslide_vendor(path) if fallback else None
        if vendor is None or vendor in _TIFFFILE_VENDORS:
            raise
        return open_openslide(path)


def _open_openslide_format(path: Path) -> Slide:
    """A format only OpenSlide reads right; if it cannot, the line says what to convert with."""
    try:
        return open_openslide(path)
    except SlideError as exc:
        bif = path.suffix.lower() == ".bif" or is_ventana(path)
        why = (
            "tifffile would show its overlapping tiles with seams, so it is not read that way; "
            if bif
            else ""
        )
        raise SlideError(f"{exc}; {why}convert it to OME-TIFF with QuPath or bfconvert") from exc


def _first_dicom_file(folder: Path) -> Path:
    return slide_files(folder)[0]


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
