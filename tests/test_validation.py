"""Validation scores what the product outputs, and tunes threshold and minimum area together."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from training.data import rle
from training.data.records import Record
from training.inference.postprocess import resize_labels
from training.validation import (
    ImageScore,
    all_ftu_dice,
    area_cap_um2,
    background_dice,
    dice,
    score,
    selection_score,
    summarise,
    tune_postprocess,
)


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


def four_by_four() -> tuple[np.ndarray, np.ndarray]:
    """Truth: the 2 x 2 top-left corner (4 px); prediction: the 2 x 3 top-left block (6 px)."""
    truth = np.zeros((4, 4), np.uint8)
    truth[:2, :2] = 1
    prediction = np.zeros((4, 4), np.uint8)
    prediction[:2, :3] = 1
    return prediction, truth


def test_ftu_background_and_all_ftu_dice_by_hand():
    prediction, truth = four_by_four()
    assert dice(prediction, truth) == pytest.approx(2 * 4 / (6 + 4))  # 0.8
    # background: 10 px predicted, 12 true, 10 shared (16 - 6 - 4 + 4)
    assert background_dice(prediction, truth) == pytest.approx(2 * 10 / (10 + 12))
    assert all_ftu_dice(truth) == pytest.approx(2 * 4 / (16 + 4))  # 0.4: this model beats it
    empty, full = np.zeros((4, 4)), np.ones((4, 4))
    assert all_ftu_dice(empty) == 0.0  # no FTU: predicting FTU everywhere is all wrong
    assert all_ftu_dice(full) == 1.0
    assert dice(empty, empty) == background_dice(empty, empty) == 1.0
    assert background_dice(full, full) == 1.0  # nothing in the background to find
    assert background_dice(full, truth) == 0.0  # the all-FTU prediction misses all stroma


def test_the_selection_score_is_the_ftu_dice_except_on_colon():
    assert selection_score("kidney", 0.8, 0.2) == 0.8
    assert selection_score("largeintestine", 0.8, 0.2) == pytest.approx(0.5)
    # on colon the all-FTU prediction, FTU Dice 0.75 on dense crypts, no longer wins
    assert selection_score("largeintestine", 0.75, 0.0) < selection_score(
        "largeintestine", 0.7, 0.6
    )


def test_score_and_summary_report_the_background_and_the_baseline_per_organ_and_source():
    prediction, truth = four_by_four()
    kidney = image_score(prediction.astype(float), truth, 1.0)
    colon = image_score(prediction.astype(float), truth, 1.0, organ="largeintestine")
    colon.record = dataclasses.replace(colon.record, id="colon", data_source="ebhi")
    summary = summarise(score([kidney, colon]))
    row = {"dice": 0.8, "background_dice": 0.9091, "all_ftu_dice": 0.4, "images": 1}
    assert summary["by_organ"]["kidney"] == {**row, "score": 0.8}
    assert summary["by_organ"]["largeintestine"] == {**row, "score": round((0.8 + 10 / 11) / 2, 4)}
    assert summary["by_data_source"]["ebhi"]["all_ftu_dice"] == 0.4
    assert summary["by_source_organ"]["HPA/kidney"]["background_dice"] == 0.9091
    # the keys read before stay as they were
    assert summary["organ"] == {"kidney": 0.8, "largeintestine": 0.8}
    assert summary["data_source"] == {"HPA": 0.8, "ebhi": 0.8}
    assert (summary["dice"], summary["background_dice"], summary["all_ftu_dice"]) == (
        0.8,
        0.9091,
        0.4,
    )
    assert summary["per_image"]["colon"]["all_ftu_dice"] == 0.4


def test_colon_is_tuned_on_both_dice_values():
    """A colon image full of crypts: the low threshold marks everything FTU (FTU Dice 0.86, no
    background found); the high one finds the crypts only (FTU Dice 0.8, background 0.67). On
    the FTU Dice the low threshold wins; on colon's selection score the high one."""
    truth = np.ones((10, 10), np.uint8)
    truth[:, 5:7] = 0  # 80 px of crypts, 20 of stroma
    probability = np.full((10, 10), 0.3)
    probability[:, :3] = 0.9  # 30 px found: FTU Dice 60/110, background 40/120
    probability[:, 7:] = 0.9  # 60 px found: FTU Dice 120/140, background 40/60
    for organ, expected in (("kidney", 0.1), ("largeintestine", 0.35)):
        item = image_score(probability, truth, 1.0, organ=organ)
        thresholds, _ = tune_postprocess([item], [0.1, 0.35], [0.0])
        assert thresholds[organ] == expected, organ


@pytest.mark.parametrize("level0", [(97, 131), (60, 80), (23, 41)])
@pytest.mark.parametrize("organ", ["lung", "largeintestine"])
def test_the_tuning_shortcut_equals_the_full_size_score(level0, organ):
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
    item = image_score(probability, truth, 1.5, organ=organ)
    levels, areas = [0.3, 0.5, 0.6], [0.0, 1.0, 20.0, 200.0]
    table = _dice_table(item, levels, areas)
    for row, area in enumerate(areas):
        for column, threshold in enumerate(levels):
            (scored,) = score([item], {organ: threshold}, {organ: area})
            expected = selection_score(organ, scored.dice, scored.background_dice)
            assert table[row, column] == pytest.approx(expected, abs=1e-12), (area, threshold)


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
