"""Where a model's Dice goes on one organ: objects it finds that the truth lacks, objects of the
truth it misses, and the outlines of the objects both have.

    python benchmarks/error_breakdown.py --data runs/data/kidney-test \\
        --model training/models/default/ensemble.yaml --organ kidney [--out FILE.json]

Every image goes through the engine with the model's own threshold and minimum area, exactly as
``python -m training.evaluate`` scores it. The masks are then split into connected objects: a
predicted object that touches no truth pixel is *unmatched*, a truth object that touches no
predicted pixel is *missed*. Printed per image and as means: the measured Dice, the Dice with
the unmatched objects taken out, and the Dice with the missed objects added as drawn. These two
are diagnostics (what the figure would be were every unmatched object a label the truth left
out, or every missed object found exactly), never a score: the measured Dice is the only one.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from scipy import ndimage

from training.evaluate import load_images
from training.models.ensemble import load_ensemble
from training.validation import ImageScore, dice, full_size_mask, predict


def breakdown(item: ImageScore) -> dict[str, float | int]:
    """One image's objects and Dice: measured, without unmatched objects, with missed ones."""
    prediction, truth = full_size_mask(item), item.truth.astype(bool)
    predicted, n_predicted = ndimage.label(prediction)
    true, n_true = ndimage.label(truth)
    unmatched = np.setdiff1d(np.arange(1, n_predicted + 1), np.unique(predicted[truth]))
    missed = np.setdiff1d(np.arange(1, n_true + 1), np.unique(true[prediction]))
    edge = np.unique(
        np.concatenate([predicted[0], predicted[-1], predicted[:, 0], predicted[:, -1]])
    )
    return {
        "dice": dice(prediction, truth),
        "dice_without_unmatched": dice(prediction & ~np.isin(predicted, unmatched), truth),
        "dice_with_missed": dice(prediction | np.isin(true, missed), truth),
        "predicted": int(n_predicted),
        "unmatched": len(unmatched),
        "unmatched_at_edge": int(np.isin(unmatched, edge).sum()),
        "truth": int(n_true),
        "missed": len(missed),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", nargs="+", type=Path, required=True)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--organ", required=True)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    records = load_images(args.data, [args.organ], None)
    rows = {}
    for item in predict(load_ensemble(args.model), records):
        rows[item.record.id] = breakdown(item)
        print(item.record.id, rows[item.record.id])
    keys = ("dice", "dice_without_unmatched", "dice_with_missed")
    means = {key: round(float(np.mean([row[key] for row in rows.values()])), 4) for key in keys}
    counts = ("predicted", "unmatched", "unmatched_at_edge", "truth", "missed")
    totals = {key: int(sum(row[key] for row in rows.values())) for key in counts}
    print(f"{len(rows)} {args.organ} images: mean {means}; objects {totals}")
    if args.out:
        summary = {"model": str(args.model), "means": means, "objects": totals, "images": rows}
        args.out.write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
