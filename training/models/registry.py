"""Registered model configurations: the seeds' full models and small variants for a CPU.

A configuration's arguments may be overridden by a caller or by a checkpoint file. Both go through
``resolve_config``, which accepts only architecture numbers: timm's ``create_model`` also honours
arguments that load files or other code (``checkpoint_path``, ``pretrained_cfg_overlay``, another
model name), and a checkpoint must not be able to choose what is loaded.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from training.models.decoders import DECODERS
from training.models.encoders import TimmEncoder
from training.models.mt_unet import mt_unet_encoder
from training.models.segmenter import Segmenter
from training.models.unext import build_unext_encoder

# input_size: the tile side the model is built for. Swin takes any multiple of 32 once built
# (timm pads to whole windows), so window 7 need not divide 768 / 32; CoaT's patch embeddings fix
# the grid, so a CoaT model takes only its input_size. The full models follow the seeds
# (Swin 224-22k style with window 7, CoaT-lite-medium, 768 px tiles); the small ones keep the
# architecture at a CPU's scale.
CONFIGS: dict[str, dict[str, Any]] = {
    "swin_tiny_upernet": {
        "encoder": "swin_tiny_patch4_window7_224",
        "encoder_args": {},
        "decoder": "upernet",
        "decoder_channels": 256,
        "input_size": 768,
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
    # MT-UNet (Wang et al. 2022): the official configuration (conv stem 64-128-256, MTM widths
    # 256-512-1024, two MTMs per stage, 8 heads, windows of 4, 64 external memory units); the
    # micro one keeps the structure at a CPU's scale. decoder_channels: the full-resolution map.
    "mt_unet": {
        "encoder": "mt_unet",
        "encoder_args": {
            "conv_widths": [64, 128, 256],
            "widths": [256, 512, 1024],
            "depths": [2, 2, 2],
            "num_heads": 8,
            "window_size": 4,
            "memory_units": 64,
            "ea_expansion": 4,
            "drop_path_rate": 0.0,
        },
        "decoder": "mt_unet",
        "decoder_channels": 64,
        "input_size": 256,
    },
    "mt_unet_micro": {
        "encoder": "mt_unet",
        "encoder_args": {
            "conv_widths": [8, 16, 32],
            "widths": [32, 128, 256],
            "depths": [1, 1, 1],
            "num_heads": 2,
            "window_size": 4,
            "memory_units": 32,
            "ea_expansion": 2,
            "drop_path_rate": 0.0,
        },
        "decoder": "mt_unet",
        "decoder_channels": 8,
        "input_size": 256,
    },
    # UNeXt (Valanarasu & Patel 2022): the paper's widths (1.47 M parameters, 0.56 GMACs at
    # 256 px); the micro narrows the three conv stages, where the compute is, for a CPU. UNeXt
    # takes any multiple of 32, so input_size is only the training tile: the full one trains on
    # the seeds' full-model tiles (768 px at 0.4 um/px), not the paper's 256 px images.
    "unext": {
        "encoder": "unext",
        "encoder_args": {
            "embed_dims": [16, 32, 128, 160, 256],
            "mlp_ratio": 1,
            "shift_size": 5,
            "drop_path_rate": 0.0,
        },
        "decoder": "unext",
        "input_size": 768,
    },
    "unext_micro": {
        "encoder": "unext",
        "encoder_args": {
            "embed_dims": [8, 16, 64, 160, 256],
            "mlp_ratio": 1,
            "shift_size": 5,
            "drop_path_rate": 0.0,
        },
        "decoder": "unext",
        "input_size": 256,
    },
}

# A generous ceiling on every integer argument, so that a file cannot ask for an absurd build.
MAX_INT = 4096


@dataclass(frozen=True)
class _Kind:
    """What an architecture argument may hold: plain numbers of ``leaf`` type, one or a list."""

    leaf: type | tuple[type, ...]
    fits: Callable[[Any], bool]  # the range of one number
    single: bool
    many: bool
    description: str

    def check(self, where: str, value: Any) -> None:
        """Raise ``TypeError`` (not plain numbers of the right type) or ``ValueError`` (range)."""
        is_list = isinstance(value, (list, tuple))
        leaves = list(value) if is_list else [value]
        shape_ok = (is_list and self.many and leaves) or (not is_list and self.single)
        types_ok = all(isinstance(v, self.leaf) and not isinstance(v, bool) for v in leaves)
        if not shape_ok or not types_ok:
            raise TypeError(f"{where} must be {self.description}; got {value!r}")
        if not all(self.fits(v) for v in leaves):
            raise ValueError(f"{where} must be {self.description}; got {value!r}")


def _positive_int(value: int) -> bool:
    return 0 < value <= MAX_INT


def _positive_number(value: float) -> bool:
    return math.isfinite(value) and 0 < value <= MAX_INT


_UP_TO = f"up to {MAX_INT}"
_INT = _Kind(int, _positive_int, single=True, many=False, description=f"a positive int {_UP_TO}")
_INTS = _Kind(
    int, _positive_int, single=False, many=True, description=f"a list of positive ints {_UP_TO}"
)
_INT_OR_INTS = _Kind(
    int, _positive_int, single=True, many=True, description=f"a positive int {_UP_TO} or a list"
)
_NUMBER = _Kind(
    (int, float),
    _positive_number,
    single=True,
    many=False,
    description=f"a number in (0, {MAX_INT}]",
)
_NUMBERS = _Kind(
    (int, float),
    _positive_number,
    single=False,
    many=True,
    description=f"a list of numbers in (0, {MAX_INT}]",
)
_RATE = _Kind(
    (int, float), lambda v: 0 <= v < 1, single=True, many=False, description="a number in [0, 1)"
)


def timm_encoder(
    name: str, input_size: int, pretrained: str | os.PathLike | None, args: dict[str, Any]
) -> nn.Module:
    """A timm backbone as an encoder (``TimmEncoder``)."""
    return TimmEncoder(name, input_size, pretrained=pretrained, **args)


# What builds an encoder: (registry encoder name, input size, weights file or None, arguments).
# An encoder returns a list of NCHW feature maps, finest first (the last, deepest one is what
# the domain check and domain-adversarial training see), and has ``channels``, ``reductions``,
# ``input_size``, ``name`` and ``check_input_size(height, width)``.
EncoderBuilder = Callable[[str, int, "str | os.PathLike | None", dict[str, Any]], nn.Module]


@dataclass(frozen=True)
class EncoderFamily:
    """The arguments a family's configurations may change, those fixed here, and its builder."""

    args: dict[str, _Kind]
    fixed: dict[str, Any] = field(default_factory=dict)  # set by this code, never by a caller
    build: EncoderBuilder = timm_encoder


