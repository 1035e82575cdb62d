"""Which members, at which weights, make the best ensemble for one organ, on validation images.

    python benchmarks/combine_members.py --organ kidney --split-of runs/default/coat-k2/best.pt \\
        --data runs/data/phantoms-hpa-train runs/data/phantoms-hubmap-train runs/data/kidney-dev \\
        --members runs/default/swin-k/best.pt runs/default/coat-k2/best.pt \\
                  runs/default/kidney-coat/best.pt --weights 0 1 2

Each member is run once through the engine on every image (members at another pixel size are
resampled onto the finest member's grid); then for every combination of weights the mean
probability gets its threshold and minimum area tuned as training validation tunes them
(``tune_postprocess``), and the mean per-image Dice (with the background Dice and their mean,
the selection score) is printed, best score first. The tuning is on
the same images it is scored on: use validation images, never the test set.
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import numpy as np
import torch

from training.evaluate import load_images, validation_ids
from training.models.ensemble import load_ensemble
from training.validation import ImageScore, predict, score, summarise, tune_postprocess


def _resample(probability: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    if probability.shape == shape:
        return probability
    tensor = torch.from_numpy(probability)[None, None]
    return torch.nn.functional.interpolate(tensor, size=shape, mode="bilinear")[0, 0].numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--organ", required=True)
    parser.add_argument("--data", nargs="+", type=Path, required=True)
    parser.add_argument("--split-of", type=Path, help="only the images CKPT validated on")
    parser.add_argument("--members", nargs="+", type=Path, required=True)
    parser.add_argument("--weights", nargs="+", type=float, default=[0.0, 1.0])
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument(
        "--tta", type=int, default=1, choices=(1, 4, 8), help="flips (4), transposes (8)"
    )
    args = parser.parse_args()

    ids = validation_ids(args.split_of) if args.split_of else None
    records = load_images(args.data, [args.organ], ids)
    runs = [predict(load_ensemble(path), records, tta=args.tta) for path in args.members]
    # every member's map on each image's finest grid, resampled once for all the combinations
    grids = [
        min((run[i] for run in runs), key=lambda s: s.pixel_size_um) for i in range(len(records))
    ]
    maps = [
        [_resample(run[i].probability, grid.probability.shape) for i, grid in enumerate(grids)]
        for run in runs
    ]
    rows = []
    for weights in itertools.product(args.weights, repeat=len(args.members)):
        if not sum(weights):
            continue
        items = []
        for i, (record, grid) in enumerate(zip(records, grids, strict=True)):
            mean = sum(w * member[i] for w, member in zip(weights, maps, strict=True) if w)
            items.append(ImageScore(record, mean / sum(weights), grid.pixel_size_um))
        thresholds, areas = tune_postprocess(items)
        summary = summarise(score(items, thresholds, areas))
        rows.append((summary, weights, thresholds, areas))
    members = " ".join(map(str, args.members))
    print(f"{len(records)} {args.organ} images, TTA {args.tta}; members: {members}")
    # best first by the selection score (the mean of the FTU and background Dice: dense tiles
    # cannot fool it), as training validation chooses
    for summary, weights, thresholds, areas in sorted(rows, key=lambda r: -r[0]["score"])[
        : args.top
    ]:
        by_source = ", ".join(f"{k} {v:.4f}" for k, v in summary["data_source"].items())
        print(
            f"weights {' '.join(f'{w:g}' for w in weights)}: score {summary['score']:.4f}, "
            f"Dice {summary['dice']:.4f}, background {summary['background_dice']:.4f} "
            f"({by_source}); threshold {thresholds[args.organ]}, "
            f"min area {areas[args.organ]:g} um²"
        )


if __name__ == "__main__":
    main()
