from __future__ import annotations

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
    with pytest.raises(SlideError, match=r"notes\.tiff is not a TIFF, PNG or JPEG image"):
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
    from training.slides import _block_mean

    rng = np.random.default_rng(0)
    info = np.iinfo(dtype) if np.issubdtype(dtype, np.integer) else None
    low, high = (info.min, info.max) if info else (-1.0, 1.0)
    block = rng.uniform(low, high, (12, 18, 3)).astype(dtype)
    expected = block.astype(np.float64).reshape(4, 3, 6, 3, 3).mean(axis=(1, 3))
    np.testing.assert_allclose(_block_mean(block, 3), expected, rtol=1e-6)
