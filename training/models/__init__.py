"""Segmentation models (timm encoders + UPerNet/DAFormer), checkpoints and ensembles.

torch and timm are imported when this package is imported, never at plugin discovery: the
plugin imports it inside functions.
"""

from training.models.checkpoint import (
    CheckpointError,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from training.models.default import default_model_path
from training.models.registry import build_model, list_models

__all__ = [
    "CheckpointError",
    "build_model",
    "default_model_path",
    "list_models",
    "load_checkpoint",
    "read_checkpoint",
    "save_checkpoint",
]
