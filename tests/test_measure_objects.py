"""Per-object measurements and slide summaries on drawn shapes of known size (training.measure)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from training.measure import OBJECT_COLUMNS, SUMMARY_COLUMNS, measure_objects, summarize

PIXEL_SIZES = (0.5, 2.0)  # um/px: a fine scan and a coarse working scale


def disk(shape: tuple[int, int], centre: tuple[float, float], radius: float) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2


@pytest.mark.parametrize("px", PIXEL_SIZES)
def test_a_disk_has_its_area_perimeter_and_diameter_in_um(px):
    radius_um = 50.0
    side = round(160 / px)
    labels = disk((side, side), (side / 2, side / 2), radius_um / px).astype(np.int32) * 3
    row = measure_objects(labels, px).iloc[0]
    assert row["label"] == 3
    assert row["area_um2"] == pytest.approx(math.pi * radius_um**2, rel=0.01)
    assert row["perimeter_um"] == pytest.approx(2 * math.pi * radius_um, rel=0.02)
    assert row["equivalent_diameter_um"] == pytest.approx(2 * radius_um, rel=0.01)
    assert row["major_axis_um"] == pytest.approx(2 * radius_um, rel=0.02)
    assert row["minor_axis_um"] == pytest.approx(2 * radius_um, rel=0.02)
    assert row["circularity"] == pytest.approx(1.0, abs=0.03)
    assert row["eccentricity"] < 0.1
    assert row["solidity"] > 0.97
    assert not row["touches_edge"]
    assert row["centroid_y_um"] == pytest.approx((side / 2) * px, abs=px)


@pytest.mark.parametrize("px", PIXEL_SIZES)
def test_a_ring_counts_its_hole_out_of_the_area_and_into_the_perimeter(px):
    outer, inner = 60.0, 30.0  # um
    side = round(160 / px)
    centre = (side / 2, side / 2)
    ring = disk((side, side), centre, outer / px) & ~disk((side, side), centre, inner / px)
    row = measure_objects(ring.astype(np.uint8), px).iloc[0]
    assert row["area_um2"] == pytest.approx(math.pi * (outer**2 - inner**2), rel=0.015)
    assert row["perimeter_um"] == pytest.approx(2 * math.pi * (outer + inner), rel=0.03)
    assert row["solidity"] == pytest.approx(1 - (inner / outer) ** 2, abs=0.03)
    assert row["equivalent_diameter_um"] == pytest.approx(
        2 * math.sqrt(outer**2 - inner**2), rel=0.01
    )


@pytest.mark.parametrize("px", PIXEL_SIZES)
def test_a_shape_cut_by_the_region_edge_is_marked(px):
    side = round(200 / px)
    labels = np.zeros((side, side), np.int32)
    labels[disk((side, side), (-0.5, side / 2), 40 / px)] = 1  # a half disk on the top border
    labels[disk((side, side), (side / 2, side / 2), 20 / px)] = 2
    labels[round(150 / px) : round(180 / px), -round(20 / px) :] = 4  # a rectangle on the right
    table = measure_objects(labels, px).set_index("label")
    assert table["touches_edge"].to_dict() == {1: True, 2: False, 4: True}
    assert table.loc[4, "area_um2"] == pytest.approx(30 * 20, rel=0.01)
    # Crofton is right on average over directions: axis-parallel edges read 5-8% short
    assert table.loc[4, "perimeter_um"] == pytest.approx(2 * (30 + 20), rel=0.1)
    assert table.loc[1, "area_um2"] == pytest.approx(math.pi * 40**2 / 2, rel=0.03)
    # the labels are the top-left of a larger analysed region: only the top border is shared
    larger = measure_objects(labels, px, region_shape=(side + 10, side + 10)).set_index("label")
    assert larger["touches_edge"].to_dict() == {1: True, 2: False, 4: False}
    assert not measure_objects(np.pad(labels, 1), px)["touches_edge"].any()


def test_centroids_and_boxes_are_placed_on_level_0_and_in_um():
    labels = np.zeros((20, 30), np.int32)
    labels[4:8, 10:16] = 1  # rows 4..7, columns 10..15
    row = measure_objects(labels, 2.0, origin=(100, 200), downsample=4.0).iloc[0]
    # label pixel i covers level-0 [i*4, i*4+4): rows 4..7 are level-0 rows 16..31 past origin
    assert (row["bbox_y_px"], row["bbox_height_px"]) == (116, 16)
    assert (row["bbox_x_px"], row["bbox_width_px"]) == (240, 24)
    assert row["centroid_y_px"] == pytest.approx(100 + 16 + 7.5)
    assert row["centroid_x_px"] == pytest.approx(200 + 40 + 11.5)
    assert row["centroid_y_um"] == pytest.approx(row["centroid_y_px"] * 0.5)  # 2 um / 4
    assert row["area_um2"] == pytest.approx(24 * 4.0)


def test_probability_and_stain_densities_are_averaged_inside_each_object():
    from skimage.color import rgb_from_hed

    labels = np.zeros((10, 20), np.int32)
    labels[:, :10], labels[:, 10:] = 1, 2
    probability = np.where(labels == 1, 0.9, 0.3).astype(np.float32)
    # pixels of pure haematoxylin (OD 0.5) on the left, pure eosin (OD 0.3) on the right
    od = np.where((labels == 1)[..., None], 0.5 * rgb_from_hed[0], 0.3 * rgb_from_hed[1])
    rgb = np.round(255 * 10.0**-od).astype(np.uint8)
    table = measure_objects(labels, 1.0, probability=probability, rgb=rgb).set_index("label")
    assert table.loc[1, "mean_probability"] == pytest.approx(0.9, abs=1e-6)
    assert table.loc[2, "mean_probability"] == pytest.approx(0.3, abs=1e-6)
    assert table.loc[1, "od_hematoxylin"] == pytest.approx(0.5, abs=0.02)
    assert table.loc[1, "od_eosin"] == pytest.approx(0.0, abs=0.02)
    assert table.loc[2, "od_eosin"] == pytest.approx(0.3, abs=0.02)
    assert table.loc[2, "od_hematoxylin"] == pytest.approx(0.0, abs=0.02)
    bare = measure_objects(labels, 1.0)
    assert bare[["mean_probability", "od_hematoxylin", "od_eosin"]].isna().all().all()


def test_only_measures_the_labels_asked_for_as_a_whole_measurement_would():
    labels = np.zeros((60, 60), np.int32)
    labels[disk((60, 60), (20, 20), 8)] = 1
    labels[disk((60, 60), (40, 42), 12)] = 2
    labels[50:, :10] = 5
    probability = np.random.default_rng(0).random((60, 60))
    whole = measure_objects(labels, 0.7, probability=probability, origin=(3, 4), downsample=1.5)
    some = measure_objects(
        labels, 0.7, probability=probability, origin=(3, 4), downsample=1.5, only=[5, 2, 9]
    )
    expected = whole[whole["label"].isin([2, 5])].reset_index(drop=True)
    np.testing.assert_allclose(some.to_numpy(float), expected.to_numpy(float))


def test_an_empty_mask_gives_an_empty_table_with_the_columns():
    table = measure_objects(np.zeros((8, 8), np.uint16), 1.0)
    assert tuple(table.columns) == OBJECT_COLUMNS
    assert len(table) == 0
    assert table["touches_edge"].dtype == bool
    summary = summarize(table, "empty", 2.0)
    assert summary["ftu_count"] == 0 and summary["ftus_per_mm2"] == 0
    assert math.isnan(summary["area_um2_median"])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"labels": np.zeros((4, 4), np.float32)}, "integers"),
        ({"labels": np.zeros((4, 4, 3), np.int32)}, r"\(h, w\)"),
        ({"pixel_size_um": 0}, "pixel_size_um"),
        ({"pixel_size_um": math.nan}, "pixel_size_um"),
        ({"probability": np.zeros((4, 5))}, "probability"),
        ({"rgb": np.zeros((4, 4), np.uint8)}, "rgb"),
        ({"rgb": np.zeros((4, 4, 3), np.float32)}, "uint8"),
        ({"downsample": -1}, "downsample"),
    ],
)
def test_bad_inputs_are_refused_with_one_line(kwargs, message):
    arguments = {"labels": np.ones((4, 4), np.int32), "pixel_size_um": 1.0, **kwargs}
    labels, px = arguments.pop("labels"), arguments.pop("pixel_size_um")
    with pytest.raises(ValueError, match=message):
        measure_objects(labels, px, **arguments)


def test_the_summary_counts_density_and_sizes():
    px = 2.0
    labels = np.zeros((500, 500), np.int32)
    for index, (y, x) in enumerate([(100, 100), (100, 300), (300, 100), (300, 300)], start=1):
        labels[disk((500, 500), (y, x), 25 + 5 * index)] = index
    labels[480:, 480:] = 9  # cut by the border
    table = measure_objects(labels, px)
    tissue_mm2 = 500 * 500 * px**2 / 1e6  # the whole image is tissue: 1 mm²
    summary = summarize(table, "slide-1", tissue_mm2)
    assert tuple(summary) == SUMMARY_COLUMNS
    assert summary["ftu_count"] == 5
    assert summary["edge_objects"] == 1
    assert summary["ftus_per_mm2"] == pytest.approx(5.0)
    assert summary["ftu_area_mm2"] == pytest.approx(table["area_um2"].sum() / 1e6)
    assert summary["ftu_area_fraction"] == pytest.approx(np.count_nonzero(labels) / labels.size)
    assert summary["area_um2_median"] == pytest.approx(np.median(table["area_um2"]))
    assert summary["area_um2_p10"] < summary["area_um2_median"] < summary["area_um2_p90"]
    for unknown in (None, 0.0):
        blind = summarize(table, "slide-1", unknown)
        assert math.isnan(blind["ftus_per_mm2"]) and math.isnan(blind["ftu_area_fraction"])
    with pytest.raises(ValueError, match="negative"):
        summarize(table, "slide-1", -1.0)


def test_the_measure_package_imports_without_torch_or_qt():
    import subprocess
    import sys
    from pathlib import Path

    code = (
        "import sys, training.measure, training.measure.slide, training.measure.io, "
        "training.measure.masks, training.measure.qupath\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'torch', 'timm', 'napari', 'qtpy', 'PyQt6', 'PySide6'})\n"
        "print(heavy)"
    )
    root = str(Path(__file__).resolve().parents[1])
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=root,
        env={"PYTHONPATH": root, "PATH": ""},
    )
    assert done.stdout.strip() == "[]"
