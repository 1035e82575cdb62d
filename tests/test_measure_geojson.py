"""Measurements in QuPath GeoJSON: written as QuPath's ``measurements`` property, read back."""

from __future__ import annotations

import json

import numpy as np
import pytest

from training.data.geojson import GeoJSONError, feature_measurements, rasterize_labels
from training.data.geojson_export import labels_to_geojson
from training.measure import measure_objects
from training.measure.qupath import QUPATH_NAMES, to_qupath


def _labels() -> np.ndarray:
    labels = np.zeros((60, 80), np.int32)
    yy, xx = np.mgrid[:60, :80]
    labels[(yy - 20) ** 2 + (xx - 20) ** 2 <= 12**2] = 1
    labels[30:50, 45:75] = 2
    labels[50:, :10] = 3  # on the border
    return labels


def test_measurements_written_to_geojson_read_back_with_the_objects(tmp_path):
    labels = _labels()
    objects = measure_objects(labels, 0.5, probability=np.full(labels.shape, 0.75), downsample=2)
    collection = labels_to_geojson(labels, 2.0, "kidney", measurements=to_qupath(objects))
    path = tmp_path / "objects.geojson"
    path.write_text(json.dumps(collection, allow_nan=False))  # strict JSON: no NaN in it
    first = collection["features"][0]["properties"]["measurements"]
    assert first["Area µm^2"] == pytest.approx(objects.loc[0, "area_um2"])
    assert "Hematoxylin OD: Mean" not in first  # not measured (no RGB): left out, not NaN
    rows = feature_measurements(path)
    read = rasterize_labels(path, labels.shape, downsample=2.0)
    np.testing.assert_array_equal(read, labels)  # row k describes label k
    assert [row["label"] for row in rows] == [1, 2, 3]
    assert rows[0]["classification"] == "glomerulus"
    for row, expected in zip(rows, objects.to_dict("records"), strict=True):
        for column in QUPATH_NAMES:
            if column in ("od_hematoxylin", "od_eosin"):
                assert column not in row
            else:
                assert row[column] == pytest.approx(float(expected[column])), column
    assert [row["touches_edge"] for row in rows] == [0.0, 0.0, 1.0]


def test_older_qupath_lists_and_foreign_names_are_read():
    square = {"type": "Polygon", "coordinates": [[[0, 0], [4, 0], [4, 4], [0, 4], [0, 0]]]}
    collection = [
        {
            "type": "Feature",
            "geometry": square,
            "properties": {
                "objectType": "annotation",
                "measurements": [
                    {"name": "Area µm^2", "value": 16.0},
                    {"name": "Num Detections", "value": 3},
                    {"name": "Mean", "value": None},
                ],
            },
        },
        {"type": "Feature", "geometry": square, "properties": {"objectType": "annotation"}},
    ]
    rows = feature_measurements(collection)
    assert rows[0]["area_um2"] == 16.0 and rows[0]["Num Detections"] == 3.0
    assert np.isnan(rows[0]["Mean"])
    assert rows[1] == {"label": 2, "name": None, "classification": None}


@pytest.mark.parametrize(
    ("measurements", "message"),
    [
        ("12", "must be an object"),
        ([{"name": "Area"}], "name/value|'name'"),
        ({"Area µm^2": "large"}, "not a number"),
        ({"Touches": True}, "not a number"),
    ],
)
def test_malformed_measurements_are_named(measurements, message):
    feature = {
        "type": "Feature",
        "id": "abc",
        "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [4, 0], [4, 4], [0, 0]]]},
        "properties": {"measurements": measurements},
    }
    with pytest.raises(GeoJSONError, match=message) as caught:
        feature_measurements([feature])
    assert "'abc'" in str(caught.value)


def test_the_layer_writer_carries_the_layers_measurements(tmp_path):
    from napari_ftu._writer import write_labels_geojson

    labels = _labels()
    objects = measure_objects(labels, 0.5)
    meta = {"metadata": {"organ": "kidney"}, "features": objects}
    (path,) = write_labels_geojson(str(tmp_path / "mask.geojson"), labels, meta)
    rows = feature_measurements(path)
    assert [row["area_um2"] for row in rows] == pytest.approx(list(objects["area_um2"]))
    # a layer without a measurements table writes outlines alone
    (plain,) = write_labels_geojson(str(tmp_path / "plain.geojson"), labels, {"metadata": {}})
    assert "area_um2" not in feature_measurements(plain)[0]
