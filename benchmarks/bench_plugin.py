"""The plugin's responsiveness and memory, in a real napari viewer (run under Xvfb):

1. threshold slider -> refreshed mask on a 3000 x 3000 image (map at the model's scale), median;
2. the longest stall of the Qt event loop (a 10 ms QTimer) while the engine runs on the CPU;
3. "Review region" of 2048 x 2048 opened and applied on a 20000 x 20000 slide;
4. the viewer process's peak memory with that slide segmented.

Items 1-2 run the bundled default model on a kidney phantom (synthetic). For 3-4 the model is
not run over the 20000 x 20000 slide (400 M pixels, far too long on a laptop CPU): its
probability map is the phantom's own truth, smoothed, tiled like the slide.

xvfb-run -a python benchmarks/bench_plugin.py [--out runs/bench/plugin.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import timm  # noqa: F401  (before any viewer: see DESIGN.md's platform traps)
import torch  # noqa: F401
from _common import forty_x_phantom, peak_rss_mb
from scipy import ndimage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/bench/plugin.json"))
    parser.add_argument("--side", type=int, default=3000, help="image side for items 1-2")
    parser.add_argument("--slide-side", type=int, default=20000, help="slide side for 3-4")

    parser.add_argument("--part", choices=("slider", "region"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.part is None:  # each part in a process of its own: its peak memory is its own
        figures: dict = {}
        for part in ("slider", "region"):
            command = [sys.executable, __file__, "--part", part, "--side", str(args.side)]
            command += ["--slide-side", str(args.slide_side)]
            output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            figures[part] = json.loads(output.strip().splitlines()[-1])
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(figures, indent=2))
        print(json.dumps(figures, indent=2))
        return

    import napari
    from qtpy.QtWidgets import QApplication

    viewer = napari.Viewer(show=False)
    app = QApplication.instance()
    if args.part == "slider":
        figures = slider_and_stall(viewer, app, args.side)
    else:
        figures = region_review(viewer, app, args.slide_side)
    figures["peak_rss_mb"] = round(peak_rss_mb())
    viewer.close()
    print(json.dumps(figures))


def slider_and_stall(viewer, app, side: int) -> dict:
    """Segment a ``side`` x ``side`` phantom at 1 um/px while a QTimer measures the event
    loop's stalls; then time threshold moves until the mask layer has refreshed."""
    from qtpy.QtCore import QTimer

    from napari_ftu._segment_widget import SegmentWidget, mask_name
    from training.synthetic import make_phantom

    image, _, _ = make_phantom("kidney", size=side, seed=1, pixel_size_um=1.0)
    viewer.add_image(image, name="phantom", rgb=True, scale=(1.0, 1.0), units=("um", "um"))
    widget = SegmentWidget(viewer)
    widget.pixel_size.value, widget.organ.value = "1.0", "kidney"
    ticks: list[float] = []
    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start()
    start = time.perf_counter()
    widget.start()
    while widget.running:
        app.processEvents()
        time.sleep(0.001)
    run_seconds = time.perf_counter() - start
    settle = time.perf_counter() + 1.0  # the loop's last stall is seen by a tick after it
    while time.perf_counter() < settle:
        app.processEvents()
        time.sleep(0.001)
    timer.stop()
    gaps = np.diff(ticks) * 1000
    mask = viewer.layers[mask_name("phantom")]
    times = []
    for threshold in np.round(np.linspace(0.3, 0.7, 21), 2):
        begin = time.perf_counter()
        widget.threshold.value = float(threshold)
        app.processEvents()  # the refresh reaches the canvas
        times.append((time.perf_counter() - begin) * 1000)
    return {
        "image": f"{side}x{side} kidney phantom at 1 um/px (synthetic), default model, CPU",
        "segment_seconds": round(run_seconds, 1),
        "event_loop_longest_stall_ms": round(float(gaps.max()), 1),
        "event_loop_p99_gap_ms": round(float(np.percentile(gaps, 99)), 1),
        "slider_to_mask_median_ms": round(statistics.median(times), 1),
        "slider_to_mask_max_ms": round(max(times), 1),
        "objects": int(mask.data.max()),
    }


def region_review(viewer, app, side: int) -> dict:
    """Open a ``side`` x ``side`` slide at 0.5 um/px, give it a (simulated) segmentation at
    1 um/px, then time "Review region" of 2048 x 2048 working pixels: open, paint, apply."""
    from napari_ftu._review_widget import ReviewWidget
    from napari_ftu._segment_job import JobResult
    from napari_ftu._segment_widget import SegmentWidget, mask_name
    from training.inference import SegmentationResult
    from training.review.session import Grid
    from training.review.store import store_location
    from training.synthetic import make_phantom

    path = Path(forty_x_phantom(side, pixel_size_um=0.5))
    store = store_location(path)
    if store.exists():
        import shutil

        shutil.rmtree(store)
    (layer,) = viewer.open(str(path), plugin="napari-ftu")
    segment = SegmentWidget(viewer)
    working = (side + 1) // 2
    _, truth, _ = make_phantom("kidney", size=2048, seed=0, pixel_size_um=0.5, tissue_fraction=1.0)
    tile = ndimage.gaussian_filter(truth[::2, ::2].astype(np.float32), 2)
    reps = -(-working // len(tile))
    probability = np.tile(tile, (reps, reps))[:working, :working]
    result = SegmentationResult(probability, 1.0, 2.0, (side, side), "kidney", 0.5, 0, 0)
    segment._image_name = layer.name
    begin = time.perf_counter()
    job = JobResult(result, (0, 0), Grid((working, working), 1.0, 2.0), Path("simulated"))
    segment._show_result(job)
    while segment.running:  # the mask layer comes in a later turn of the event loop
        app.processEvents()
        time.sleep(0.005)
    show_seconds = time.perf_counter() - begin
    del probability
    mask = viewer.layers[mask_name(layer.name)]
    review = ReviewWidget(viewer)
    review.region.value = "drawn rectangle"
    shapes = viewer.add_shapes(name="regions")
    opens, applies = [], []
    for attempt in range(3):
        y0 = 1000.0 + 2500 * attempt  # um = working pixels (1 um each); 2048 x 2048 of them
        corners = [[y0, 3000], [y0, 3000 + 2047], [y0 + 2047, 3000 + 2047], [y0 + 2047, 3000]]
        shapes.data = [np.array(corners)]
        shapes.shape_type = ["rectangle"]
        begin = time.perf_counter()
        review.review_region()
        app.processEvents()
        opens.append(time.perf_counter() - begin)
        region = review.editor.layer
        box = review.editor.box
        ys, xs = np.mgrid[100:140, 100:140]
        region.data_setitem((ys.ravel(), xs.ravel()), int(region.data.max()) + 1)
        begin = time.perf_counter()
        review.apply_region()
        app.processEvents()
        applies.append(time.perf_counter() - begin)
    return {
        "slide": f"{side}x{side} at 0.5 um/px (synthetic, periodic), mask {working}x{working}",
        "region_box": list(box),
        "mask_multiscale_levels": len(mask.data) if mask.multiscale else 1,
        "simulated_result_to_layers_seconds": round(show_seconds, 1),
        "review_region_open_seconds": [round(t, 3) for t in opens],
        "review_region_apply_seconds": [round(t, 3) for t in applies],
    }


if __name__ == "__main__":
    main()
