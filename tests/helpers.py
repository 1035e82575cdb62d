"""Helpers shared by the engine tests."""

from __future__ import annotations

from torch import nn

from training.models.ensemble import Member


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
