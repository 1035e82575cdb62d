"""``python -m training.calibrate``: tune an ensemble's threshold and minimum object area per organ.

    python -m training.calibrate --data DIR [DIR ...] --model ensemble.yaml [--write]
    python -m training.calibrate --data DIR --model ensemble.yaml --split-of RUN/best.pt --write

The ensemble runs on the images through the engine the plugin and the CLI use
(:func:`training.validation.predict`); per organ, the (threshold, minimum area) pair with the best
mean per-image selection score (:func:`training.validation.selection_score`: the FTU Dice, on
colon its mean with the background Dice) is chosen on a grid that also holds the manifest's
current pair, so that score on these images never gets worse (unless that pair's area is above
the cap of :func:`training.validation.tune_postprocess`). Beside the FTU Dice it reports the
background Dice and the Dice of the all-FTU prediction on the same images. ``--write`` stores
them as the manifest's top-level ``thresholds`` and ``min_area_um2`` (see
:mod:`training.models.ensemble`), for the organs seen, keeping its other keys. Tune on
validation images, not the images the members trained on: a figure on the images it was tuned
on is optimistic.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from training.evaluate import add_image_arguments, load_images, resolve_device, validation_ids

log = logging.getLogger("training.calibrate")


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``python -m training.calibrate``."""
    parser = argparse.ArgumentParser(
        prog="python -m training.calibrate",
        description="Tune an ensemble's threshold and minimum object area per organ on "
        "(validation) images, for the best mean per-image selection score (the Dice; on colon "
        "the mean of the FTU and background Dice).",
    )
    parser.add_argument("--data", nargs="+", required=True, type=Path, metavar="DIR")
    parser.add_argument(
        "--model", required=True, type=Path, help="an ensemble manifest (.yaml/.yml/.json)"
    )
    parser.add_argument(
        "--write", action="store_true", help="store the tuned values in the manifest"
    )
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    add_image_arguments(
        parser, "only the images CKPT was validated on (its training summary's val_ids)"
    )
    return parser


def calibrate(
    data: Sequence[Path],
    model: Path,
    device: str = "cpu",
    tta: int = 1,
    organs: Sequence[str] | None = None,
    ids: Sequence[str] | None = None,
) -> dict[str, dict[str, Any]]:
    """Per organ of the images: their count, the threshold and minimum area (um²) before and
    after tuning, and the mean per-image Dice and selection score with each, the background
    Dice after and the all-FTU prediction's Dice."""
    from training.models.ensemble import load_ensemble
    from training.validation import predict, tune_postprocess

    records = load_images(data, organs, ids)
    ensemble = load_ensemble(model, device)
    scores = predict(ensemble, records, device=device, tta=tta)
    results = {}
    for organ in sorted({s.record.organ for s in scores}):
        items = [s for s in scores if s.record.organ == organ]
        before = (items[0].threshold, items[0].min_area_um2)  # the engine's: alike for an organ
        thresholds, areas = _grids_with(*before)
        tuned, tuned_areas = tune_postprocess(items, thresholds, areas)
        after = (tuned[organ], tuned_areas[organ])
        old, new = _means(items, *before), _means(items, *after)
        results[organ] = {
            "images": len(items),
            "threshold_before": before[0],
            "min_area_um2_before": before[1],
            "dice_before": old["dice"],
            "score_before": old["score"],
            "threshold": after[0],
            "min_area_um2": after[1],
            "dice": new["dice"],
            "score": new["score"],
            "background_dice": new["background_dice"],
            "all_ftu_dice": new["all_ftu_dice"],
        }
    return results


def write_calibration(manifest_path: Path, results: dict[str, dict[str, Any]]) -> None:
    """Store the tuned threshold and minimum area of each organ of ``results`` in the manifest
    (atomically), keeping its other keys, the values of other organs and, in YAML, the comments
    outside those two keys."""
    from training.models.ensemble import read_manifest, update_manifest

    manifest = read_manifest(manifest_path)
    updates = {}
    for key, field in (("thresholds", "threshold"), ("min_area_um2", "min_area_um2")):
        values = dict(manifest.get(key) or {})
        values.update({organ: float(result[field]) for organ, result in results.items()})
        updates[key] = values
    update_manifest(manifest_path, updates)


def format_results(results: dict[str, dict[str, Any]]) -> str:
    """A small text table: per organ, the tuned values, the Dice and selection score before and
    after, the background Dice after and the all-FTU prediction's Dice."""
    lines = [
        f"{'organ':<16} {'images':>6} {'threshold':>15} {'min area (um²)':>19} "
        f"{'Dice before':>11} {'Dice after':>10} {'score before':>12} {'score after':>11} "
        f"{'background':>10} {'all-FTU':>7}"
    ]
    for organ, r in results.items():
        threshold = f"{r['threshold_before']:.2f} -> {r['threshold']:.2f}"
        area = f"{r['min_area_um2_before']:g} -> {r['min_area_um2']:g}"
        lines.append(
            f"{organ:<16} {r['images']:>6} {threshold:>15} {area:>19} "
            f"{r['dice_before']:>11.4f} {r['dice']:>10.4f} {r['score_before']:>12.4f} "
            f"{r['score']:>11.4f} {r['background_dice']:>10.4f} {r['all_ftu_dice']:>7.4f}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; 0 on success, 2 on bad input."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from training.data.catalog import CatalogError
    from training.models import CheckpointError
    from training.models.ensemble import is_manifest, read_manifest

    try:
        if args.write:  # refused before any work, not after it
            if not is_manifest(args.model):
                raise ValueError(
                    f"--write stores the tuned values in an ensemble manifest; {args.model.name} "
                    "is a checkpoint: list it in a manifest (members: [{checkpoint: "
                    f"{args.model.name}}}]) and calibrate that"
                )
            read_manifest(args.model)
        ids = validation_ids(args.split_of) if args.split_of is not None else None
        device = resolve_device(args.device)
        results = calibrate(args.data, args.model, device, args.tta, args.organ, ids)
    except (CatalogError, CheckpointError, FileNotFoundError, ValueError) as exc:
        print(f"python -m training.calibrate: error: {exc}", file=sys.stderr)
        return 2
    print(format_results(results))
    if args.write:
        write_calibration(args.model, results)
        log.info(
            "wrote the thresholds and minimum areas of %s to %s", ", ".join(results), args.model
        )
    if args.out is not None:
        from training.atomic import atomic_path

        with atomic_path(args.out) as tmp:
            tmp.write_text(json.dumps({"model": str(args.model), "organs": results}, indent=2))
    return 0


def _grids_with(threshold: float, min_area_um2: float) -> tuple[list[float], list[float]]:
    """The tuning grids with the current pair added (so tuning never does worse than it)."""
    from training.validation import MIN_AREAS_UM2, THRESHOLDS

    return (
        sorted({*map(float, THRESHOLDS), float(threshold)}),
        sorted({*map(float, MIN_AREAS_UM2), float(min_area_um2)}),
    )


def _means(items: Sequence[Any], threshold: float, min_area_um2: float) -> dict[str, float]:
    """The organ's mean per-image Dice, background Dice, all-FTU Dice and selection score."""
    from training.validation import score, summarise

    organ = items[0].record.organ
    summary = summarise(score(items, {organ: threshold}, {organ: min_area_um2}))
    return {k: summary[k] for k in ("dice", "background_dice", "all_ftu_dice", "score")}


if __name__ == "__main__":
    raise SystemExit(main())
