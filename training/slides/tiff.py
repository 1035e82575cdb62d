"""TIFF slides through tifffile: plain, tiled and pyramidal TIFF, OME-TIFF, SVS, NDPI, SCN,
QPTIFF. Tiled levels are read tile by tile straight from the file (``training.slides.tiled_tiff``);
zarr serves other layouts and the lazy dask view. Decoded tiles are cached per slide."""

from __future__ import annotations

import math
import re
import threading
import xml.etree.ElementTree as ET
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from training.slides.slide import Slide, SlideError, plausible, yxc_shape
from training.slides.tiled_tiff import TiledLevel, TileFile

# Decoded TIFF tiles kept per slide, so overlapping reads (neighbouring model tiles) decode once.
TILE_CACHE_MB = 128
_UNIT_TO_UM = {
    "nm": 1e-3,
    "um": 1.0,
    "µm": 1.0,
    "\u03bcm": 1.0,
    "micron": 1.0,
    "mm": 1e3,
    "cm": 1e4,
    "m": 1e6,
}


def open_tiff(path: Path, size: int) -> Slide:
    """Open a TIFF lazily: its largest image series, levels and pixel size."""
    import tifffile
    import zarr

    try:
        tif = tifffile.TiffFile(path)
    except Exception as exc:  # tifffile raises several types for damaged headers
        raise SlideError(
            f"{path.name} is not a readable TIFF ({type(exc).__name__}: {exc})"
        ) from exc
    try:
        if not tif.series:
            raise SlideError(f"{path.name} is not a readable TIFF: it contains no image")
        series = _main_series(tif.series)
        axes = series.axes
        if "Y" not in axes or "X" not in axes:
            raise SlideError(f"{path.name}: first image has axes {axes!r}, expected Y and X")
        levels = list(series.levels)
        for level in levels:
            for page in level.pages:
                if page is None:
                    continue
                offsets = np.asarray(page.dataoffsets, dtype=np.int64)
                counts = np.asarray(page.databytecounts, dtype=np.int64)
                if offsets.size and (offsets + counts).max() > size:
                    raise SlideError(
                        f"{path.name} is truncated: image data reaches byte "
                        f"{int((offsets + counts).max())} but the file has {size} bytes"
                    )
        cache = _TileCache(TILE_CACHE_MB * 2**20)
        arrays = [
            zarr.open_array(_cached_store(series.aszarr(level=i), cache, i), mode="r")
            for i in range(len(levels))
        ]
        # tiled levels are read straight from the file (training.slides.tiled_tiff); zarr serves the
        # others and the lazy dask view
        tiles = TileFile(path) if tif.filehandle.is_file else None
        sources = [
            TiledLevel(level, array, cache, i, tiles)
            if tiles is not None and TiledLevel.supports(level)
            else array
            for i, (level, array) in enumerate(zip(levels, arrays, strict=True))
        ]
        pixel_size = _tiff_pixel_size(tif, series.keyframe)
        metadata = {"format": _tiff_kind(tif), "axes": axes, "series": series.name}
        handles = [tif] if tiles is None else [tif, tiles]
        slide = Slide(path, sources, axes, pixel_size, metadata, handle=_Handles(handles))
        slide._tile_cache = cache
        return slide
    except SlideError:
        tif.close()
        raise
    except Exception as exc:
        tif.close()
        raise SlideError(f"{path.name} is a damaged TIFF ({type(exc).__name__}: {exc})") from exc


class _TileCache:
    """Decoded TIFF tiles of one slide, the least recently used dropped past a byte budget.

    Neighbouring model tiles overlap, and so do the slide tiles under them: with the cache,
    each slide tile is decoded once while the reads sweep across it.
    """

    def __init__(self, budget_bytes: int) -> None:
        self.budget = budget_bytes
        self._items: OrderedDict[tuple[int, Any], Any] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: tuple[int, Any]) -> Any:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0

    def put(self, key: tuple[int, Any], value: Any) -> None:
        size = _size(value)
        if size > self.budget:
            return
        with self._lock:
            if key in self._items:
                return
            self._items[key] = value
            self._bytes += size
            while self._bytes > self.budget:
                _, dropped = self._items.popitem(last=False)
                self._bytes -= _size(dropped)