SWIN = EncoderFamily(
    args={
        "embed_dim": _INT,
        "depths": _INTS,
        "num_heads": _INT_OR_INTS,
        "window_size": _INT_OR_INTS,
        "mlp_ratio": _NUMBER,
        "drop_path_rate": _RATE,
    },
    # timm's Swin then pads to whole windows and builds its shift masks per input size, so a
    # model takes tiles of any multiple of 32, not only the size it was built at
    fixed={"strict_img_size": False},
)
COAT = EncoderFamily(
    args={
        "embed_dims": _INTS,
        "serial_depths": _INTS,
        "num_heads": _INT,
        "mlp_ratios": _NUMBERS,
        "drop_path_rate": _RATE,
    }
)
MT_UNET = EncoderFamily(
    args={
        "conv_widths": _INTS,
        "widths": _INTS,
        "depths": _INTS,
        "num_heads": _INT,
        "window_size": _INT,
        "memory_units": _INT,
        "ea_expansion": _INT,
        "drop_path_rate": _RATE,
    },
    build=mt_unet_encoder,
)
UNEXT = EncoderFamily(
    args={"embed_dims": _INTS, "mlp_ratio": _NUMBER, "shift_size": _INT, "drop_path_rate": _RATE},
    build=build_unext_encoder,
)
ENCODER_FAMILIES: dict[str, EncoderFamily] = {
    "swin_tiny_patch4_window7_224": SWIN,
    "swin_small_patch4_window7_224": SWIN,
    "coat_lite_medium": COAT,
    "coat_lite_tiny": COAT,
    "mt_unet": MT_UNET,
    "unext": UNEXT,
}


