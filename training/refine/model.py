"""The boundary refiner (BPR's small network) and its own checkpoint.

The network is a compact U-Net of conv-BN-ReLU blocks: 4 input channels (RGB normalised like
the segmentation models', plus the coarse probability) and one logit per pixel at the patch's
resolution. A U-Net rather than BPR's HRNet-W18-small: on 64 px patches three levels already
see the whole patch, the full-resolution skip keeps the boundary's detail, and it runs fast on
a CPU (the default ``base=24, levels=3``: 0.27 M parameters, 0.26 GMACs per 64 px patch;
``base=32``: 0.47 M).

A refiner checkpoint is a napari-ftu checkpoint with ``kind: refiner``: the architecture is a
fixed network with numbers from an allowlist (nothing in the file names code or files), and its
meta holds the pixel size it sees (``pixel_size_um``), the patch side (``patch_size``, px), the
normalisation and what it was trained on. A segmentation checkpoint given as a refiner, and a
refiner given as a segmentation model, are refused with one line saying so.
"""

from __future__ import annotations

import copy
import math
import numbers
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from training.models.checkpoint import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    CheckpointError,
    _load_state,
    read_checkpoint,
    write_payload,
)
from training.slides import PLAUSIBLE_UM_PER_PX

KIND = "refiner"
ARCHITECTURE = "bpr_unet"
# architecture arguments a refiner checkpoint may set: (lowest, highest), integers only
ARGS = {"base": (4, 128), "levels": (1, 5)}
DEFAULT_ARGS = {"base": 24, "levels": 3}
MAX_PATCH = 512


class _Block(nn.Sequential):
    """Two 3x3 conv-BN-ReLU layers."""

    def __init__(self, inputs: int, outputs: int) -> None:
        super().__init__(
            nn.Conv2d(inputs, outputs, 3, padding=1, bias=False),
            nn.BatchNorm2d(outputs),
            nn.ReLU(inplace=True),
            nn.Conv2d(outputs, outputs, 3, padding=1, bias=False),
            nn.BatchNorm2d(outputs),
            nn.ReLU(inplace=True),
        )


