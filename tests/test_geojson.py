from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import shapely
from PIL import Image
from shapely.geometry import Polygon
from skimage.draw import ellipse
from skimage.draw import polygon as skimage_polygon

from training.data.catalog import read_catalog
from training.data.geojson import GeoJSONError, classification_name, object_type, rasterize
from training.data.import_geojson import main as import_main
from training.data.polygon_fill import fill
from training.data.rle import decode
from training.slides import open_slide, write_pyramid


def square(x0: float, y0: float, x1: float, y1: float) -> list[list[float]]:
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]


def feature(rings: list, kind: str | None = "annotation", cls: object = "Glomerulus") -> dict:
    properties: dict = {}
    if kind is not None:
        properties["objectType"] = kind
    if cls is not None:
        properties["classification"] = {"name": cls, "color": [0, 160, 0]}
    return {
        "type": "Feature",
        "geometry": {"type": "Polygon", "coordinates": rings},
        "properties": properties,
    }


def collection(*features: dict) -> dict:
    return {"type": "FeatureCollection", "features": list(features)}


def box_mask(shape: tuple[int, int], *boxes: tuple[int, int, int, int]) -> np.ndarray:
    """Pixels rows y0..y1-1, columns x0..x1-1 of each ``(x0, y0, x1, y1)`` set to 1."""
    mask = np.zeros(shape, np.uint8)
    for x0, y0, x1, y1 in boxes:
        mask[y0:y1, x0:x1] = 1
    return mask


# --- geometry and conventions -------------------------------------------------------------


def test_square_with_a_hole_pixel_corners_on_integers():
    mask = rasterize(
        collection(feature([square(10, 10, 30, 30), square(15, 15, 25, 25)])), (40, 50)
    )
    expected = box_mask((40, 50), (10, 10, 30, 30))
    expected[15:25, 15:25] = 0
    assert mask.dtype == np.uint8 and mask.shape == (40, 50)
    np.testing.assert_array_equal(mask, expected)


def test_labelme_convention_centres_on_integers_and_keeps_outlines():
    data = collection(feature([square(10, 10, 20, 20), square(13, 13, 17, 17)]))
    mask = rasterize(data, (30, 30), convention="labelme")
    expected = box_mask((30, 30), (10, 10, 21, 21))  # the closed square, corners included
    expected[14:17, 14:17] = 0  # the hole's open interior; its outline stays foreground
    np.testing.assert_array_equal(mask, expected)


def test_multipolygon_geometry_collection_and_overlapping_holes_are_a_union(caplog):
    multi = {
        "type": "MultiPolygon",
        "coordinates": [[square(0, 0, 4, 4)], [square(10, 10, 14, 14), square(11, 11, 13, 13)]],
    }
    mixed = {
        "type": "GeometryCollection",
        "geometries": [
            {"type": "Polygon", "coordinates": [square(20, 0, 24, 4)]},
            {"type": "Point", "coordinates": [5, 5]},
        ],
    }
    # A second feature covering the first one's hole: a hole never clears another feature.
    plug = feature([square(11, 11, 13, 13)])
    data = collection(
        {"type": "Feature", "geometry": multi, "properties": {}},
        {"type": "Feature", "geometry": mixed, "properties": {}},
        plug,
    )
    with caplog.at_level(logging.WARNING):
        mask = rasterize(data, (20, 30))
    np.testing.assert_array_equal(
        mask, box_mask((20, 30), (0, 0, 4, 4), (10, 10, 14, 14), (20, 0, 24, 4))
    )
    assert "features[1]" in caplog.text and "no area" in caplog.text


def test_array_feature_and_bare_geometry_forms_agree(tmp_path):
    one = feature([square(2.5, 3.5, 9.25, 7.75)])
    expected = rasterize(collection(one), (12, 12))
    assert expected.sum() > 0
    path = tmp_path / "array.geojson"
    path.write_text(json.dumps([one]))
    for form in ([one], one, one["geometry"], path, str(path)):
        np.testing.assert_array_equal(rasterize(form, (12, 12)), expected)


