"""Registered model configurations: the seeds' full models and small variants for a CPU."""

from __future__ import annotations

import copy
from typing import Any

from torch import nn

from training.models.decoders import DECODERS
from training.models.encoders import TimmEncoder
from training.models.segmenter import Segmenter

# input_size: the tile side the model takes (CoaT's position encoding fixes it; Swin's windows
# need it divisible by 32 x window). The full models follow the seeds' (Swin 224-22k style with
# window 7, CoaT-lite-medium); the small ones keep the architecture at a CPU's scale.
CONFIGS: dict[str, dict[str, Any]] = {
    "swin_tiny_upernet": {
        "encoder": "swin_tiny_patch4_window7_224",
        "encoder_args": {},
        "decoder": "upernet",
        "decoder_channels": 256,
        "input_size": 672,
    },
    "swin_small_upernet": {
        "encoder": "swin_small_patch4_window7_224",
        "encoder_args": {},
        "decoder": "upernet",
        "decoder_channels": 256,
        "input_size": 672,
    },
    "coat_lite_medium_daformer": {
        "encoder": "coat_lite_medium",
        "encoder_args": {},
        "decoder": "daformer",
        "decoder_channels": 320,
        "input_size": 768,
    },
    "swin_micro_upernet": {
        "encoder": "swin_tiny_patch4_window7_224",
        "encoder_args": {
            "embed_dim": 32,
            "depths": [1, 1, 2, 1],
            "num_heads": [1, 2, 4, 8],
            "window_size": 8,
        },
        "decoder": "upernet",
        "decoder_channels": 64,
        "input_size": 256,
    },
    "coat_micro_daformer": {
        "encoder": "coat_lite_tiny",
        "encoder_args": {"embed_dims": [32, 64, 128, 256], "serial_depths": [1, 1, 1, 1]},
        "decoder": "daformer",
        "decoder_channels": 64,
        "input_size": 256,
    },
}


def list_models() -> list[str]:
    """Names of the registered configurations (full and small)."""
    return sorted(CONFIGS)


def resolve_config(name: str, **overrides: Any) -> dict[str, Any]:
    """The configuration ``name`` with ``overrides`` applied (``encoder_args`` are merged)."""
    if name not in CONFIGS:
        raise ValueError(f"unknown model {name!r}; registered: {', '.join(list_models())}")
    config = copy.deepcopy(CONFIGS[name])
    unknown = set(overrides) - set(config) - {"pretrained"}
    if unknown:
        raise TypeError(f"unknown argument(s) for {name}: {', '.join(sorted(unknown))}")
    for key, value in overrides.items():
        if key == "encoder_args":
            config["encoder_args"].update(value)
        elif key != "pretrained":
            config[key] = value
    config["name"] = name
    return config


def build_model(name: str, **overrides: Any) -> nn.Module:
    """Build a registered model; ``pretrained`` (a local file path) loads encoder weights.

    Overrides: ``input_size``, ``decoder_channels``, ``encoder_args`` (merged into the timm
    arguments), ``pretrained``. The model keeps its resolved configuration in ``model.config``.
    """
    config = resolve_config(name, **overrides)
    size = int(config["input_size"])
    if size % 32:
        raise ValueError(f"input_size must be a multiple of 32; got {size}")
    encoder = TimmEncoder(
        config["encoder"], size, pretrained=overrides.get("pretrained"), **config["encoder_args"]
    )
    decoder = DECODERS[config["decoder"]](encoder.channels, config["decoder_channels"])
    model = Segmenter(encoder, decoder)
    model.config = config
    return model
