"""Helpers shared by the tests: engine members, tiny dataset folders."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from training.data import rle
from training.data.catalog import upsert_row
from training.models.ensemble import Member
from training.synthetic import make_phantom


def tiny_checkpoint(path: Path) -> Path:
    """An untrained ``swin_micro_upernet`` for 64 px tiles at 2 um/px, saved at ``path``: a
    start for fine-tuning runs of seconds."""
    from training.models import build_model, save_checkpoint

    model = build_model("swin_micro_upernet", input_size=64)
    return save_checkpoint(path, model, {"pixel_size_um": 2.0, "tile_size": 64})


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
    folder: Path,
    organs: tuple[str, ...] = ("kidney", "lung"),
    size: int = 128,
    pixel_size_um: float = 2.0,
    seeds: range = range(3),
    **overrides: Any,
) -> Path:
    """A dataset folder of HPA phantoms, one per organ and seed, ``size`` px at
    ``pixel_size_um`` (by default 2 um/px: FTUs some tens of pixels wide), ids
    ``<organ><seed>``; ``overrides`` go to ``make_phantom`` (e.g. ``stain_vectors``)."""
    for organ in organs:
        for seed in seeds:
            image, mask, meta = make_phantom(
                organ, "hpa", size, seed, pixel_size_um=pixel_size_um, **overrides
            )
            row = {
                "id": f"{organ}{seed}",
                "organ": organ,
                "data_source": meta["data_source"],
                "pixel_size": pixel_size_um,
                "tissue_thickness": 4,
                "rle": rle.encode(mask),
            }
            upsert_row(folder, row, image=image)
    return folder
