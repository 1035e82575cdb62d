"""The band accumulator: blends overlapping tile probabilities, one row band at a time.

The band is one tile high and as wide as the output, and lives on the model's device, so on a
GPU the blending never leaves it. Once no later tile touches a row, that row is final: it is
normalised by the summed blend weights, weighted and copied to the output store, and leaves the
band. On CUDA the finished rows travel to the host as float16, without blocking, into one of
two pinned buffers: a band's rows are written to the store while the next band computes, and
the host waits only when a third would be in flight or the map's last row is done.
"""

from __future__ import annotations

from collections import deque

import numpy as np
import torch

from training.inference.store import OutputStore

GAP_BYTES = 64 * 2**20  # the most zero rows written to the store at once


class BandAccumulator:
    """Blends one member's ``tile x tile`` probabilities into ``store``.

    ``y0``: the output rows above it are in the store (on CUDA, rows still travelling to the
    host are not counted until they land).
    """

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
        self.top = 0  # output row of the band's first row
        self.y0 = 0
        self.asynchronous = device.type == "cuda"
        self._in_flight: deque[tuple[int, torch.Tensor, torch.cuda.Event]] = deque()

    def add(self, x: int, probability: torch.Tensor) -> None:
        """Blend one tile whose top-left corner is at (band top, ``x``)."""
        span = min(self.tile, self.store.shape[1] - x)
        window = self.window[:, :span]
        self.numerator[:, x : x + span].addcmul_(probability[:, :span], window)
        self.weights[:, x : x + span] += window

    def advance(self, next_y: int) -> None:
        """Finish every row above ``next_y`` (the next tile row's top) and move the band there;
        at the map's last row, wait for every row in flight."""
        height = self.store.shape[0]
        next_y = min(next_y, height)
        rows = min(next_y - self.top, self.tile)
        if rows > 0:
            # weights are never 0 under a tile (see blend_window); 0 where no tile ran, and
            # there the numerator is 0 too
            final = self.numerator[:rows].div_(self.weights[:rows].clamp_min_(1e-30))
            if self.weight != 1:
                final.mul_(self.weight)
            self._send(self.top, final)
            self.numerator = torch.roll(self.numerator, -rows, dims=0)
            self.weights = torch.roll(self.weights, -rows, dims=0)
            self.numerator[-rows:] = 0
            self.weights[-rows:] = 0
        if next_y - self.top > self.tile and self.first:  # rows no tile reaches: zeros
            # (a later member's zeros would add nothing); a piece at a time, since the gap can
            # be most of the map (the glass below the last tissue row)
            width = self.store.shape[1]
            step = max(1, GAP_BYTES // (4 * width))
            for y in range(self.top + self.tile, next_y, step):
                gap = np.zeros((min(step, next_y - y), width), np.float32)
                self.store.add(y, gap, self.first)
        self.top = max(self.top, next_y)
        if self.top >= height:
            self.flush()
        self.y0 = self._in_flight[0][0] if self._in_flight else self.top

    def flush(self) -> None:
        """Write every row still travelling to the host into the store."""
        while self._in_flight:
            self._land()
        self.y0 = self.top

    def _send(self, y0: int, final: torch.Tensor) -> None:
        if not self.asynchronous:
            self.store.add(y0, final.numpy(), self.first)
            return
        host = torch.empty(final.shape, dtype=torch.float16, pin_memory=True)
        host.copy_(final.half(), non_blocking=True)  # converted on the device: half the bytes
        done = torch.cuda.Event()
        done.record()
        self._in_flight.append((y0, host, done))
        if len(self._in_flight) > 2:  # double-buffered: wait for the oldest only
            self._land()

    def _land(self) -> None:
        y0, host, done = self._in_flight.popleft()
        done.synchronize()
        self.store.add(y0, host.numpy().astype(np.float32), self.first)
