"""Throughput of the tiled engine against MONAI's sliding_window_inference, same run.

Both get the same model (the same weights, in eval mode, as loaded from a checkpoint: each gets
its own copy), the same tile (the model's input size), the same overlap, the same batch size and
the same image at the model's pixel size, so both run the same tile grid, in fp32 on the CPU.
MONAI blends with its Gaussian window (mode="gaussian") under torch.inference_mode; the engine
runs as the plugin and the CLI run it (tissue detection on; it converts its copy of the model
to channels-last and runs two batches at once). A second MONAI run gets a channels-last copy of
the model too, to show how much of the difference that conversion alone makes.
Images: 4096x4096 phantoms, one with ~40% background (glass) and one all tissue. MONAI is a
benchmark-only dependency (`pip install -e .[bench]`).

    .venv/bin/python benchmarks/bench_vs_monai.py [--model swin_micro_upernet] [--batch-size 8]

Timings on a shared 2-core machine vary by about 5% from run to run; each figure is one run.
"""

from __future__ import annotations

import argparse
import copy
import time

import numpy as np
import torch
from _common import DATA

from training.inference import run
from training.models import build_model
from training.models.checkpoint import default_meta
from training.models.ensemble import Member
from training.synthetic import make_phantom


def phantom(size: int, tissue_fraction: float) -> np.ndarray:
    """A kidney phantom at 0.4 um/px, cached in benchmarks/_data."""
    path = DATA / f"kidney_{size}_tissue{round(tissue_fraction * 100)}.npy"
    if not path.exists():
        DATA.mkdir(exist_ok=True)
        image, _, _ = make_phantom("kidney", size=size, seed=0, tissue_fraction=tissue_fraction)
        np.save(path, image)
    return np.load(path)


def background_share(image: np.ndarray) -> float:
    """Share of pixels that are bare glass (within a few levels of the glass intensity)."""
    return float((image.astype(np.int16).min(axis=-1) >= 236).mean())


def monai_run(
    image: np.ndarray, model: torch.nn.Module, meta: dict, overlap: float, batch: int
) -> tuple[float, np.ndarray]:
    from monai.inferers import sliding_window_inference

    tile = int(meta["tile_size"])
    mean = torch.tensor(meta["mean"]).view(1, 3, 1, 1) * 255
    std = torch.tensor(meta["std"]).view(1, 3, 1, 1) * 255
    start = time.perf_counter()
    with torch.inference_mode():
        x = torch.from_numpy(image).permute(2, 0, 1)[None].float()
        x = (x - mean) / std
        prob = sliding_window_inference(
            x,
            roi_size=(tile, tile),
            sw_batch_size=batch,
            predictor=lambda t: torch.sigmoid(model(t)),
            overlap=overlap,
            mode="gaussian",
        )
    return time.perf_counter() - start, prob[0, 0].numpy()


def engine_run(
    image: np.ndarray, member: Member, overlap: float, batch: int
) -> tuple[float, np.ndarray, int, int]:
    start = time.perf_counter()
    result = run(image, member, "kidney", pixel_size_um=0.4, overlap=overlap, batch_size=batch)
    seconds = time.perf_counter() - start
    return seconds, np.asarray(result.probability), result.tiles_run, result.tiles_skipped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="swin_micro_upernet")
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--overlap", type=float, default=0.25)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = build_model(args.model).eval()
    meta = default_meta(model)
    member = Member(copy.deepcopy(model), meta, name=args.model)
    channels_last = copy.deepcopy(model).to(memory_format=torch.channels_last)
    tile = meta["tile_size"]
    print(
        f"{args.model}, tile {tile}, overlap {args.overlap}, batch {args.batch_size}, "
        f"torch threads {torch.get_num_threads()}, CPU, fp32"
    )
    engine_run(phantom(512, 1.0), member, args.overlap, args.batch_size)  # warm-up
    for monai_model in (model, channels_last):
        monai_run(phantom(512, 1.0), monai_model, meta, args.overlap, args.batch_size)
    for label, fraction in (("~40% background", 0.6), ("all tissue", 1.0)):
        image = phantom(args.size, fraction)
        ours, ours_prob, tiles_run, skipped = engine_run(
            image, member, args.overlap, args.batch_size
        )
        theirs, theirs_prob = monai_run(image, model, meta, args.overlap, args.batch_size)
        theirs_cl, _ = monai_run(image, channels_last, meta, args.overlap, args.batch_size)
        tissue = ours_prob > 0
        difference = np.abs(ours_prob - theirs_prob)[tissue].mean()
        print(
            f"{args.size}x{args.size} {label} (glass {background_share(image):.0%}): "
            f"engine {ours:.1f} s ({tiles_run} tiles run, {skipped} skipped); "
            f"MONAI {theirs:.1f} s ({tiles_run + skipped} tiles), speed-up {theirs / ours:.2f}x; "
            f"MONAI with a channels-last model {theirs_cl:.1f} s, "
            f"speed-up {theirs_cl / ours:.2f}x; mean |difference| on tissue tiles {difference:.4f}"
        )


if __name__ == "__main__":
    main()
