"""The predictor: a batch of RGB uint8 tiles in, FTU probabilities out, on any device.

Normalisation happens on the device; all test-time-augmentation views of a batch run as one
forward pass; on CUDA the batch travels from pinned memory without blocking and the model runs
under bf16 autocast (on the CPU too when asked: ``precision="bf16"``). The logits of the views
are averaged as probabilities at the model's output size and upsampled once, to the tile's size
at the working scale. A device out of memory becomes one :class:`DeviceMemoryError` that names
the batch and suggests a smaller one.
"""

from __future__ import annotations

import contextlib
import os
import threading
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from training.models.ensemble import Member

TTA_CHOICES = (1, 4, 8)
PRECISIONS = ("auto", "fp32", "bf16")

View = tuple[Callable[[torch.Tensor], torch.Tensor], Callable[[torch.Tensor], torch.Tensor]]


class DeviceMemoryError(RuntimeError):
    """The device ran out of memory for one batch (the message says what to lower)."""


def tta_views(tta: int) -> list[View]:
    """``(forward, inverse)`` pairs: the identity, flips (4), and flips of the transpose (8)."""
    if tta not in TTA_CHOICES:
        raise ValueError(f"tta must be one of {TTA_CHOICES}; got {tta}")
    flips = [(), (3,), (2,), (2, 3)]

    def flip(dims: tuple[int, ...]) -> Callable[[torch.Tensor], torch.Tensor]:
        return lambda t: t.flip(dims) if dims else t

    views: list[View] = [(flip(d), flip(d)) for d in flips[: min(tta, 4)]]
    if tta == 8:
        for d in flips:
            f = flip(d)
            views.append((lambda t, f=f: f(t).transpose(2, 3), lambda t, f=f: f(t.transpose(2, 3))))
    return views


def uses_bf16(device: torch.device, precision: str) -> bool:
    """Whether the model runs under bf16 autocast: ``auto`` means on CUDA only. On a CPU with
    bf16 units it halves the model's time (docs/benchmarks.md, issue 24) but moves values by up
    to about 0.02: asked for, not the default, so a CPU run's values do not depend on the CPU
    and match the fp32 runs the thresholds were calibrated on."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}; got {precision!r}")
    return precision == "bf16" or (precision == "auto" and device.type == "cuda")


_compiled: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_compiled_lock = threading.Lock()


def compiled(model: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """``torch.compile`` of ``model`` (inductor), one per model in this process, whose
    generated code is cached on disk (``TORCHINDUCTOR_CACHE_DIR``, else
    ``~/.cache/napari-ftu/inductor``), so a second process compiling the same model reuses it
    instead of paying the compile again."""
    with _compiled_lock:
        if model not in _compiled:
            if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
                folder = Path.home() / ".cache" / "napari-ftu" / "inductor"
                folder.mkdir(parents=True, exist_ok=True)
                os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder)
            # batches but a row's last are one size: one graph, dynamic only after a second
            _compiled[model] = torch.compile(model, dynamic=None)
        return _compiled[model]


class Predictor:
    """Runs one ensemble member on batches of tiles; returns ``(B, out, out)`` probabilities
    on ``device`` (``out``: the tile's size at the working scale).

    ``precision``: ``auto`` (bf16 autocast on CUDA, fp32 elsewhere), ``fp32`` or ``bf16``.
    ``compile``: run the model through ``torch.compile`` (see :func:`compiled`).
    """

    def __init__(
        self,
        member: Member,
        device: torch.device,
        tta: int,
        out_size: int,
        precision: str = "auto",
        compile: bool = False,
    ) -> None:
        self.device = device
        self.views = tta_views(tta)
        self.out_size = out_size
        self.bf16 = uses_bf16(device, precision)
        self.model = member.model.to(device, memory_format=torch.channels_last).eval()
        self.run_model = compiled(self.model) if compile else self.model
        self.mean = torch.tensor(member.meta["mean"], device=device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(member.meta["std"], device=device).view(1, 3, 1, 1) * 255

    def __call__(self, tiles: np.ndarray) -> torch.Tensor:
        """``(B, tile, tile, 3)`` uint8 tiles on the host -> ``(B, out, out)`` probabilities."""
        batch = torch.from_numpy(tiles)
        if self.device.type == "cuda":
            batch = batch.pin_memory().to(self.device, non_blocking=True)
        # NHWC memory seen as NCHW: already channels-last, no copy until the float conversion
        return self.forward(batch.permute(0, 3, 1, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, tile, tile)`` pixels 0..255 (any dtype) on the device -> probabilities."""
        with self.memory_guard(x.shape[0], x.shape[-1]):
            return self._forward(x)

    @contextlib.contextmanager
    def memory_guard(self, tiles: int, size: int) -> Iterator[None]:
        """A device out of memory inside becomes one :class:`DeviceMemoryError` naming the
        batch (``tiles`` of ``size`` px) and what to lower."""
        try:
            yield
        except torch.OutOfMemoryError:
            raise DeviceMemoryError(
                f"{self.device} ran out of memory running {tiles} tiles x {len(self.views)} TTA "
                f"views of {size} px at once; run with a smaller --batch-size (batch_size) or "
                "fewer TTA views"
            ) from None

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x.float() - self.mean).div_(self.std)  # one new tensor; in place from there
        x = x.contiguous(memory_format=torch.channels_last)
        autocast = (
            torch.autocast(self.device.type, dtype=torch.bfloat16)
            if self.bf16
            else contextlib.nullcontext()
        )
        with torch.inference_mode(), autocast:
            if len(self.views) > 1:
                x = torch.cat([forward(x) for forward, _ in self.views])
            logits = self.run_model(x)
        with torch.inference_mode():
            probs = torch.sigmoid(logits.float()).chunk(len(self.views))
            prob = probs[0]
            if len(self.views) > 1:
                prob = sum(inverse(p) for (_, inverse), p in zip(self.views, probs, strict=True))
                prob = prob / len(self.views)
            if prob.shape[-1] != self.out_size:  # once, after the views are averaged
                size = (self.out_size, self.out_size)
                prob = F.interpolate(prob, size=size, mode="bilinear", align_corners=False)
        return prob[:, 0]
