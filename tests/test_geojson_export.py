"""QuPath GeoJSON export (valid geometry, holes, touching objects, level-0 coordinates), its
reading back as one label per object, and the dataset-folder export without a viewer."""

from __future__ import annotations

import json

import numpy as np
import pytest
import shapely
from shapely.geometry import shape as geometry_from_geojson
from skimage.draw import disk, ellipse

from training.data.catalog import read_catalog
from training.data.export import (
    ExportError,
    ExportInfo,
    export_rows,
    geojson_path,
    level0_box,
    region_pieces,
    whole_image,
)
from training.data.geojson import feature_classes, rasterize, rasterize_labels
from training.data.geojson_export import label_geometries, labels_to_geojson, organ_of_class
from training.data.instances import pick_centres, row_labels
from training.data.rle import decode, nearest_indices
from training.slides import Slide


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    return 2 * (a & b).sum() / max(1, a.sum() + b.sum())


def tricky_labels(shape=(256, 256)) -> np.ndarray:
    """Rings (holes), objects touching along an edge and at a corner, one object in two
    parts, a one-pixel object and a checkerboard patch (pixels touching only diagonally)."""
    labels = np.zeros(shape, np.int32)
    labels[disk((60, 60), 40, shape=shape)] = 1
    labels[disk((60, 60), 15, shape=shape)] = 0  # a hole
    labels[disk((60, 60), 6, shape=shape)] = 2  # an object inside the hole
    labels[120:180, 20:80] = 3
    labels[120:180, 80:130] = 4  # touches 3 along an edge
    labels[180:200, 130:150] = 5  # touches 4 at a corner only
    labels[20:40, 150:170] = 6
    labels[60:80, 200:230] = 6  # 6 in two parts
    labels[100, 200] = 7
    checker = (np.indices((12, 12)).sum(axis=0) % 2 == 0).astype(np.int32) * 8
    labels[210:222, 200:212] = checker
    rows, cols = ellipse(230, 60, 20, 45, shape, rotation=0.6)
    labels[rows, cols] = 9
    labels[225:235, 50:70] = 0  # a hole that touches nothing
    return labels


def test_geojson_of_holes_and_touching_objects_is_valid_and_reads_back():
    labels = tricky_labels()
    collection = labels_to_geojson(labels, 1.0, "kidney")
    features = collection["features"]
    assert len(features) == 9
    geometries = [geometry_from_geojson(f["geometry"]) for f in features]
    assert all(g.is_valid for g in geometries), [shapely.is_valid_reason(g) for g in geometries]
    by_label = {f["properties"]["label"]: g for f, g in zip(features, geometries, strict=True)}
    assert len(by_label[1].interiors) == 1  # the hole is kept, as an interior ring
    assert by_label[6].geom_type == "MultiPolygon" and len(by_label[6].geoms) == 2
    assert by_label[8].geom_type == "MultiPolygon"
    for f in features:
        assert f["properties"]["objectType"] == "annotation"
        assert f["properties"]["classification"]["name"] == "glomerulus"
        assert len(f["properties"]["classification"]["color"]) == 3
    # shells counter-clockwise, holes clockwise (RFC 7946)
    assert by_label[1].exterior.is_ccw and not by_label[1].interiors[0].is_ccw
    back = rasterize(json.loads(json.dumps(collection)), labels.shape)
    np.testing.assert_array_equal(back, labels > 0)
    objects = rasterize_labels(collection, labels.shape)
    # one object per feature: touching objects stay apart, holes stay open
    assert len(np.unique(objects)) == 10
    for label in range(1, 10):
        ids = np.unique(objects[labels == label])
        assert len(ids) == 1 and ids[0] > 0
        assert (objects == ids[0]).sum() == (labels == label).sum()


def test_random_speckle_gives_valid_geometry_that_reads_back_exactly():
    rng = np.random.default_rng(0)
    for _ in range(20):
        labels = (rng.random((40, 50)) < 0.5) * rng.integers(1, 5, (40, 50))
        collection = labels_to_geojson(labels, 1.0, "lung")
        assert all(geometry_from_geojson(f["geometry"]).is_valid for f in collection["features"])
        np.testing.assert_array_equal(rasterize(collection, labels.shape), labels > 0)


@pytest.mark.parametrize("level0", [(768, 768), (761, 766)])
def test_coarse_labels_land_on_the_same_level0_pixels_as_the_rle(level0):
    from training.data.rle import encode_upscaled

    labels = tricky_labels()  # working scale, about 3 level-0 pixels each
    collection = labels_to_geojson(labels, 3.0, "kidney", shape=level0)
    expected = decode(encode_upscaled(labels, level0), level0)
    upscaled = labels[np.ix_(nearest_indices(256, level0[0]), nearest_indices(256, level0[1]))]
    np.testing.assert_array_equal(expected, upscaled > 0)
    assert dice(rasterize(collection, level0), expected) == 1.0


