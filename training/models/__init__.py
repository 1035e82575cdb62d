"""Segmentation models (timm encoders + UPerNet/DAFormer), checkpoints and ensembles.

The names below are imported on first use (PEP 562), so that light submodules (``default``,
``versions``) can be imported without torch, at plugin discovery or by a widget; anything that
names a model function imports torch and timm then.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "CheckpointError",
    "build_model",
    "default_model_path",
    "list_models",
    "load_checkpoint",
    "read_checkpoint",
    "save_checkpoint",
]

_HOMES = {
    "CheckpointError": "training.models.checkpoint",
    "load_checkpoint": "training.models.checkpoint",
    "read_checkpoint": "training.models.checkpoint",
    "save_checkpoint": "training.models.checkpoint",
    "default_model_path": "training.models.default",
    "build_model": "training.models.registry",
    "list_models": "training.models.registry",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(home), name)


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
