"""The device-resident path: a batch's pixels go to the device once, as uint8, and stay there.

The tile source of the host path (:mod:`training.inference.source`) resamples each batch's span
to the model's grid on the host and hands the predictor float-ready tiles. Here the host only
reads the span's pixels from the pyramid level the host path would read, as uint8 (pinned on
CUDA, on the reading threads), together with the span's resampling weights: the same exact area
means (or, for a level coarser than asked, the same linear weights) that
:meth:`training.slides.Slide.read_region_at` applies, cut into small dense blocks along the
band of the sparse matrices. On the device the span is resampled (``W_y @ img @ W_x^T``, block
by block), cut into tiles and handed to the shared predictor (normalisation, TTA, autocast,
one upsampling), whose probabilities the shared band accumulator blends on the device and sends
back compactly. Tiles therefore stitch exactly as on the host path; the values differ from it
only by the host path's rounding of resampled pixels to uint8.

Selected by the engine on CUDA when no stain normaliser runs (that one works on host pixels);
on the CPU only when asked (``device_path=True``): see docs/benchmarks.md, issue 24.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from training.inference.predictor import Predictor
from training.inference.source import TileSource, _spans, as_rgb_uint8
from training.slides import LEVEL_TOLERANCE, Slide
from training.slides.resample import area_weights, linear_weights

# output rows (columns) per dense weight block: on a GPU few launches of small matrices; on a
# CPU the dense blocks' wasted products cost more than the launches (measured: 32 px blocks
# feed 2x faster than 256 px blocks there, still slower than the host's sparse products)
BLOCK_CUDA, BLOCK_CPU = 256, 32

Blocks = list[tuple[int, int, int, int, torch.Tensor]]  # (out0, out1, in0, in1, weights)


@dataclass
class Span:
    """One span of a batch: level pixels ``(H, W, 3)`` uint8 and the blocks that resample them
    to the model's grid (``None``: the level is the model's grid already)."""

    pixels: torch.Tensor
    along_y: Blocks | None
    along_x: Blocks | None
    offsets: list[int]  # each tile's left edge in the resampled span


def dense_blocks(weights: Any, block: int, pin: bool = False) -> Blocks:
    """A sparse ``(n, length)`` resampling matrix as dense ``(rows, columns)`` blocks of at most
    ``block`` output rows, each over the input range its non-zero weights reach."""
    blocks: Blocks = []
    for out0 in range(0, weights.shape[0], block):
        part = weights[out0 : out0 + block]
        used = part.indices[part.data != 0]
        in0, in1 = (int(used.min()), int(used.max()) + 1) if used.size else (0, 1)
        dense = torch.from_numpy(part[:, in0:in1].toarray().astype(np.float32))
        blocks.append((out0, out0 + part.shape[0], in0, in1, dense.pin_memory() if pin else dense))
    return blocks


def read_span(
    slide: Slide, pixel_size_um: float, y: int, x: int, h: int, w: int, pin: bool = False
) -> tuple[torch.Tensor, Blocks | None, Blocks | None]:
    """Level pixels and resampling blocks of the ``h x w`` region at ``(y, x)`` of the grid of
    ``pixel_size_um``: the level, origin and weights :meth:`Slide.read_region_at` uses;
    ``pin``: page-locked for CUDA (and blocks sized for a GPU)."""
    factor = pixel_size_um / slide.pixel_size_um
    level = slide.best_level(factor)
    ratio = factor / slide.level_downsamples[level]
    whole = max(1, round(ratio))
    snapped = abs(ratio - whole) <= LEVEL_TOLERANCE * whole and abs(ratio - whole) * max(h, w) < 0.5
    if snapped:  # whole-number blocks from the rounded origin, as the host path reads them
        sy, sx, sh, sw = round(y * ratio), round(x * ratio), h * whole, w * whole
        if whole == 1:
            along_y = along_x = None
        else:
            along_y, along_x = area_weights(0, whole, h, sh), area_weights(0, whole, w, sw)
    elif ratio > 1:
        top, left = y * ratio, x * ratio
        sy, sx = math.floor(top), math.floor(left)
        sh = math.ceil((y + h) * ratio) - sy + 1
        sw = math.ceil((x + w) * ratio) - sx + 1
        along_y = area_weights(top - sy, ratio, h, sh)
        along_x = area_weights(left - sx, ratio, w, sw)
    else:
        sy = math.floor((y + 0.5) * ratio - 0.5)
        sx = math.floor((x + 0.5) * ratio - 0.5)
        sh = math.ceil((y + h) * ratio) - sy + 2
        sw = math.ceil((x + w) * ratio) - sx + 2
        along_y = linear_weights((y + 0.5) * ratio - 0.5 - sy, ratio, h, sh)
        along_x = linear_weights((x + 0.5) * ratio - 0.5 - sx, ratio, w, sw)
    region = as_rgb_uint8(slide.read_region(sy, sx, sh, sw, level))
    pixels = torch.from_numpy(np.ascontiguousarray(region))
    if pin:
        pixels = pixels.pin_memory()
    if along_y is None:
        return pixels, None, None
    block = BLOCK_CUDA if pin else BLOCK_CPU
    return pixels, dense_blocks(along_y, block, pin), dense_blocks(along_x, block, pin)


def resample(pixels: torch.Tensor, along_y: Blocks | None, along_x: Blocks | None) -> torch.Tensor:
    """``(3, h, w)`` float32 ``W_y @ pixels @ W_x^T`` of ``(H, W, 3)`` pixels on their device."""
    image = pixels.permute(2, 0, 1).float()
    if along_y is None or along_x is None:
        return image
    rows = image.new_empty((3, along_y[-1][1], image.shape[2]))
    for out0, out1, in0, in1, weights in along_y:
        torch.matmul(weights, image[:, in0:in1], out=rows[:, out0:out1])
    out = image.new_empty((3, rows.shape[1], along_x[-1][1]))
    for out0, out1, in0, in1, weights in along_x:
        torch.matmul(rows[:, :, in0:in1], weights.T, out=out[:, :, out0:out1])
    return out


class SpanSource(TileSource):
    """Reads a batch as the spans of :class:`Span` (level uint8 pixels and weights), read
    ahead on the tile source's threads; ``pin``: in page-locked memory (for CUDA)."""

    def __init__(
        self, slide: Slide, pixel_size_um: float, tile: int, workers: int = 2, pin: bool = False
    ) -> None:
        super().__init__(slide, pixel_size_um, tile, None, workers)
        self.pin = pin

    def read(self, y: int, xs: Sequence[int]) -> list[Span]:  # type: ignore[override]
        """The spans of the tiles at ``(y, x)`` for each ``x``, in the order of ``xs``."""
        spans = []
        for group in _spans(xs, self.tile):
            x0 = xs[group[0]]
            width = xs[group[-1]] + self.tile - x0
            pixels, along_y, along_x = read_span(
                self.slide, self.pixel_size_um, y, x0, self.tile, width, self.pin
            )
            spans.append(Span(pixels, along_y, along_x, [xs[i] - x0 for i in group]))
        return spans


