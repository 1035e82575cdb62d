"""How a segmentation runs: one validated :class:`RunOptions`, made once and passed around.

Every caller (the plugin's job, the CLI, validation, the benchmarks) builds one ``RunOptions``
instead of repeating the engine's keyword list; ``segment(..., options, **overrides)`` replaces
single fields on it, and a name that is not a field is refused in one line that lists the valid
ones.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from typing import Any

import torch

from training.inference.predictor import PRECISIONS, TTA_CHOICES

Box = tuple[int, int, int, int]  # (y, x, height, width) in level-0 pixels


@dataclass(frozen=True)
class RunOptions:
    """Every setting of a run, checked when made (``ValueError``, one line naming the field).

    ``overlap``: the part of a tile its neighbours share, in [0, 1). ``batch_size``: tiles per
    forward pass. ``tta``: 1, 4 (flips) or 8 (flips and transposes). ``device``: torch's name
    or device. ``detect_tissue``: skip tiles with no tissue on the slide's thumbnail.
    ``memory_limit_mb``: a larger probability map is written as zarr under ``workdir`` (default:
    a temporary folder the result owns). ``streams``: batches run at once on worker threads
    (default: 2 on a CPU with at least 2 threads, else 1). ``read_workers``: threads reading
    tiles ahead. ``stain``: an object with ``transform(rgb_uint8) -> rgb_uint8`` (fixed to the
    slide first when it has ``for_slide``). ``refiner`` (BPR, :mod:`training.refine`): a
    ``Refiner`` or a refiner checkpoint path; ``None`` the ensemble's own, ``False`` none.
    ``pixel_size_um``: the slide's pixel size, overriding its own (the caller's slide is left
    unchanged). ``region``: a level-0 box ``(y, x, height, width)``; the result covers only that
    box, with the values a whole-slide run has there. ``precision``: ``auto`` (bf16 autocast on
    CUDA, fp32 on the CPU), ``fp32`` or ``bf16`` (on a CPU with native bf16 about twice the
    model's speed, within bf16's tolerance: docs/benchmarks.md, issue 24). ``compile``: run each
    member through ``torch.compile`` (inductor; its code cached on disk, so only the first
    process to compile a model pays it). ``device_path``: resample the tiles on the model's
    device (:mod:`training.inference.device_path`); ``None``: on CUDA only.
    """

    overlap: float = 0.25
    batch_size: int = 4
    tta: int = 1
    device: torch.device | str = "cpu"
    detect_tissue: bool = True
    memory_limit_mb: float = 512
    workdir: str | os.PathLike | None = None
    streams: int | None = None
    read_workers: int = 2
    stain: Any = None
    refiner: Any = None
    pixel_size_um: float | None = None
    region: Box | None = None
    precision: str = "auto"
    compile: bool = False
    device_path: bool | None = None

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "device", torch.device(self.device))
        except (RuntimeError, TypeError):
            raise ValueError(
                f"device must be a torch device such as cpu or cuda:0; got {self.device!r}"
            ) from None
        for name in ("batch_size", "read_workers", "streams"):
            value = getattr(self, name)
            if value is not None and not (_whole(value) and isinstance(value, int)):
                raise ValueError(f"{name} must be a whole number; got {value!r}")
        if self.tta not in TTA_CHOICES:
            raise ValueError(f"tta must be one of {TTA_CHOICES}; got {self.tta}")
        if not 0 <= self.overlap < 1:
            raise ValueError(f"overlap must be in [0, 1); got {self.overlap}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1; got {self.batch_size}")
        if self.streams is not None and self.streams < 1:
            raise ValueError(f"streams must be at least 1; got {self.streams}")
        if self.read_workers < 0:
            raise ValueError(f"read_workers must be 0 or more; got {self.read_workers}")
        if not self.memory_limit_mb >= 0:
            raise ValueError(f"memory_limit_mb must be 0 or more; got {self.memory_limit_mb}")
        if self.pixel_size_um is not None and not (
            math.isfinite(self.pixel_size_um) and self.pixel_size_um > 0
        ):
            raise ValueError(f"pixel_size_um must be a positive number; got {self.pixel_size_um}")
        if self.region is not None:
            object.__setattr__(self, "region", _checked_box(self.region))
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}; got {self.precision!r}")

    def uses_device_path(self, stain: Any = None) -> bool:
        """Whether tiles are resampled on the device (:mod:`~training.inference.device_path`):
        as asked, else on CUDA; never with a stain normaliser (it works on host pixels)."""
        if stain is not None:
            return False
        return self.device.type == "cuda" if self.device_path is None else self.device_path

    def streams_for(self) -> int:
        """Batches at once: as asked, else 2 on a CPU with at least 2 threads, else 1."""
        if self.streams is not None:
            return self.streams
        return 2 if self.device.type == "cpu" and torch.get_num_threads() >= 2 else 1

    def with_overrides(self, **overrides: Any) -> RunOptions:
        """These options with some fields replaced (and checked again); an unknown name is a
        ``TypeError`` naming it and the valid ones."""
        if not overrides:
            return self
        valid = [f.name for f in dataclasses.fields(self)]
        unknown = sorted(set(overrides) - set(valid))
        if unknown:
            raise TypeError(
                f"unknown run option(s) {', '.join(map(repr, unknown))}; valid: {', '.join(valid)}"
            )
        return dataclasses.replace(self, **overrides)


def run_options(options: RunOptions | None = None, **overrides: Any) -> RunOptions:
    """``options`` (default: :class:`RunOptions`'s defaults) with ``overrides`` replaced."""
    if options is not None and not isinstance(options, RunOptions):
        raise TypeError(f"options must be a RunOptions; got {type(options).__name__}")
    return (options or RunOptions()).with_overrides(**overrides)


def _checked_box(region: Any) -> Box:
    """``region`` as four whole numbers ``(y, x, height, width)``; a one-line ``ValueError``
    when it is not, or when it is empty."""
    try:
        values = tuple(region)
    except TypeError:
        values = ()
    if len(values) != 4 or not all(_whole(v) for v in values):
        raise ValueError(f"region must be four whole numbers (y, x, height, width); got {region!r}")
    y, x, height, width = (int(v) for v in values)
    if height < 1 or width < 1:
        raise ValueError(f"region {region!r} is empty: its height and width must be at least 1")
    return y, x, height, width


def _whole(value: Any) -> bool:
    try:
        return float(value) == int(value) and not isinstance(value, bool)
    except (TypeError, ValueError, OverflowError):
        return False
