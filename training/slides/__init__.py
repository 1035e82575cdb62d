"""Whole-slide images: lazy reading at any pixel size, and the pyramid writer.

``open_slide`` opens plain and tiled pyramidal TIFF (including OME-TIFF and SVS-style files)
lazily through tifffile (tiled levels tile by tile, ``training.slides.tiled_tiff``; others and
the lazy dask view through zarr): nothing but the header is read until a region is asked for.
MIRAX, VMS/VMU, BIF and other scanner formats go through OpenSlide, DICOM WSI through wsidicom;
all of them behind the one ``Slide`` interface. PNG and JPEG have no random access, so they are
decoded once. Pixel sizes come from the file's metadata when it has any (OME
``PhysicalSizeX``, SVS ``MPP``, ImageJ or TIFF resolution tags, ``openslide.mpp-x``, DICOM
PixelSpacing).

Modules: ``slide`` (the ``Slide`` interface), ``opening`` (``open_slide``: which reader opens
what), ``tiff`` and ``tiled_tiff`` (tifffile), ``openslide_reader``, ``dicom_reader``,
``pyramid`` (``write_pyramid``), ``resample``.
"""

from training.slides.dicom_reader import DICOM_SUFFIXES
from training.slides.opening import (
    MIN_SIDE,
    OPENSLIDE_SUFFIXES,
    RASTER_SUFFIXES,
    READERS,
    REFUSED_SUFFIXES,
    SLIDE_SUFFIXES,
    TIFF_SUFFIXES,
    open_slide,
)
from training.slides.pyramid import write_pyramid
from training.slides.slide import (
    LEVEL_TOLERANCE,
    PLAUSIBLE_UM_PER_PX,
    STRIP_PIXELS,
    RegionLevel,
    Slide,
    SlideError,
    as_rgb_uint8,
    white,
)
from training.slides.tiff import TILE_CACHE_MB

__all__ = [
    "DICOM_SUFFIXES",
    "LEVEL_TOLERANCE",
    "MIN_SIDE",
    "OPENSLIDE_SUFFIXES",
    "PLAUSIBLE_UM_PER_PX",
    "RASTER_SUFFIXES",
    "READERS",
    "REFUSED_SUFFIXES",
    "SLIDE_SUFFIXES",
    "STRIP_PIXELS",
    "TIFF_SUFFIXES",
    "TILE_CACHE_MB",
    "RegionLevel",
    "Slide",
    "SlideError",
    "as_rgb_uint8",
    "open_slide",
    "white",
    "write_pyramid",
]
