"""The predictor: a batch of RGB uint8 tiles in, FTU probabilities out, on any device.

Normalisation happens on the device; all test-time-augmentation views of a batch run as one
forward pass; on CUDA the batch travels from pinned memory without blocking and the model runs
under bf16 autocast.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from training.models.ensemble import Member

TTA_CHOICES = (1, 4, 8)

View = tuple[Callable[[torch.Tensor], torch.Tensor], Callable[[torch.Tensor], torch.Tensor]]


def tta_views(tta: int) -> list[View]:
    """``(forward, inverse)`` pairs: the identity, flips (4), and flips of the transpose (8)."""
    if tta not in TTA_CHOICES:
        raise ValueError(f"tta must be one of {TTA_CHOICES}; got {tta}")
    flips = [(), (3,), (2,), (2, 3)]

    def flip(dims: tuple[int, ...]) -> Callable[[torch.Tensor], torch.Tensor]:
        return lambda t: t.flip(dims) if dims else t

    views: list[View] = [(flip(d), flip(d)) for d in flips[: min(tta, 4)]]
    if tta == 8:
        for d in flips:
            f = flip(d)
            views.append((lambda t, f=f: f(t).transpose(2, 3), lambda t, f=f: f(t.transpose(2, 3))))
    return views


class Predictor:
    """Runs one ensemble member on batches of tiles; returns ``(B, out, out)`` probabilities
    on ``device`` (``out``: the tile's size at the working scale)."""

    def __init__(self, member: Member, device: torch.device, tta: int, out_size: int) -> None:
        self.device = device
        self.views = tta_views(tta)
        self.out_size = out_size
        self.model = member.model.to(device, memory_format=torch.channels_last).eval()
        self.mean = torch.tensor(member.meta["mean"], device=device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(member.meta["std"], device=device).view(1, 3, 1, 1) * 255

    def __call__(self, tiles: np.ndarray) -> torch.Tensor:
        batch = torch.from_numpy(tiles)
        if self.device.type == "cuda":
            batch = batch.pin_memory().to(self.device, non_blocking=True)
        x = batch.permute(0, 3, 1, 2).float()
        x = ((x - self.mean) / self.std).contiguous(memory_format=torch.channels_last)
        autocast = (
            torch.autocast("cuda", dtype=torch.bfloat16)
            if self.device.type == "cuda"
            else contextlib.nullcontext()
        )
        with torch.inference_mode(), autocast:
            views = torch.cat([forward(x) for forward, _ in self.views])
            probs = torch.sigmoid(self.model(views).float()).chunk(len(self.views))
            prob = sum(inverse(p) for (_, inverse), p in zip(self.views, probs, strict=True))
            prob = prob / len(self.views)
            if prob.shape[-1] != self.out_size:
                size = (self.out_size, self.out_size)
                prob = F.interpolate(prob, size=size, mode="bilinear", align_corners=False)
        return prob[:, 0].float()
