"""Validation scores what the product outputs, and tunes threshold and minimum area together."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from training.data import rle
from training.data.records import Record
from training.inference.postprocess import resize_labels
from training.validation import ImageScore, area_cap_um2, score, tune_postprocess


def image_score(
    probability: np.ndarray, truth: np.ndarray, pixel_size_um: float, organ: str = "kidney"
) -> ImageScore:
    """An image whose level-0 mask is ``truth`` and whose probability map is ``probability``
    (at ``pixel_size_um``; level 0 may be finer)."""
    record = Record(
        id="img",
        organ=organ,
        data_source="HPA",
        image=Path("img.tiff"),
        shape=truth.shape,
        pixel_size_um=pixel_size_um * probability.shape[0] / truth.shape[0],
        thickness_um=4.0,
        rle=rle.encode(truth),
        centres=np.zeros((0, 2)),
        folder=0,
    )
    return ImageScore(record, probability.astype(np.float32), pixel_size_um)


def disc(shape: tuple[int, int], centre: tuple[float, float], radius: float) -> np.ndarray:
    ys, xs = np.indices(shape)
    return (ys - centre[0]) ** 2 + (xs - centre[1]) ** 2 <= radius**2


@pytest.fixture
def blobs() -> ImageScore:
    """A ring-shaped FTU (probability 0.7, its hole 0.2, the background 0.15) and small false
    positives (0.9) on a 100 x 100 map at 2 um/px; the truth, at level 0 (twice as fine), is the
    filled disc (about 7850 um²)."""
    probability = np.full((100, 100), 0.15)
    ftu = disc((100, 100), (50, 50), 25)
    probability[ftu] = 0.7
    probability[disc((100, 100), (50, 50), 8)] = 0.2  # a hole: filled in the output
    for y, x in ((8, 8), (90, 12), (10, 90), (88, 88)):
        probability[y - 2 : y + 3, x - 2 : x + 3] = 0.9  # 25 px = 100 um² each
    truth = resize_labels(ftu.astype(np.uint8), (200, 200))
    return image_score(probability, truth, 2.0)


def test_the_score_is_of_the_output_mask_holes_filled_and_small_objects_dropped(blobs):
    (plain,) = score([blobs])  # the model's own: threshold 0.5, no minimum area
    assert 0.8 < plain.dice < 0.99  # the blobs cost some
    (clean,) = score([blobs], min_areas={"kidney": 500.0})
    assert clean.min_area_um2 == 500.0 and clean.dice == 1.0  # and the hole was filled
    (lung_only,) = score([blobs], {"lung": 0.95}, {"lung": 500.0})
    assert (lung_only.threshold, lung_only.min_area_um2) == (0.5, 500.0)  # kidney unchanged


def test_tuning_drops_the_false_positives_and_keeps_the_ftu(blobs):
    thresholds, min_areas = tune_postprocess([blobs])
    assert min_areas["kidney"] == 250.0  # the smallest area that drops the 100 um² blobs
    assert thresholds["kidney"] == 0.2  # the lowest of the ties (0.2 to 0.7: the same mask)
    (tuned,) = score([blobs], thresholds, min_areas)
    assert tuned.dice == 1.0  # what the tuning saw is what is scored


def test_ties_go_to_the_smaller_area_then_the_lower_threshold():
    probability = np.zeros((64, 64))
    probability[16:48, 16:48] = 0.8  # nothing small: every area gives the same Dice
    truth = np.zeros((64, 64), np.uint8)
    truth[16:48, 16:48] = 1
    thresholds, min_areas = tune_postprocess([image_score(probability, truth, 1.0)])
    assert (thresholds, min_areas) == ({"kidney": 0.1}, {"kidney": 0.0})
    # the grids in any order
    item = image_score(probability, truth, 1.0)
    assert tune_postprocess([item], [0.7, 0.3], [500.0, 0.0]) == ({"kidney": 0.3}, {"kidney": 0.0})


@pytest.mark.parametrize("level0", [(97, 131), (60, 80), (23, 41)])
def test_the_tuning_shortcut_equals_the_full_size_score(level0):
    """Tuning's per-object sums give exactly the Dice of the resized output mask, whether level
    0 is finer than the map, the same size or coarser."""
    from scipy import ndimage

    from training.validation import _dice_table

    rng = np.random.default_rng(1)
    probability = ndimage.gaussian_filter(rng.random((60, 80)), 2)
    probability = (probability - probability.min()) / np.ptp(probability)
    truth = ndimage.zoom(
        (probability > 0.55).astype(np.uint8), np.divide(level0, (60, 80)), order=0
    )
    assert truth.shape == level0
    item = image_score(probability, truth, 1.5, organ="lung")
    levels, areas = [0.3, 0.5, 0.6], [0.0, 1.0, 20.0, 200.0]
    table = _dice_table(item, levels, areas)
    for row, area in enumerate(areas):
        for column, threshold in enumerate(levels):
            (scored,) = score([item], {"lung": threshold}, {"lung": area})
            assert table[row, column] == pytest.approx(scored.dice, abs=1e-12), (area, threshold)


def test_each_organ_is_tuned_on_its_own_images(blobs):
    probability = np.zeros((64, 64))
    probability[16:48, 16:48] = 0.8
    truth = np.zeros((64, 64), np.uint8)
    truth[16:48, 16:48] = 1
    lung = image_score(probability, truth, 1.0, organ="lung")
    thresholds, min_areas = tune_postprocess([blobs, lung])
    assert set(thresholds) == set(min_areas) == {"kidney", "lung"}
    assert min_areas == {"kidney": 250.0, "lung": 0.0}


def test_the_minimum_area_stays_under_the_small_true_ftus():
    """Two large FTUs (about 2800 um²), a small one (about 700) and a false positive (about
    1250): the area that drops the false positive also drops the small FTU, and on these images
    it scores best; the cap (5th percentile of the true areas) keeps it from being chosen."""
    probability = np.full((160, 160), 0.05)
    truth = np.zeros((160, 160), np.uint8)
    for centre, radius in (((35, 35), 30), ((35, 120), 30), ((115, 35), 15)):
        truth[disc(truth.shape, centre, radius)] = 1
    probability[truth > 0] = 0.8
    probability[disc(truth.shape, (115, 115), 20)] = 0.8  # the false positive
    item = image_score(probability, truth, 1.0)
    cap = area_cap_um2([item])
    assert cap == (truth[80:, :80] > 0).sum()  # the small FTU's own area
    _, uncapped = tune_postprocess([item], max_area_percentile=100)
    assert uncapped["kidney"] > cap  # without the cap: drop both
    thresholds, min_areas = tune_postprocess([item])
    assert min_areas["kidney"] <= cap
    (scored,) = score([item], thresholds, min_areas)
    assert 0.9 < scored.dice < 0.92  # the false positive stays, the small FTU is kept
