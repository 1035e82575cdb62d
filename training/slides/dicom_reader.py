"""DICOM whole-slide images (VL Whole Slide Microscopy, one file per level) through wsidicom.

A DICOM slide is a folder of instances: opening the folder, or any one file of the slide, opens
every level of that file's series. The pixel size is the base level's PixelSpacing (mm -> µm).
Where wsidicom is not installed, or refuses the slide (it reads only levels a power of two
apart), OpenSlide 4 reads it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from training.slides.openslide_reader import open_openslide, openslide_vendor, square_pixel_size
from training.slides.slide import RegionLevel, Slide, SlideError

log = logging.getLogger(__name__)

INSTALL = "pip install wsidicom"
DICOM_SUFFIXES = (".dcm",)
# VL Whole Slide Microscopy Image Storage
WSI_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.77.1.6"
# Files a folder is sampled by when deciding cheaply whether it holds DICOM (napari's reader)
FOLDER_SAMPLE = 16


def is_dicom_file(path: Path) -> bool:
    """Whether ``path`` is a DICOM file (the ``DICM`` marker after the 128-byte preamble)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


def is_dicom_folder(path: Path) -> bool:
    """Whether the folder ``path`` holds DICOM files (a few of its files are looked at)."""
    if not path.is_dir():
        return False
    files = (p for p in sorted(path.iterdir()) if p.is_file() and not p.name.startswith("."))
    return any(is_dicom_file(p) for _, p in zip(range(FOLDER_SAMPLE), files, strict=False))


def slide_files(path: Path) -> list[Path]:
    """The files of the DICOM WSI at ``path``: a folder's WSI instances (one series), or those
    of the series of the file ``path``, from its folder."""
    import pydicom

    folder = path if path.is_dir() else path.parent
    series: dict[str, list[Path]] = {}
    for candidate in sorted(folder.iterdir()):
        if not candidate.is_file() or not is_dicom_file(candidate):
            continue
        try:
            header = pydicom.dcmread(
                candidate,
                stop_before_pixels=True,
                specific_tags=["SOPClassUID", "SeriesInstanceUID"],
            )
        except Exception as exc:  # pydicom's errors vary with the damage
            log.warning("%s: skipped, not a readable DICOM header (%s)", candidate.name, exc)
            continue
        if str(header.get("SOPClassUID", "")) == WSI_SOP_CLASS:
            series.setdefault(str(header.get("SeriesInstanceUID", "")), []).append(candidate)
    if path.is_file():
        wanted = [files for files in series.values() if path in files]
        if not wanted:
            raise SlideError(
                f"{path.name} is DICOM but not a whole-slide image (VL Whole Slide Microscopy)"
            )
        return wanted[0]
    if not series:
        raise SlideError(f"{path}: holds no DICOM whole-slide image (VL Whole Slide Microscopy)")
    if len(series) > 1:
        raise SlideError(
            f"{path}: holds {len(series)} DICOM slides (series); open one file of the slide wanted"
        )
    return next(iter(series.values()))


def open_dicom(path: Path) -> Slide:
    """Open the DICOM WSI at ``path`` (a folder or one of its files) as a :class:`Slide`."""
    files = slide_files(path)
    try:
        from wsidicom import WsiDicom
    except ImportError as exc:
        if openslide_vendor(files[0]) == "dicom":
            return open_openslide(files[0])
        raise SlideError(
            f"{path.name}: DICOM slides are read through wsidicom (or OpenSlide 4), neither of "
            f"which is installed; install it with `{INSTALL}`"
        ) from exc
    try:
        wsi = WsiDicom.open(files)
    except Exception as exc:  # wsidicom's errors vary with what is missing or inconsistent
        # wsidicom reads only levels a power of two apart; OpenSlide reads any pyramid
        if openslide_vendor(files[0]) == "dicom":
            log.info("%s: read through OpenSlide (wsidicom: %s)", path.name, exc)
            return open_openslide(files[0])
        raise SlideError(
            f"{path.name}: not a readable DICOM whole-slide image ({type(exc).__name__}: {exc})"
        ) from exc
    try:
        return _slide(path, wsi)
    except Exception:
        wsi.close()
        raise


def _slide(path: Path, wsi: Any) -> Slide:
    levels = list(wsi.levels)
    dataset = levels[0].default_instance.dataset
    if dataset.bits != 8:
        raise SlideError(f"{path.name}: {dataset.bits}-bit DICOM slides are not read here")
    channels = int(dataset.samples_per_pixel)
    sources = [
        RegionLevel(
            (level.size.height, level.size.width, channels),
            (level.tile_size.height, level.tile_size.width),
            _LevelReader(wsi, level.level),
        )
        for level in levels
    ]
    mpp = levels[0].mpp if levels[0].pixel_spacing is not None else None
    pixel_size = (
        square_pixel_size(path, float(mpp.width), float(mpp.height)) if mpp is not None else None
    )
    metadata = {"format": "dicom", "reader": "wsidicom", "axes": "YXS"}
    return Slide(path, sources, "YXS", pixel_size, metadata, handle=wsi)


class _LevelReader:
    """``(y, x, h, w)`` of one wsidicom level -> ``(h, w, C)`` pixels."""

    def __init__(self, wsi: Any, level: int) -> None:
        self.wsi, self.level = wsi, level  # wsidicom's level: log2 of the downsample

    def __call__(self, y: int, x: int, h: int, w: int) -> np.ndarray:
        block = np.asarray(self.wsi.read_region((x, y), self.level, (w, h), as_array=True))
        return block if block.ndim == 3 else block[..., None]
