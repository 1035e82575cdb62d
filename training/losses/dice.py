"""Soft Dice on sigmoid probabilities."""

from __future__ import annotations

import torch
from torch import nn

from training.losses._functional import (
    check_non_negative,
    match_target,
    match_weight,
    promote,
    soft_dice_score,
)


class DiceLoss(nn.Module):
    """``1 - soft Dice`` of ``sigmoid(logits)`` against the target, computed in float32.

    ``per_image=True`` (default) scores every image on its own and averages, like the
    competition's per-image Dice; ``per_image=False`` pools the whole batch into one score.

    Empty targets: with ``smooth > 0`` an image with no foreground scores a loss of
    ``|P| / (|P| + smooth)``, where ``|P|`` is its summed probability: about 0 when the
    prediction is empty too (the metric's "empty vs empty is a perfect 1"), approaching 1 as
    false foreground grows, and never NaN. With ``smooth = 0`` such an image always has loss 1.
    """

    def __init__(self, smooth: float = 1.0, per_image: bool = True) -> None:
        super().__init__()
        self.smooth = check_non_negative("dice smooth", smooth)
        self.per_image = per_image

    def forward(
        self, logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Loss for logits (N, 1, H, W) against a 0/1 target (N, 1, H, W) or (N, H, W); with a
        per-pixel ``weight`` (0/1: which pixels count) the Dice of the weighted pixels only."""
        logits = promote(logits)
        target = match_target(logits, target)
        probs = logits.sigmoid()
        weight = match_weight(logits, weight)
        if weight is not None:  # a pixel of weight 0 is in neither |P| nor |T| nor the overlap
            probs, target = probs * weight, target * weight
        score = soft_dice_score(probs, target, self.smooth, self.per_image)
        return (1 - score).mean()

    def extra_repr(self) -> str:
        return f"smooth={self.smooth}, per_image={self.per_image}"
