"""Focal loss on logits."""

from __future__ import annotations

import torch
from torch import nn

from training.losses._functional import (
    check_non_negative,
    check_probability,
    focal_with_logits,
    match_target,
    match_weight,
    promote,
    weighted_mean,
)


class FocalLoss(nn.Module):
    """Mean focal loss ``alpha_t (1 - p_t)^gamma BCE`` from logits, computed in float32.

    ``gamma`` down-weights pixels already classified well; ``alpha`` (if given) weights the
    foreground by ``alpha`` and the background by ``1 - alpha``. With ``gamma=0`` and
    ``alpha=None`` it is plain binary cross-entropy.
    """

    def __init__(self, alpha: float | None = None, gamma: float = 2.0) -> None:
        super().__init__()
        self.alpha = None if alpha is None else check_probability("focal alpha", alpha)
        self.gamma = check_non_negative("focal gamma", gamma)

    def forward(
        self, logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Loss for logits (N, 1, H, W) against a 0/1 target (N, 1, H, W) or (N, H, W); an
        optional per-pixel ``weight`` of the target's shape gives the weighted mean."""
        logits = promote(logits)
        target = match_target(logits, target)
        loss = focal_with_logits(logits, target, self.gamma, self.alpha)
        return weighted_mean(loss, match_weight(logits, weight))

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, gamma={self.gamma}"
