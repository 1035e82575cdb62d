"""One loss applied to every auxiliary logit map, with per-level weights."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from training.losses._functional import RESIZE_MODES, check_non_negative, resize_target

# (logits, target) -> loss, or (logits, target, per-pixel weight) -> loss when a weight is given
LossFn = Callable[..., torch.Tensor]


class DeepSupervisionLoss(nn.Module):
    """``sum_i weights[i] * base_loss(aux[i], target_i)`` over the auxiliary logit maps.

    ``weights=None`` weighs every level ``1 / len(aux)`` (the mean). A map smaller or larger
    than the target is scored against the target resized to its size: ``resize="area"`` gives
    coarse pixels the fraction of foreground they cover, ``"nearest"`` keeps the target 0/1.
    """

    def __init__(
        self,
        base_loss: LossFn,
        weights: Sequence[float] | None = None,
        resize: str = "area",
    ) -> None:
        super().__init__()
        if resize not in RESIZE_MODES:
            raise ValueError(f"aux resize must be one of {RESIZE_MODES}; got {resize!r}")
        if weights is not None:
            weights = tuple(check_non_negative(f"aux weight {i}", w) for i, w in enumerate(weights))
            if not any(weights):
                raise ValueError(f"aux weights are all zero: {list(weights)}")
        self.base_loss = base_loss
        self.weights = weights
        self.resize = resize

    def forward(
        self,
        aux: Sequence[torch.Tensor],
        target: torch.Tensor,
        weight: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Weighted sum of the base loss over ``aux`` maps (N, 1, h, w) against ``target``
        (N, 1, H, W) or (N, H, W); an optional per-pixel ``weight`` of the target's shape goes
        to the base loss, resized like the target (a coarse pixel's target is then the
        weighted mean of the fine pixels it covers)."""
        if len(aux) == 0:
            raise ValueError("no auxiliary logit maps given")
        weights = self.weights or (1 / len(aux),) * len(aux)
        if len(weights) != len(aux):
            raise ValueError(f"{len(weights)} aux weights for {len(aux)} auxiliary logit maps")
        if target.ndim == aux[0].ndim - 1:
            target = target.unsqueeze(1)
        if weight is not None and weight.ndim == aux[0].ndim - 1:
            weight = weight.unsqueeze(1)
        total = aux[0].new_zeros((), dtype=torch.float32)
        for level_weight, logits in zip(weights, aux, strict=True):
            if level_weight == 0:
                continue
            size = tuple(logits.shape[-2:])
            if weight is None:
                level_loss = self.base_loss(logits, resize_target(target, size, self.resize))
            else:
                pixels = resize_target(weight, size, self.resize)
                level_target = resize_target(target * weight, size, self.resize)
                level_target = level_target / pixels.clamp_min(1e-6)
                level_loss = self.base_loss(logits, level_target, pixels)
            total = total + level_weight * level_loss
        return total

    def extra_repr(self) -> str:
        return f"weights={self.weights}, resize={self.resize!r}"