def test_self_intersecting_polygon_is_repaired_into_its_two_loops():
    # Off the pixel grid, so that no pixel centre lies on an edge (a tie either way).
    bow_tie = [[0.1, 0.2], [20.3, 20.1], [20.2, 0.3], [0.3, 19.9], [0.1, 0.2]]
    assert not shapely.is_valid(Polygon(bow_tie))
    mask = rasterize(collection(feature([bow_tie])), (24, 24))
    ys, xs = np.mgrid[0:24, 0:24] + 0.5
    expected = shapely.contains_xy(shapely.make_valid(Polygon(bow_tie)), xs, ys)
    np.testing.assert_array_equal(mask, expected)
    assert mask[10, 3] and mask[10, 17] and not mask[3, 10] and not mask[17, 10]


def test_scanline_fill_matches_skimage_by_pixel_centres():
    rng = np.random.default_rng(0)
    for _ in range(60):
        # Irregular stars with a hole, at irrational offsets: no pixel centre lies on an edge,
        # where the two fills may legitimately settle a tie differently.
        n = int(rng.integers(3, 40))
        angles = np.sort(rng.uniform(0, 2 * np.pi, n))
        radii = rng.uniform(8, 30, n)
        cx, cy = 40 + rng.uniform(-10, 10) + np.pi / 100, 35 + rng.uniform(-10, 10) + np.e / 100
        shell = np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], axis=1)
        hole = np.stack([cx + 3 * np.cos(angles[::-1]), cy + 3 * np.sin(angles[::-1])], axis=1)
        polygon = Polygon(shell, [hole] if n > 8 else [])
        if not polygon.is_valid:
            continue
        mask = np.zeros((70, 80), np.uint8)
        fill(mask, [polygon])
        expected = np.zeros((70, 80), bool)
        for ring, value in [(polygon.exterior, True)] + [(r, False) for r in polygon.interiors]:
            xy = np.asarray(ring.coords)
            rows, cols = skimage_polygon(xy[:, 1] - 0.5, xy[:, 0] - 0.5, expected.shape)
            expected[rows, cols] = value
        np.testing.assert_array_equal(mask, expected)


def test_this_packages_geojson_export_reads_back_to_the_same_mask():
    from training.data.geojson_export import labels_to_geojson

    labels = np.zeros((90, 120), np.int32)
    for index, (y, x, ry, rx, angle) in enumerate(
        [(20, 25, 12, 7, 0.3), (60, 40, 9, 20, -0.8), (30, 90, 15, 15, 0), (75, 100, 3, 6, 1)], 1
    ):
        rows, cols = ellipse(y, x, ry, rx, labels.shape, rotation=angle)
        labels[rows, cols] = index
    labels[5:9, 60:70] = 5  # a thin rectangle: straight edges and right angles
    exported = labels_to_geojson(labels, 1.0, "kidney")
    np.testing.assert_array_equal(rasterize(exported, labels.shape), labels > 0)


def test_polygons_are_clipped_and_those_wholly_outside_skipped(caplog):
    data = collection(
        feature([square(-5, -5, 4, 3)]),
        feature([square(6, 6, 1e12, 8)]),  # absurd coordinates are clipped, not drawn
        feature([square(100, 100, 120, 120)]),
    )
    with caplog.at_level(logging.WARNING):
        mask = rasterize(data, (10, 12))
    np.testing.assert_array_equal(mask, box_mask((10, 12), (0, 0, 4, 3), (6, 6, 12, 8)))
    assert "features[2] lies outside the 10x12 image" in caplog.text


# --- which features count ------------------------------------------------------------------


def test_object_types_current_legacy_and_plain():
    cell = feature([square(0, 0, 2, 2)], kind="cell")
    legacy_detection = {**feature([square(0, 0, 2, 2)], kind=None), "id": "PathDetectionObject"}
    legacy_cell = {**feature([square(0, 0, 2, 2)], kind=None), "id": "PathCellObject"}
    is_cell = feature([square(0, 0, 2, 2)], kind=None)
    is_cell["properties"]["isCell"] = True
    plain = {"type": "Feature", "geometry": cell["geometry"]}  # no properties at all
    kinds = [object_type(f) for f in (cell, legacy_detection, legacy_cell, is_cell, plain)]
    assert kinds == ["cell", "detection", "cell", "cell", "annotation"]
    assert object_type(feature([], kind="Detection")) == "detection"