class RefinerNet(nn.Module):
    """A U-Net of ``levels`` resolutions, ``base`` channels at full resolution, doubling at
    each level down; input ``(N, 4, H, W)`` (H and W divisible by ``2 ** (levels - 1)``),
    output ``(N, 1, H, W)`` logits."""

    def __init__(self, base: int = 24, levels: int = 3) -> None:
        super().__init__()
        self.config = {"name": ARCHITECTURE, **check_args({"base": base, "levels": levels})}
        widths = [base * 2**i for i in range(levels)]
        self.down = nn.ModuleList(
            _Block(inputs, width) for inputs, width in zip([4, *widths], widths, strict=False)
        )
        self.up = nn.ModuleList(
            _Block(widths[i + 1] + widths[i], widths[i]) for i in reversed(range(levels - 1))
        )
        self.head = nn.Conv2d(base, 1, 1)

    @property
    def multiple(self) -> int:
        """Input sides must be a multiple of this."""
        return 2 ** (self.config["levels"] - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for index, block in enumerate(self.down):
            if index:
                x = nn.functional.max_pool2d(x, 2)
            x = block(x)
            skips.append(x)
        for block, skip in zip(self.up, reversed(skips[:-1]), strict=True):
            x = nn.functional.interpolate(x, size=skip.shape[-2:], mode="bilinear")
            x = block(torch.cat([x, skip], dim=1))
        return self.head(x)


def build_refiner(**args: Any) -> RefinerNet:
    """A new refiner network; ``args``: ``base`` and ``levels`` (see :data:`ARGS`)."""
    return RefinerNet(**{**DEFAULT_ARGS, **check_args(args)})


def check_args(args: dict[str, Any]) -> dict[str, int]:
    """``args`` checked against the allowlist (integers in range); ``ValueError`` naming the
    first one refused."""
    unknown = sorted(set(args) - set(ARGS))
    if unknown:
        raise ValueError(f"refiner arguments {unknown} are not allowed (allowed: {sorted(ARGS)})")
    checked = {}
    for key, value in args.items():
        low, high = ARGS[key]
        if not _is_integer(value) or not low <= value <= high:
            raise ValueError(
                f"refiner argument {key} must be an integer {low}..{high}; got {value!r}"
            )
        checked[key] = int(value)
    return checked


def default_refiner_meta(model: RefinerNet) -> dict[str, Any]:
    """The metadata a refiner gets when the caller gives none."""
    return {
        "pixel_size_um": 0.5,
        "patch_size": 64,
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
        "training": {},
    }


def check_refiner_meta(meta: dict[str, Any], where: str, multiple: int = 1) -> dict[str, Any]:
    """``meta`` with each field checked (``CheckpointError`` naming ``where`` and the field)."""
    checked = dict(meta)

    def refuse(field: str, must: str) -> CheckpointError:
        return CheckpointError(f"{where}: meta.{field} must be {must}; got {meta.get(field)!r}")

    size = meta.get("patch_size")
    if not _is_integer(size) or not 8 <= size <= MAX_PATCH or size % multiple:
        raise refuse("patch_size", f"an integer 8..{MAX_PATCH}, a multiple of {multiple}")
    checked["patch_size"] = int(size)
    pixel_size = meta.get("pixel_size_um")
    low, high = PLAUSIBLE_UM_PER_PX
    if not _is_number(pixel_size) or not low <= pixel_size <= high:
        raise refuse("pixel_size_um", f"a number of micrometres, {low:g} to {high:g}")
    checked["pixel_size_um"] = float(pixel_size)
    for field in ("mean", "std"):
        values = meta.get(field)
        if (
            not isinstance(values, (list, tuple))
            or len(values) != 3
            or not all(_is_number(v) and (field == "mean" or v > 0) for v in values)
        ):
            raise refuse(
                field, "3 finite numbers (R, G, B)" + (", each above 0" * (field == "std"))
            )
        checked[field] = [float(v) for v in values]
    if not isinstance(meta.get("training", {}), dict):
        raise refuse("training", "a dict (a training summary)")
    return checked


def save_refiner(
    path: str | os.PathLike,
    model: RefinerNet,
    meta: dict[str, Any] | None = None,
    *,
    half: bool = False,
) -> Path:
    """Write a refiner and its metadata atomically to ``path``; ``half`` stores float16
    weights where float16 holds them (loading casts them back)."""
    path = Path(path)
    full = default_refiner_meta(model)
    full.update(copy.deepcopy(meta or {}))
    full = check_refiner_meta(full, path.name, model.multiple)
    args = {k: v for k, v in model.config.items() if k != "name"}
    architecture = {"name": ARCHITECTURE, "args": args}
    return write_payload(path, model, architecture, full, half=half, kind=KIND)


def load_refiner(
    path: str | os.PathLike, device: str | torch.device = "cpu"
) -> tuple[RefinerNet, dict[str, Any]]:
    """Rebuild a refiner from its checkpoint: ``(model in eval mode, meta)``; a segmentation
    checkpoint, a tampered architecture or meta is refused (``CheckpointError``)."""
    name = Path(path).name
    payload = read_checkpoint(path, kind=KIND)
    architecture = payload["architecture"]
    if architecture.get("name") != ARCHITECTURE:
        raise CheckpointError(
            f"{name}: architecture.name refused: a refiner is {ARCHITECTURE!r}; got "
            f"{architecture.get('name')!r}"
        )
    args = architecture.get("args", {})
    if not isinstance(args, dict):
        raise CheckpointError(f"{name}: architecture.args must be a dict of numbers")
    try:
        model = build_refiner(**args)
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"{name}: architecture.args refused: {exc}") from None
    meta = default_refiner_meta(model)
    meta.update(payload["meta"])
    meta = check_refiner_meta(meta, name, model.multiple)
    _load_state(model, payload["state_dict"], name)  # float16 copies back into float32
    meta["architecture"] = architecture
    return model.to(device).eval(), meta


def _is_integer(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
