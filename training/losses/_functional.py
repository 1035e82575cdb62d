"""Maths and checks shared by the losses: float32 promotion, target shaping, soft Dice, focal."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

RESIZE_MODES = ("nearest", "area")


def promote(x: torch.Tensor) -> torch.Tensor:
    """``x`` as float32, or float64 if it already is: half-precision logits from autocast lose
    too much in ``log`` and large sums."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def match_target(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``target`` shaped and typed like ``logits``; an ``(N, H, W)`` target gains the channel."""
    if target.ndim == logits.ndim - 1:
        target = target.unsqueeze(1)
    if target.shape != logits.shape:
        raise ValueError(
            f"target shape {tuple(target.shape)} does not match logits {tuple(logits.shape)}"
        )
    return target.to(logits.dtype)


def resize_target(target: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """``target`` (N, C, H, W) resized to ``size``: ``nearest`` keeps it 0/1, ``area`` gives each
    coarse pixel the fraction of foreground it covers."""
    if mode not in RESIZE_MODES:
        raise ValueError(f"resize mode must be one of {RESIZE_MODES}; got {mode!r}")
    if tuple(target.shape[-2:]) == tuple(size):
        return target
    return F.interpolate(promote(target), size=size, mode=mode)


def match_weight(logits: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor | None:
    """A per-pixel loss ``weight`` shaped and typed like ``logits`` (``None`` stays ``None``)."""
    if weight is None:
        return None
    return match_target(logits, weight)


def weighted_mean(values: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """The mean of ``values``, or their mean weighted by ``weight``: pixels of weight 0 add
    nothing, not even a gradient, and all-zero weights give 0 (nothing to learn from)."""
    if weight is None:
        return values.mean()
    return (values * weight).sum() / weight.sum().clamp_min(1.0)


def soft_dice_score(
    probs: torch.Tensor, target: torch.Tensor, smooth: float, per_image: bool
) -> torch.Tensor:
    """Soft Dice ``(2|P∩T| + smooth) / (|P| + |T| + smooth)``: one score per image (shape
    ``(N,)``) or one for the whole batch (shape ``()``).

    With ``smooth > 0`` an empty target scores ``smooth / (|P| + smooth)``: close to 1 when the
    prediction is empty too, falling towards 0 as predicted foreground grows.
    """
    dims = tuple(range(1, probs.ndim)) if per_image else tuple(range(probs.ndim))
    intersection = (probs * target).sum(dims)
    total = probs.sum(dims) + target.sum(dims)
    # With smooth = 0 an empty image would be 0/0; the floor makes it score 0 instead of NaN.
    return (2 * intersection + smooth) / (total + smooth).clamp_min(1e-7)


def focal_with_logits(
    logits: torch.Tensor, target: torch.Tensor, gamma: float, alpha: float | None
) -> torch.Tensor:
    """Elementwise focal loss ``alpha_t (1 - p_t)^gamma BCE`` from logits, with
    ``p_t = exp(-BCE)`` so that soft targets work too."""
    loss = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    if gamma > 0:
        # expm1 keeps 1 - p_t accurate when p_t is near 1; the floor keeps the gradient of
        # x**gamma (infinite at 0 for gamma < 1) finite for confidently right pixels.
        hard = (-torch.expm1(-loss)).clamp_min(torch.finfo(loss.dtype).tiny)
        loss = hard.pow(gamma) * loss
    if alpha is not None:
        loss = loss * (alpha * target + (1 - alpha) * (1 - target))
    return loss


def check_non_negative(name: str, value: float) -> float:
    """``value`` as a float, or a ValueError naming ``name`` if it is negative or not finite."""
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0; got {value}")
    return value


def check_positive(name: str, value: float) -> float:
    """``value`` as a float, or a ValueError naming ``name`` if it is not finite and > 0."""
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0; got {value}")
    return value


def check_probability(name: str, value: float) -> float:
    """``value`` as a float, or a ValueError naming ``name`` if it lies outside [0, 1]."""
    value = float(value)
    if not 0 <= value <= 1:
        raise ValueError(f"{name} must lie in [0, 1]; got {value}")
    return value
