"""Training images as records: one per ``train.csv`` row of one or more dataset folders.

A record holds what sampling needs without reading pixels: where the image is, its organ, pixel
size and thickness, the mask's RLE, the FTU centres (for FTU-centred crops) and the sampling
weight of its folder. Images are opened lazily, in the DataLoader's worker processes.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from training.data import rle
from training.data.catalog import ORGANS, CatalogError, as_number, image_path, read_catalog

__all__ = [
    "DataSpec",
    "Record",
    "load_records",
    "parse_data_spec",
    "sampling_weights",
    "split_records",
]


@dataclass(frozen=True)
class DataSpec:
    """A dataset folder and how often its images are drawn relative to other folders."""

    path: Path
    weight: float = 1.0


@dataclass(frozen=True)
class Record:
    """One training image of a dataset folder."""

    id: str
    organ: str
    data_source: str
    image: Path
    shape: tuple[int, int]  # level-0 (H, W)
    pixel_size_um: float
    thickness_um: float
    rle: str
    centres: np.ndarray  # (n, 2) level-0 (y, x) of every FTU instance
    folder: int  # index of the dataset folder it came from
    fold: int | None = None

    def mask(self) -> np.ndarray:
        """The FTU mask at level 0, ``(H, W)`` uint8 0/1."""
        return rle.decode(self.rle, self.shape)


def parse_data_spec(text: str) -> DataSpec:
    """``DIR`` or ``DIR:WEIGHT`` (a positive number after the last colon) as a :class:`DataSpec`."""
    head, sep, tail = text.rpartition(":")
    if sep and head:
        try:
            weight = float(tail)
        except ValueError:
            return DataSpec(Path(text))
        if not (math.isfinite(weight) and weight > 0):
            raise ValueError(f"{text}: a dataset folder's weight must be positive; got {tail}")
        return DataSpec(Path(head), weight)
    return DataSpec(Path(text))


def load_records(specs: Sequence[DataSpec], check_images: bool = True) -> list[Record]:
    """Read every folder's ``train.csv``; errors name the folder, row and problem.

    Raises ``CatalogError`` for an empty dataset, a row without an image or pixel size, and (with
    ``check_images``) an image that cannot be opened.
    """
    from training.slides import open_slide

    if not specs:
        raise CatalogError("no dataset folder given")
    records: list[Record] = []
    for folder, spec in enumerate(specs):
        frame = read_catalog(spec.path)
        if frame.empty:
            raise CatalogError(f"{spec.path}: train.csv has no rows")
        has_fold = "fold" in frame.columns
        for row in frame.to_dict("records"):
            where = f"{spec.path}: image {row['id']}"
            path = image_path(spec.path, row["id"])
            if path is None:
                raise CatalogError(f"{where} has no file in train_images/ (.tiff or .tif)")
            pixel_size = as_number(row.get("pixel_size"), float)
            if pixel_size is None or pixel_size <= 0:
                raise CatalogError(f"{where} has no pixel_size; training needs it in um/px")
            if check_images:
                try:
                    with open_slide(path) as slide:
                        slide.read_region(0, 0, 1, 1)
                except Exception as exc:
                    raise CatalogError(f"{where}: the image cannot be read ({exc})") from None
            shape = (int(row["img_height"]), int(row["img_width"]))
            mask = rle.decode(row["rle"], shape)
            thickness = as_number(row.get("tissue_thickness"), float)
            records.append(
                Record(
                    id=str(row["id"]),
                    organ=str(row["organ"]),
                    data_source=str(row["data_source"]),
                    image=path,
                    shape=shape,
                    pixel_size_um=pixel_size,
                    thickness_um=thickness if thickness and thickness > 0 else 4.0,
                    rle=str(row["rle"]),
                    centres=_centres(mask),
                    folder=folder,
                    fold=_fold(row.get("fold"), where) if has_fold else None,
                )
            )
    if not records:
        raise CatalogError("the dataset folders hold no images")
    return records


def split_records(
    records: Sequence[Record],
    val_fraction: float = 0.2,
    seed: int = 0,
    fold: int | None = None,
) -> tuple[list[Record], list[Record]]:
    """Split by image id into ``(train, validation)``.

    With ``fold`` and a ``fold`` column, the validation images are that fold's. Otherwise each
    organ's images are shuffled with ``seed`` and ``val_fraction`` of them (at least one, when
    an organ has two or more images) are held out, so every organ is validated.
    """
    if fold is not None:
        if any(r.fold is None for r in records):
            raise CatalogError(f"--fold {fold} asks for a 'fold' column that train.csv lacks")
        val = [r for r in records if r.fold == fold]
        if not val:
            raise CatalogError(f"no image has fold {fold}")
        return [r for r in records if r.fold != fold], val
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1); got {val_fraction}")
    by_organ: dict[str, list[Record]] = defaultdict(list)
    for record in records:
        by_organ[record.organ].append(record)
    held: set[tuple[int, str]] = set()
    for organ in sorted(by_organ):
        group = sorted(by_organ[organ], key=lambda r: (r.folder, r.id))
        order = np.random.default_rng([seed, ORGANS.index(organ)]).permutation(len(group))
        count = round(val_fraction * len(group))
        if val_fraction > 0 and len(group) >= 2:
            count = min(max(count, 1), len(group) - 1)
        held.update((group[i].folder, group[i].id) for i in order[:count])
    train = [r for r in records if (r.folder, r.id) not in held]
    val = [r for r in records if (r.folder, r.id) in held]
    return train, val


def sampling_weights(
    records: Sequence[Record],
    folder_weights: Sequence[float],
    organ_weights: dict[str, float] | None = None,
) -> np.ndarray:
    """Probability of drawing each record: folders share draws by weight, images within a folder
    equally, times each organ's oversampling factor (the seeds draw lung five times as often)."""
    organ_weights = organ_weights or {}
    unknown = set(organ_weights) - set(ORGANS)
    if unknown:
        raise ValueError(f"oversampling names unknown organ(s) {sorted(unknown)}")
    counts = np.bincount([r.folder for r in records], minlength=len(folder_weights))
    weights = np.array(
        [
            folder_weights[r.folder] / counts[r.folder] * organ_weights.get(r.organ, 1.0)
            for r in records
        ],
        dtype=np.float64,
    )
    if not weights.sum() > 0:
        raise ValueError("every image has sampling weight 0")
    return weights / weights.sum()


def _centres(mask: np.ndarray) -> np.ndarray:
    labels, count = ndimage.label(mask)
    if count == 0:
        return np.zeros((0, 2), np.float32)
    return np.asarray(ndimage.center_of_mass(mask, labels, range(1, count + 1)), np.float32)


def _fold(value: object, where: str) -> int:
    number = as_number(value, int)
    if number is None:
        raise CatalogError(f"{where}: fold must be a whole number; got {value!r}")
    return number
