from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from training.slides import SlideError, open_slide, write_pyramid


@pytest.fixture(scope="module")
def gradient() -> np.ndarray:
    yy, xx = np.mgrid[0:600, 0:900]
    return np.stack([yy % 256, xx % 256, (yy + xx) // 6 % 256], axis=-1).astype(np.uint8)


@pytest.fixture(scope="module")
def pyramid(tmp_path_factory, gradient):
    path = tmp_path_factory.mktemp("slides") / "pyramid.tiff"
    write_pyramid(path, gradient, 0.25, tile=128)
    return path


def test_pyramid_round_trip(pyramid, gradient):
    with open_slide(pyramid) as slide:
        assert slide.shape == (600, 900, 3)
        assert slide.pixel_size_um == pytest.approx(0.25)
        assert slide.metadata["format"] == "ome"
        assert [lvl.shape for lvl in slide.levels] == [
            (600, 900, 3),
            (300, 450, 3),
            (150, 225, 3),
            (75, 113, 3),
        ]
        assert slide.level_downsamples[:3] == [1.0, 2.0, 4.0]
        np.testing.assert_array_equal(slide.read_region(17, 33, 100, 140), gradient[17:117, 33:173])
        np.testing.assert_array_equal(np.asarray(slide.levels[0][5:9, 7:11]), gradient[5:9, 7:11])
        half = gradient.reshape(300, 2, 450, 2, 3).mean(axis=(1, 3))
        np.testing.assert_allclose(slide.read_region(0, 0, 300, 450, level=1), half, atol=0.51)


def test_region_outside_the_image_is_padded(pyramid, gradient):
    with open_slide(pyramid) as slide:
        region = slide.read_region(-10, 880, 30, 40, fill=7)
    assert region.shape == (30, 40, 3)
    np.testing.assert_array_equal(region[10:, :20], gradient[0:20, 880:900])
    assert (region[:10] == 7).all() and (region[:, 20:] == 7).all()


def test_read_at_a_pixel_size(pyramid, gradient):
    with open_slide(pyramid) as slide:
        assert slide.best_level(1.0) == 0 and slide.best_level(2.0) == 1
        assert slide.best_level(3.9) == 1 and slide.best_level(100) == 3
        # 1.0 um/px is 4x level 0: exactly the 4x4 block means
        region = slide.read_region_at(1.0, 10, 20, 30, 40)
        expected = gradient[40:160, 80:240].astype(float).reshape(30, 4, 40, 4, 3).mean(axis=(1, 3))
        assert region.shape == (30, 40, 3)
        assert np.abs(region.astype(float) - expected).max() <= 2.5
        # 0.3 um/px is a non-integer factor; a smooth channel is interpolated closely
        odd = slide.read_region_at(0.3, 100, 100, 50, 60)
        assert odd.shape == (50, 60, 3)
        centres_y = (np.arange(50) + 100 + 0.5) * 1.2 - 0.5
        assert np.abs(odd[:, 0, 0].astype(float) - centres_y % 256).max() < 1.5


def test_pixel_size_needed_for_physical_reads(tmp_path):
    path = tmp_path / "plain.tif"
    tifffile.imwrite(path, np.zeros((64, 64, 3), np.uint8), photometric="rgb")
    with open_slide(path) as slide:
        assert slide.pixel_size_um is None
        with pytest.raises(SlideError, match="no pixel size in its metadata"):
            slide.read_region_at(1.0, 0, 0, 8, 8)
    with open_slide(path, pixel_size_um=0.5) as slide:
        assert slide.read_region_at(1.0, 0, 0, 8, 8).shape == (8, 8, 3)


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"description": "Aperio Image Library v12\n1000x1000 |AppMag = 20|MPP = 0.4990|"}, 0.499),
        ({"resolution": (1e4 / 0.5, 1e4 / 0.5), "resolutionunit": "CENTIMETER"}, 0.5),
        ({"resolution": (25400 / 0.25, 25400 / 0.25), "resolutionunit": "INCH"}, 0.25),
        ({"resolution": (72, 72), "resolutionunit": "INCH"}, None),  # a screen's dpi, not a scan's
    ],
)
def test_pixel_size_from_tiff_metadata(tmp_path, kwargs, expected):
    path = tmp_path / "meta.tif"
    tifffile.imwrite(
        path, np.zeros((32, 32, 3), np.uint8), photometric="rgb", tile=(16, 16), **kwargs
    )
    with open_slide(path) as slide:
        assert slide.pixel_size_um == (pytest.approx(expected) if expected else None)


