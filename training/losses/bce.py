"""Binary cross-entropy on logits."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from training.losses._functional import (
    check_positive,
    match_target,
    match_weight,
    promote,
    weighted_mean,
)


class BCELoss(nn.Module):
    """Mean binary cross-entropy from logits, computed in float32.

    ``pos_weight`` scales the foreground term (``> 1`` favours recall on sparse masks).
    """

    def __init__(self, pos_weight: float | None = None) -> None:
        super().__init__()
        self.pos_weight = None if pos_weight is None else check_positive("pos_weight", pos_weight)

    def forward(
        self, logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Loss for logits (N, 1, H, W) against a 0/1 target (N, 1, H, W) or (N, H, W); an
        optional per-pixel ``weight`` of the target's shape gives the weighted mean."""
        logits = promote(logits)
        target = match_target(logits, target)
        pos_weight = None
        if self.pos_weight is not None:
            pos_weight = torch.tensor(self.pos_weight, dtype=logits.dtype, device=logits.device)
        if weight is None:
            return F.binary_cross_entropy_with_logits(logits, target, pos_weight=pos_weight)
        loss = F.binary_cross_entropy_with_logits(
            logits, target, pos_weight=pos_weight, reduction="none"
        )
        return weighted_mean(loss, match_weight(logits, weight))

    def extra_repr(self) -> str:
        return f"pos_weight={self.pos_weight}"
