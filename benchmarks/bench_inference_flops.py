"""Achieved model FLOP/s during tiled inference over the FLOP/s of a large matmul, same run.

FLOPs per tile are counted by torch's FlopCounterMode (matmuls and convolutions, 2 per
multiply-add); the tiled run includes everything the engine does (reading, blending, tissue
detection). Target: >= 0.5 on the CPU.

    .venv/bin/python benchmarks/bench_inference_flops.py [--model swin_micro_upernet] [--size 2048]
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from training.inference import RunOptions, run
from training.models import build_model
from training.models.checkpoint import default_meta
from training.models.ensemble import Member
from training.synthetic import make_phantom


def matmul_flops(n: int = 2048, repeats: int = 10) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    start = time.perf_counter()
    for _ in range(repeats):
        torch.mm(a, b)
    return 2 * n**3 * repeats / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="swin_micro_upernet")
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    model = build_model(args.model).eval()
    meta = default_meta(model)
    tile = meta["tile_size"]
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(torch.randn(1, 3, tile, tile))
    per_tile = counter.get_total_flops()
    image, _, _ = make_phantom("kidney", size=args.size, seed=0, tissue_fraction=1.0)
    member = Member(model, meta, name=args.model)
    options = RunOptions(pixel_size_um=0.4, batch_size=args.batch_size)
    run(image[:512, :512], member, "kidney", options)  # warm-up
    peak = matmul_flops()
    start = time.perf_counter()
    result = run(image, member, "kidney", options)
    seconds = time.perf_counter() - start
    achieved = per_tile * result.tiles_run / seconds
    print(
        f"{args.model}: {per_tile / 1e9:.2f} GFLOP per {tile}x{tile} tile; torch threads "
        f"{torch.get_num_threads()}"
    )
    print(
        f"tiled inference: {result.tiles_run} tiles of a {args.size}x{args.size} all-tissue "
        f"phantom in {seconds:.2f} s, batch {args.batch_size}, overlap 0.25"
    )
    print(
        f"achieved {achieved / 1e9:.1f} GFLOP/s; 2048x2048 fp32 matmul {peak / 1e9:.1f} GFLOP/s; "
        f"ratio {achieved / peak:.2f}"
    )


if __name__ == "__main__":
    main()
