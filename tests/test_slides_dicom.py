"""DICOM WSI: written by wsidicom from a pyramidal TIFF made here, read back through wsidicom
and OpenSlide, pixel for pixel equal to the TIFF at every level, in the napari reader and the
engine. (No real DICOM slide is at hand: ../shared has none.)"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("wsidicom")

from wsi_dicom import write_dicom

from napari_ftu._reader import napari_get_reader
from training.slides import SlideError, open_slide, write_pyramid

PIXEL_SIZE = 0.5


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return np.random.default_rng(7).integers(0, 256, (320, 256, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def pair(image, tmp_path_factory) -> tuple[Path, Path]:
    """A pyramidal OME-TIFF (4 levels: 320x256 down to 40x32) and the DICOM WSI written from it
    (wsidicom reads levels whose pixel spacings are powers of two apart)."""
    folder = tmp_path_factory.mktemp("dicom")
    tiff = write_pyramid(folder / "slide.tiff", image, PIXEL_SIZE, tile=64)
    with open_slide(tiff) as slide:
        write_dicom(folder / "slide_dcm", slide)
    return tiff, folder / "slide_dcm"


def level_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.dcm"))


@pytest.mark.parametrize("how", ["folder", "one file", "openslide"])
def test_every_level_equals_the_tiff_it_was_written_from(pair, how):
    tiff_path, folder = pair
    path = level_files(folder)[-1] if how == "one file" else folder
    reader = "openslide" if how == "openslide" else None
    with open_slide(tiff_path) as tiff, open_slide(path, reader=reader) as dicom:
        assert dicom.metadata["reader"] == ("openslide" if reader else "wsidicom")
        assert dicom.metadata["format"] == "dicom"
        assert dicom.pixel_size_um == pytest.approx(PIXEL_SIZE, rel=1e-9)
        assert len(tiff.levels) == 4 and dicom.shapes == tiff.shapes
        assert dicom.level_downsamples == tiff.level_downsamples
        for level in range(len(tiff.levels)):
            np.testing.assert_array_equal(np.asarray(dicom.levels[level]), tiff.levels[level])
            height, width = tiff.shapes[level][:2]
            np.testing.assert_array_equal(
                dicom.read_region(-3, 5, height, width, level),
                tiff.read_region(-3, 5, height, width, level),  # white glass above the top
            )
        np.testing.assert_array_equal(dicom.thumbnail(100), tiff.thumbnail(100))
        # any pixel size, read from the best level the same way
        np.testing.assert_array_equal(
            dicom.read_region_at(1.3, 7, 3, 90, 80), tiff.read_region_at(1.3, 7, 3, 90, 80)
        )


def test_every_dicom_level_has_its_own_pixel_spacing(pair):
    import pydicom

    spacings = sorted(
        float(
            pydicom.dcmread(p)
            .SharedFunctionalGroupsSequence[0]
            .PixelMeasuresSequence[0]
            .PixelSpacing[0]
        )
        for p in level_files(pair[1])
    )
    # mm per pixel: 0.5 um at level 0, doubling
    assert spacings == pytest.approx([0.0005, 0.001, 0.002, 0.004])


def test_a_slide_wsidicom_refuses_is_read_through_openslide(pair, monkeypatch):
    import wsidicom

    def refuse(*args, **kwargs):  # as wsidicom refuses levels that are not powers of two apart
        raise NotImplementedError("Levels needs to be integer")

    monkeypatch.setattr(wsidicom.WsiDicom, "open", refuse)
    tiff_path, folder = pair
    with open_slide(tiff_path) as tiff, open_slide(folder) as dicom:
        assert dicom.metadata["reader"] == "openslide"
        assert dicom.pixel_size_um == pytest.approx(PIXEL_SIZE)
        np.testing.assert_array_equal(np.asarray(dicom.levels[2]), tiff.levels[2])
    monkeypatch.setitem(sys.modules, "openslide", None)  # neither reader: the reason, one line
    with pytest.raises(SlideError, match=r"slide_dcm: not a readable DICOM whole-slide image \("):
        open_slide(folder)


def test_folders_that_are_not_one_dicom_slide_are_refused(pair, tmp_path, image):
    import shutil

    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "notes.txt").write_text("no slide here")
    with pytest.raises(SlideError, match=r"is a directory, not a slide file nor a DICOM slide"):
        open_slide(plain)
    with pytest.raises(SlideError, match=r"is a directory; tifffile reads single files"):
        open_slide(pair[1], reader="tifffile")
    two = tmp_path / "two"
    shutil.copytree(pair[1], two)
    with open_slide(pair[0]) as slide:  # a second slide (a new series) beside the first
        for path in write_dicom(tmp_path / "second", slide):
            shutil.copy(path, two)
    with pytest.raises(SlideError, match=r"holds 2 DICOM slides \(series\); open one file"):
        open_slide(two)
    with open_slide(level_files(two)[0]) as one:  # one file names its slide
        assert one.shape == image.shape


def test_a_dicom_file_that_is_not_a_slide_is_refused(tmp_path):
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = FileDataset(str(tmp_path / "photo.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
    dataset.SOPClassUID = SecondaryCaptureImageStorage
    dataset.SeriesInstanceUID = generate_uid()
    dataset.save_as(tmp_path / "photo.dcm", enforce_file_format=True)
    with pytest.raises(SlideError, match=r"photo\.dcm is DICOM but not a whole-slide image"):
        open_slide(tmp_path / "photo.dcm")


def test_the_napari_reader_gives_a_multiscale_layer_in_micrometres(pair, tmp_path):
    _, folder = pair
    (tmp_path / "other").mkdir()
    assert napari_get_reader(str(tmp_path / "other")) is None  # not every folder is a slide
    for path in (folder, level_files(folder)[0]):
        reader = napari_get_reader(str(path))
        assert reader is not None
        ((data, kwargs, kind),) = reader(str(path))
        assert kind == "image" and kwargs["multiscale"] and kwargs["rgb"]
        assert kwargs["scale"] == (PIXEL_SIZE, PIXEL_SIZE) and kwargs["units"] == ("um", "um")
        assert kwargs["metadata"]["slide_format"] == "dicom"
        assert kwargs["name"] == "slide_dcm"  # the folder's name, not a file's UID
        assert [level.shape for level in data] == [
            (320, 256, 3),
            (160, 128, 3),
            (80, 64, 3),
            (40, 32, 3),
        ]


@pytest.mark.gui
def test_napari_opens_a_dicom_folder_as_one_multiscale_layer(pair, make_napari_viewer, image):
    viewer = make_napari_viewer()
    viewer.open(str(pair[1]), plugin="napari-ftu")
    (layer,) = viewer.layers
    assert layer.multiscale and layer.rgb
    assert tuple(layer.scale) == (PIXEL_SIZE, PIXEL_SIZE)
    np.testing.assert_array_equal(np.asarray(layer.data[0][10:20, 30:40]), image[10:20, 30:40])


def test_the_engine_segments_a_dicom_slide_as_the_tiff_it_came_from(pair):
    import torch
    from helpers import member
    from torch import nn

    from training.inference import run

    class Pointwise(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return (x[:, :1] - x[:, 1:2]) / 32

    # the model's 1.2 um/px is read from the 2x level and resampled: every reading path runs
    model = member(Pointwise(), pixel_size=1.2, tile=32)
    tiff_path, folder = pair
    from_tiff = run(tiff_path, model, "kidney", detect_tissue=False)
    from_dicom = run(folder, model, "kidney", detect_tissue=False)
    assert from_dicom.probability.shape == from_tiff.probability.shape
    np.testing.assert_array_equal(
        np.asarray(from_dicom.probability), np.asarray(from_tiff.probability)
    )


def test_napari_ftu_segment_takes_a_dicom_folder_as_a_slide(pair, tmp_path):
    from napari_ftu.cli import main
    from training.data.catalog import read_catalog
    from training.models import build_model, save_checkpoint

    model = save_checkpoint(
        tmp_path / "model.pt",
        build_model("swin_micro_upernet", input_size=64),
        {"pixel_size_um": 1.0, "tile_size": 64},
    )
    tiff_path, folder = pair
    out = tmp_path / "out"
    args = ["segment", str(tiff_path), str(folder), "--organ", "kidney", "--model", str(model)]
    assert main([*args, "--out", str(out), "--quiet", "--no-tissue-detection"]) == 0
    rows = read_catalog(out).set_index("id")
    assert list(rows.index) == ["slide", "slide_dcm"]
    assert rows.loc["slide_dcm", "pixel_size"] == PIXEL_SIZE
    assert rows.loc["slide_dcm", "rle"] == rows.loc["slide", "rle"]  # the same pixels, read apart
