"""Whole slides measured in bands (training.measure.slide) and the tissue area behind density."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from training.inference.engine import SegmentationResult
from training.measure import measure_objects
from training.measure.slide import measure_result
from training.slides import Slide


def _result(probability: np.ndarray, slide_shape, pixel_size_um: float, downsample: float):
    return SegmentationResult(
        probability=probability,
        pixel_size_um=pixel_size_um,
        downsample=downsample,
        slide_shape=slide_shape,
        organ="kidney",
        threshold=0.5,
        tiles_run=0,
        tiles_skipped=0,
    )


def _blobs(shape: tuple[int, int], count: int, seed: int) -> np.ndarray:
    """A probability map of ``count`` random ellipses, some tall, some cut by the border."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    probability = np.zeros(shape, np.float32)
    for _ in range(count):
        cy, cx = rng.uniform(-5, shape[0] + 5), rng.uniform(-5, shape[1] + 5)
        ry, rx = rng.uniform(3, 30), rng.uniform(2, 8)
        inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        probability[inside] = np.maximum(probability[inside], rng.uniform(0.55, 1.0))
    return probability


@pytest.mark.parametrize("band_mb", [0.05, 0.6])  # bands of 3 rows (objects mostly taller), 47
def test_a_slide_measured_in_bands_equals_the_slide_measured_whole(band_mb):
    downsample, level0_um = 2.0, 0.5
    probability = _blobs((300, 220), 60, seed=1)
    rng = np.random.default_rng(2)
    rgb = rng.integers(40, 255, (600, 440, 3), dtype=np.uint8)
    slide = Slide.from_array(rgb, level0_um)
    result = _result(probability, (600, 440), level0_um * downsample, downsample)
    labels = result.labels(min_area_um2=0)
    # a band of a few rows: most objects cross a band border, some span several bands
    banded, summary = measure_result(result, slide, labels, image_id="s", band_mb=band_mb)
    working_rgb = slide.read_region_at(1.0, 0, 0, 300, 220)
    whole = measure_objects(
        labels, 1.0, probability=probability, rgb=working_rgb, downsample=downsample
    )
    assert len(banded) == labels.max() > 20
    assert banded["label"].is_unique
    pd.testing.assert_frame_equal(banded, whole, check_exact=False, rtol=1e-9)
    assert banded["touches_edge"].any() and not banded["touches_edge"].all()
    assert summary["ftu_count"] == len(whole)


def test_an_object_measured_strip_by_strip_equals_its_whole_measurement():
    from scipy import ndimage

    from training.measure.objects import Geometry
    from training.measure.streamed import measure_tall_object

    rng = np.random.default_rng(3)
    for trial in range(4):  # irregular shapes with holes, bays and one-pixel necks
        noise = rng.random((90, 70)) > (0.3 if trial % 2 else 0.45)
        labels, _ = ndimage.label(ndimage.binary_opening(noise))
        value = int(np.argmax(np.bincount(labels.ravel())[1:]) + 1)
        probability = rng.random(labels.shape)
        rgb = rng.integers(0, 256, (*labels.shape, 3), dtype=np.uint8)
        whole = measure_objects(
            labels,
            0.7,
            probability=probability,
            rgb=rgb,
            origin=(3, 6),
            downsample=1.5,
            only=[value],
        )
        geometry = Geometry(0.7, (3.0, 6.0), 1.5, labels.shape)
        box = ndimage.find_objects(labels)[value - 1]

        def read(y, x, h, w, rgb=rgb):
            return rgb[y : y + h, x : x + w]

        for strip in (1, 7, 256):
            streamed = measure_tall_object(labels, value, box, geometry, probability, read, strip)
            pd.testing.assert_frame_equal(streamed, whole, check_exact=False, rtol=1e-9)