def _size(value: Any) -> int:
    """Bytes of a cached tile: a decoded array (training.slides.tiled_tiff) or a zarr buffer."""
    return value.nbytes if isinstance(value, np.ndarray) else len(value)


class _Handles:
    """Files a slide holds open, closed together."""

    def __init__(self, handles: Sequence[Any]) -> None:
        self.handles = list(handles)

    def close(self) -> None:
        for handle in self.handles:
            handle.close()


def _cached_store(store: Any, cache: _TileCache, level: int) -> Any:
    """``store`` (tifffile's zarr store of one level) with decoded chunks kept in ``cache``."""
    from zarr.storage import WrapperStore

    class CachedStore(WrapperStore):
        async def get(self, key: str, prototype: Any, byte_range: Any = None) -> Any:
            if byte_range is not None or key.endswith(".json"):
                return await self._store.get(key, prototype, byte_range)
            value = cache.get((level, key))
            if value is None:
                value = await self._store.get(key, prototype, byte_range)
                if value is not None:
                    cache.put((level, key), value)
            return value

    return CachedStore(store)


def _tiff_kind(tif: Any) -> str:
    for kind in ("ome", "svs", "ndpi", "scn", "qpi", "imagej"):
        if getattr(tif, f"is_{kind}", False):
            return kind
    return "tiff"


def _main_series(series: Sequence[Any]) -> Any:
    """The slide itself among a file's image series: the largest with Y and X axes. Scanner
    files also hold a macro photo, a label or a thumbnail, and Leica SCN lists the macro first."""
    images = [s for s in series if "Y" in s.axes and "X" in s.axes]
    if not images:
        return series[0]  # reported by the caller: no Y and X axes
    return max(images, key=lambda s: math.prod(yxc_shape(s.shape, s.axes)[:2]))


def _tiff_pixel_size(tif: Any, page: Any = None) -> float | None:
    """Pixel size in um from OME, SVS, ImageJ or resolution tags, in that order of trust;
    resolution tags are read from ``page`` (the slide's level-0 page; default: the first)."""
    page = tif.pages.first if page is None else page
    if tif.is_ome and tif.ome_metadata:
        value = _ome_pixel_size(tif.ome_metadata)
        if value:
            return value
    description = page.description or ""
    match = re.search(r"\bMPP\s*=\s*([0-9.]+)", description)
    if match:
        value = plausible(float(match.group(1)))
        if value:
            return value
    x_res = page.tags.get("XResolution")
    if x_res is None:
        return None
    numerator, denominator = x_res.value
    if not numerator or not denominator:
        return None
    per_unit = numerator / denominator
    unit = int(page.tags["ResolutionUnit"].value) if "ResolutionUnit" in page.tags else 2
    if tif.is_imagej:
        name = str((tif.imagej_metadata or {}).get("unit", "")).lower()
        factor = _UNIT_TO_UM.get(name)
        return plausible(factor / per_unit) if factor else None
    if unit == 3:  # centimetre
        return plausible(1e4 / per_unit)
    if unit == 2:  # inch
        return plausible(25400.0 / per_unit)
    return None


def _ome_pixel_size(xml: str) -> float | None:
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None
    for element in root.iter():
        if element.tag.endswith("}Pixels") or element.tag == "Pixels":
            value = element.get("PhysicalSizeX")
            if value is None:
                return None
            factor = _UNIT_TO_UM.get(element.get("PhysicalSizeXUnit", "µm"))
            return plausible(float(value) * factor) if factor else None
    return None


def is_ventana(path: Path) -> bool:
    """Whether ``path`` is a Roche/Ventana slide (BIF): Ventana's ``iScan`` metadata in the first
    directory's XMP or description, as OpenSlide detects it. Only the header is read."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages.first
            xmp = page.tags.get(700)
            texts = [page.description or "", xmp.value if xmp is not None else b""]
    except Exception:  # not a readable TIFF: open_tiff says why
        return False
    return any(
        (b"<iScan" in text) if isinstance(text, bytes) else ("<iScan" in text) for text in texts
    )
