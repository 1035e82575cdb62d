"""Does bf16 change what the default model finds? Held-out Dice and time, fp32 against bf16.

The engine's ``precision="bf16"`` (bfloat16 autocast) runs the models about twice as fast on a
CPU with native bf16 (issue 24), but the models' thresholds were calibrated in fp32. This runs
the default model over held-out real images with each precision, alternating per folder, and
prints the mean FTU and background Dice and the engine's seconds.

    python benchmarks/bench_precision.py --data runs/data/kidney-test runs/data/colon-test
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from training.evaluate import load_images
from training.models.default import default_model_path
from training.models.ensemble import load_ensemble
from training.validation import predict, score, summarise


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", nargs="+", type=Path, required=True)
    parser.add_argument("--model", type=Path, default=None, help="default: the bundled model")
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    args = parser.parse_args()
    ensemble = load_ensemble(args.model or default_model_path(), "cpu")
    rows = []
    for folder in args.data:
        records = load_images([folder])
        for precision in args.precisions:
            start = time.perf_counter()
            summary = summarise(score(predict(ensemble, records, precision=precision)))
            seconds = time.perf_counter() - start
            row = {"data": folder.name, "precision": precision, "images": len(records),
                   "dice": round(summary["dice"], 4),
                   "background_dice": round(summary["background_dice"], 4),
                   "seconds": round(seconds, 1)}  # fmt: skip
            print(json.dumps(row), flush=True)
            rows.append(row)


if __name__ == "__main__":
    main()
