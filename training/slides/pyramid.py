"""A tiled pyramidal OME-TIFF writer (``write_pyramid``, exported by ``training.slides``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from training.atomic import atomic_path
from training.slides.resample import block_mean, cast_like


def write_pyramid(
    path: str | os.PathLike,
    image: Any,
    pixel_size_um: float | None,
    *,
    tile: int = 256,
    compression: str | None = "zlib",
    compression_level: int | None = None,
    labels: bool = False,
) -> Path:
    """Write ``image`` (``(H, W)`` or ``(H, W, C)``, any array-like) as a tiled pyramidal OME-TIFF.

    Level 0 is written tile by tile from ``image``, so a memory-mapped or zarr source is never
    read whole; each further level halves the previous one down to one tile: 2x2 means for
    images, every second pixel for ``labels`` (a label image: a mean would invent ids, so every
    value of a lower level is one of level 0's). The
    pixel size goes into the OME metadata and the TIFF resolution tags. The file appears
    atomically: it is written beside ``path`` and renamed into place.
    """
    import tifffile

    path = Path(path)
    if image.ndim not in (2, 3):
        raise ValueError(f"image must be (H, W) or (H, W, C); got shape {image.shape}")
    if tile % 16:
        raise ValueError(f"tile must be a multiple of 16; got {tile}")
    if labels and (image.ndim != 2 or np.dtype(image.dtype).kind not in "ui"):
        raise ValueError(
            f"a label image must be 2-D integers; got shape {image.shape}, dtype {image.dtype}"
        )
    photometric = "rgb" if image.ndim == 3 and image.shape[2] in (3, 4) else "minisblack"
    levels: list[Any] = [image]
    while max(levels[-1].shape[:2]) > tile:
        levels.append(_halve(levels[-1], nearest=labels))
    metadata: dict[str, Any] = {"axes": "YXS" if image.ndim == 3 else "YX"}
    resolution = None
    if pixel_size_um:
        metadata.update(
            PhysicalSizeX=pixel_size_um,
            PhysicalSizeXUnit="µm",
            PhysicalSizeY=pixel_size_um,
            PhysicalSizeYUnit="µm",
        )
        resolution = (1e4 / pixel_size_um, 1e4 / pixel_size_um)
    compressionargs = {"level": compression_level} if compression and compression_level else None
    with atomic_path(path, suffix=".tmp.tiff") as tmp:
        big = image.size * image.dtype.itemsize > 2**31
        with tifffile.TiffWriter(tmp, bigtiff=big, ome=True) as tif:
            for index, level in enumerate(levels):
                scale = 2**index
                options: dict[str, Any] = dict(
                    shape=level.shape,
                    dtype=level.dtype,
                    tile=(tile, tile),
                    photometric=photometric,
                    compression=compression,
                    compressionargs=compressionargs,
                    predictor=compression in ("zlib", "zstd", "lzma") or None,
                    resolution=None
                    if resolution is None
                    else (resolution[0] / scale, resolution[1] / scale),
                    resolutionunit="CENTIMETER" if resolution else None,
                )
                if index == 0:
                    options.update(subifds=len(levels) - 1, metadata=metadata)
                else:
                    options.update(subfiletype=1, metadata=None)
                tif.write(_tiles(level, tile), **options)
    return path


def _tiles(level: Any, tile: int):
    height, width = level.shape[:2]
    for y in range(0, height, tile):
        for x in range(0, width, tile):
            block = np.asarray(level[y : y + tile, x : x + tile])
            if block.shape[:2] != (tile, tile):
                padded = np.zeros((tile, tile, *block.shape[2:]), dtype=block.dtype)
                padded[: block.shape[0], : block.shape[1]] = block
                block = padded
            yield block


def _halve(level: Any, strip: int = 1024, nearest: bool = False) -> np.ndarray:
    """2x2 means of ``level`` (or, ``nearest``, its pixels at even rows and columns), read in
    strips of rows so a lazy source is never read whole."""
    height, width = level.shape[:2]
    out_shape = ((height + 1) // 2, (width + 1) // 2, *tuple(level.shape[2:]))
    out = np.empty(out_shape, dtype=level.dtype)
    for y in range(0, height, strip):
        block = np.asarray(level[y : y + strip])
        if nearest:
            out[y // 2 : (y + len(block) + 1) // 2] = block[::2, ::2]
            continue
        if block.shape[0] % 2:
            block = np.concatenate([block, block[-1:]], axis=0)
        if block.shape[1] % 2:
            block = np.concatenate([block, block[:, -1:]], axis=1)
        means = block_mean(block, 2)
        out[y // 2 : y // 2 + means.shape[0]] = cast_like(means, level.dtype)
    return out
