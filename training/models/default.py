"""The bundled default model: a small ensemble shipped inside the package.

It is what ``napari-ftu segment`` and the plugin use when no model is named. Its manifest lists
members in the seeds' shape: Swin+UPerNet, CoaT+DAFormer and a Swin+UPerNet lung specialist,
plus three CoaT+DAFormer kidney specialists (one at 2, two at 1 um/px) that stand in for the
general members on kidney. See docs/model_card.md for
what it was trained on (synthetic phantoms of all five organs; real tissue only for kidney)
and how well it does; scripts/train_default_model.sh rebuilds it.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["DEFAULT_DIR", "default_model_path"]

DEFAULT_DIR = Path(__file__).resolve().parent / "default"
MANIFEST = "ensemble.yaml"


def default_model_path() -> Path:
    """The manifest of the bundled default ensemble; ``FileNotFoundError`` if it is missing."""
    path = DEFAULT_DIR / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(
            f"the bundled default model is missing ({path}); reinstall napari-ftu or name a "
            "model (a checkpoint or an ensemble manifest)"
        )
    return path