def test_object_type_filter():
    data = collection(
        feature([square(0, 0, 4, 4)], kind="annotation"),
        feature([square(10, 0, 14, 4)], kind="detection"),
        feature([square(20, 0, 24, 4)], kind="cell"),
        feature([square(30, 0, 34, 4)], kind="tile"),
    )
    default = rasterize(data, (5, 40))
    np.testing.assert_array_equal(default, box_mask((5, 40), (0, 0, 4, 4), (10, 0, 14, 4)))
    cells = rasterize(data, (5, 40), object_types=("Cell",))
    np.testing.assert_array_equal(cells, box_mask((5, 40), (20, 0, 24, 4)))
    with pytest.raises(GeoJSONError, match="type tma_core"):
        rasterize(data, (5, 40), object_types=["tma_core"])


def test_classification_filter_forms_and_case():
    data = [
        feature([square(0, 0, 4, 4)], cls="Glomerulus"),
        feature([square(10, 0, 14, 4)], cls=None),
        {
            "type": "Feature",
            "geometry": {"type": "Polygon", "coordinates": [square(20, 0, 24, 4)]},
            "properties": {"classification": "glomerulus"},  # older exports: a plain string
        },
        {
            "type": "Feature",
            "geometry": {"type": "Polygon", "coordinates": [square(30, 0, 34, 4)]},
            "properties": {"classification": {"names": ["Tumor", "Positive"]}},
        },
    ]
    assert [classification_name(f) for f in data] == [
        "Glomerulus",
        None,
        "glomerulus",
        "Tumor: Positive",
    ]
    glomeruli = rasterize(data, (5, 40), classification="GLOMERULUS")
    np.testing.assert_array_equal(glomeruli, box_mask((5, 40), (0, 0, 4, 4), (20, 0, 24, 4)))
    both = rasterize(data, (5, 40), classification=["glomerulus", "tumor: positive"])
    np.testing.assert_array_equal(both, glomeruli | box_mask((5, 40), (30, 0, 34, 4)))
    assert rasterize(data, (5, 40)).sum() == 4 * 16  # no filter: unclassified too
    with pytest.raises(GeoJSONError, match=r"class 'Sclerotic'.*annotation 'Glomerulus' x1"):
        rasterize(data, (5, 40), classification="Sclerotic")


# --- errors -------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(10,), (10, 0), (-1, 5), (2.5, 4), "ab", None, (1, 2, 3)])
def test_wrong_shape(shape):
    with pytest.raises(GeoJSONError, match="shape must be"):
        rasterize(collection(feature([square(0, 0, 4, 4)])), shape)


def test_file_errors_name_the_file(tmp_path):
    broken = tmp_path / "broken.geojson"
    broken.write_text('{"type": "FeatureCollection", "features": [')
    with pytest.raises(GeoJSONError, match=r"broken\.geojson: not valid JSON \(line 1"):
        rasterize(broken, (10, 10))
    binary = tmp_path / "slide.geojson"
    binary.write_bytes(b"II*\x00\xff\xfe\x00\x81")
    with pytest.raises(GeoJSONError, match=r"slide\.geojson: not a text file"):
        rasterize(binary, (10, 10))
    with pytest.raises(GeoJSONError, match=r"missing\.geojson: no such file"):
        rasterize(tmp_path / "missing.geojson", (10, 10))
    empty = tmp_path / "empty.geojson"
    empty.write_text(json.dumps(collection()))
    with pytest.raises(GeoJSONError, match=r"empty\.geojson: no features"):
        rasterize(empty, (10, 10))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"type": "Topology"}, "not GeoJSON features"),
        (42, "expected a GeoJSON path, dict or list"),
        ({"type": "FeatureCollection"}, "without a 'features' list"),
        ([feature([square(0, 0, 2, 2)]), {"type": "Feature"}], r"features\[1\] is not a Feature"),
        (
            [feature([square(0, 0, 2, 2)]), {**feature([[[0, 0], [1, 1]]]), "id": "g7"}],
            r"features\[1\] \(id 'g7'\) has a malformed geometry",
        ),
        (
            collection(feature([[[0, 0], [float("nan"), 1], [1, 1], [0, 0]]])),
            r"features\[0\] has non-finite coordinates",
        ),
        (
            collection(
                {
                    "type": "Feature",
                    "geometry": {"type": "LineString", "coordinates": [[0, 0], [5, 5]]},
                }
            ),
            "none of the 1 selected features is a polygon",
        ),
        (
            collection(feature([square(50, 50, 60, 60)]), feature([square(-9, 0, -1, 5)])),
            r"all 2 polygons lie outside the 10x10 \(HxW\) image \(they span x -9\.\.60",
        ),
    ],
)
def test_bad_content(data, message):
    with pytest.raises(GeoJSONError, match=message):
        rasterize(data, (10, 10))


