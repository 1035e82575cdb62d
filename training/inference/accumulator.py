"""The band accumulator: blends overlapping tile probabilities, one row band at a time.

The band is one tile high and as wide as the output, and lives on the model's device, so on a
GPU the blending never leaves it. Once no later tile touches a row, that row is final: it is
normalised by the summed blend weights, weighted, copied to the output store and leaves the band.
"""

from __future__ import annotations

import numpy as np
import torch

from training.inference.store import OutputStore


class BandAccumulator:
    """Blends one member's ``tile x tile`` probabilities into ``store`` (rows ``y0 ...``)."""

    def __init__(
        self,
        store: OutputStore,
        window: np.ndarray,
        weight: float,
        device: torch.device,
        first: bool,
    ) -> None:
        self.store = store
        self.tile = window.shape[0]
        self.weight = weight
        self.first = first
        width = store.shape[1]
        self.window = torch.from_numpy(window).to(device)
        self.numerator = torch.zeros((self.tile, width), device=device)
        self.weights = torch.zeros((self.tile, width), device=device)
        self.y0 = 0  # output row of the band's first row

    def add(self, x: int, probability: torch.Tensor) -> None:
        """Blend one tile whose top-left corner is at (band top, ``x``)."""
        span = min(self.tile, self.store.shape[1] - x)
        window = self.window[:, :span]
        self.numerator[:, x : x + span] += probability[:, :span] * window
        self.weights[:, x : x + span] += window

    def advance(self, next_y: int) -> None:
        """Finish every row above ``next_y`` (the next tile row's top) and move the band there."""
        height = self.store.shape[0]
        next_y = min(next_y, height)
        rows = min(next_y - self.y0, self.tile)
        if rows > 0:
            # weights are never 0 under a tile (see blend_window); 0 where no tile ran, and
            # there the numerator is 0 too
            final = self.numerator[:rows] / self.weights[:rows].clamp_min(1e-30)
            if self.weight != 1:
                final *= self.weight
            self.store.add(self.y0, final.cpu().numpy(), self.first)  # next_y <= height
            self.numerator = torch.roll(self.numerator, -rows, dims=0)
            self.weights = torch.roll(self.weights, -rows, dims=0)
            self.numerator[-rows:] = 0
            self.weights[-rows:] = 0
        if next_y - self.y0 > self.tile:  # rows no tile of this member reaches: write zeros
            gap = np.zeros((next_y - self.y0 - self.tile, self.store.shape[1]), np.float32)
            self.store.add(self.y0 + self.tile, gap, self.first)
        self.y0 = max(self.y0, next_y)
