"""Seconds an ensemble takes to segment a dataset folder's images through the engine, one torch
thread, after one warm-up image.

    python benchmarks/time_ensemble.py --data runs/data/kidney-test --images 6 \\
        --model OLD/ensemble.yaml training/models/default/ensemble.yaml
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from training.evaluate import load_images
from training.models.ensemble import load_ensemble
from training.validation import predict


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, nargs="+", required=True)
    parser.add_argument("--model", type=Path, nargs="+", required=True)
    parser.add_argument("--images", type=int, default=6)
    args = parser.parse_args()
    torch.set_num_threads(1)
    records = load_images(args.data)[: args.images]
    for path in args.model:
        ensemble = load_ensemble(path)
        predict(ensemble, records[:1])
        start = time.perf_counter()
        predict(ensemble, records)
        seconds = time.perf_counter() - start
        print(f"{path}: {seconds:.1f} s for {len(records)} images")


if __name__ == "__main__":
    main()