def test_unknown_convention():
    with pytest.raises(GeoJSONError, match="unknown convention 'opencv'"):
        rasterize(collection(feature([square(0, 0, 2, 2)])), (4, 4), convention="opencv")


# --- the real HuBMAP kidney outlines ---------------------------------------------------------


def test_real_outlines_reproduce_train_csv(shared_data):
    folder = shared_data / "hubmap-kidney-pas"
    frame = pd.read_csv(folder / "train.csv", dtype={"id": str, "rle": str}, keep_default_na=False)
    assert len(frame) == 85
    dice = {"qupath": [], "labelme": []}
    for row in frame.itertuples():
        shape = (row.img_height, row.img_width)
        truth = decode(row.rle, shape).astype(bool)
        for convention, scores in dice.items():
            mask = rasterize(
                folder / "geojson" / f"{row.id}.geojson",
                shape,
                classification="Glomerulus",
                convention=convention,
            ).astype(bool)
            scores.append(2 * (mask & truth).sum() / (mask.sum() + truth.sum()))
    labelme, qupath = np.array(dice["labelme"]), np.array(dice["qupath"])
    # The masks were made the LabelMe way (Pillow, outline included): pixel for pixel.
    assert labelme.min() >= 0.99 and (labelme == 1).all(), labelme.min()
    # By pixel centres, the outline band makes the difference: a Dice of about 0.996.
    assert qupath.min() >= 0.985 and qupath.mean() >= 0.995, (qupath.min(), qupath.mean())


def test_import_command_on_a_real_image(shared_data, tmp_path):
    folder = shared_data / "hubmap-kidney-pas"
    code = import_main(
        [
            str(folder / "train_images" / "106.tiff"),
            str(folder / "geojson" / "106.geojson"),
            *("--out", str(tmp_path), "--organ", "kidney", "--convention", "labelme"),
        ]
    )
    assert code == 0
    ours, theirs = read_catalog(tmp_path), read_catalog(folder).set_index("id")
    assert ours.loc[0, "rle"] == theirs.loc["106", "rle"]
    assert ours.loc[0, "pixel_size"] == pytest.approx(theirs.loc["106", "pixel_size"])


# --- the import command ---------------------------------------------------------------------


def make_pair(folder: Path, stem: str, rings: list, pixel_size: float | None = 0.5) -> Path:
    """An RGB image ``stem.tiff`` (``stem.png`` without a pixel size) and ``stem.geojson``."""
    folder.mkdir(parents=True, exist_ok=True)
    image = np.random.default_rng(len(stem)).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    if pixel_size is None:
        path = folder / f"{stem}.png"
        Image.fromarray(image).save(path)
    else:
        path = folder / f"{stem}.tiff"
        write_pyramid(path, image, pixel_size)
    (folder / f"{stem}.geojson").write_text(json.dumps(collection(feature(rings))))
    return path


