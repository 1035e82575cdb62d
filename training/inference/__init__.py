"""Tiled, streaming inference over slides of any size (Qt-free)."""

from training.inference.engine import (
    Band,
    Progress,
    RunOptions,
    SegmentationResult,
    run,
    segment,
    working_map,
)
from training.inference.postprocess import probability_to_labels, resize_labels
from training.inference.predictor import DeviceMemoryError

__all__ = [
    "Band",
    "DeviceMemoryError",
    "Progress",
    "RunOptions",
    "SegmentationResult",
    "probability_to_labels",
    "resize_labels",
    "run",
    "segment",
    "working_map",
]