def test_pixel_size_from_imagej_and_png(tmp_path):
    path = tmp_path / "ij.tif"
    tifffile.imwrite(
        path,
        np.zeros((32, 32), np.uint8),
        imagej=True,
        resolution=(1 / 0.65, 1 / 0.65),
        metadata={"unit": "micron"},
    )
    with open_slide(path) as slide:
        assert slide.pixel_size_um == pytest.approx(0.65)
        assert slide.shape == (32, 32, 1)
    png = tmp_path / "scan.png"
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(png, dpi=(50800, 50800))
    with open_slide(png) as slide:
        assert slide.pixel_size_um == pytest.approx(0.5, rel=1e-3)
        assert slide.shape == (20, 30, 3)


def test_planar_and_svs_style_pyramids(tmp_path, gradient):
    planar = tmp_path / "planar.tif"
    tifffile.imwrite(
        planar, np.moveaxis(gradient, -1, 0), photometric="rgb", planarconfig="separate"
    )
    with open_slide(planar) as slide:
        np.testing.assert_array_equal(slide.read_region(3, 4, 20, 30), gradient[3:23, 4:34])
        assert slide.levels[0].shape == (600, 900, 3)
    svs = tmp_path / "slide.svs"
    with tifffile.TiffWriter(svs) as tif:  # Aperio layout: pyramid levels as top-level pages
        tif.write(
            gradient,
            tile=(128, 128),
            photometric="rgb",
            description="Aperio Image Library v12\n|MPP = 0.2520|",
        )
        tif.write(
            gradient[::4, ::4].copy(),
            tile=(64, 64),
            photometric="rgb",
            description="Aperio Image Library v12\nthumbnail",
        )
        tif.write(
            gradient[::2, ::2].copy(),
            tile=(128, 128),
            photometric="rgb",
            description="Aperio Image Library v12\nlevel",
            subfiletype=0,
        )
    with open_slide(svs) as slide:
        assert slide.pixel_size_um == pytest.approx(0.252)
        assert slide.shape == (600, 900, 3)


def test_scanner_formats_open_their_main_image(tmp_path, gradient):
    # Leica SCN lists the macro photo before the slide; the slide is the largest series.
    scn_xml = (
        '<?xml version="1.0"?><scn xmlns="http://www.leica-microsystems.com/scn/2010/10/01">'
        '<collection name="c"><image name="macro"><pixels sizeX="225" sizeY="150">'
        '<dimension sizeX="225" sizeY="150" r="0" ifd="0"/></pixels></image>'
        '<image name="main"><pixels sizeX="900" sizeY="600">'
        '<dimension sizeX="900" sizeY="600" r="0" ifd="1"/>'
        '<dimension sizeX="450" sizeY="300" r="1" ifd="2"/></pixels></image></collection></scn>'
    )
    scn = tmp_path / "slide.scn"
    with tifffile.TiffWriter(scn) as tif:
        tif.write(gradient[::4, ::4].copy(), photometric="rgb", description=scn_xml, metadata=None)
        tif.write(
            gradient,
            tile=(128, 128),
            photometric="rgb",
            metadata=None,
            resolution=(1e4 / 0.5, 1e4 / 0.5),
            resolutionunit="CENTIMETER",
        )
        tif.write(gradient[::2, ::2].copy(), tile=(128, 128), photometric="rgb", metadata=None)
    qptiff = tmp_path / "slide.qptiff"
    with tifffile.TiffWriter(qptiff) as tif:
        tif.write(gradient, tile=(128, 128), photometric="rgb", software="PerkinElmer-QPI")
        tif.write(gradient[::4, ::4].copy(), photometric="rgb", metadata=None)
    with open_slide(scn) as slide:
        assert slide.metadata["format"] == "scn" and len(slide.levels) == 2
        assert slide.shape == (600, 900, 3) and slide.pixel_size_um == pytest.approx(0.5)
        np.testing.assert_array_equal(slide.read_region(3, 4, 20, 30), gradient[3:23, 4:34])
    with open_slide(qptiff) as slide:
        assert slide.metadata["format"] == "qpi" and slide.shape == (600, 900, 3)
        np.testing.assert_array_equal(slide.read_region(3, 4, 20, 30), gradient[3:23, 4:34])


