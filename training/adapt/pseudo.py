"""Self-training on unlabelled target crops: confident pixels of a frozen teacher as labels.

The teacher is a copy of the model (its EMA when the run keeps one) taken at the start of each
epoch and frozen for it: the labels are refreshed once an epoch, as in the pseudo-label rounds
of the competition's 2nd and 3rd places, and within an epoch they do not chase the weights they
train (which would feed the student's own mistakes straight back to it). Only confident pixels
count: probability >= ``high`` is FTU, <= ``low`` background, the rest has weight 0.
"""

from __future__ import annotations

import contextlib
import copy

import torch
from torch import nn

__all__ = ["Teacher", "pseudo_labels"]


def pseudo_labels(
    probs: torch.Tensor, low: float, high: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(target, weight)`` from probabilities: 1 where ``probs >= high``, 0 elsewhere; weight
    1 where ``probs >= high`` or ``probs <= low`` (confident), 0 in between (ignored)."""
    positive = probs >= high
    confident = positive | (probs <= low)
    return positive.to(probs.dtype), confident.to(probs.dtype)


class Teacher:
    """A frozen copy of a model that labels target crops (eval mode, no gradients)."""

    def __init__(self) -> None:
        self.model: nn.Module | None = None

    def refresh(self, model: nn.Module) -> None:
        """Take a frozen copy of ``model``'s current weights."""
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """FTU probabilities ``(N, 1, H, W)`` of normalised images ``(N, 3, H, W)``."""
        if self.model is None:
            raise RuntimeError("the teacher labels nothing before its first refresh")
        autocast = (
            torch.autocast("cuda", dtype=torch.bfloat16)
            if images.device.type == "cuda"
            else contextlib.nullcontext()
        )
        with autocast:
            logits = self.model(images)
        return logits.float().sigmoid()
