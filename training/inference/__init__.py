"""Tiled, streaming inference over slides of any size (Qt-free).

The public names load on first use, so that the package's torch-free modules (``postprocess``,
``tissue``, ``outputs``) can be imported by the plugin's widgets and the review session without
importing torch with the engine.
"""

from __future__ import annotations

import importlib
from typing import Any

_HOMES = {
    "Band": "training.inference.engine",
    "Progress": "training.inference.engine",
    "RunOptions": "training.inference.engine",
    "SegmentationResult": "training.inference.engine",
    "run": "training.inference.engine",
    "segment": "training.inference.engine",
    "working_map": "training.inference.engine",
    "probability_to_labels": "training.inference.postprocess",
    "resize_labels": "training.inference.postprocess",
    "DeviceMemoryError": "training.inference.predictor",
}
__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'training.inference' has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOMES[name]), name)
    globals()[name] = value  # found once, then an ordinary attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOMES))