def test_jpeg_and_png_rgba(tmp_path, gradient):
    jpg = tmp_path / "patch.jpg"
    Image.fromarray(gradient).save(jpg, quality=95)
    with open_slide(jpg) as slide:
        assert slide.shape == (600, 900, 3)
        assert np.abs(slide.read_region(0, 0, 50, 50).astype(int) - gradient[:50, :50]).mean() < 6
    rgba = tmp_path / "alpha.png"
    Image.fromarray(np.zeros((16, 16, 4), np.uint8)).save(rgba)
    with open_slide(rgba) as slide:
        assert slide.shape == (16, 16, 3)


def test_real_he_reference_opens(shared_data):
    with open_slide(shared_data / "he-reference" / "target_image.png") as slide:
        assert slide.shape == (1000, 1000, 3)
        assert slide.read_region(0, 0, 100, 100).mean() < 230  # stained tissue, not glass


def test_missing_empty_and_non_image_files(tmp_path):
    with pytest.raises(SlideError, match="no such file"):
        open_slide(tmp_path / "absent.tiff")
    (tmp_path / "empty.tiff").write_bytes(b"")
    with pytest.raises(SlideError, match=r"empty\.tiff is empty \(0 bytes\)"):
        open_slide(tmp_path / "empty.tiff")
    (tmp_path / "notes.tiff").write_text("id,organ\n1,kidney\n")
    with pytest.raises(SlideError, match=r"notes\.tiff is not a TIFF, PNG, JPEG or DICOM image"):
        open_slide(tmp_path / "notes.tiff")


def test_corrupt_header(tmp_path):
    path = tmp_path / "corrupt.tif"
    path.write_bytes(b"II*\x00" + bytes([0xFF]) * 4 + b"\x00" * 64)
    with pytest.raises(SlideError, match=r"corrupt\.tif is not a readable TIFF"):
        open_slide(path)


