"""OpenSlide behind the Slide interface, the routing of Ventana BIF to it, and the one line a
file no reader reads gets. (No real MRXS, VMS, BIF or SCN slide is at hand: ../shared has none;
the scanner files here are made with tifffile in the layouts OpenSlide documents.)"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

pytest.importorskip("openslide")

from training.slides import REFUSED_SUFFIXES, SlideError, open_slide, write_pyramid
from training.slides.openslide_reader import square_pixel_size
from training.slides.slide import rgb_on_white

XMP = 700  # the TIFF tag of XMP packets, where Ventana writes its iScan metadata
ISCAN = (
    '<?xml version="1.0" encoding="utf-8"?><Metadata>'
    '<iScan Z-layers="1" Magnification="20" ScanRes="0.25"></iScan></Metadata>'
)


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return np.random.default_rng(3).integers(0, 256, (512, 512, 3), dtype=np.uint8)


def aperio_svs(path: Path, image: np.ndarray) -> Path:
    """An SVS-like file: tiled RGB levels with Aperio descriptions (MPP = 0.5) and, second as
    in Aperio's files, a stripped thumbnail."""
    head = "Aperio Image Library v12.0.0\n"
    with tifffile.TiffWriter(path) as tif:
        for index, (level, mpp) in enumerate(((image, 0.5), (image[::2, ::2].copy(), 1.0))):
            if index == 1:
                thumbnail = image[::8, ::8].copy()
                tif.write(thumbnail, photometric="rgb", metadata=None, description=f"{head}64x64")
            h, w = level.shape[:2]
            tif.write(
                level,
                tile=(128, 128),
                photometric="rgb",
                compression="zlib",
                metadata=None,
                description=f"{head}{w}x{h} (128x128) zlib|AppMag = 20|MPP = {mpp}",
            )
    return path


def ventana_bif(path: Path, image: np.ndarray, broken: bool = False) -> Path:
    """A BIF in the layout OpenSlide reads: iScan XMP on the first directory (a label), levels
    described ``level=N mag=M``, level 0's XMP naming its 2x2 tiles and their joints (no
    overlap here, so the stitched image is the tiles as written). ``broken``: the levels'
    magnifications left out, a Ventana file OpenSlide refuses."""
    joints = (
        '<EncodeInfo Ver="2"><SlideStitchInfo><ImageInfo AOIScanned="1" Width="256" '
        'Height="256" NumRows="2" NumCols="2" Pos-X="0" Pos-Y="0">'
        '<TileJointInfo Tile1="1" Tile2="2" Direction="RIGHT" OverlapX="0" OverlapY="0" '
        'Confidence="1"/><TileJointInfo Tile1="1" Tile2="4" Direction="UP" OverlapX="0" '
        'OverlapY="0" Confidence="1"/></ImageInfo></SlideStitchInfo>'
        '<AoiOrigin><AOI0 OriginX="0" OriginY="0"/></AoiOrigin></EncodeInfo>'
    )
    options = dict(photometric="rgb", metadata=None)
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        tif.write(
            image[::8, ::8].copy(),
            description="Label Image",
            extratags=[(XMP, 1, len(ISCAN), ISCAN.encode(), True)],
            **options,
        )
        mag = ("", "") if broken else (" mag=20", " mag=10")
        tif.write(
            image,
            tile=(256, 256),
            compression="zlib",
            description=f"level=0{mag[0]} quality=95",
            extratags=[(XMP, 1, len(joints), joints.encode(), True)],
            **options,
        )
        tif.write(
            image[::2, ::2].copy(),
            tile=(256, 256),
            compression="zlib",
            description=f"level=1{mag[1]} quality=95",
            **options,
        )
    return path


def test_an_svs_read_through_openslide_equals_tifffiles_reading(tmp_path, image):
    path = aperio_svs(tmp_path / "scan.svs", image)
    with open_slide(path) as by_tifffile, open_slide(path, reader="openslide") as by_openslide:
        assert by_tifffile.metadata.get("reader") is None  # the default reader of SVS
        assert by_openslide.metadata["reader"] == "openslide"
        assert by_openslide.metadata["format"] == "aperio"
        assert by_openslide.pixel_size_um == by_tifffile.pixel_size_um == 0.5
        assert by_openslide.shapes == by_tifffile.shapes == [(512, 512, 3), (256, 256, 3)]
        for level in (0, 1):
            np.testing.assert_array_equal(
                np.asarray(by_openslide.levels[level]), np.asarray(by_tifffile.levels[level])
            )
        np.testing.assert_array_equal(
            by_openslide.read_region(200, -10, 100, 90, level=1),  # white past the left edge
            by_tifffile.read_region(200, -10, 100, 90, level=1),
        )
        assert by_openslide.thumbnail(100).shape == (100, 100, 3)
        np.testing.assert_array_equal(by_openslide.thumbnail(100), by_tifffile.thumbnail(100))
        np.testing.assert_array_equal(
            by_openslide.read_region_at(0.7, 11, 5, 120, 100),
            by_tifffile.read_region_at(0.7, 11, 5, 120, 100),
        )


