"""What the Measurements widget costs on the largest mask edited in place (8192 x 8192 labels,
the direct-edit limit): the whole table, measured in its worker; and an edit's refresh, on the
GUI thread (the touched objects measured in their box, the checksum of the labels, the table
put back in the layer's features). Medians of ``--repeats``.

QT_QPA_PLATFORM=offscreen python benchmarks/bench_measure_widget.py [--side 8192] [--out F.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
from _common import peak_rss_mb


def disc_labels(side: int, spacing: int = 200, radius: int = 60) -> np.ndarray:
    """Discs of ``radius`` px on a grid of ``spacing`` px (glomeruli at 1 um/px), 1..N."""
    labels = np.zeros((side, side), np.uint16)
    yy, xx = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    disc = yy**2 + xx**2 <= radius**2
    label = 0
    for y in range(spacing // 2, side - radius, spacing):
        for x in range(spacing // 2, side - radius, spacing):
            label += 1
            patch = labels[y - radius : y + radius + 1, x - radius : x + radius + 1]
            patch[disc] = label
    return labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--side", type=int, default=8192)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    from napari.layers import Labels
    from qtpy.QtWidgets import QApplication

    from napari_ftu._measure_layer import (
        LayerMeasurements,
        MeasureJob,
        Placement,
        _checksum,
        set_table,
    )

    app = QApplication.instance() or QApplication([])  # the layer's timers need one
    labels = disc_labels(args.side)
    probability = np.where(labels > 0, 0.8, 0.1).astype(np.float32)
    placement = Placement(1.0, 1.0)
    start = time.perf_counter()
    table, _ = MeasureJob(labels, probability, placement, None, None).run()
    whole_s = time.perf_counter() - start
    layer = Labels(labels)
    set_table(layer, table)
    keeper = LayerMeasurements(type("Viewer", (), {"layers": [layer]})(), layer)
    keeper.placement = placement
    timings = []
    for i in range(args.repeats):  # a 20 px brush stroke over an object's edge, then refreshed
        y, x = 100 + 200 * i, 160
        box = (y - 10, x - 10, y + 10, x + 10)
        painted = labels[y - 10 : y + 10, x - 10 : x + 10]
        touched = {int(labels[y, x - 40]), *np.unique(painted).tolist()}
        painted[...] = labels[y, x - 40]
        start = time.perf_counter()
        keeper.refresh(touched - {0}, box)
        timings.append(time.perf_counter() - start)
    start = time.perf_counter()
    _checksum(labels)
    checksum_s = time.perf_counter() - start
    result = {
        "side": args.side,
        "objects": len(table),
        "whole_table_s": round(whole_s, 2),
        "edit_refresh_ms_median": round(1000 * statistics.median(timings), 1),
        "labels_checksum_ms": round(1000 * checksum_s, 1),
        "peak_rss_mb": round(peak_rss_mb()),
    }
    app.processEvents()
    print(json.dumps(result))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
