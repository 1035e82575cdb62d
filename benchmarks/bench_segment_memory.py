"""Peak memory and time of segmenting a 20000x20000 pyramidal slide at 0.4 um/px.

Two slides are written once (cached in benchmarks/_data/) with ``write_pyramid`` from a lazy
source that repeats a 2048x2048 all-tissue kidney phantom over the top rows and glass below:
one with tissue over 25% of its area, one over 50% (twice the tissue area). Each is segmented in
a fresh process by ``training.inference.run`` with default settings (tissue detection on; the
20000x20000 float32 probability map, 1.6 GB, goes to a zarr array on disk) and a small model
(swin_micro_upernet, random weights: the figures are about memory and time, not masks). The
peak resident set size (``VmHWM``) of that process counts the interpreter, torch, the model,
the reads and the output. ``--cli`` also runs ``napari-ftu segment`` end to end (probability,
threshold, labels, RLE row) on the larger slide.

    .venv/bin/python benchmarks/bench_segment_memory.py [--side 20000] [--cli]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import DATA, PeriodicSource, peak_rss_mb

MODEL = "swin_micro_upernet"


def measure_engine(slide: str, checkpoint: str) -> None:
    import torch

    from training.inference import run

    with tempfile.TemporaryDirectory() as workdir:
        start = time.perf_counter()
        result = run(slide, checkpoint, "kidney", workdir=workdir)
        seconds = time.perf_counter() - start
        figures = {
            "seconds": seconds,
            "tiles_run": result.tiles_run,
            "tiles_skipped": result.tiles_skipped,
            "output": type(result.probability).__name__,
            "output_shape": list(result.probability.shape),
            "threads": torch.get_num_threads(),
            "peak_rss_mb": peak_rss_mb(),
        }
    print(json.dumps(figures))


def measure_cli(slide: str, checkpoint: str) -> None:
    from napari_ftu.cli import main

    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        status = main(
            ["segment", slide, "--organ", "kidney", "--model", checkpoint, "--out", out, "--quiet"]
        )
        seconds = time.perf_counter() - start
    print(json.dumps({"status": status, "seconds": seconds, "peak_rss_mb": peak_rss_mb()}))


def child(*args: str) -> dict:
    result = subprocess.run(
        [sys.executable, __file__, *args], check=True, capture_output=True, text=True
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def make_inputs(side: int) -> tuple[dict[float, Path], Path]:
    """The two slides (tissue share -> path) and the model checkpoint, written once."""
    from training.models import build_model, save_checkpoint
    from training.slides import write_pyramid
    from training.synthetic import make_phantom

    DATA.mkdir(exist_ok=True)
    checkpoint = DATA / f"{MODEL}.pt"
    if not checkpoint.exists():
        import torch

        torch.manual_seed(0)
        save_checkpoint(checkpoint, build_model(MODEL))
    slides = {share: DATA / f"tissue{round(share * 100)}_{side}.tiff" for share in (0.25, 0.5)}
    if not all(path.exists() for path in slides.values()):
        base, _, _ = make_phantom("kidney", size=2048, seed=0, tissue_fraction=1.0)
        rng = np.random.default_rng(0)
        glass = np.clip(242 + rng.normal(0, 1.5, (256, 256, 3)), 0, 255).astype(np.uint8)
        for share, path in slides.items():
            if path.exists():
                continue
            start = time.perf_counter()
            source = PeriodicSource(base, side, tissue_rows=round(side * share), glass=glass)
            write_pyramid(path, source, 0.4, compression_level=1)
            print(f"wrote {path.name} in {time.perf_counter() - start:.0f} s", flush=True)
    return slides, checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=20000)
    parser.add_argument("--cli", action="store_true", help="also run napari-ftu segment")
    parser.add_argument("--engine", nargs=2, metavar=("SLIDE", "MODEL"), help=argparse.SUPPRESS)
    parser.add_argument("--segment", nargs=2, metavar=("SLIDE", "MODEL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.engine:
        measure_engine(*args.engine)
        return
    if args.segment:
        measure_cli(*args.segment)
        return
    slides, checkpoint = make_inputs(args.side)
    runs = {share: child("--engine", str(path), str(checkpoint)) for share, path in slides.items()}
    for share, figures in runs.items():
        print(
            f"{args.side}x{args.side} at 0.4 um/px, tissue {share:.0%} of the area, {MODEL}: "
            f"{figures['seconds']:.0f} s, {figures['tiles_run']} tiles run, "
            f"{figures['tiles_skipped']} skipped, output {figures['output']} "
            f"{figures['output_shape']}, peak RSS {figures['peak_rss_mb']:.0f} MB "
            f"({figures['threads']} torch threads)"
        )
    small, large = runs[0.25], runs[0.5]
    print(
        f"2x the tissue area: {large['seconds'] / small['seconds']:.2f}x the time, "
        f"{large['tiles_run'] / small['tiles_run']:.2f}x the tiles"
    )
    if args.cli:
        figures = child("--segment", str(slides[0.5]), str(checkpoint))
        print(
            f"napari-ftu segment on the 50% slide (probability, labels, RLE row): exit "
            f"{figures['status']}, {figures['seconds']:.0f} s, peak RSS "
            f"{figures['peak_rss_mb']:.0f} MB"
        )


if __name__ == "__main__":
    main()
