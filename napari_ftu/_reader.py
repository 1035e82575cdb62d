"""napari reader: slides as multiscale Image layers scaled in micrometres."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from training.slides import DICOM_SUFFIXES, REFUSED_SUFFIXES, SLIDE_SUFFIXES, open_slide
from training.slides.dicom_reader import is_dicom_folder

# refused formats are claimed too, so that opening one says why instead of "no reader"
CLAIMED = SLIDE_SUFFIXES + DICOM_SUFFIXES + tuple(REFUSED_SUFFIXES)

LayerData = tuple[Any, dict[str, Any], str]


def napari_get_reader(path: str | list[str]) -> Callable[[Any], list[LayerData]] | None:
    """Return the slide reader for paths napari-ftu can open, ``None`` for anything else."""
    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    if not paths or not all(_claimed(p) for p in paths):
        return None
    return read_slides


def _claimed(path: str | os.PathLike) -> bool:
    """A slide file by its suffix, or a folder of DICOM files (a DICOM slide: a few of its
    files are looked at, so other folders are declined cheaply)."""
    if os.path.isdir(path):
        return is_dicom_folder(Path(path))
    return str(path).lower().endswith(CLAIMED)


def read_slides(path: str | list[str]) -> list[LayerData]:
    """Open each slide (a file, or a DICOM slide's folder) lazily as a (multiscale) RGB Image
    layer scaled in micrometres."""
    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    return [slide_layer_data(p) for p in paths]


def slide_layer_data(path: str | os.PathLike) -> LayerData:
    """Layer data for one slide: lazy pyramid levels, micrometre scale, slide metadata."""
    slide = open_slide(path)
    levels = slide.levels
    rgb = slide.shape[2] in (3, 4)
    if not rgb:
        levels = [level[..., 0] for level in levels]
    # a slide without a pixel size is shown at 1 um per pixel, as the plugin's tools measure it
    # (image_pixel_size), and in micrometres like every other layer: napari gives up units
    # with an "Inconsistent units" warning when a pixel-unit layer sits beside one in um; its
    # metadata keeps pixel_size_um None, so "Segment FTUs" still asks for the real one
    pixel_size = slide.pixel_size_um or 1.0
    kwargs = {
        "name": _layer_name(Path(path)),
        "rgb": rgb,
        "multiscale": len(levels) > 1,
        "scale": (pixel_size, pixel_size),
        "units": ("um", "um"),
        "metadata": {
            "path": str(Path(path).resolve()),
            "pixel_size_um": slide.pixel_size_um,
            "slide_format": slide.metadata.get("format"),
            "level_downsamples": slide.level_downsamples,
        },
    }
    data = levels if len(levels) > 1 else levels[0]
    return data, kwargs, "image"


def _layer_name(path: Path) -> str:
    """The slide's name: its file's stem; a DICOM slide's folder's (its files are UIDs)."""
    if path.suffix.lower() in DICOM_SUFFIXES:
        return path.resolve().parent.name
    return path.stem
