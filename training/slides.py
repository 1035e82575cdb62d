"""Lazy reading of whole-slide images (and ``write_pyramid``, from ``training.pyramid``).

``open_slide`` opens plain and tiled pyramidal TIFF (including OME-TIFF and SVS-style files)
lazily through tifffile (tiled levels tile by tile, ``training.tiled_tiff``; others and the lazy
dask view through zarr): nothing but the header is read until a region is asked for.
PNG and JPEG have no random access, so they are decoded once. Pixel sizes come from the file's
metadata when it has any (OME ``PhysicalSizeX``, SVS ``MPP``, ImageJ or TIFF resolution tags).
"""

from __future__ import annotations

import copy
import math
import os
import re
import threading
import xml.etree.ElementTree as ET
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from training.pyramid import write_pyramid
from training.resample import area_weights, block_mean, cast_like, linear_weights, separable
from training.tiled_tiff import TiledLevel, TileFile

__all__ = [
    "REFUSED_SUFFIXES",
    "SLIDE_SUFFIXES",
    "Slide",
    "SlideError",
    "open_slide",
    "write_pyramid",
]

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
# A pyramid level counts as the requested downsample within this relative tolerance: real
# pyramids have floored level sizes (downsample 4.001), as OpenSlide and TIAToolbox allow for.
LEVEL_TOLERANCE = 0.01
# Source pixels read at once by read_region_at; larger regions are read in strips of rows.
STRIP_PIXELS = 2**24
# Decoded TIFF tiles kept per slide, so overlapping reads (neighbouring model tiles) decode once.
TILE_CACHE_MB = 128
# A pixel size outside this range is a screen resolution (72 dpi = 353 um/px), not a microscope's.
PLAUSIBLE_UM_PER_PX = (0.01, 100.0)
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


class SlideError(ValueError):
    """A slide file that cannot be opened or read, with the reason."""


