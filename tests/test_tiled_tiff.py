"""Tiled TIFF levels read straight from the file give exactly zarr's pixels, on any thread."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tifffile

from training.slides import SlideError, open_slide, write_pyramid
from training.slides.tiled_tiff import TiledLevel

RNG = np.random.default_rng(0)


def _image(shape: tuple[int, ...], dtype: type = np.uint8) -> np.ndarray:
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    planes = [yy * 3 + xx, xx * 7 - yy, (yy // 5) * (xx // 3)]
    image = np.stack(planes[: shape[2] if len(shape) == 3 else 1], axis=-1)
    image = image % (256 if dtype == np.uint8 else 65536)
    return image.astype(dtype) if len(shape) == 3 else image[..., 0].astype(dtype)


def _regions(shape: tuple[int, ...], count: int = 12) -> list[tuple[int, int, int, int]]:
    height, width = shape[:2]
    regions = [(0, height, 0, width), (height - 3, height, width - 5, width), (7, 8, 9, 10)]
    for _ in range(count):
        y0, x0 = int(RNG.integers(0, height)), int(RNG.integers(0, width))
        regions.append(
            (y0, int(RNG.integers(y0 + 1, height + 1)), x0, int(RNG.integers(x0 + 1, width + 1)))
        )
    return regions


def _assert_same_as_zarr(path, expected_level0: np.ndarray | None = None) -> None:
    with open_slide(path) as slide:
        assert all(isinstance(source, TiledLevel) for source in slide._sources)
        for level in slide._sources:
            for y0, y1, x0, x1 in _regions(level.shape):
                direct = level[y0:y1, x0:x1]
                assert direct.dtype == level.dtype
                np.testing.assert_array_equal(direct, np.asarray(level.fallback[y0:y1, x0:x1]))
        if expected_level0 is not None:
            np.testing.assert_array_equal(slide._sources[0][:, :], expected_level0)


def test_pyramid_levels_match_zarr_and_the_image(tmp_path):
    # zlib with a predictor, edge tiles cut by the image border, four levels
    image = _image((700, 1000, 3))
    path = write_pyramid(tmp_path / "pyramid.ome.tiff", image, 0.5, tile=256)
    _assert_same_as_zarr(path, image)


def test_jpeg_and_16_bit_tiles_match_zarr(tmp_path):
    rgb = _image((300, 520, 3))
    jpeg = tmp_path / "jpeg.tiff"
    tifffile.imwrite(jpeg, rgb, tile=(128, 128), compression="jpeg", photometric="rgb")
    _assert_same_as_zarr(jpeg)
    grey = _image((333, 444), np.uint16)
    path = tmp_path / "grey16.tiff"
    tifffile.imwrite(path, grey, tile=(64, 128), compression="zlib")
    _assert_same_as_zarr(path, grey)
    with open_slide(path) as slide:
        np.testing.assert_array_equal(slide.read_region(10, 20, 30, 40)[..., 0], grey[10:40, 20:60])


def test_other_layouts_stay_with_zarr(tmp_path):
    image = _image((200, 300, 3))
    striped = tmp_path / "striped.tiff"
    tifffile.imwrite(striped, image, compression="zlib", rowsperstrip=16)
    planar = tmp_path / "planar.tiff"
    tifffile.imwrite(
        planar,
        np.moveaxis(image, -1, 0),
        tile=(64, 64),
        planarconfig="separate",
        photometric="rgb",
    )
    for path in (striped, planar):
        with open_slide(path) as slide:
            assert not any(isinstance(source, TiledLevel) for source in slide._sources)
            np.testing.assert_array_equal(slide.read_region(5, 6, 70, 80), image[5:75, 6:86])


def test_a_tile_the_file_lacks_reads_as_zero_like_zarr(tmp_path):
    image = _image((256, 384, 3)) | 1  # no zero pixels of its own
    path = tmp_path / "sparse.tiff"
    tifffile.imwrite(path, image, tile=(128, 128), compression="zlib")
    with tifffile.TiffFile(path, mode="r+b") as tif:
        counts = list(tif.pages[0].databytecounts)
        counts[4] = 0  # the second row's middle tile
        tif.pages[0].tags["TileByteCounts"].overwrite(counts)
    with open_slide(path) as slide:
        level = slide._sources[0]
        assert isinstance(level, TiledLevel)
        region = slide.read_region(0, 0, 256, 384)
        np.testing.assert_array_equal(region, np.asarray(level.fallback[:, :]))
    assert (region[128:, 128:256] == 0).all()
    np.testing.assert_array_equal(region[:128], image[:128])


def test_a_corrupt_tile_fails_loudly(tmp_path):
    image = _image((256, 256, 3))
    path = tmp_path / "corrupt.tiff"
    tifffile.imwrite(path, image, tile=(128, 128), compression="zlib")
    with tifffile.TiffFile(path) as tif:
        offset = tif.pages[0].dataoffsets[3]
    with open(path, "r+b") as handle:
        handle.seek(offset)
        handle.write(b"\x00garbage, not a zlib stream\x00" * 4)
    with open_slide(path) as slide:
        np.testing.assert_array_equal(slide.read_region(0, 0, 128, 128), image[:128, :128])
        with pytest.raises(SlideError, match="cannot read level 0"):
            slide.read_region(128, 128, 64, 64)


def test_threads_and_the_lazy_view_read_the_same_pixels(tmp_path):
    image = _image((1024, 1536, 3))
    path = write_pyramid(tmp_path / "big.ome.tiff", image, 0.25, tile=128)
    boxes = [(int(RNG.integers(0, 900)), int(RNG.integers(0, 1400)), 100, 120) for _ in range(64)]
    with open_slide(path) as slide:
        lazy = slide.levels[0]

        def read(box: tuple[int, int, int, int]) -> tuple[np.ndarray, np.ndarray]:
            y, x, h, w = box
            return slide.read_region(y, x, h, w), np.asarray(lazy[y : y + h, x : x + w])

        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(read, boxes))
        for (y, x, h, w), (direct, through_dask) in zip(boxes, results, strict=True):
            np.testing.assert_array_equal(direct, image[y : y + h, x : x + w])
            np.testing.assert_array_equal(through_dask, image[y : y + h, x : x + w])
        reader = slide._sources[0]._file
        assert reader._file is not None
    assert reader._file is None  # closing the slide closes the extra file
