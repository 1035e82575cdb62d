"""Training crops cut at the model's pixel size, for a torch ``DataLoader`` with workers.

Every crop is read at the model's scale (the seeds' pixel-size adaptation: a 0.4 um/px HPA image
and a 0.65 um/px HuBMAP image give a glomerulus the same size in pixels), centred on an FTU or
placed at random, then augmented. A sample is a pure function of ``(seed, index)``: the sampler
hands out indices, so DataLoader workers and torchrun ranks draw different crops and a run is
reproducible.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from training.data.catalog import ORGANS
from training.data.records import Record

__all__ = ["CropDataset", "CropOptions", "CropSampler"]

# The augmenter: (image, mask, rng, *, organ, model_um, thickness_um, other) -> (image, mask)
Augment = Callable[..., tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class CropOptions:
    """How crops are cut: side in pixels at ``model_um`` um/px; ``ftu_fraction`` of them are
    centred on an FTU (moved by up to ``jitter`` of the side), the rest placed at random."""

    tile: int
    model_um: float
    ftu_fraction: float = 0.6
    jitter: float = 0.35
    open_slides: int = 16  # slides kept open per worker


class CropDataset(Dataset):
    """Crops of ``records`` drawn with ``probabilities``; item ``i`` is the same crop for the same
    ``seed``. Items are ``{"image": (T, T, 3) uint8, "mask": (T, T) uint8, "organ": int}``."""

    def __init__(
        self,
        records: Sequence[Record],
        probabilities: np.ndarray,
        options: CropOptions,
        augment: Augment | None = None,
        seed: int = 0,
    ) -> None:
        if not records:
            raise ValueError("no training images")
        if len(probabilities) != len(records):
            raise ValueError("one sampling probability per record is needed")
        self.records = list(records)
        self.cumulative = np.cumsum(probabilities) / np.sum(probabilities)
        self.options = options
        self.augment = augment
        self.seed = seed
        self._open: OrderedDict[int, tuple[Any, Any]] = OrderedDict()

    def __getitem__(self, index: int) -> dict[str, Any]:
        rng = np.random.default_rng([self.seed, index])
        record_index = self._draw(rng)
        record = self.records[record_index]
        image, mask = self.crop(record_index, rng)
        if self.augment is not None:
            other_index = self._draw(rng)
            image, mask = self.augment(
                image,
                mask,
                rng,
                organ=record.organ,
                model_um=self.options.model_um,
                thickness_um=record.thickness_um,
                other=lambda: self.crop(other_index, rng),
            )
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image)),
            "mask": torch.from_numpy(np.ascontiguousarray(mask)),
            "organ": ORGANS.index(record.organ),
        }

    def crop(self, record_index: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """One ``(image, mask)`` crop of a record at the model's scale."""
        record = self.records[record_index]
        slide, mask_slide = self._slides(record_index)
        tile, model_um = self.options.tile, self.options.model_um
        scale = record.pixel_size_um / model_um  # model pixels per level-0 pixel
        height, width = (math.ceil(n * scale) for n in record.shape)
        if len(record.centres) and rng.random() < self.options.ftu_fraction:
            cy, cx = record.centres[rng.integers(len(record.centres))] * scale
            shift = rng.uniform(-self.options.jitter, self.options.jitter, 2) * tile
            y, x = round(cy + shift[0] - tile / 2), round(cx + shift[1] - tile / 2)
            # stay inside the image where it is big enough: padding teaches nothing
            y = int(np.clip(y, 0, max(height - tile, 0)))
            x = int(np.clip(x, 0, max(width - tile, 0)))
        else:
            y = int(rng.integers(0, max(height - tile, 0) + 1))
            x = int(rng.integers(0, max(width - tile, 0) + 1))
        image = slide.read_region_at(model_um, y, x, tile, tile)[..., :3]
        mask = mask_slide.read_region_at(model_um, y, x, tile, tile, fill=0)[..., 0]
        return _as_rgb(image), mask

    def _draw(self, rng: np.random.Generator) -> int:
        index = int(np.searchsorted(self.cumulative, rng.random(), side="right"))
        return min(index, len(self.records) - 1)

    def _slides(self, record_index: int) -> tuple[Any, Any]:
        """The record's image and mask as slides, kept open per worker (least recently used)."""
        from training.slides import Slide, open_slide

        if record_index in self._open:
            self._open.move_to_end(record_index)
            return self._open[record_index]
        record = self.records[record_index]
        slide = open_slide(record.image, pixel_size_um=record.pixel_size_um)
        mask = Slide.from_array(record.mask()[..., None], record.pixel_size_um, name="mask")
        self._open[record_index] = (slide, mask)
        while len(self._open) > self.options.open_slides:
            _, (old, _) = self._open.popitem(last=False)
            old.close()
        return slide, mask

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_open"] = OrderedDict()  # open files do not travel to worker processes
        return state


class CropSampler(Sampler[int]):
    """Indices of one epoch's crops for this rank: ``samples`` per epoch shared among
    ``world_size`` ranks, each rank a disjoint share (a distributed sampler)."""

    def __init__(self, samples: int, rank: int = 0, world_size: int = 1) -> None:
        if samples < world_size:
            raise ValueError(f"{samples} samples per epoch cannot be shared by {world_size} ranks")
        self.samples, self.rank, self.world_size = samples, rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Draw the crops of ``epoch`` next."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.samples // self.world_size

    def __iter__(self) -> Iterator[int]:
        start = self.epoch * self.samples
        return iter(range(start + self.rank, start + len(self) * self.world_size, self.world_size))


def _as_rgb(image: np.ndarray) -> np.ndarray:
    if image.dtype == np.uint8:
        return image
    from training.slides import as_rgb_uint8

    return as_rgb_uint8(image)