def test_geometries_move_to_a_regions_origin():
    labels = np.zeros((10, 10), np.int32)
    labels[2:4, 3:6] = 1
    (geometry,) = label_geometries(labels, 2.0, origin=(100, 50)).values()
    assert geometry.bounds == (56.0, 104.0, 62.0, 108.0)  # x0, y0, x1, y1 in level-0 pixels


def test_organ_from_a_class_name():
    assert organ_of_class("Glomerulus") == "kidney"
    assert organ_of_class("white pulp") == "spleen"
    assert organ_of_class("Tumor") is None and organ_of_class(None) is None


def test_import_on_a_coarser_grid_takes_pixel_centres():
    labels = tricky_labels((240, 240))
    collection = labels_to_geojson(labels, 1.0, "kidney")
    coarse = rasterize_labels(collection, (80, 80), downsample=3.0)
    np.testing.assert_array_equal(coarse > 0, pick_centres(labels, 3.0) > 0)
    assert feature_classes(collection) == {"glomerulus": len(collection["features"])}


# --- the dataset folder ------------------------------------------------------------------------


@pytest.fixture
def picture():
    rng = np.random.default_rng(1)
    return rng.integers(0, 255, (300, 400, 3), np.uint8)


def test_export_rows_writes_rows_images_and_geojson(tmp_path, picture):
    working = tricky_labels()[:150, :200]  # downsample 2 over a 300 x 400 image
    info = ExportInfo("kidney", 0.5, annotator="dr a", tissue_thickness=4.0)
    piece = whole_image("slide", working, picture.shape[:2])
    written = export_rows(tmp_path, [piece], Slide.from_array(picture, 0.5), info, "slide")
    frame = read_catalog(tmp_path)
    row = frame.iloc[0]
    assert (row["id"], row["organ"], row["img_height"], row["img_width"]) == (
        "slide",
        "kidney",
        300,
        400,
    )
    assert row["annotator"] == "dr a" and row["data_source"] == "napari-ftu"
    assert row["tissue_thickness"] == 4.0 and row["pixel_size"] == 0.5 and row["updated_at"]
    upscaled = working[np.ix_(nearest_indices(150, 300), nearest_indices(200, 400))]
    np.testing.assert_array_equal(decode(row["rle"], (300, 400)), upscaled > 0)
    collection = json.loads(geojson_path(tmp_path, "slide").read_text())
    np.testing.assert_array_equal(rasterize(collection, (300, 400)), upscaled > 0)
    assert {p.name for p in written.files} == {"slide.tiff", "train.csv", "slide.geojson"}
    labels, _ = row_labels(tmp_path, "slide")
    assert labels.max() > 0 and np.array_equal(labels > 0, upscaled > 0)


def test_regions_are_cut_at_level0_and_checked_before_anything_is_written(tmp_path, picture):
    working = np.zeros((120, 160), np.int32)  # downsample 2.5 over 300 x 400
    working[10:30, 10:30] = 1
    regions = [(0, 0, 40, 40), (50, 100, 70, 60)]
    pieces = region_pieces(
        "big", regions, lambda b: working[b[0] : b[0] + b[2], b[1] : b[1] + b[3]], 2.5, (300, 400)
    )
    assert [p.image_id for p in pieces] == ["big_r0_0", "big_r125_250"]
    assert pieces[1].box == (125, 250, 175, 150) == level0_box(regions[1], 2.5, (300, 400))
    bad = ExportInfo("heart", 0.5)
    with pytest.raises(ExportError, match="unknown organ"):
        export_rows(tmp_path / "out", pieces, Slide.from_array(picture, 0.5), bad, "big")
    assert not (tmp_path / "out" / "train.csv").exists()
    export_rows(tmp_path / "out", pieces, Slide.from_array(picture, 0.5), ExportInfo("kidney", 0.5))
    frame = read_catalog(tmp_path / "out")
    assert list(frame["img_height"]) == [100, 175] and list(frame["img_width"]) == [100, 150]
    assert decode(frame.iloc[0]["rle"], (100, 100))[25:75, 25:75].all()


def test_import_says_when_no_outline_lies_on_the_image():
    from training.data.geojson import GeoJSONError

    labels = np.zeros((20, 20), np.int32)
    labels[5:10, 5:10] = 1
    collection = labels_to_geojson(labels, 1.0, "kidney", origin=(500, 500))
    with pytest.raises(GeoJSONError, match="none of the 1 outlines covers a pixel centre"):
        rasterize_labels(collection, (20, 20))
