"""Whole-image Dice through the inference engine, per organ and per data source.

The competition's metric: the mean over images of each image's Dice, the mask compared at the
image's full size. Validation during training, the tuning of the post-processing (threshold and
minimum object area) and ``python -m training.evaluate``/``training.calibrate`` all go through
:func:`predict` -> the same engine the plugin and the CLI use, and the mask scored is the one
they output (:func:`~training.inference.postprocess.probability_to_labels`: holes filled, small
objects dropped), so a figure measured here is what a user gets.

Beside the FTU Dice every image gets the Dice of the background (stroma: the complements of both
masks) and the FTU Dice of the trivial all-FTU prediction on it: on FTU-dense tissue (colon
crypts) predicting FTU everywhere already scores about 0.75, so the FTU Dice alone cannot tell a
model from that; one that beats it also finds the stroma. Models are chosen and post-processing
tuned on :func:`selection_score`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from training.data.records import Record
from training.data.rle import nearest_indices
from training.inference.options import RunOptions
from training.inference.postprocess import probability_to_labels, resize_labels

__all__ = [
    "MAX_AREA_PERCENTILE",
    "MEAN_SCORED_ORGANS",
    "MIN_AREAS_UM2",
    "THRESHOLDS",
    "ImageScore",
    "all_ftu_dice",
    "area_cap_um2",
    "background_dice",
    "dice",
    "full_size_mask",
    "image_score",
    "predict",
    "score",
    "selection_score",
    "summarise",
    "tune_postprocess",
]

THRESHOLDS = tuple(np.round(np.arange(0.1, 0.91, 0.05), 2))
MIN_AREAS_UM2 = (0.0, 250.0, 500.0, 1000.0, 2000.0, 3000.0, 4000.0, 6000.0, 8000.0)
# a minimum area is never above this percentile of the organ's true FTU areas: on a handful of
# validation images a larger one can score best while it drops real (small, edge-cut) FTUs
MAX_AREA_PERCENTILE = 5.0
# organs so dense in FTUs that the all-FTU prediction scores high: chosen on the mean of the FTU
# and background Dice (see selection_score)
MEAN_SCORED_ORGANS = frozenset({"largeintestine"})


@dataclass
class ImageScore:
    """One validation image: its probability at the working scale, the post-processing it is
    scored with, its FTU and background Dice, and the all-FTU prediction's FTU Dice."""

    record: Record
    probability: np.ndarray
    pixel_size_um: float  # of the probability map
    dice: float = float("nan")
    background_dice: float = float("nan")
    all_ftu_dice: float = float("nan")
    threshold: float = 0.5
    min_area_um2: float = 0.0
    truth: np.ndarray = field(init=False, repr=False)  # the level-0 mask, decoded once

    def __post_init__(self) -> None:
        self.truth = self.record.mask()


