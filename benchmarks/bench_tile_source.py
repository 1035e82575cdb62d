"""Tile-source throughput: a 0.25 um/px (40x) pyramidal phantom read for a 0.4 um/px model.

672 px tiles at 0.4 um/px (1075 px of level 0 each), overlap 0.25, in the engine's raster order.
"Before" is the reader this project had until issue 7 (exact-match level selection, a float copy,
a Gaussian anti-aliasing filter and per-channel linear interpolation), copied here as the
reference; "after" is ``TileSource`` (area filter, decoded-tile cache, a batch read as one
span). Both read the same tiles from the same file in the same process. The stain figure is
``StainNormalizer.transform`` on one 672 px tile once the slide's stain matrix is fixed.
Per-tile figures run on one thread (OMP/BLAS/torch/OpenCV threads set to 1 before import).

    .venv/bin/python benchmarks/bench_tile_source.py [--tiles 48]
"""

from __future__ import annotations

import os

for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_name] = "1"

import argparse  # noqa: E402
import math  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
from _common import forty_x_phantom  # noqa: E402

TILE, MODEL_PX, SLIDE_PX, OVERLAP = 672, 0.4, 0.25, 0.25


def reference_read(slide, pixel_size_um: float, y: int, x: int, h: int, w: int) -> np.ndarray:
    """The reader before issue 7: Gaussian pre-filter and linear interpolation, in float."""
    from scipy import ndimage

    factor = pixel_size_um / slide.pixel_size_um
    candidates = [i for i, d in enumerate(slide.level_downsamples) if d <= factor * (1 + 1e-6)]
    level = max(candidates, key=lambda i: slide.level_downsamples[i])
    ratio = factor / slide.level_downsamples[level]
    sy0, sx0 = math.floor(y * ratio) - 2, math.floor(x * ratio) - 2
    sh = math.ceil((y + h) * ratio) + 2 - sy0
    sw = math.ceil((x + w) * ratio) + 2 - sx0
    src = slide.read_region(sy0, sx0, sh, sw, level).astype(np.float32)
    if ratio > 1:
        sigma = (ratio - 1) / 2
        src = ndimage.gaussian_filter(src, sigma=(sigma, sigma, 0), mode="nearest")
    cy = (np.arange(h) + y + 0.5) * ratio - 0.5 - sy0
    cx = (np.arange(w) + x + 0.5) * ratio - 0.5 - sx0
    grid = np.meshgrid(cy, cx, indexing="ij")
    out = np.stack(
        [ndimage.map_coordinates(src[..., c], grid, order=1, mode="nearest") for c in range(3)],
        axis=-1,
    )
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--side", type=int, default=8192)
    parser.add_argument("--tiles", type=int, default=48, help="tiles timed per method")
    args = parser.parse_args()

    import cv2
    import torch

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    from training.inference.source import TileSource
    from training.inference.tiling import tile_starts
    from training.slides import open_slide
    from training.stain import StainNormalizer

    path = forty_x_phantom(args.side)
    stride = round(TILE * (1 - OVERLAP))
    side = math.ceil(args.side * SLIDE_PX / MODEL_PX)
    starts = tile_starts(side, TILE, stride)
    order = [(y, x) for y in starts for x in starts][: args.tiles]
    print(f"slide {args.side}x{args.side} at {SLIDE_PX} um/px; {TILE} px tiles at {MODEL_PX} um/px")

    with open_slide(path) as slide:
        start = time.perf_counter()
        before = [reference_read(slide, MODEL_PX, y, x, TILE, TILE) for y, x in order]
        ms_before = (time.perf_counter() - start) / len(order) * 1000
    with open_slide(path) as slide:  # a fresh slide: an empty tile cache
        source = TileSource(slide, MODEL_PX, TILE, workers=0)
        start = time.perf_counter()
        after = [source.read(y, [x])[0] for y, x in order]
        ms_single = (time.perf_counter() - start) / len(order) * 1000
    with open_slide(path) as slide:
        source = TileSource(slide, MODEL_PX, TILE, workers=0)
        batches: list[tuple[int, list[int]]] = []
        for y, x in order:  # the engine's batches: up to 4 neighbours in a row
            if batches and batches[-1][0] == y and len(batches[-1][1]) < 4:
                batches[-1][1].append(x)
            else:
                batches.append((y, [x]))
        start = time.perf_counter()
        count = sum(len(source.read(y, xs)) for y, xs in batches)
        ms_batch = (time.perf_counter() - start) / count * 1000
    with open_slide(path) as slide:  # the same spans' level-0 pixels alone: the decoding
        ratio = MODEL_PX / SLIDE_PX
        start = time.perf_counter()
        for y, xs in batches:
            x0, x1 = math.floor(xs[0] * ratio), math.ceil((xs[-1] + TILE) * ratio) + 1
            y0, y1 = math.floor(y * ratio), math.ceil((y + TILE) * ratio) + 1
            slide.read_region(y0, x0, y1 - y0, x1 - x0)
        ms_decode = (time.perf_counter() - start) / count * 1000
    difference = np.mean(
        [np.abs(a.astype(float) - b).mean() for a, b in zip(after, before, strict=True)]
    )
    print(f"before (reference reader):        {ms_before:6.1f} ms per tile")
    print(
        f"after, tile by tile:              {ms_single:6.1f} ms per tile "
        f"({ms_before / ms_single:.1f}x faster)"
    )
    print(
        f"after, batches of 4 in a row:     {ms_batch:6.1f} ms per tile "
        f"({ms_before / ms_batch:.1f}x faster)"
    )
    print(f"  of which reading and decoding level 0: {ms_decode:6.1f} ms per tile")
    print(
        f"mean absolute difference to the reference: {difference:.2f} of 255 "
        f"({difference / 255:.2%})"
    )

    for workers in (1, 2):
        with open_slide(path) as slide:
            source = TileSource(slide, MODEL_PX, TILE, workers=workers)
            requests = [(y, y, starts[j : j + 4]) for y in starts for j in range(0, len(starts), 4)]
            start = time.perf_counter()
            tiles = sum(len(batch) for _, _, batch in source.batches(requests))
            seconds = time.perf_counter() - start
        print(
            f"prefetching source, {workers} worker(s): {tiles} tiles in {seconds:.1f} s, "
            f"{tiles / seconds:.1f} tiles/s"
        )

    with open_slide(path) as slide:
        tile = TileSource(slide, MODEL_PX, TILE, workers=0).read(starts[1], [starts[1]])[0]
    real = "../shared/data/he-reference/target_image.png"  # the real H&E patch, when present
    reference = real if os.path.exists(real) else tile
    for method in ("macenko", "vahadane", "reinhard"):
        normaliser = StainNormalizer(method).fit(reference).for_slide(tile)
        normaliser.transform(tile)
        start = time.perf_counter()
        for _ in range(20):
            normaliser.transform(tile)
        ms = (time.perf_counter() - start) / 20 * 1000
        print(f"stain transform ({method}, slide matrix fixed): {ms:.1f} ms per {TILE} px tile")


if __name__ == "__main__":
    main()