def test_density_on_a_slide_with_a_known_tissue_area():
    px = 0.5  # the engine's tissue thumbnail is 4 um/px here: 8 slide pixels
    rgb = np.full((2000, 1600, 3), 245, np.uint8)  # glass
    rgb[400:1600, 320:1120] = (200, 120, 170)  # tissue: 600 x 400 um = 0.24 mm²
    probability = np.zeros((1000, 800), np.float32)  # the map at 1 um/px
    yy, xx = np.mgrid[:1000, :800]
    for cy, cx in [(300, 250), (300, 450), (500, 350), (700, 250), (700, 450), (500, 520)]:
        probability[(yy - cy) ** 2 + (xx - cx) ** 2 <= 40**2] = 0.9
    slide = Slide.from_array(rgb, px)
    objects, summary = measure_result(
        _result(probability, (2000, 1600), 1.0, 2.0), slide, image_id="known"
    )
    assert summary["tissue_area_mm2"] == pytest.approx(0.24, rel=0.005)
    assert summary["ftu_count"] == 6
    assert summary["ftus_per_mm2"] == pytest.approx(6 / 0.24, rel=0.005)
    assert summary["ftu_area_fraction"] == pytest.approx(6 * math.pi * 40**2 / 1e6 / 0.24, rel=0.01)
    assert summary["edge_objects"] == 0
    # tissue stain inside the objects: the pink's haematoxylin and eosin
    assert (objects["od_hematoxylin"] > 0.05).all() and (objects["od_eosin"] > 0.05).all()


def test_a_region_run_is_placed_on_the_slide_and_its_tissue_counted_in_its_box():
    px = 0.5
    rgb = np.full((2000, 1600, 3), 245, np.uint8)
    rgb[400:1600, 320:1120] = (200, 120, 170)
    slide = Slide.from_array(rgb, px)
    probability = np.zeros((200, 300), np.float32)  # a region of 200 x 300 map px at 1 um/px
    probability[80:120, 130:170] = 0.9
    result = _result(probability, (2000, 1600), 1.0, 2.0)
    result.origin = (300, 200)  # the region's top-left in the working grid: level-0 (600, 400)
    objects, summary = measure_result(result, slide, image_id="region")
    row = objects.iloc[0]
    assert (row["bbox_y_px"], row["bbox_x_px"]) == (600 + 160, 400 + 260)
    assert row["centroid_y_um"] == pytest.approx((600 + 200 - 0.5) * px)
    # the box (level 0 y 600..1000, x 400..1000) lies wholly in the tissue: 200 x 300 um
    assert summary["tissue_area_mm2"] == pytest.approx(0.06, rel=0.005)


def test_a_result_of_another_slide_is_refused():
    slide = Slide.from_array(np.zeros((100, 100, 3), np.uint8), 0.5)
    result = _result(np.zeros((40, 40), np.float32), (80, 80), 1.0, 2.0)
    with pytest.raises(ValueError, match="80 x 80 px slide"):
        measure_result(result, slide, image_id="x")
    other = Slide.from_array(np.zeros((80, 80, 3), np.uint8), 0.25)
    with pytest.raises(ValueError, match="um per level-0 pixel"):
        measure_result(result, other, image_id="x")
    with pytest.raises(ValueError, match="not on the result's map"):
        measure_result(result, other.with_pixel_size(0.5), np.zeros((5, 5), np.int32), image_id="x")


def test_a_run_hands_its_tissue_mask_to_measuring_so_the_thumbnail_is_read_once(monkeypatch):
    # the engine reads the tissue thumbnail; measuring its result reuses that mask (without the
    # tiles' margin) instead of reading the slide again, and counts the same area
    import torch
    from helpers import member
    from torch import nn

    from training.inference import run, tissue

    class Constant(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.full_like(x[:, :1], 3.0)

    rgb = np.full((2000, 1600, 3), 245, np.uint8)
    rgb[400:1600, 320:1120] = (200, 120, 170)  # 0.24 mm² of tissue at 0.5 um/px
    slide = Slide.from_array(rgb, 0.5)
    reads = []
    real = tissue.slide_tissue
    monkeypatch.setattr(tissue, "slide_tissue", lambda *a, **k: reads.append(1) or real(*a, **k))
    result = run(slide, member(Constant(), pixel_size=2.0, tile=64), "kidney")
    mask, scale = result.tissue
    expected, expected_scale = real(slide, grow=0)
    np.testing.assert_array_equal(mask, expected)
    assert scale == expected_scale
    assert result.meta["tissue_fraction"] == real(slide)[0].mean()  # the tiles' grown mask
    reads.clear()
    _, summary = measure_result(result, slide, image_id="once")
    assert not reads
    assert summary["tissue_area_mm2"] == pytest.approx(tissue.tissue_area_mm2(slide))
    assert summary["tissue_area_mm2"] == pytest.approx(0.24, rel=0.005)
