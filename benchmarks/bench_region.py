"""A region run against a whole-slide run: the tiles each runs, the seconds, and the largest
difference between the region's map and the same box of the whole-slide map (0: the region
keeps the whole slide's tile grid, so it is the same values, not an approximation).

    .venv/bin/python benchmarks/bench_region.py [--model swin_micro_upernet] [--size 2048]
        [--box 700 900 512 512]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from training.inference import RunOptions, run
from training.models import build_model
from training.models.checkpoint import default_meta
from training.models.ensemble import Member
from training.synthetic import make_phantom


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="swin_micro_upernet")
    parser.add_argument("--size", type=int, default=2048, help="the phantom's side, 0.4 um/px")
    parser.add_argument("--box", type=int, nargs=4, default=(700, 900, 512, 512), metavar="N")
    parser.add_argument("--batch-size", type=int, default=4)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = build_model(args.model).eval()
    meta = {**default_meta(model), "pixel_size_um": 0.4}
    member = Member(model, meta, name=args.model)
    image, _, _ = make_phantom("kidney", size=args.size, seed=0, tissue_fraction=1.0)
    options = RunOptions(pixel_size_um=0.4, batch_size=args.batch_size)
    run(image[:512, :512], member, "kidney", options)  # warm-up
    start = time.perf_counter()
    whole = run(image, member, "kidney", options)
    whole_s = time.perf_counter() - start
    start = time.perf_counter()
    part = run(image, member, "kidney", options, region=tuple(args.box))
    part_s = time.perf_counter() - start
    y, x, h, w = args.box
    difference = np.abs(part.probability - whole.probability[y : y + h, x : x + w]).max()
    print(
        f"{args.model}, {args.size} px square, torch threads {torch.get_num_threads()}: whole "
        f"slide {whole.tiles_run} tiles in {whole_s:.1f} s; region {h} x {w} at ({y}, {x}) "
        f"{part.tiles_run} tiles in {part_s:.1f} s; largest difference {difference:.3g}"
    )


if __name__ == "__main__":
    main()