def dice(prediction: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two binary masks of one image; 1.0 when both are empty (nothing to find)."""
    prediction, truth = prediction.astype(bool), truth.astype(bool)
    total = int(prediction.sum()) + int(truth.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(prediction, truth).sum()) / total


def background_dice(prediction: np.ndarray, truth: np.ndarray) -> float:
    """Dice of the background (everything not FTU) of two binary masks: :func:`dice` of their
    complements, so 1.0 when both are all FTU."""
    return dice(~prediction.astype(bool), ~truth.astype(bool))


def all_ftu_dice(truth: np.ndarray) -> float:
    """FTU Dice of the trivial prediction "FTU everywhere" on an image with mask ``truth``:
    ``2 |truth| / (pixels + |truth|)``; 0.0 when the truth is empty (the prediction is all
    false positive)."""
    found = int(truth.astype(bool).sum())
    return 2.0 * found / max(truth.size + found, 1)


def selection_score(organ: str, ftu_dice: float, background: float) -> float:
    """The score models are chosen and post-processing tuned on: the FTU Dice, except for the
    organs of :data:`MEAN_SCORED_ORGANS` (colon), where it is the mean of the FTU and background
    Dice, because there the all-FTU prediction already has a high FTU Dice."""
    if organ in MEAN_SCORED_ORGANS:
        return (ftu_dice + background) / 2.0
    return ftu_dice


def predict(
    models: Any,
    records: Sequence[Record],
    options: RunOptions | None = None,
    *,
    on_image: Callable[[int, int], None] | None = None,
    **overrides: Any,
) -> list[ImageScore]:
    """Run the engine on every record's image (at its own pixel size) for its organ.

    ``options``: the engine's (default: batches of 8, maps of up
    to 4 GB in memory); ``overrides`` replace its fields (``device=``, ``tta=``)."""
    from training.inference import run

    options = (options or RunOptions(batch_size=8, memory_limit_mb=4096)).with_overrides(
        **overrides
    )
    scores = []
    for index, record in enumerate(records):
        result = run(
            record.image, models, record.organ, options, pixel_size_um=record.pixel_size_um
        )
        probability = np.asarray(result.probability, dtype=np.float32)
        result.close()
        scores.append(
            ImageScore(
                record,
                probability,
                result.pixel_size_um,
                threshold=result.threshold,
                min_area_um2=result.min_area_um2,
            )
        )
        if on_image is not None:
            on_image(index + 1, len(records))
    return scores


def score(
    scores: Iterable[ImageScore],
    thresholds: dict[str, float] | None = None,
    min_areas: dict[str, float] | None = None,
) -> list[ImageScore]:
    """Fill in each image's Dice at its organ's threshold and minimum object area (um²), where
    given, else the model's own, with its background Dice and the all-FTU baseline."""
    scored = list(scores)
    for item in scored:
        organ = item.record.organ
        if thresholds and organ in thresholds:
            item.threshold = float(thresholds[organ])
        if min_areas and organ in min_areas:
            item.min_area_um2 = float(min_areas[organ])
        mask = full_size_mask(item)
        item.dice = dice(mask, item.truth)
        item.background_dice = background_dice(mask, item.truth)
        item.all_ftu_dice = all_ftu_dice(item.truth)
    return scored


def image_score(item: ImageScore) -> float:
    """The image's :func:`selection_score` (after :func:`score`)."""
    return selection_score(item.record.organ, item.dice, item.background_dice)


def tune_postprocess(
    scores: Sequence[ImageScore],
    thresholds: Sequence[float] = THRESHOLDS,
    min_areas: Sequence[float] = MIN_AREAS_UM2,
    max_area_percentile: float = MAX_AREA_PERCENTILE,
) -> tuple[dict[str, float], dict[str, float]]:
    """Per organ, the (threshold, minimum object area in um²) pair of the grids with the best
    mean per-image :func:`selection_score`, chosen jointly; ties go to the smaller area, then the
    lower threshold. Areas above ``max_area_percentile`` of the organ's true FTU areas in these
    images are not candidates (0 always is). Returns ``(thresholds, min_areas)``, keyed by organ.

    Each image is labelled once per threshold; every minimum area then keeps a subset of those
    objects, whose Dice at full size follows from per-object sums (no mask per area).
    """
    levels = sorted(float(t) for t in thresholds)
    best_thresholds: dict[str, float] = {}
    best_areas: dict[str, float] = {}
    for organ, items in sorted(_by_organ(scores).items()):
        cap = area_cap_um2(items, max_area_percentile)
        areas = sorted({0.0, *(float(a) for a in min_areas if a <= cap)})
        table = np.mean([_dice_table(item, levels, areas) for item in items], axis=0)
        row, column = np.unravel_index(int(np.argmax(table)), table.shape)  # first: smallest
        best_thresholds[organ] = levels[column]
        best_areas[organ] = areas[row]
    return best_thresholds, best_areas


def area_cap_um2(items: Sequence[ImageScore], percentile: float = MAX_AREA_PERCENTILE) -> float:
    """The ``percentile`` of the true FTU areas (um², at level 0) in ``items``: the largest
    minimum area tuning may choose for them (infinite when they hold no FTU)."""
    areas = []
    for item in items:
        labels, count = ndimage.label(item.truth)
        if count:
            pixels = np.bincount(labels.ravel(), minlength=count + 1)[1:]
            areas.append(pixels * item.record.pixel_size_um**2)
    if not areas:
        return float("inf")
    return float(np.percentile(np.concatenate(areas), percentile, method="lower"))


METRICS: dict[str, Callable[[ImageScore], float]] = {
    "dice": lambda s: s.dice,
    "background_dice": lambda s: s.background_dice,
    "all_ftu_dice": lambda s: s.all_ftu_dice,
    "score": image_score,
}