class SpanPredictor:
    """Uploads a batch's spans once, resamples them on the device, cuts the tiles and runs
    ``predictor`` on them (its normalisation, TTA, autocast and upsampling)."""

    def __init__(self, predictor: Predictor, tile: int) -> None:
        self.predictor = predictor
        self.tile = tile
        self.device = predictor.device

    def __call__(self, spans: list[Span]) -> torch.Tensor:
        count = sum(len(span.offsets) for span in spans)
        with self.predictor.memory_guard(count, self.tile):  # the upload and resampling too
            tiles = self._tiles(spans)
        return self.predictor.forward(tiles)

    def _tiles(self, spans: list[Span]) -> torch.Tensor:
        tiles = []
        for span in spans:
            image = resample(
                _to(span.pixels, self.device),
                _blocks_to(span.along_y, self.device),
                _blocks_to(span.along_x, self.device),
            )
            tiles.extend(image[:, :, x : x + self.tile] for x in span.offsets)
        return torch.stack(tiles)


def _to(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    return tensor.to(device, non_blocking=tensor.is_pinned())


def _blocks_to(blocks: Blocks | None, device: torch.device) -> Blocks | None:
    if blocks is None or device.type == "cpu":
        return blocks
    return [(a, b, c, d, _to(w, device)) for a, b, c, d, w in blocks]
