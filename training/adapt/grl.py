"""Domain-adversarial training (Ganin & Lempitsky 2015): a gradient reversal layer and a small
domain classifier on the encoder's deepest features.

The classifier learns to tell source (training) crops from target crops; the reversed gradient
makes the encoder learn features it cannot tell apart. The reversal's strength is ramped from 0
as in the paper, ``lambda_p = 2 / (1 + exp(-10 p)) - 1`` over training progress ``p``, so the
classifier's early, random gradients do not disturb the segmenter.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["DomainClassifier", "GradientReversal", "domain_loss", "ramp", "reverse_gradient"]


class GradientReversal(torch.autograd.Function):
    """The identity forward; backward, the gradient times ``-lambda``."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, lam: float) -> torch.Tensor:
        ctx.lam = lam
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return -ctx.lam * grad, None


def reverse_gradient(x: torch.Tensor, lam: float) -> torch.Tensor:
    """``x`` unchanged, its gradient multiplied by ``-lam`` on the way back."""
    return GradientReversal.apply(x, float(lam))


def ramp(progress: float) -> float:
    """The paper's schedule ``2 / (1 + exp(-10 p)) - 1``: 0 at ``p = 0``, about 1 at ``p = 1``."""
    progress = min(max(float(progress), 0.0), 1.0)
    return 2.0 / (1.0 + math.exp(-10.0 * progress)) - 1.0


class DomainClassifier(nn.Module):
    """Two 3x3 convolutions, global average pooling and a linear layer: one logit per image,
    positive for target. Group normalisation, not batch normalisation: its statistics must
    not depend on how many crops of each domain a batch holds."""

    def __init__(self, channels: int, hidden: int = 64) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(channels, hidden, 3, padding=1),
            nn.GroupNorm(8, hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, padding=1),
            nn.GroupNorm(8, hidden),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.logit = nn.Linear(hidden, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """``(N, C, h, w)`` features -> ``(N,)`` domain logits."""
        return self.logit(self.features(features)).squeeze(1)


def domain_loss(
    classifier: nn.Module, source: torch.Tensor, target: torch.Tensor, lam: float
) -> tuple[torch.Tensor, float]:
    """BCE of ``classifier`` telling ``source`` (label 0) from ``target`` (label 1) features,
    seen through the gradient reversal of strength ``lam``; and the classifier's accuracy."""
    features = reverse_gradient(torch.cat([source, target]).float(), lam)
    logits = classifier(features).float()
    labels = torch.cat([logits.new_zeros(len(source)), logits.new_ones(len(target))])
    loss = F.binary_cross_entropy_with_logits(logits, labels)
    accuracy = float(((logits > 0).float() == labels).float().mean())
    return loss, accuracy
