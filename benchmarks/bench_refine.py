"""Boundary Patch Refinement's effect on held-out real tissue, and what it costs.

For each dataset folder, ``python -m training.evaluate`` runs the model twice, without and with
the refiner, each in its own process (one torch thread); the table gives the mean per-image
Dice, the background (stroma) Dice, the boundary F-score at 2 level-0 px and the CPU seconds
per image of each run (the child process's user + system time, so other work on the machine
does not count).

    python benchmarks/bench_refine.py --model training/models/default/ensemble.yaml \\
        --refiner runs/bpr/default-coarse/best.pt \\
        --data runs/data/kidney-test runs/data/colon-test --out runs/bpr/bench
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from pathlib import Path


def _evaluate(model: Path, folder: Path, refine: list[str], out: Path) -> tuple[dict, float]:
    """Run ``training.evaluate``; return its summary and the CPU seconds it used."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    command = [sys.executable, "-m", "training.evaluate", "--model", str(model),
               "--data", str(folder), "--out", str(out), *refine]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, env=env)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    seconds = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return json.loads(out.read_text()), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--refiner", type=Path, required=True)
    parser.add_argument("--data", type=Path, nargs="+", required=True)
    parser.add_argument("--out", type=Path, required=True, help="folder for the JSON summaries")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    header = "folder            refiner  images  Dice    background  boundary F  CPU s/image"
    print(header)
    for folder in args.data:
        for label, refine in (("none", ["--no-refine"]), ("BPR", ["--refine", str(args.refiner)])):
            out = args.out / f"{folder.name}-{label}.json"
            summary, seconds = _evaluate(args.model, folder, refine, out)
            images = summary["images"]
            print(
                f"{folder.name:17s} {label:7s} {images:7d}  {summary['dice']:.4f}  "
                f"{summary['background_dice']:.4f}      {summary['boundary_f']:.4f}      "
                f"{seconds / images:.2f}"
            )


if __name__ == "__main__":
    main()
