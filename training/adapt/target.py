"""Unlabelled target images: found in folders, files or dataset folders, cut into tissue crops.

A target is what a user names with ``--target``: a folder of images or slides (any format
``training.slides`` opens), one image or slide file, or a dataset folder (``train.csv`` +
``train_images/``) whose masks are ignored. Every image is read at the model's pixel size, from
its own pixel size (the file's; a dataset folder's ``pixel_size`` column), else the one given
for images that carry none. Crops are placed on tissue (the engine's tissue detection on a
thumbnail) and, like training crops, are a pure function of ``(seed, index)``.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = ["TargetDataset", "TargetError", "TargetImage", "find_targets"]

# a third entropy word, so target crops never repeat the draws of the training crops
_TARGET_STREAM = 7


class TargetError(ValueError):
    """A ``--target`` that cannot be used, with the reason."""


@dataclass(frozen=True)
class TargetImage:
    """One unlabelled image: where it is, its level-0 ``(H, W)`` and its pixel size."""

    path: Path
    shape: tuple[int, int]
    pixel_size_um: float


def find_targets(
    paths: Sequence[Path], pixel_size_um: float | None = None
) -> list[tuple[Path, list[TargetImage]]]:
    """Each ``--target`` with its images; ``TargetError`` names the first that cannot be used
    (missing, not an image, a folder with no image, an image of unknown pixel size)."""
    found = []
    for path in map(Path, paths):
        if not path.exists():
            raise TargetError(f"--target {path}: no such file or folder")
        if path.is_dir() and (path / "train.csv").is_file():
            images = _dataset_images(path)
        elif path.is_dir():
            images = [_image(p, pixel_size_um, path) for p in _image_files(path)]
        else:
            images = [_image(path, pixel_size_um, path)]
        if not images:
            raise TargetError(f"--target {path}: the folder holds no readable images")
        found.append((path, images))
    return found


def _image_files(folder: Path) -> list[Path]:
    from training.slides import SLIDE_SUFFIXES

    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in SLIDE_SUFFIXES
    )


def _image(path: Path, pixel_size_um: float | None, named: Path) -> TargetImage:
    from training.slides import SlideError, open_slide

    try:
        with open_slide(path) as slide:
            shape, own = slide.shape[:2], slide.pixel_size_um
    except (SlideError, OSError) as exc:
        detail = str(exc).removeprefix(f"{path.name}: ").removeprefix(f"{path}: ")
        message = f"--target {named}: {path.name} is not a readable image ({detail})"
        raise TargetError(message) from None
    size = own if own is not None else pixel_size_um
    if size is None:
        raise TargetError(
            f"--target {named}: {path.name} has no pixel size in its metadata; pass "
            "--target-pixel-size UM_PER_PX"
        )
    return TargetImage(path, (int(shape[0]), int(shape[1])), float(size))


def _dataset_images(folder: Path) -> list[TargetImage]:
    """A dataset folder's images with the catalogue's pixel sizes (its masks are not read)."""
    from training.data.catalog import CatalogError, as_number, image_path, read_catalog

    try:
        frame = read_catalog(folder, check_rle=False)
    except CatalogError as exc:
        raise TargetError(f"--target {folder}: {exc}") from None
    images = []
    for row in frame.to_dict("records"):
        path = image_path(folder, str(row["id"]))
        size = as_number(row.get("pixel_size"), float)
        if path is None:
            raise TargetError(f"--target {folder}: image {row['id']} is missing")
        if size is None or not size > 0:
            raise TargetError(f"--target {folder}: image {row['id']} has no pixel_size")
        # the catalogue's pixel size wins over the file's, as for training images
        images.append(TargetImage(path, _image(path, size, folder).shape, size))
    return images


class TargetDataset(Dataset):
    """Random tissue crops of ``images``, ``tile`` px at ``model_um`` um/px, each image drawn
    equally often; item ``i`` is ``{"image": (T, T, 3) uint8}``, the same for the same seed.
    ``augment`` (an :class:`~training.augment.Augmenter`, its mask- and organ-bound groups off)
    changes geometry and colour as for training crops."""

    def __init__(
        self,
        images: Sequence[TargetImage],
        tile: int,
        model_um: float,
        augment: Any = None,
        seed: int = 0,
    ) -> None:
        if not images:
            raise ValueError("no target images")
        self.images, self.tile, self.model_um = list(images), tile, model_um
        self.augment, self.seed = augment, seed
        self._open: OrderedDict[int, tuple[Any, np.ndarray, float]] = OrderedDict()

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, index, _TARGET_STREAM])
        image = self.crop(int(rng.integers(len(self.images))), rng)
        if self.augment is not None:
            blank = np.zeros(image.shape[:2], np.uint8)
            # organ and thickness only matter to the acquisition group, which is off here
            image, _ = self.augment(
                image, blank, rng, organ="kidney", model_um=self.model_um, thickness_um=4.0
            )
        return {"image": torch.from_numpy(np.ascontiguousarray(image))}

    def crop(self, image_index: int, rng: np.random.Generator) -> np.ndarray:
        """A ``tile`` x ``tile`` crop of an image at the model's scale, centred on tissue."""
        slide, tissue, thumb_um = self._slide(image_index)
        target = self.images[image_index]
        scale = target.pixel_size_um / self.model_um  # model pixels per level-0 pixel
        height, width = (math.ceil(n * scale) for n in target.shape)
        cells = np.flatnonzero(tissue)
        if len(cells):  # a random point of a random tissue cell of the thumbnail
            ty, tx = np.unravel_index(cells[rng.integers(len(cells))], tissue.shape)
            factor = thumb_um / self.model_um
            cy, cx = (ty + rng.random()) * factor, (tx + rng.random()) * factor
            y = int(np.clip(round(cy - self.tile / 2), 0, max(height - self.tile, 0)))
            x = int(np.clip(round(cx - self.tile / 2), 0, max(width - self.tile, 0)))
        else:  # no tissue found: anywhere
            y = int(rng.integers(0, max(height - self.tile, 0) + 1))
            x = int(rng.integers(0, max(width - self.tile, 0) + 1))
        image = slide.read_region_at(self.model_um, y, x, self.tile, self.tile)
        return _as_rgb(image)

    def _slide(self, image_index: int) -> tuple[Any, np.ndarray, float]:
        """The image as a slide with its tissue mask, kept open per worker (a few at a time)."""
        from training.inference.tissue import thumbnail_pixel_size, tissue_mask
        from training.slides import open_slide

        if image_index in self._open:
            self._open.move_to_end(image_index)
            return self._open[image_index]
        target = self.images[image_index]
        slide = open_slide(target.path, pixel_size_um=target.pixel_size_um)
        thumb_um = thumbnail_pixel_size(slide)
        height, width = (
            max(1, math.floor(n * target.pixel_size_um / thumb_um)) for n in target.shape
        )
        thumbnail = _as_rgb(slide.read_region_at(thumb_um, 0, 0, height, width))
        self._open[image_index] = (slide, tissue_mask(thumbnail), thumb_um)
        while len(self._open) > 16:
            _, (old, _, _) = self._open.popitem(last=False)
            old.close()
        return self._open[image_index]

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_open"] = OrderedDict()  # open files do not travel to worker processes
        return state


def _as_rgb(image: np.ndarray) -> np.ndarray:
    from training.slides import as_rgb_uint8

    return as_rgb_uint8(image)