def test_a_generic_tiled_tiff_read_through_openslide(tmp_path, image):
    path = write_pyramid(tmp_path / "plain.tiff", image, 0.4, tile=128)
    with open_slide(path, reader="openslide") as slide:
        assert slide.metadata["format"] == "generic-tiff"
        assert slide.pixel_size_um == pytest.approx(0.4)  # from the resolution tags
        np.testing.assert_array_equal(slide.read_region(0, 0, 512, 512), image)


@pytest.mark.parametrize("name", ["scan.bif", "scan.tif"])
def test_a_ventana_slide_goes_to_openslide_whatever_its_name(tmp_path, image, name):
    path = ventana_bif(tmp_path / name, image)
    with open_slide(path) as slide:
        assert slide.metadata == {"format": "ventana", "reader": "openslide", "axes": "YXS"}
        assert slide.pixel_size_um == 0.25  # iScan's ScanRes
        assert slide.shapes == [(512, 512, 3), (256, 256, 3)]
        np.testing.assert_array_equal(slide.read_region(0, 0, 512, 512), image)
        np.testing.assert_array_equal(np.asarray(slide.levels[1]), image[::2, ::2])
    with pytest.raises(SlideError, match="tifffile does not stitch"):
        open_slide(path, reader="tifffile")


def test_a_ventana_slide_openslide_cannot_read_is_refused_in_one_line(tmp_path, image):
    path = ventana_bif(tmp_path / "broken.bif", image, broken=True)
    with pytest.raises(SlideError) as error:
        open_slide(path)
    message = str(error.value)
    assert message.startswith("broken.bif: OpenSlide cannot read it")
    assert "seams" in message and "convert it to OME-TIFF with QuPath or bfconvert" in message
    assert "\n" not in message


def test_without_openslide_the_line_says_what_to_install(tmp_path, image, monkeypatch):
    path = ventana_bif(tmp_path / "scan.bif", image)
    monkeypatch.setitem(sys.modules, "openslide", None)  # import openslide -> ImportError
    with pytest.raises(SlideError, match=r"pip install openslide-python openslide-bin") as error:
        open_slide(path)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("suffix", sorted(REFUSED_SUFFIXES))
def test_formats_no_reader_reads_get_one_line_naming_the_conversion(tmp_path, suffix):
    path = tmp_path / f"slide{suffix}"
    path.write_bytes(b"\x00" * 64)
    with pytest.raises(SlideError) as error:
        open_slide(path)
    message = str(error.value)
    assert message.startswith(f"slide{suffix}: ") and "is not read here" in message
    assert "convert it" in message or "export it" in message
    assert "\n" not in message


def test_the_czi_line_in_full(tmp_path):
    (tmp_path / "slide.czi").write_bytes(b"ZISRAWFILE")
    with pytest.raises(SlideError) as error:
        open_slide(tmp_path / "slide.czi")
    assert str(error.value) == (
        "slide.czi: Zeiss CZI is not read here; convert it to OME-TIFF with bfconvert "
        "(Bio-Formats) or QuPath, and open that"
    )


def test_an_unknown_file_names_what_is_read(tmp_path):
    (tmp_path / "slide.xyz").write_bytes(b"not an image at all")
    with pytest.raises(SlideError, match=r"nor a format OpenSlide reads .*\.mrxs.*\.dcm"):
        open_slide(tmp_path / "slide.xyz")


def test_transparent_pixels_are_white_glass():
    rgba = np.array([[[10, 20, 30, 255], [10, 20, 30, 0], [0, 0, 0, 128]]], np.uint8)
    assert rgb_on_white(rgba).tolist() == [[[10, 20, 30], [255, 255, 255], [127, 127, 127]]]


def test_pixels_that_are_not_square_are_refused():
    assert square_pixel_size(Path("a.svs"), 0.25, 0.2501) == 0.25
    assert square_pixel_size(Path("a.svs"), None, None) is None
    assert square_pixel_size(Path("a.svs"), 400.0, 400.0) is None  # a screen's, not a scanner's
    with pytest.raises(SlideError, match=r"a\.svs has pixels of 0\.25 x 0\.5 um \(not square\)"):
        square_pixel_size(Path("a.svs"), 0.25, 0.5)


@pytest.mark.parametrize(("vendor", "read_by"), [("philips", "openslide"), ("aperio", None)])
def test_openslide_takes_over_where_tifffile_fails_on_a_format_only_it_knows(
    tmp_path, image, monkeypatch, vendor, read_by
):
    from training.slides import opening

    path = aperio_svs(tmp_path / "scan.tiff", image)

    def fails(*args):
        raise SlideError("scan.tiff is a damaged TIFF (as tifffile found it)")

    monkeypatch.setattr(opening, "open_tiff", fails)
    monkeypatch.setattr(opening, "openslide_vendor", lambda path: vendor)
    if read_by is None:  # a format tifffile reads itself: its error stands
        with pytest.raises(SlideError, match="damaged TIFF"):
            open_slide(path)
        return
    with open_slide(path) as slide:
        assert slide.metadata["reader"] == read_by
        np.testing.assert_array_equal(slide.read_region(0, 0, 512, 512), image)
