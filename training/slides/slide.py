"""The ``Slide`` interface: a lazily read image pyramid with its pixel size in micrometres.

Every reader (``training.slides.tiff``, ``.openslide_reader``, ``.dicom_reader``, in-memory
arrays) gives ``Slide`` its levels as arrays sliced ``[rows, columns]`` in that level's pixels;
``Slide`` pads regions outside the image with white glass and reads any pixel size from the
best level (``read_region_at``), the same for every format.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from training.slides.resample import (
    area_weights,
    block_mean,
    cast_like,
    linear_weights,
    separable,
)
from training.slides.tiled_tiff import TiledLevel

# A pyramid level counts as the requested downsample within this relative tolerance: real
# pyramids have floored level sizes (downsample 4.001), as OpenSlide and TIAToolbox allow for.
LEVEL_TOLERANCE = 0.01
# Source pixels read at once by read_region_at; larger regions are read in strips of rows.
STRIP_PIXELS = 2**24
# A pixel size outside this range is a screen resolution (72 dpi = 353 um/px), not a microscope's.
PLAUSIBLE_UM_PER_PX = (0.01, 100.0)


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
        self.shapes = [yxc_shape(src.shape, axes) for src in self._sources]
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
                if isinstance(src, RegionLevel):
                    lazy = src.lazy()
                elif isinstance(src, np.ndarray):
                    lazy = src
                else:
                    lazy = da.from_zarr(src)
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

    def thumbnail(self, max_side: int = 1024) -> np.ndarray:
        """The whole slide with its longer side at most ``max_side`` pixels, read from the best
        level with area means (as ``read_region_at``), the same whatever the reader."""
        if max_side < 1:
            raise ValueError(f"max_side must be at least 1; got {max_side}")
        height, width = self.shape[:2]
        factor = max(1.0, max(height, width) / max_side)
        size = max(1, math.floor(height / factor)), max(1, math.floor(width / factor))
        view = self if self.pixel_size_um else self.with_pixel_size(1.0)  # a scale to read at
        return view.read_region_at(view.pixel_size_um * factor, 0, 0, *size)

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


def white(dtype: np.dtype) -> int | float:
    """The value of white glass in an image of ``dtype``: its integer maximum, or 1.0."""
    dtype = np.dtype(dtype)
    return int(np.iinfo(dtype).max) if dtype.kind in "ui" else 1.0


def yxc_shape(shape: Sequence[int], axes: str) -> tuple[int, int, int]:
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


def plausible(um_per_px: float) -> float | None:
    """``um_per_px`` if a microscope could have it (``PLAUSIBLE_UM_PER_PX``), else ``None``."""
    low, high = PLAUSIBLE_UM_PER_PX
    return float(um_per_px) if low <= um_per_px <= high else None


class RegionLevel:
    """A pyramid level read through a reader library's region call (OpenSlide, wsidicom), as
    an ``(H, W, C)`` array sliced ``[rows, columns(, channels)]``; ``lazy()`` is its dask view
    in the library's tiles."""

    def __init__(
        self,
        shape: tuple[int, int, int],
        tile: tuple[int, int],
        read: Callable[[int, int, int, int], np.ndarray],
        dtype: Any = np.uint8,
    ) -> None:
        self.shape = tuple(int(n) for n in shape)
        self.dtype = np.dtype(dtype)
        self.ndim = 3
        self.tile = (max(1, int(tile[0])), max(1, int(tile[1])))
        self._read = read  # (y, x, h, w) inside the level -> (h, w, C)

    def __getitem__(self, key: Any) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        key = key + (slice(None),) * (3 - len(key))
        if len(key) != 3 or not all(isinstance(k, slice) and k.step in (None, 1) for k in key[:2]):
            raise IndexError(f"a level is read by row and column ranges; got {key!r}")
        (y0, y1, _), (x0, x1, _) = (
            k.indices(n) for k, n in zip(key[:2], self.shape[:2], strict=True)
        )
        h, w = max(0, y1 - y0), max(0, x1 - x0)
        if h == 0 or w == 0:
            block = np.zeros((h, w, self.shape[2]), self.dtype)
        else:
            block = self._read(y0, x0, h, w)
        return block[:, :, key[2]]

    def lazy(self) -> Any:
        """The level as a dask array chunked in the reader's tiles."""
        import dask.array as da

        return da.from_array(
            self,
            chunks=(*self.tile, self.shape[2]),
            asarray=False,
            fancy=False,
            meta=np.empty((0, 0, 0), self.dtype),
            name=False,  # a random key, not a hash of a reader that holds an open file
        )


def rgb_on_white(rgba: np.ndarray) -> np.ndarray:
    """``(H, W, 4)`` 8-bit RGBA (not premultiplied) as RGB over white glass: what a reader
    leaves transparent (outside the scanned area) is background, not black."""
    rgba = np.asarray(rgba)
    alpha = rgba[..., 3:4].astype(np.uint16)
    if (alpha == 255).all():
        return np.ascontiguousarray(rgba[..., :3])
    rgb = rgba[..., :3].astype(np.uint16) * alpha + 255 * (255 - alpha)
    return ((rgb + 127) // 255).astype(np.uint8)


def as_rgb_uint8(region: np.ndarray) -> np.ndarray:
    """``(H, W, C)`` pixels of any type as RGB uint8: grey repeated, alpha dropped, integer
    types scaled by their maximum (white stays white), floats taken as 0..1."""
    if region.shape[-1] == 1:
        region = np.repeat(region, 3, axis=-1)
    region = region[..., :3]
    if region.dtype == np.uint8:
        return region
    if np.issubdtype(region.dtype, np.integer):
        scale = 255.0 / np.iinfo(region.dtype).max
        return np.rint(np.clip(region, 0, None) * scale).astype(np.uint8)
    return np.rint(np.clip(region, 0.0, 1.0) * 255.0).astype(np.uint8)