def summarise(scores: Sequence[ImageScore]) -> dict[str, Any]:
    """Mean per-image Dice overall, per organ, per data source and per (source, organ) (keys
    ``dice``, ``organ``, ...), and beside it the background Dice, the all-FTU baseline's Dice and
    the selection score: overall (``background_dice``, ``all_ftu_dice``, ``score``) and all four
    per group (``by_organ``, ``by_data_source``, ``by_source_organ``: name -> metric -> mean)."""
    keys: dict[str, Callable[[ImageScore], str]] = {
        "organ": lambda s: s.record.organ,
        "data_source": lambda s: s.record.data_source,
        "source_organ": lambda s: f"{s.record.data_source}/{s.record.organ}",
    }

    def means(items: Sequence[ImageScore]) -> dict[str, float]:
        return {
            name: round(float(np.mean([get(s) for s in items])), 4) if items else float("nan")
            for name, get in METRICS.items()
        }

    summary: dict[str, Any] = {**means(scores), "images": len(scores)}
    for group, key in keys.items():
        members: dict[str, list[ImageScore]] = defaultdict(list)
        for item in scores:
            members[key(item)].append(item)
        table = {name: {**means(v), "images": len(v)} for name, v in sorted(members.items())}
        summary[group] = {name: row["dice"] for name, row in table.items()}
        summary[f"by_{group}"] = table
    summary["per_image"] = {
        s.record.id: {
            "organ": s.record.organ,
            **{name: round(get(s), 4) for name, get in METRICS.items()},
        }
        for s in scores
    }
    return summary


def _by_organ(scores: Iterable[ImageScore]) -> dict[str, list[ImageScore]]:
    groups: dict[str, list[ImageScore]] = defaultdict(list)
    for item in scores:
        groups[item.record.organ].append(item)
    return groups


def full_size_mask(item: ImageScore) -> np.ndarray:
    """The image's mask as the CLI and the plugin output it (holes filled, objects under the
    minimum area dropped) at the image's level-0 size (nearest neighbour, as the RLE the CLI
    writes)."""
    min_area_px = item.min_area_um2 / item.pixel_size_um**2
    mask = probability_to_labels(item.probability, item.threshold, min_area_px) > 0
    if mask.shape == item.record.shape:
        return mask
    return resize_labels(mask, item.record.shape)


def _dice_table(
    item: ImageScore, thresholds: Sequence[float], areas: Sequence[float]
) -> np.ndarray:
    """The image's full-size :func:`selection_score` for every (area, threshold) pair:
    ``(len(areas), len(thresholds))``, equal to :func:`score`'s for the same settings.

    Resizing to full size is nearest-neighbour, so each working pixel stands for a fixed number
    of level-0 pixels (``covers``), of which ``hits`` are FTU in the truth: an object's share of
    the full-size mask and of its overlap with the truth are sums over its pixels, and the
    background's Dice follows from those and the image's size.
    """
    height, width = item.probability.shape
    rows = nearest_indices(height, item.record.shape[0])
    cols = nearest_indices(width, item.record.shape[1])
    covers = np.outer(np.bincount(rows, minlength=height), np.bincount(cols, minlength=width))
    ys, xs = np.nonzero(item.truth)
    hits = np.bincount(rows[ys] * width + cols[xs], minlength=height * width)
    truth_total = float(len(ys))
    pixels = float(item.record.shape[0] * item.record.shape[1])
    organ = item.record.organ
    min_px = np.asarray(areas) / item.pixel_size_um**2
    table = np.empty((len(areas), len(thresholds)))
    for column, threshold in enumerate(thresholds):
        labels = probability_to_labels(item.probability, float(threshold)).ravel()
        size = int(labels.max()) + 1
        area = np.bincount(labels, minlength=size)
        covered = np.bincount(labels, weights=covers.ravel(), minlength=size)
        found = np.bincount(labels, weights=hits, minlength=size)
        for row, least in enumerate(min_px):
            # as probability_to_labels: under 1 px keeps every object, else area >= the minimum
            keep = area >= least if least > 1 else area > 0
            keep[0] = False
            predicted, overlap = float(covered[keep].sum()), float(found[keep].sum())
            total = predicted + truth_total
            ftu = 1.0 if total == 0 else 2.0 * overlap / total
            # background: complements of both masks; they share pixels - predicted - truth + overlap
            rest = 2.0 * pixels - total
            background = 1.0 if rest == 0 else 2.0 * (pixels - total + overlap) / rest
            table[row, column] = selection_score(organ, ftu, background)
    return table