def list_models() -> list[str]:
    """Names of the registered configurations (full and small)."""
    return sorted(CONFIGS)


def resolve_config(name: str, **overrides: Any) -> dict[str, Any]:
    """The configuration ``name`` with ``overrides`` checked and applied.

    ``encoder_args`` are merged; ``encoder`` and ``decoder`` may only repeat the registry's own.
    Raises ``TypeError`` for an argument that is not an architecture number (or of the wrong type)
    and ``ValueError`` for a value out of range, before anything is built.
    """
    if not isinstance(name, str) or name not in CONFIGS:
        raise ValueError(f"unknown model {name!r}; registered: {', '.join(list_models())}")
    config = copy.deepcopy(CONFIGS[name])
    unknown = set(overrides) - set(config)
    if unknown:
        raise TypeError(
            f"unknown argument(s) for {name}: {', '.join(sorted(map(str, unknown)))} "
            f"(allowed: {', '.join(sorted(config))})"
        )
    for key in ("encoder", "decoder"):
        if key in overrides and overrides[key] != config[key]:
            raise ValueError(
                f"{key} of {name} is {config[key]!r} and cannot be changed (got "
                f"{overrides[key]!r}); use a registered model name instead"
            )
    for key in ("input_size", "decoder_channels"):
        if key in overrides:
            _INT.check(key, overrides[key])
            config[key] = overrides[key]
    if config["input_size"] % 32:
        raise ValueError(f"input_size must be a multiple of 32; got {config['input_size']}")
    extra = overrides.get("encoder_args", {})
    if not isinstance(extra, dict):
        raise TypeError(f"encoder_args must be a dict; got {type(extra).__name__}")
    family = ENCODER_FAMILIES[config["encoder"]]
    for key, value in extra.items():
        if key not in family.args:
            raise TypeError(
                f"encoder_args.{key} is not an architecture argument of {name} (allowed: "
                f"{', '.join(sorted(family.args))})"
            )
        family.args[key].check(f"encoder_args.{key}", value)
    config["encoder_args"].update(copy.deepcopy(extra))
    config["name"] = name
    return config


def build_from_config(
    config: dict[str, Any], pretrained: str | os.PathLike | None = None
) -> nn.Module:
    """Build the model a ``resolve_config`` result describes; ``model.config`` keeps it."""
    family = ENCODER_FAMILIES[config["encoder"]]
    args = {**config["encoder_args"], **family.fixed}
    encoder = family.build(config["encoder"], int(config["input_size"]), pretrained, args)
    decoder = DECODERS[config["decoder"]](encoder, config)
    model = Segmenter(encoder, decoder)
    model.config = config
    return model


def build_model(
    name: str, *, pretrained: str | os.PathLike | None = None, **overrides: Any
) -> nn.Module:
    """Build a registered model; ``pretrained`` (a local file path) loads encoder weights.

    Overrides: ``input_size``, ``decoder_channels``, ``encoder_args`` (architecture numbers of
    the encoder family, merged into the registry's). The model keeps its resolved configuration
    in ``model.config``.
    """
    return build_from_config(resolve_config(name, **overrides), pretrained)


def rebuilt_for_tile(model: nn.Module, tile: int) -> nn.Module:
    """``model`` (built by ``build_model``) rebuilt for ``tile`` px inputs with its own weights:
    a fixed-grid encoder such as CoaT takes only the size it was built for. ``ValueError`` when
    the tile is not one the architecture takes or its weights depend on the size (absolute
    position embeddings)."""
    args = {k: v for k, v in model.config.items() if k != "name"}
    try:
        resized = build_from_config(
            resolve_config(model.config["name"], **{**args, "input_size": tile})
        )
        resized.load_state_dict(model.state_dict())
    except (TypeError, RuntimeError) as exc:
        raise ValueError(str(exc).splitlines()[0]) from None
    return resized
