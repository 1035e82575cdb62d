"""Helpers shared by the tests: engine members, tiny dataset folders."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from training.data import rle
from training.data.catalog import upsert_row
from training.models.ensemble import Member
from training.synthetic import make_phantom


def member(
    model: nn.Module, pixel_size: float = 0.4, tile: int = 64, weight: float = 1.0, name: str = "m"
) -> Member:
    """An ensemble member around ``model`` that sees raw 0..255 pixels (mean 0, std 1/255)."""
    meta = {
        "pixel_size_um": pixel_size,
        "tile_size": tile,
        "mean": [0, 0, 0],
        "std": [1 / 255] * 3,
        "thresholds": {"kidney": 0.5},
    }
    return Member(model, meta, weight, name=name)


def phantom_dataset(
    folder: Path, organs: tuple[str, ...] = ("kidney", "lung"), size: int = 128
) -> Path:
    """A dataset folder of three phantoms per organ, ``size`` px at 2 um/px (FTUs some tens
    of pixels wide), ids ``<organ><seed>``."""
    for organ in organs:
        for seed in range(3):
            image, mask, meta = make_phantom(organ, "hpa", size, seed, pixel_size_um=2.0)
            row = {
                "id": f"{organ}{seed}",
                "organ": organ,
                "data_source": meta["data_source"],
                "pixel_size": 2.0,
                "tissue_thickness": 4,
                "rle": rle.encode(mask),
            }
            upsert_row(folder, row, image=image)
    return folder
