"""Whole-image Dice through the inference engine, per organ and per data source.

The competition's metric: the mean over images of each image's Dice, the mask compared at the
image's full size. Validation during training, threshold tuning and ``python -m
training.evaluate`` all go through :func:`predict` -> the same engine the plugin and the CLI use,
so a figure measured here is what a user gets.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from training.data.records import Record
from training.inference.postprocess import resize_labels

__all__ = [
    "THRESHOLDS",
    "ImageScore",
    "dice",
    "predict",
    "score",
    "summarise",
    "tune_thresholds",
]

THRESHOLDS = tuple(np.round(np.arange(0.1, 0.91, 0.05), 2))


@dataclass
class ImageScore:
    """One validation image: its probability at the working scale and its Dice."""

    record: Record
    probability: np.ndarray
    dice: float = float("nan")
    threshold: float = 0.5
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


def predict(
    models: Any,
    records: Sequence[Record],
    *,
    device: str | torch.device = "cpu",
    tta: int = 1,
    batch_size: int = 8,
    on_image: Callable[[int, int], None] | None = None,
) -> list[ImageScore]:
    """Run the engine on every record's image (at its own pixel size) for its organ."""
    from training.inference import run

    scores = []
    for index, record in enumerate(records):
        result = run(
            record.image,
            models,
            record.organ,
            pixel_size_um=record.pixel_size_um,
            device=device,
            tta=tta,
            batch_size=batch_size,
            memory_limit_mb=4096,
        )
        probability = np.asarray(result.probability, dtype=np.float32)
        result.close()
        scores.append(ImageScore(record, probability, threshold=result.threshold))
        if on_image is not None:
            on_image(index + 1, len(records))
    return scores


def score(
    scores: Iterable[ImageScore], thresholds: dict[str, float] | None = None
) -> list[ImageScore]:
    """Fill in each image's Dice at its organ's threshold (or the model's own)."""
    scored = list(scores)
    for item in scored:
        if thresholds and item.record.organ in thresholds:
            item.threshold = float(thresholds[item.record.organ])
        item.dice = dice(_full_size(item, item.threshold), item.truth)
    return scored


def tune_thresholds(
    scores: Sequence[ImageScore], grid: Sequence[float] = THRESHOLDS
) -> dict[str, float]:
    """Per organ, the threshold of ``grid`` with the best mean per-image Dice."""
    by_organ: dict[str, list[ImageScore]] = defaultdict(list)
    for item in scores:
        by_organ[item.record.organ].append(item)
    best: dict[str, float] = {}
    for organ, items in sorted(by_organ.items()):
        means = [np.mean([dice(_full_size(i, t), i.truth) for i in items]) for t in grid]
        best[organ] = float(grid[int(np.argmax(means))])
    return best


def summarise(scores: Sequence[ImageScore]) -> dict[str, Any]:
    """Mean per-image Dice overall, per organ, per data source and per (source, organ)."""

    def mean_by(key: Callable[[ImageScore], str]) -> dict[str, float]:
        groups: dict[str, list[float]] = defaultdict(list)
        for item in scores:
            groups[key(item)].append(item.dice)
        return {name: round(float(np.mean(v)), 4) for name, v in sorted(groups.items())}

    return {
        "dice": round(float(np.mean([s.dice for s in scores])), 4) if scores else float("nan"),
        "images": len(scores),
        "organ": mean_by(lambda s: s.record.organ),
        "data_source": mean_by(lambda s: s.record.data_source),
        "source_organ": mean_by(lambda s: f"{s.record.data_source}/{s.record.organ}"),
        "per_image": {
            s.record.id: {"organ": s.record.organ, "dice": round(s.dice, 4)} for s in scores
        },
    }


def _full_size(item: ImageScore, threshold: float) -> np.ndarray:
    """The thresholded probability at the image's level-0 size (nearest neighbour, as the RLE
    the CLI writes)."""
    mask = item.probability >= threshold
    if mask.shape == item.record.shape:
        return mask
    return resize_labels(mask, item.record.shape)
