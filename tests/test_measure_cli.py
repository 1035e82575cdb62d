"""``napari-ftu measure`` and ``napari-ftu segment --measure`` end to end on small TIFFs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_ftu.cli import main
from training.data.catalog import upsert_row
from training.data.geojson_export import labels_to_geojson
from training.data.rle import encode
from training.measure import measure_objects
from training.measure.io import read_objects, read_summary
from training.models import build_model, save_checkpoint
from training.slides import write_pyramid
from training.synthetic import make_phantom

PX = 0.5  # um per level-0 pixel of the drawn slide


@pytest.fixture(scope="module")
def drawn(tmp_path_factory):
    """A 400 x 480 px slide: pink tissue with three purple disks on glass, their labels, and
    the same mask as a labels TIFF at half resolution, a dataset row and QuPath GeoJSON."""
    root = tmp_path_factory.mktemp("measure")
    yy, xx = np.mgrid[:400, :480]
    labels = np.zeros((400, 480), np.int32)
    for index, (cy, cx, r) in enumerate([(100, 120, 40), (250, 300, 60), (320, 100, 30)], 1):
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= r**2] = index
    rgb = np.full((400, 480, 3), 240, np.uint8)
    rgb[24:376, 24:456] = (210, 140, 190)  # on the tissue thumbnail's 8 px (4 um) grid
    rgb[labels > 0] = (150, 80, 160)
    slide = write_pyramid(root / "slide.tiff", rgb, PX, tile=128)
    half = labels[::2, ::2].astype(np.uint16)
    write_pyramid(root / "mask.labels.tiff", half, 2 * PX, labels=True)
    upsert_row(
        root / "data",
        {
            "id": "slide",
            "organ": "kidney",
            "img_height": 400,
            "img_width": 480,
            "pixel_size": PX,
            "rle": encode(labels > 0),
        },
    )
    (root / "mask.geojson").write_text(json.dumps(labels_to_geojson(labels, 1.0, "kidney")))
    return root, slide, labels


def measure(slide, mask, out, *options: str) -> int:
    return main(
        [
            "measure",
            str(slide),
            "--mask",
            str(mask),
            "--organ",
            "kidney",
            "--out",
            str(out),
            *options,
        ]
    )


@pytest.mark.parametrize("mask", ["mask.labels.tiff", "data", "mask.geojson"])
def test_measure_an_existing_mask_on_its_slide(drawn, tmp_path, mask):
    root, slide, labels = drawn
    out = tmp_path / "out"
    assert measure(slide, root / mask, out, "--geojson") == 0
    objects = read_objects(out / "slide.objects.csv")
    expected = measure_objects(labels, PX)
    assert list(objects["label"]) == [1, 2, 3]
    coarse = mask.endswith("tiff")  # measured on its own 1 um grid
    np.testing.assert_allclose(
        objects["area_um2"], expected["area_um2"], rtol=0.03 if coarse else 1e-9
    )
    np.testing.assert_allclose(
        objects["centroid_x_um"], expected["centroid_x_um"], atol=1.0 if coarse else 1e-6
    )
    assert objects["mean_probability"].isna().all()  # a mask has no probability
    assert (objects["od_hematoxylin"] > 0.1).all()  # the disks' purple, read from the slide
    summary = read_summary(out / "summary.csv").iloc[0]
    assert summary["id"] == "slide" and summary["ftu_count"] == 3
    tissue_mm2 = 352 * 432 * PX**2 / 1e6  # the pink block
    assert summary["tissue_area_mm2"] == pytest.approx(tissue_mm2, rel=0.005)
    assert summary["ftus_per_mm2"] == pytest.approx(3 / summary["tissue_area_mm2"])
    features = json.loads((out / "slide.geojson").read_text())["features"]
    assert [f["properties"]["measurements"]["Area µm^2"] for f in features] == pytest.approx(
        list(objects["area_um2"])
    )


def test_existing_results_are_refused_unless_overwrite(drawn, tmp_path, capsys):
    root, slide, _ = drawn
    out = tmp_path / "out"
    assert measure(slide, root / "data", out) == 0
    before = (out / "summary.csv").read_text()
    assert measure(slide, root / "data", out) == 2
    assert "slide.objects.csv exists (--overwrite replaces it)" in capsys.readouterr().err
    (out / "slide.objects.csv").unlink()
    assert measure(slide, root / "data", out) == 2
    assert "row slide exists" in capsys.readouterr().err
    assert (out / "summary.csv").read_text() == before
    assert measure(slide, root / "mask.geojson", out, "--overwrite") == 0
    assert len(read_summary(out / "summary.csv")) == 1


def test_bad_inputs_get_one_line_each(drawn, tmp_path, capsys):
    root, slide, _ = drawn
    out = tmp_path / "out"
    rgb_tiff = write_pyramid(tmp_path / "rgb.tiff", np.zeros((200, 240, 3), np.uint8), 1.0)
    wrong = write_pyramid(tmp_path / "wrong.tiff", np.zeros((150, 240), np.uint8), 1.0)
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "bad.geojson").write_text("{")
    cases = [
        (tmp_path / "none.tiff", root / "data", "no such slide file"),
        (slide, tmp_path / "missing.tiff", "no such file or folder"),
        (slide, rgb_tiff, "not a label image"),
        (slide, wrong, "is not the slide"),
        (slide, tmp_path / "notes.txt", "not a mask napari-ftu reads"),
        (slide, tmp_path / "bad.geojson", "not valid JSON"),
        (slide, tmp_path, "train.csv"),
    ]
    for slide_path, mask, message in cases:
        assert measure(slide_path, mask, out) == 2, message
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], (message, lines)
        assert lines[0].startswith("napari-ftu measure: error: ")
    assert measure(slide, root / "data", out, "--id", "../x") == 2
    assert "not a plain file name" in capsys.readouterr().err
    assert not out.exists()  # nothing was written by any of them


def test_segment_measure_writes_objects_summary_and_geojson_measurements(tmp_path, capsys):
    model = build_model("swin_micro_upernet", input_size=64)
    checkpoint = save_checkpoint(tmp_path / "model.pt", model, {"pixel_size_um": 1.6})
    image, _, _ = make_phantom("kidney", size=320, seed=0)
    slide = write_pyramid(tmp_path / "slide0.tiff", image, 0.4, tile=128)
    out = tmp_path / "out"
    args = [
        "segment",
        str(slide),
        "--organ",
        "kidney",
        "--model",
        str(checkpoint),
        "--out",
        str(out),
        "--quiet",
        "--threshold",
        "0",
        "--no-tissue-detection",
        "--measure",
        "--geojson",
    ]
    assert main(args) == 0
    objects = read_objects(out / "slide0.objects.csv")
    assert len(objects) == 1  # threshold 0: one object, the whole slide
    row = objects.iloc[0]
    assert row["area_um2"] == pytest.approx(320 * 320 * 0.4**2)
    assert row["touches_edge"] and row["mean_probability"] > 0
    assert (row["bbox_height_px"], row["bbox_width_px"]) == (320, 320)
    summary = read_summary(out / "summary.csv").iloc[0]
    assert summary["id"] == "slide0" and summary["ftu_count"] == 1 and summary["edge_objects"] == 1
    feature = json.loads((out / "slide0.geojson").read_text())["features"][0]
    assert feature["properties"]["measurements"]["Area µm^2"] == pytest.approx(row["area_um2"])
    # a second run is refused before any work, the objects table and summary row named
    (out / "train.csv").unlink()
    (out / "slide0.geojson").unlink()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "slide0.objects.csv exists" in err and "summary.csv: row slide0 exists" in err
    assert main([*args, "--overwrite"]) == 0
