"""How busy the engine keeps a device: tiles per second and the model's share of wall time.

A **synthetic** all-tissue kidney phantom at 0.25 um/px (a 40x scan; a 2048 px phantom
repeated, pyramidal OME-TIFF written once into benchmarks/_data/) is segmented by
``training.inference.run`` with a model of random weights (time does not depend on them) at
0.4 um/px. The model is wrapped so that every forward pass is timed on the device (CUDA events;
wall clock on a CPU); "busy" is the summed forward time over the run's wall time, from the
first tile read to the last row written.

    .venv/bin/python benchmarks/bench_device_feed.py --device cuda             # the issue's run
    .venv/bin/python benchmarks/bench_device_feed.py --device cpu --side 2048 \\
        --model swin_micro_upernet --batch-size 4                              # a CPU smoke run
    .venv/bin/python benchmarks/bench_device_feed.py --read-only --read-workers 4   # reading alone

``--read-only`` reads the same tiles, in the engine's batches, through the engine's tile source
and nothing else: the ceiling that reading puts on tiles/s, whatever the device.

In the same process the model alone runs on random batches (channels-last, bf16 autocast on
CUDA, as the engine runs it): the run's tiles/s is also given as a share of that, the issue's
figure (target on a GPU: >= 80% at one pass per tile). On CUDA the engine takes its
device-resident path (:mod:`training.inference.device_path`) unless ``--host-path``.

Runs from a plain checkout (the repository root is put on ``sys.path``): it needs the wheels
torch (a CUDA build for ``--device cuda``), timm, numpy, scipy, pandas, tifffile, zarr,
imagecodecs and scikit-image, nothing else of this package's dependencies.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # a plain checkout: no install

import torch
from _common import forty_x_phantom
from torch import nn

SLIDE_PX, MODEL_PX = 0.25, 0.4


class TimedModel(nn.Module):
    """``model`` with the device time of every forward pass summed in ``busy_seconds``."""

    def __init__(self, model: nn.Module, device: torch.device) -> None:
        super().__init__()
        self.model, self.device = model, device
        self.events: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []
        self.cpu_seconds = 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            out = self.model(x)
            end.record()
            self.events.append((start, end))
            return out
        began = time.perf_counter()
        out = self.model(x)
        self.cpu_seconds += time.perf_counter() - began
        return out

    def busy_seconds(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            return sum(s.elapsed_time(e) for s, e in self.events) / 1000
        return self.cpu_seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--side", type=int, default=20480, help="slide side in pixels")
    parser.add_argument("--model", default="swin_tiny_upernet")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--read-workers", type=int, default=8)
    parser.add_argument("--tta", type=int, default=1)
    parser.add_argument("--read-only", action="store_true", help="time the tile source alone")
    parser.add_argument("--host-path", action="store_true", help="resample tiles on the host")
    parser.add_argument("--model-seconds", type=float, default=10.0)
    args = parser.parse_args()
    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        sys.exit(
            f"--device {args.device}: torch {torch.__version__} finds no CUDA device (built for "
            f"CUDA {torch.version.cuda}); run on a GPU machine with a CUDA build of torch"
        )
    if args.read_only:
        read_only(args)
        return

    from training.inference import RunOptions, run
    from training.models import build_model
    from training.models.ensemble import Member

    device = torch.device(args.device)
    model = build_model(args.model).eval()
    tile = int(model.config["input_size"])
    timed = TimedModel(model, device)
    meta = {
        "pixel_size_um": MODEL_PX,
        "tile_size": tile,
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
        "thresholds": {"kidney": 0.5},
    }
    path = forty_x_phantom(args.side)
    options = RunOptions(
        device=device,
        batch_size=args.batch_size,
        read_workers=args.read_workers,
        tta=args.tta,
        memory_limit_mb=8192,
        device_path=False if args.host_path else None,
    )
    alone = model_alone(model, tile, device, args)
    warm = Member(timed, meta, name=args.model)
    run(forty_x_phantom(2048), warm, "kidney", options, detect_tissue=False)  # warm up
    timed.events.clear()
    timed.cpu_seconds = 0.0
    start = time.perf_counter()
    result = run(path, warm, "kidney", options)
    if device.type == "cuda":
        torch.cuda.synchronize()
    wall = time.perf_counter() - start
    busy = timed.busy_seconds()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(
        f"{args.model} at {tile} px, {MODEL_PX} um/px, batch {args.batch_size}, tta {args.tta}, "
        f"read workers {args.read_workers}, {name}, "
        f"{'host' if args.host_path else 'device-resident' if device.type == 'cuda' else 'host'} "
        "path, "
        f"{'bf16 autocast' if device.type == 'cuda' else 'fp32'}"
    )
    print(
        f"{args.side}x{args.side} slide at {SLIDE_PX} um/px: {result.tiles_run} tiles in "
        f"{wall:.1f} s = {result.tiles_run / wall:.1f} tiles/s; model busy {busy:.1f} s = "
        f"{busy / wall:.0%} of wall time"
    )
    print(
        f"model alone, random batches of {args.batch_size}: {alone:.1f} tiles/s; the run reached "
        f"{result.tiles_run / wall / alone:.0%} of it"
    )


def model_alone(
    model: nn.Module, tile: int, device: torch.device, args: argparse.Namespace
) -> float:
    """Tiles/s of a copy of ``model`` alone on random batches, as the engine runs it."""
    model = copy.deepcopy(model).to(device, memory_format=torch.channels_last).eval()
    x = torch.randn(args.batch_size, 3, tile, tile, device=device)
    x = x.contiguous(memory_format=torch.channels_last)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    with torch.inference_mode(), autocast:
        for _ in range(2):
            model(x)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        steps, start = 0, time.perf_counter()
        while steps < 3 or time.perf_counter() - start < args.model_seconds:
            model(x)
            steps += 1
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    return steps * args.batch_size / (time.perf_counter() - start)


def read_only(args: argparse.Namespace) -> None:
    """Tiles/s of the engine's tile source alone, on the engine's plan and batches."""
    from training.inference.source import TileSource
    from training.inference.tiling import plan_tiles
    from training.models.registry import CONFIGS
    from training.slides import open_slide

    tile = int(CONFIGS[args.model]["input_size"])  # the model itself is not needed
    with open_slide(forty_x_phantom(args.side)) as slide:
        plan = plan_tiles(slide.shape[:2], SLIDE_PX / MODEL_PX, tile, 0.25, MODEL_PX)
        source = TileSource(slide, MODEL_PX, tile, workers=args.read_workers)
        start = time.perf_counter()
        count = sum(len(tiles) for _, _, tiles in source.batches(plan.batches(args.batch_size)))
        wall = time.perf_counter() - start
    print(
        f"{args.side}x{args.side} slide at {SLIDE_PX} um/px, {tile} px tiles at {MODEL_PX} um/px, "
        f"batches of {args.batch_size}, {args.read_workers} read workers: reading alone "
        f"{count} tiles in {wall:.1f} s = {count / wall:.1f} tiles/s"
    )


if __name__ == "__main__":
    main()
