"""Time and peak memory of ``napari-ftu report`` on a 20000x20000 whole slide.

The slide is the all-tissue kidney phantom at 0.5 um/px of ``_common.forty_x_phantom`` (a 2048 px
phantom repeated, a pyramidal OME-TIFF written once into benchmarks/_data/). Its run folder is
made here without a model (the figures are about the report, not a segmentation): the phantom's
own FTU mask, repeated the same way, labelled at 1 um/px (the default kidney member's working
scale, 10000 x 10000 labels), measured by ``training.measure.measure_objects`` (mean
probabilities drawn at random, seeded), its outlines as the run's QuPath GeoJSON and a run
record. ``napari-ftu report`` then runs in a fresh process; its peak resident set size
(``VmHWM``) counts the interpreter, the reads and the pictures.

    .venv/bin/python benchmarks/bench_report.py [--side 20000]
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
from _common import PeriodicSource, forty_x_phantom, peak_rss_mb

PIXEL_SIZE, WORKING = 0.5, 1.0  # um/px of the slide and of the labels


def make_run(slide: str, side: int, out: Path) -> int:
    """The run folder of ``slide``; returns the number of objects."""
    from scipy import ndimage

    from training.data.geojson_export import labels_to_geojson
    from training.inference.outputs import write_json
    from training.measure.io import write_measurements
    from training.measure.objects import measure_objects
    from training.measure.summary import summarize
    from training.report import RunRecord, write_run_record
    from training.synthetic import make_phantom

    _, mask, _ = make_phantom(
        "kidney", size=2048, seed=0, pixel_size_um=PIXEL_SIZE, tissue_fraction=1.0
    )
    step = round(WORKING / PIXEL_SIZE)
    grid = side // step
    tiled = PeriodicSource(mask[::step, ::step, None].repeat(3, axis=-1), grid)[0:grid, 0:grid]
    labels, count = ndimage.label(tiled[..., 0] > 0)
    objects = measure_objects(labels, WORKING, downsample=float(step))
    objects["mean_probability"] = np.random.default_rng(0).uniform(0.5, 1.0, len(objects))
    tissue_mm2 = (side * PIXEL_SIZE / 1000) ** 2
    write_measurements(
        out, "slide", objects, summarize(objects, "slide", tissue_mm2), overwrite=True
    )
    geojson = labels_to_geojson(labels, float(step), "kidney", shape=(side, side))
    write_json(out / "slide.geojson", geojson, overwrite=True)
    settings = dict(threshold=0.65, min_area_um2=4000.0, overlap=0.25, tta=1)
    settings |= dict(stain=None, refine=None, tissue_detection=True)
    record = RunRecord(
        "slide",
        slide,
        PIXEL_SIZE,
        (side, side),
        "kidney",
        "ensemble.yaml",
        ["kidney_coat_daformer.pt"],
        settings,
        WORKING,
        {"objects": "slide.objects.csv", "geojson": "slide.geojson"},
    )
    write_run_record(out, record, overwrite=True)
    return count


def report(out: str) -> None:
    """Child process: ``napari-ftu report OUT --overwrite``, timed."""
    from napari_ftu.cli import main as cli

    start = time.perf_counter()
    status = cli(["report", out, "--overwrite"])
    seconds = time.perf_counter() - start
    print(json.dumps({"status": status, "seconds": seconds, "peak_rss_mb": peak_rss_mb()}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=20000)
    parser.add_argument("--report", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.report:
        report(args.report)
        return
    slide = forty_x_phantom(args.side, PIXEL_SIZE)
    with tempfile.TemporaryDirectory() as folder:
        count = make_run(slide, args.side, Path(folder))
        done = subprocess.run(
            [sys.executable, __file__, "--report", folder], capture_output=True, text=True
        )
        figures = json.loads(done.stdout.strip().splitlines()[-1])
        sizes = {p.name: p.stat().st_size for p in Path(folder).glob("*report*")}
    print(
        f"napari-ftu report, {args.side}x{args.side} slide at {PIXEL_SIZE} um/px, {count} "
        f"objects: exit {figures['status']}, {figures['seconds']:.1f} s, peak RSS "
        f"{figures['peak_rss_mb']:.0f} MB; "
        + ", ".join(f"{name} {size / 1e6:.1f} MB" for name, size in sorted(sizes.items()))
    )


if __name__ == "__main__":
    main()
