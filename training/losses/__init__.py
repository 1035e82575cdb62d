"""Training losses for binary FTU segmentation: one loss per module, shared maths in
``_functional``, and :class:`SegmentationLoss` combining them with deep supervision."""

from training.losses.bce import BCELoss
from training.losses.combined import LossConfig, SegmentationLoss
from training.losses.deep_supervision import DeepSupervisionLoss
from training.losses.dice import DiceLoss
from training.losses.focal import FocalLoss

__all__ = [
    "BCELoss",
    "DeepSupervisionLoss",
    "DiceLoss",
    "FocalLoss",
    "LossConfig",
    "SegmentationLoss",
]
