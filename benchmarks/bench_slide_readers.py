"""The slide readers side by side: tifffile, OpenSlide and wsidicom reading the engine's tiles.

One **synthetic** kidney phantom at 0.25 um/px (a 2048 px phantom repeated; pyramidal OME-TIFF,
256 px zlib tiles) and the DICOM WSI written from it by wsidicom (uncompressed 256 px frames,
the tests' writer) are read as a 0.4 um/px model's 672 px tiles (1075 level-0 px each, overlap
0.25, raster order) through ``Slide.read_region_at``: the first ``--tiles`` tiles from a freshly
opened slide, on one thread. Every reader must give the same pixels (checked).

    .venv/bin/python benchmarks/bench_slide_readers.py [--side 4096] [--tiles 48]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from _common import DATA, forty_x_phantom

TILE, PIXEL_SIZE, OVERLAP = 672, 0.4, 0.25


def dicom_copy(tiff: str, side: int) -> Path:
    """The DICOM WSI of ``tiff``, written once into ``DATA``."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from wsi_dicom import write_dicom

    from training.slides import open_slide

    folder = DATA / f"phantom_025um_{side}_dicom"
    if not folder.is_dir():
        with open_slide(tiff) as slide:
            write_dicom(folder, slide, tile=256)
    return folder


def tiles(slide, count: int) -> list[tuple[int, int]]:
    step = round(TILE * (1 - OVERLAP))
    height = round(slide.shape[0] * slide.pixel_size_um / PIXEL_SIZE)
    width = round(slide.shape[1] * slide.pixel_size_um / PIXEL_SIZE)
    grid = [(y, x) for y in range(0, height, step) for x in range(0, width, step)]
    return grid[:count]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=4096)
    parser.add_argument("--tiles", type=int, default=48)
    args = parser.parse_args()
    from training.slides import open_slide

    tiff = forty_x_phantom(args.side)
    dicom = dicom_copy(tiff, args.side)
    runs = [
        ("tifffile, OME-TIFF", tiff, None),
        ("OpenSlide, OME-TIFF (level 0 only)", tiff, "openslide"),
        ("wsidicom, DICOM", dicom, None),
        ("OpenSlide, DICOM", dicom, "openslide"),
    ]
    reference = None
    print(f"slide {args.side}x{args.side} at 0.25 um/px; {TILE} px tiles at {PIXEL_SIZE} um/px")
    for name, path, reader in runs:
        with open_slide(path, reader=reader) as slide:
            positions = tiles(slide, args.tiles)
            start = time.perf_counter()
            read = [slide.read_region_at(PIXEL_SIZE, y, x, TILE, TILE) for y, x in positions]
            elapsed = time.perf_counter() - start
        stack = np.stack(read)
        if reference is None:
            reference = stack
        same = "same pixels" if np.array_equal(stack, reference) else "PIXELS DIFFER"
        print(f"{name:38s} {elapsed / len(read) * 1e3:6.1f} ms per tile ({same})")


if __name__ == "__main__":
    main()