def test_import_command_round_trip(tmp_path):
    image = make_pair(tmp_path / "in", "slide-1", [square(5, 6, 40.5, 30), square(10, 10, 20, 20)])
    out = tmp_path / "dataset"
    argv = [str(image), str(tmp_path / "in" / "slide-1.geojson"), "--out", str(out)]
    argv += ["--organ", "kidney", "--data-source", "QuPath", "--thickness", "4", "--id", "s1"]
    assert import_main(argv) == 0
    frame = read_catalog(out)
    row = frame.iloc[0]
    assert (row["id"], row["organ"], row["data_source"]) == ("s1", "kidney", "QuPath")
    assert (row["img_height"], row["img_width"], row["pixel_size"]) == (48, 64, 0.5)
    assert row["tissue_thickness"] == 4
    expected = rasterize(tmp_path / "in" / "slide-1.geojson", (48, 64))
    np.testing.assert_array_equal(decode(row["rle"], (48, 64)), expected)
    with open_slide(out / "train_images" / "s1.tiff") as copied, open_slide(image) as source:
        np.testing.assert_array_equal(
            copied.read_region(0, 0, 48, 64), source.read_region(0, 0, 48, 64)
        )
        assert copied.pixel_size_um == pytest.approx(0.5)


def test_import_command_pairs_folders_by_stem(tmp_path):
    images, outlines = tmp_path / "images", tmp_path / "outlines"
    for stem in ("a", "b"):
        make_pair(images, stem, [square(1, 1, 9, 9)])
    (images / "c.tiff").write_bytes((images / "a.tiff").read_bytes())  # no outlines: left alone
    outlines.mkdir()
    for stem in ("a", "b"):
        (images / f"{stem}.geojson").rename(outlines / f"{stem}.geojson")
    argv = [str(images), str(outlines), "--out", str(tmp_path / "ds"), "--organ", "lung"]
    assert import_main(argv) == 0
    assert list(read_catalog(tmp_path / "ds")["id"]) == ["a", "b"]


def test_import_command_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, capsys):
    png = make_pair(tmp_path / "in", "nopx", [square(1, 1, 9, 9)], pixel_size=None)
    out = tmp_path / "ds"
    base = ["--out", str(out), "--organ", "kidney"]
    cases = {
        "does not say its pixel size; pass --pixel-size UM": [
            str(png),
            str(png.with_suffix(".geojson")),
        ],
        "no such file or folder": [str(png), str(tmp_path / "none.geojson")],
        "both be files or both be folders": [str(png), str(tmp_path / "in")],
        "no image in": [str(tmp_path / "in"), str(_write(tmp_path / "lone" / "x.geojson").parent)],
        "lie outside the 48x64": [str(png), str(_write(tmp_path / "far.json", 99))],
    }
    for message, argv in cases.items():
        extra = ["--pixel-size", "0.5"] if "outside" in message else []
        assert import_main(argv + base + extra) == 2, message
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1 and "Traceback" not in err, err
    assert not out.exists()
    # With --pixel-size the PNG imports, at the size given.
    argv = [str(png), str(png.with_suffix(".geojson")), *base, "--pixel-size", "0.25"]
    assert import_main(argv) == 0
    assert read_catalog(out).loc[0, "pixel_size"] == 0.25


def _write(path: Path, corner: float = 1) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps(collection(feature([square(corner, corner, corner + 8, corner + 8)])))
    )
    return path


@pytest.mark.parametrize("bad", ["../../x", "/tmp/x", "sub/x", "..", ".hidden", "x\x00"])
def test_import_command_refuses_an_id_outside_the_folder(tmp_path, capsys, bad):
    """Issue 21, item 10: ``--id ../../x`` wrote the image two folders above the dataset."""
    image = make_pair(tmp_path / "w" / "in", "s", [square(1, 1, 9, 9)])
    out = tmp_path / "w" / "in" / "ds"
    before = sorted(tmp_path.rglob("*"))
    argv = [str(image), str(image.with_suffix(".geojson")), "--out", str(out)]
    assert import_main([*argv, "--organ", "kidney", "--id", bad]) == 2
    err = capsys.readouterr().err
    assert "is not a plain file name" in err and err.count("\n") == 1, err
    assert sorted(tmp_path.rglob("*")) == before
