"""Time and peak memory of measuring a 20000x20000 slide's segmentation, beside segmenting it.

The slide is ``bench_segment_memory.py``'s 25%-tissue phantom (20000x20000 at 0.4 um/px, a
2048 px kidney phantom repeated over the top quarter, glass below; written once into
benchmarks/_data/) and the model its untrained ``swin_micro_upernet``, whose noisy output is a
worst case for measuring: tens of thousands of objects, some spanning the tissue. Three fresh
processes, each with its own peak resident set size (``VmHWM``):

1. segment: ``training.inference.run`` into a zarr map kept on disk;
2. label: the map's instance labels (``result.labels()``, what ``napari-ftu segment`` does);
3. label + measure: the same, then ``training.measure.slide.measure_result`` (bands of the map,
   the probability and the slide's pixels read a band at a time, the tissue area).

    OMP_NUM_THREADS=1 nice .venv/bin/python benchmarks/bench_measure_slide.py
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from _common import DATA, PeriodicSource, peak_rss_mb

SIDE = 20000
MODEL = "swin_micro_upernet"


def segment(slide: str, checkpoint: str, workdir: str) -> dict:
    from training.inference import run

    start = time.perf_counter()
    result = run(slide, checkpoint, "kidney", workdir=workdir)
    seconds = time.perf_counter() - start
    meta = {
        "path": str(result.path),
        "pixel_size_um": result.pixel_size_um,
        "downsample": result.downsample,
        "slide_shape": list(result.slide_shape),
        "threshold": result.threshold,
        "min_area_um2": result.min_area_um2,
    }
    Path(workdir, "result.json").write_text(json.dumps(meta))
    return {"seconds": seconds, "peak_rss_mb": peak_rss_mb(), "tiles_run": result.tiles_run}


def label_and_measure(slide_path: str, workdir: str, measure: bool) -> dict:
    from training.inference.engine import SegmentationResult
    from training.inference.store import DiskProbability
    from training.measure.slide import measure_result
    from training.slides import open_slide

    meta = json.loads(Path(workdir, "result.json").read_text())
    result = SegmentationResult(
        probability=DiskProbability(Path(meta["path"])),
        pixel_size_um=meta["pixel_size_um"],
        downsample=meta["downsample"],
        slide_shape=tuple(meta["slide_shape"]),
        organ="kidney",
        threshold=meta["threshold"],
        tiles_run=0,
        tiles_skipped=0,
        min_area_um2=meta["min_area_um2"],
    )
    start = time.perf_counter()
    labels = result.labels()
    figures = {"label_seconds": time.perf_counter() - start, "objects": int(labels.max())}
    figures["label_peak_rss_mb"] = peak_rss_mb()
    if measure:
        with open_slide(slide_path) as slide:
            start = time.perf_counter()
            objects, summary = measure_result(result, slide, labels, image_id="phantom")
            figures["measure_seconds"] = time.perf_counter() - start
        figures["measured"] = len(objects)
        figures["tissue_area_mm2"] = summary["tissue_area_mm2"]
        figures["ftus_per_mm2"] = summary["ftus_per_mm2"]
        figures["edge_objects"] = summary["edge_objects"]
    figures["peak_rss_mb"] = peak_rss_mb()
    return figures


def make_slide() -> Path:
    """``bench_segment_memory.py``'s 25%-tissue slide and model, written once (only these)."""
    import numpy as np

    from training.models import build_model, save_checkpoint
    from training.slides import write_pyramid
    from training.synthetic import make_phantom

    DATA.mkdir(exist_ok=True)
    checkpoint = DATA / f"{MODEL}.pt"
    if not checkpoint.exists():
        import torch

        torch.manual_seed(0)
        save_checkpoint(checkpoint, build_model(MODEL))
    path = DATA / f"tissue25_{SIDE}.tiff"
    if not path.exists():
        base, _, _ = make_phantom("kidney", size=2048, seed=0, tissue_fraction=1.0)
        rng = np.random.default_rng(0)
        glass = np.clip(242 + rng.normal(0, 1.5, (256, 256, 3)), 0, 255).astype(np.uint8)
        source = PeriodicSource(base, SIDE, tissue_rows=SIDE // 4, glass=glass)
        write_pyramid(path, source, 0.4, compression_level=1)
    return path


def child(*args: str) -> dict:
    done = subprocess.run(
        [sys.executable, __file__, *args], check=True, capture_output=True, text=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--step", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.step:
        kind, *rest = args.step
        if kind == "segment":
            print(json.dumps(segment(*rest)))
        else:
            print(json.dumps(label_and_measure(*rest, measure=kind == "measure")))
        return
    slide, checkpoint = str(make_slide()), DATA / f"{MODEL}.pt"
    workdir = DATA / "measure_run"
    workdir.mkdir(parents=True, exist_ok=True)
    seg = child("--step", "segment", slide, str(checkpoint), str(workdir))
    lab = child("--step", "label", slide, str(workdir))
    mea = child("--step", "measure", slide, str(workdir))
    print(
        f"segment ({seg['tiles_run']} tiles): {seg['seconds']:.0f} s, peak RSS "
        f"{seg['peak_rss_mb']:.0f} MB"
    )
    print(
        f"labels ({lab['objects']} objects): {lab['label_seconds']:.0f} s, peak RSS "
        f"{lab['peak_rss_mb']:.0f} MB"
    )
    print(
        f"labels + measure_result: labels {mea['label_seconds']:.0f} s, measuring "
        f"{mea['measure_seconds']:.0f} s for {mea['measured']} objects, peak RSS "
        f"{mea['peak_rss_mb']:.0f} MB (after labelling {mea['label_peak_rss_mb']:.0f} MB); "
        f"tissue {mea['tissue_area_mm2']:.2f} mm², {mea['ftus_per_mm2']:.0f} objects/mm², "
        f"{mea['edge_objects']} on the border"
    )


if __name__ == "__main__":
    main()