def test_truncated_tiff_is_caught_at_open(tmp_path, pyramid):
    data = pyramid.read_bytes()
    path = tmp_path / "truncated.tiff"
    # Keep the header and the IFD but cut the pixel data of level 0 short.
    with tifffile.TiffFile(pyramid) as tif:
        page = tif.pages.first
        cut = int(page.dataoffsets[len(page.dataoffsets) // 2])
        ifd_end = tif.pages.first.offset + 1024
    path.write_bytes(data[: max(cut, ifd_end)])
    with pytest.raises(
        SlideError, match=r"truncated\.tiff (is truncated|is a damaged TIFF|is not a readable)"
    ):
        open_slide(path)


def test_truncated_png(tmp_path, gradient):
    png = tmp_path / "cut.png"
    Image.fromarray(gradient).save(png)
    png.write_bytes(png.read_bytes()[:3000])
    with pytest.raises(SlideError, match=r"cut\.png cannot be decoded"):
        open_slide(png)


@pytest.mark.parametrize("suffix", [".tif", ".png"])
def test_one_pixel_image(tmp_path, suffix):
    path = tmp_path / f"dot{suffix}"
    if suffix == ".tif":
        tifffile.imwrite(path, np.zeros((1, 1, 3), np.uint8), photometric="rgb")
    else:
        Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(path)
    with pytest.raises(SlideError, match=r"is 1x1 pixels; a slide must be at least 8x8"):
        open_slide(path)


def test_write_pyramid_is_atomic_and_checks_input(tmp_path, monkeypatch):
    path = tmp_path / "out.tiff"
    with pytest.raises(ValueError, match=r"\(H, W\) or \(H, W, C\)"):
        write_pyramid(path, np.zeros((2, 2, 2, 2), np.uint8), 0.4)
    import tifffile as tf

    def explode(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(tf.TiffWriter, "write", explode)
    with pytest.raises(RuntimeError, match="boom"):
        write_pyramid(path, np.zeros((64, 64, 3), np.uint8), 0.4)
    assert list(tmp_path.iterdir()) == []


def test_write_pyramid_from_a_memmap_source(tmp_path):
    source = np.lib.format.open_memmap(
        tmp_path / "src.npy", mode="w+", dtype=np.uint8, shape=(700, 500, 3)
    )
    source[:] = 99
    source[100:200, 50:60] = 3
    write_pyramid(tmp_path / "mm.tiff", source, None)
    with open_slide(tmp_path / "mm.tiff") as slide:
        assert slide.pixel_size_um is None
        np.testing.assert_array_equal(slide.read_region(90, 40, 120, 30), source[90:210, 40:70])


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.float32])
def test_block_mean_matches_the_plain_mean(dtype):
    from training.slides.resample import block_mean

    rng = np.random.default_rng(0)
    info = np.iinfo(dtype) if np.issubdtype(dtype, np.integer) else None
    low, high = (info.min, info.max) if info else (-1.0, 1.0)
    block = rng.uniform(low, high, (12, 18, 3)).astype(dtype)
    expected = block.astype(np.float64).reshape(4, 3, 6, 3, 3).mean(axis=(1, 3))
    np.testing.assert_allclose(block_mean(block, 3), expected, rtol=1e-6)


def area_reference(image: np.ndarray, ratio: float, y: int, x: int, h: int, w: int) -> np.ndarray:
    """The exact mean of ``image`` (pixels as constant squares) over each output square."""

    def weights(start: int, n: int, length: int) -> np.ndarray:
        matrix = np.zeros((n, length))
        for i in range(n):
            low, high = (start + i) * ratio, (start + i + 1) * ratio
            for k in range(int(np.floor(low)), int(np.ceil(high))):
                matrix[i, k] = max(0.0, min(high, k + 1) - max(low, k)) / ratio
        return matrix

    return np.einsum(
        "iy,yxc,jx->ijc",
        weights(y, h, image.shape[0]),
        image.astype(float),
        weights(x, w, image.shape[1]),
    )


class CountingLevel:
    """A numpy-backed level that records whether it was read."""

    def __init__(self, array: np.ndarray) -> None:
        self.array, self.shape, self.dtype, self.reads = array, array.shape, array.dtype, 0

    def __getitem__(self, index):
        self.reads += 1
        return self.array[index]


@pytest.mark.parametrize(
    ("pixel_size", "region"),
    [
        (0.4, (13, 7, 50, 61)),
        (0.625, (3, 11, 40, 30)),
        (0.3, (17, 3, 40, 40)),
        (0.9, (0, 0, 20, 25)),
    ],
)
def test_non_integer_factors_are_exact_area_means(pixel_size, region):
    from training.slides import Slide

    image = np.random.default_rng(0).integers(0, 256, (300, 280, 3), dtype=np.uint8)
    slide = Slide.from_array(image, 0.25)
    got = slide.read_region_at(pixel_size, *region)
    expected = area_reference(image, pixel_size / 0.25, *region)
    assert got.dtype == np.uint8
    assert np.abs(got - expected).max() <= 0.5 + 1e-6  # only the rounding to integers


def test_regions_read_apart_stitch_exactly_and_strips_change_nothing(monkeypatch):
    from training.slides import Slide
    from training.slides import slide as slides_module

    image = np.random.default_rng(1).integers(0, 256, (500, 400, 3), dtype=np.uint8)
    slide = Slide.from_array(image, 0.25)
    whole = slide.read_region_at(0.4, 5, 9, 200, 150)
    left = slide.read_region_at(0.4, 5, 9, 200, 70)
    right = slide.read_region_at(0.4, 5, 79, 200, 80)
    np.testing.assert_array_equal(np.concatenate([left, right], axis=1), whole)
    monkeypatch.setattr(slides_module, "STRIP_PIXELS", 3000)  # a strip of a few rows
    np.testing.assert_array_equal(slide.read_region_at(0.4, 5, 9, 200, 150), whole)
    np.testing.assert_array_equal(
        slide.read_region_at(1.0, 0, 0, 125, 100),
        slides_module.Slide.from_array(image, 0.25).read_region_at(1.0, 0, 0, 125, 100),
    )


def test_upsampling_is_bilinear_at_pixel_centres():
    from scipy import ndimage

    from training.slides import Slide

    image = np.random.default_rng(2).integers(0, 256, (100, 90, 3), dtype=np.uint8)
    got = Slide.from_array(image, 0.5).read_region_at(0.4, 7, 11, 40, 50).astype(float)
    rows = (np.arange(40) + 7 + 0.5) * 0.8 - 0.5
    cols = (np.arange(50) + 11 + 0.5) * 0.8 - 0.5
    grid = np.meshgrid(rows, cols, indexing="ij")
    expected = np.stack(
        [ndimage.map_coordinates(image[..., c].astype(float), grid, order=1) for c in range(3)],
        axis=-1,
    )
    assert np.abs(got - expected).max() <= 0.5 + 1e-6


def test_level_selection_tolerates_floored_level_sizes():
    from training.slides import Slide

    rng = np.random.default_rng(3)
    full = rng.integers(0, 256, (1003, 1001, 3), dtype=np.uint8)
    quarter = full[:1000, :1000].reshape(250, 4, 250, 4, 3).mean(axis=(1, 3)).astype(np.uint8)
    levels = [CountingLevel(full), CountingLevel(quarter)]
    slide = Slide(Path("floored.tiff"), levels, "YXS", 0.25, {})
    assert slide.level_downsamples[1] == pytest.approx(4.008, abs=1e-3)
    assert slide.best_level(4.0) == 1 and slide.best_level(3.9) == 0
    # a 4x read decodes the 4x level, not level 0 (16x the data), and reads it as it is
    region = slide.read_region_at(1.0, 10, 20, 64, 64)
    assert levels[0].reads == 0 and levels[1].reads == 1
    np.testing.assert_array_equal(region, quarter[10:74, 20:84])
    # a near-1 ratio (level 0 of a 0.25002 um/px request) is read directly, no resampling
    direct = slide.read_region_at(0.25002, 100, 200, 64, 64)
    np.testing.assert_array_equal(direct, full[100:164, 200:264])


def test_sixteen_bit_regions_are_padded_with_white(tmp_path):
    image = np.full((64, 64, 3), 30000, np.uint16)
    path = tmp_path / "deep.tiff"
    write_pyramid(path, image, 0.5, tile=32)
    with open_slide(path) as slide:
        region = slide.read_region(-8, -8, 16, 16)
        scaled = slide.read_region_at(1.0, -4, -4, 8, 8)
    assert (region[:8] == 65535).all() and (region[8:, 8:] == 30000).all()
    assert (scaled[:4] == 65535).all() and (scaled[4:, 4:] == 30000).all()


def test_label_pyramids_keep_only_level_zero_ids(tmp_path):
    labels = np.zeros((300, 260), np.uint16)
    labels[:, :131] = 7
    labels[:, 131:] = 9  # touching objects: a 2x2 mean across their border would invent 8
    labels[101:203, 51:153] = 12
    path = tmp_path / "labels.tiff"
    write_pyramid(path, labels, 0.4, tile=32, labels=True)
    with open_slide(path) as slide:
        assert len(slide.levels) > 3
        for level in slide.levels[1:]:
            values = set(np.unique(np.asarray(level)).tolist())
            assert values <= {7, 9, 12}, values
        np.testing.assert_array_equal(np.asarray(slide.levels[1])[..., 0], labels[::2, ::2])
    with pytest.raises(ValueError, match="label image must be 2-D integers"):
        write_pyramid(tmp_path / "rgb.tiff", np.zeros((64, 64, 3), np.uint8), 0.4, labels=True)


def test_decoded_tiles_are_cached_within_a_budget(pyramid, gradient):
    with open_slide(pyramid) as slide:
        first = slide.read_region(17, 33, 300, 400)
        cache = slide._tile_cache
        assert cache._bytes > 0 and cache._bytes <= cache.budget
        np.testing.assert_array_equal(slide.read_region(17, 33, 300, 400), first)
        np.testing.assert_array_equal(first, gradient[17:317, 33:433])
        cache.budget = 128 * 128 * 3 * 2  # two tiles
        cache.put((9, "extra/a"), b"x" * (128 * 128 * 3))
        assert cache._bytes <= cache.budget
        np.testing.assert_array_equal(
            slide.read_region(200, 500, 300, 400), gradient[200:500, 500:900]
        )
        slide.clear_cache()
        assert cache._bytes == 0 and not cache._items


def test_a_thumbnail_is_the_area_mean_of_the_whole_slide():
    from training.slides import Slide

    image = np.random.default_rng(5).integers(0, 256, (1000, 600, 3), dtype=np.uint8)
    thumbnail = Slide.from_array(image, None).thumbnail(100)  # no pixel size needed
    means = image.reshape(100, 10, 60, 10, 3).mean(axis=(1, 3))
    assert thumbnail.shape == (100, 60, 3) and thumbnail.dtype == np.uint8
    assert np.abs(thumbnail - means).max() <= 0.5 + 1e-9
    assert Slide.from_array(image, 0.5).thumbnail(2000).shape == image.shape  # never enlarged
