"""Seconds the full ensemble takes on one 3000x3000 image: Swin-T+UPerNet and
CoaT-lite-medium+DAFormer at 768 px, 0.4 um/px, 4-fold TTA, through the engine (issue 3's
figure; target < 2 s on an H100).

The image is a **synthetic** all-tissue kidney phantom at 0.4 um/px (an HPA image's size and
pixel size); the models have random weights (time does not depend on them). Everything the
engine does is timed: tissue detection, reading, the models under bf16 autocast, blending and
post-processing. Median of ``--repeats`` runs after one warm-up run.

    python benchmarks/bench_gpu_ensemble.py --device cuda
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from training.inference import RunOptions, run
from training.models import build_model
from training.models.checkpoint import default_meta
from training.models.ensemble import Ensemble, Member
from training.synthetic import make_phantom

MODELS = ("swin_tiny_upernet", "coat_lite_medium_daformer")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--size", type=int, default=3000)
    parser.add_argument("--tta", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    device = torch.device(args.device)
    members = []
    for name in MODELS:
        model = build_model(name).eval().to(device)
        members.append(Member(model, default_meta(model), name=name))
    ensemble = Ensemble(members)
    image, _, _ = make_phantom("kidney", size=args.size, seed=0, tissue_fraction=1.0)
    options = RunOptions(
        pixel_size_um=0.4,
        tta=args.tta,
        batch_size=args.batch_size,
        device=device,
        memory_limit_mb=4096,
    )
    run(image, ensemble, "kidney", options)  # warm-up: kernels, cuDNN autotuning
    seconds, tiles = [], 0
    for _ in range(args.repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        result = run(image, ensemble, "kidney", options)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
        tiles = result.tiles_run
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(
        f"{' + '.join(MODELS)}, tta {args.tta}, batch {args.batch_size}, {name}: "
        f"{args.size}x{args.size} image at 0.4 um/px, {tiles} tile runs; "
        f"median {statistics.median(seconds):.2f} s (min {min(seconds):.2f}, "
        f"max {max(seconds):.2f}, {args.repeats} runs)"
    )


if __name__ == "__main__":
    main()