class Slide:
    """A lazily read image pyramid with its pixel size.

    ``levels`` are lazy ``(H, W, C)`` dask arrays, level 0 (full resolution) first; ``shape`` is
    level 0's ``(H, W, C)``; ``pixel_size_um`` is micrometres per level-0 pixel, or ``None``.
    """

    def __init__(
        self,
        path: Path,
        sources: Sequence[Any],
        axes: str,
        pixel_size_um: float | None,
        metadata: dict[str, Any],
        handle: Any = None,
    ) -> None:
        self.path = path
        self._sources = list(sources)
        self._axes = axes
        self._handle = handle
        self.pixel_size_um = pixel_size_um
        self.metadata = metadata
        self.shapes = [_yxc_shape(src.shape, axes) for src in self._sources]
        self.shape: tuple[int, int, int] = self.shapes[0]
        self.dtype = np.dtype(self._sources[0].dtype)
        self.level_downsamples = [
            0.5 * (self.shape[0] / s[0] + self.shape[1] / s[1]) for s in self.shapes
        ]
        self._levels: list[Any] | None = None
        self._tile_cache: Any = None  # decoded TIFF tiles (tiled TIFF slides)

    @classmethod
    def from_array(
        cls, array: np.ndarray, pixel_size_um: float | None, name: str = "array"
    ) -> Slide:
        """Wrap an in-memory ``(H, W)`` or ``(H, W, C)`` image as a one-level slide."""
        array = np.asarray(array)
        if array.ndim not in (2, 3):
            raise ValueError(f"an image must be (H, W) or (H, W, C); got shape {array.shape}")
        axes = "YXS" if array.ndim == 3 else "YX"
        return cls(Path(name), [array], axes, pixel_size_um, {"format": "array", "axes": axes})

    def with_pixel_size(self, pixel_size_um: float) -> Slide:
        """A view of this slide with another pixel size; this slide is left as it is, and
        closing the view does not close the file."""
        if not pixel_size_um > 0:
            raise ValueError(f"pixel_size_um must be positive; got {pixel_size_um}")
        view = copy.copy(self)
        view.pixel_size_um = float(pixel_size_um)
        view._handle = None
        return view

    @property
    def levels(self) -> list[Any]:
        """Lazy ``(H, W, C)`` arrays of every pyramid level, full resolution first."""
        if self._levels is None:
            import dask.array as da

            self._levels = []
            for src in self._sources:
                if isinstance(src, TiledLevel):
                    src = src.fallback
                lazy = src if isinstance(src, np.ndarray) else da.from_zarr(src)
                self._levels.append(_to_yxc(lazy, self._axes, slice(None), slice(None)))
        return self._levels

    def read_region(
        self, y: int, x: int, h: int, w: int, level: int = 0, fill: int | float | None = None
    ) -> np.ndarray:
        """Read ``h x w`` pixels at ``(y, x)`` of ``level`` (that level's pixel coordinates).

        Parts of the region outside the image are padded with ``fill``; by default white glass,
        the largest value of the slide's integer type (255 for 8-bit, 65535 for 16-bit) or 1.0.
        """
        if fill is None:
            fill = white(self.dtype)
        if not 0 <= level < len(self._sources):
            raise IndexError(
                f"{self.path.name} has levels 0..{len(self._sources) - 1}; got {level}"
            )
        if h <= 0 or w <= 0:
            raise ValueError(f"region size must be positive; got {h}x{w}")
        height, width, channels = self.shapes[level]
        y0, x0 = max(y, 0), max(x, 0)
        y1, x1 = min(y + h, height), min(x + w, width)
        inside = (y0, x0, y1, x1) == (y, x, y + h, x + w)
        out = None if inside else np.full((h, w, channels), fill, dtype=self.dtype)
        if y1 > y0 and x1 > x0:
            source = self._sources[level]
            try:
                block = np.asarray(_to_yxc(source, self._axes, slice(y0, y1), slice(x0, x1)))
            except Exception as exc:  # the codec's own error types vary by compression
                raise SlideError(
                    f"{self.path.name}: cannot read level {level} at y={y0}, x={x0} "
                    f"({type(exc).__name__}: {exc}); the file may be truncated or damaged"
                ) from exc
            if out is None:  # a fresh array, never a view of an in-memory image
                return np.array(block) if isinstance(source, np.ndarray) else block
            out[y0 - y : y1 - y, x0 - x : x1 - x] = block
        return out

    def read_region_at(
        self,
        pixel_size_um: float,
        y: int,
        x: int,
        h: int,
        w: int,
        fill: int | float | None = None,
    ) -> np.ndarray:
        """Read ``h x w`` pixels at ``(y, x)`` of the grid of ``pixel_size_um`` um/px.

        Output pixel ``(i, j)`` covers ``[(y + i) * s, (y + i + 1) * s)`` of level 0, ``s`` the
        ratio of pixel sizes, so regions read separately stitch exactly. The region is read from
        the coarsest pyramid level that is at least as fine as asked (within 1%) and resampled
        with an area filter (anti-aliased; exact block means for whole-number factors), or
        bilinearly when the level is coarser than asked. A level within half a pixel of the
        asked scale over the whole region is read as it is. Large regions are read in strips.
        """
        if self.pixel_size_um is None:
            raise SlideError(
                f"{self.path.name} has no pixel size in its metadata; pass pixel_size_um to "
                "open_slide() to read it at a physical scale"
            )
        if not pixel_size_um > 0:
            raise ValueError(f"pixel size must be positive; got {pixel_size_um}")
        if h <= 0 or w <= 0:
            raise ValueError(f"region size must be positive; got {h}x{w}")
        if fill is None:
            fill = white(self.dtype)
        factor = pixel_size_um / self.pixel_size_um
        level = self.best_level(factor)
        ratio = factor / self.level_downsamples[level]
        whole = max(1, round(ratio))
        # the scale error of reading whole-number blocks, in level pixels across the region
        snapped = (
            abs(ratio - whole) <= LEVEL_TOLERANCE * whole and abs(ratio - whole) * max(h, w) < 0.5
        )
        out = np.empty((h, w, self.shapes[level][2]), self.dtype)
        strip = max(1, int(STRIP_PIXELS // (w * max(ratio, 1.0) ** 2)))
        for top in range(0, h, strip):
            rows = min(strip, h - top)
            if snapped:  # positions continue from the region's origin, so strips stitch exactly
                sy, sx = round(y * ratio) + top * whole, round(x * ratio)
                block = self.read_region(sy, sx, rows * whole, w * whole, level, fill)
                out[top : top + rows] = (
                    block if whole == 1 else cast_like(block_mean(block, whole), self.dtype)
                )
            else:
                out[top : top + rows] = self._resample(level, ratio, y + top, x, rows, w, fill)
        return out

    def best_level(self, downsample: float) -> int:
        """Index of the coarsest level whose downsample does not exceed ``downsample`` by more
        than 1% (level sizes of real pyramids are floored: a 4x level may be 4.001x)."""
        candidates = [
            i
            for i, d in enumerate(self.level_downsamples)
            if d <= downsample * (1 + LEVEL_TOLERANCE)
        ]
        return max(candidates, key=lambda i: self.level_downsamples[i]) if candidates else 0

    def _resample(
        self, level: int, ratio: float, y: int, x: int, h: int, w: int, fill: int | float
    ) -> np.ndarray:
        """Resample a region of ``level`` by ``ratio`` level pixels per output pixel."""
        if ratio > 1:
            # Output pixel i covers [(y + i) * ratio, (y + i + 1) * ratio) of the level: the
            # exact area mean over that square, pixels taken as constant squares.
            top, left = y * ratio, x * ratio
            sy, sx = math.floor(top), math.floor(left)
            sh = math.ceil((y + h) * ratio) - sy + 1
            sw = math.ceil((x + w) * ratio) - sx + 1
            src = self.read_region(sy, sx, sh, sw, level, fill)
            out = separable(
                src,
                area_weights(top - sy, ratio, h, sh),
                area_weights(left - sx, ratio, w, sw),
            )
        else:
            # Bilinear, output pixel centres at (y + i + 0.5) * ratio - 0.5 level pixels.
            sy = math.floor((y + 0.5) * ratio - 0.5)
            sx = math.floor((x + 0.5) * ratio - 0.5)
            sh = math.ceil((y + h) * ratio) - sy + 2
            sw = math.ceil((x + w) * ratio) - sx + 2
            src = self.read_region(sy, sx, sh, sw, level, fill)
            out = separable(
                src,
                linear_weights((y + 0.5) * ratio - 0.5 - sy, ratio, h, sh),
                linear_weights((x + 0.5) * ratio - 0.5 - sx, ratio, w, sw),
            )
        return cast_like(out, self.dtype)

    def clear_cache(self) -> None:
        """Drop the decoded tiles kept for overlapping reads (memory back after a long run)."""
        if self._tile_cache is not None:
            self._tile_cache.clear()

    def close(self) -> None:
        """Release the file handle."""
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        px = f"{self.pixel_size_um:g} um/px" if self.pixel_size_um else "pixel size unknown"
        return f"Slide({self.path.name!r}, shape={self.shape}, levels={len(self._sources)}, {px})"


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
        slide = _open_tiff(path, size)
    elif magic.startswith(b"\x89PNG") or magic[:3] == b"\xff\xd8\xff":
        slide = _open_raster(path)
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


def white(dtype: np.dtype) -> int | float:
    """The value of white glass in an image of ``dtype``: its integer maximum, or 1.0."""
    dtype = np.dtype(dtype)
    return int(np.iinfo(dtype).max) if dtype.kind in "ui" else 1.0


def _yxc_shape(shape: Sequence[int], axes: str) -> tuple[int, int, int]:
    sizes = dict(zip(axes, shape, strict=True))
    channels = sizes.get("S", sizes.get("C", 1))
    return int(sizes["Y"]), int(sizes["X"]), int(channels)


def _to_yxc(array: Any, axes: str, ys: slice, xs: slice) -> Any:
    """Index ``array`` (tifffile ``axes``) at rows ``ys``, columns ``xs``, as ``(Y, X, C)``."""
    index: list[Any] = []
    kept: list[str] = []
    for axis in axes:
        if axis == "Y":
            index.append(ys)
        elif axis == "X":
            index.append(xs)
        elif axis in "SC" and axis not in kept and not ("S" in kept or "C" in kept):
            index.append(slice(None))
        else:
            index.append(0)
            continue
        kept.append(axis)
    block = array[tuple(index)]
    order = [kept.index("Y"), kept.index("X")]
    channel = [i for i, a in enumerate(kept) if a in "SC"]
    if channel:
        return block.transpose(order + channel)
    return block.transpose(order)[..., None]


def _open_tiff(path: Path, size: int) -> Slide:
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
        # tiled levels are read straight from the file (training.tiled_tiff); zarr serves the
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
    """Bytes of a cached tile: a decoded array (training.tiled_tiff) or a zarr buffer."""
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


def _open_raster(path: Path) -> Slide:
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
        pixel_size = _plausible(25400.0 / float(dpi[0]))
    return Slide(
        path,
        [array],
        axes,
        pixel_size,
        {"format": path.suffix.lstrip(".").lower(), "mode": mode, "axes": axes},
    )


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
    return max(images, key=lambda s: math.prod(_yxc_shape(s.shape, s.axes)[:2]))


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
        value = _plausible(float(match.group(1)))
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
        return _plausible(factor / per_unit) if factor else None
    if unit == 3:  # centimetre
        return _plausible(1e4 / per_unit)
    if unit == 2:  # inch
        return _plausible(25400.0 / per_unit)
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
            return _plausible(float(value) * factor) if factor else None
    return None


def _plausible(um_per_px: float) -> float | None:
    low, high = PLAUSIBLE_UM_PER_PX
    return float(um_per_px) if low <= um_per_px <= high else None
