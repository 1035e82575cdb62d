"""The domain check against Dice: does the distance of a test image from a model's training data
say how well the model segments it?

For every image of the test folders, the model segments it through the engine (as the plugin and
``napari-ftu segment`` do, the encoder features recorded on the way) and the domain check runs on
it; its Dice (and background Dice) is scored as ``training.evaluate`` scores it. Prints a table per
model and folder, the Spearman correlation of the distance (and of each part) with the Dice, and,
given the images that are in the domain of a member (``--in-domain MEMBER=FOLDER``), the 95th
percentile of each part over them: the "far" thresholds of ``training.domain.check.FAR`` are
chosen from it (a slide is far when a part lies beyond what 19 in 20 unseen images of the
model's own kind show). Writes every row to a CSV.

    python benchmarks/domain_check.py --model runs/domain/ensemble.yaml \\
        runs/domain/colon_coat_daformer.pt --data DIR [DIR ...] --out runs/domain/check.csv \\
        --in-domain kidney_coat_daformer.pt=kidney-test colon_coat_daformer.pt=colon-test ...
    python benchmarks/domain_check.py --report runs/domain/check.csv --in-domain ...
    python benchmarks/domain_check.py --model runs/domain/ensemble.yaml --timing COLON.tiff
"""

from __future__ import annotations

import argparse
import csv
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

PARTS = ("features", "stain", "od", "pixel_size")


def measure(model: Path, folders: Sequence[Path]) -> list[dict[str, Any]]:
    """One row per test image: the check's distance and parts, the Dice, the times."""
    from training.data.records import DataSpec, load_records
    from training.domain import FeatureTap, check_slide
    from training.inference import run
    from training.models.ensemble import load_ensemble
    from training.slides import open_slide
    from training.validation import ImageScore, score

    ensemble = load_ensemble(model)
    rows = []
    for folder in folders:
        for record in load_records([DataSpec(folder)]):
            members = ensemble.for_organ(record.organ)
            with open_slide(record.image, record.pixel_size_um) as slide:
                began = time.perf_counter()
                with FeatureTap(members) as tap:
                    result = run(slide, ensemble, record.organ, memory_limit_mb=4096)
                run_s = time.perf_counter() - began
                began = time.perf_counter()
                check = check_slide(slide, members, tap.features)
                check_s = time.perf_counter() - began
            item = ImageScore(
                record,
                np.asarray(result.probability, np.float32),
                result.pixel_size_um,
                threshold=result.threshold,
                min_area_um2=result.min_area_um2,
            )
            result.close()
            score([item])
            rows.append(
                {
                    "model": model.name,
                    "folder": folder.name,
                    "id": record.id,
                    "organ": record.organ,
                    "member": check.member,
                    "distance": check.distance,
                    **{part: check.parts.get(part, math.nan) for part in PARTS},
                    "far": check.far,
                    "dice": item.dice,
                    "background_dice": item.background_dice,
                    "run_s": round(run_s, 3),
                    "check_s": round(check_s, 3),
                    "height": slide.shape[0],
                    "width": slide.shape[1],
                }
            )
            print(
                f"{model.name} {folder.name} {record.id}: distance {check.distance:.2f} "
                f"dice {item.dice:.3f} (run {run_s:.1f} s, check {check_s:.2f} s)",
                flush=True,
            )
    return rows


def timing(model: Path, colon_image: Path, repeats: int = 3) -> None:
    """The check's time beside the run's (median of ``repeats``), as the CLI and the widget run
    both (the encoder features recorded during the run): on a 224 px real colon image at
    1.2 um/px and on a 3000 px kidney phantom at 0.5 um/px."""
    from training.domain import FeatureTap, check_slide
    from training.inference import run
    from training.models.ensemble import load_ensemble
    from training.slides import Slide, open_slide
    from training.synthetic import make_phantom

    ensemble = load_ensemble(model)
    phantom = make_phantom("kidney", "hpa", 3000, 0, pixel_size_um=0.5)[0]
    cases = [
        ("224 px colon", open_slide(colon_image, 1.2), "largeintestine"),
        ("3000 px phantom", Slide.from_array(phantom, 0.5), "kidney"),
        ("3000 px phantom", Slide.from_array(phantom, 0.5), "largeintestine"),
    ]
    for label, slide, organ in cases:
        members, times = ensemble.for_organ(organ), []
        for _ in range(repeats):
            began = time.perf_counter()
            with FeatureTap(members) as tap:
                run(slide, ensemble, organ).close()
            middle = time.perf_counter()
            check_slide(slide, members, tap.features)
            times.append((middle - began, time.perf_counter() - middle))
        run_s, check_s = np.median(times, axis=0)
        print(
            f"{label}, {organ} ({len(members)} member(s)): run {run_s:.2f} s, check "
            f"{check_s:.2f} s ({100 * check_s / run_s:.0f}% of the run)"
        )


def distance(row: dict[str, Any], far: dict[str, float]) -> float:
    """The overall distance of a row's parts under thresholds ``far`` (as the check's)."""
    return max(row[p] / far[p] for p in PARTS if not math.isnan(row[p]))


def report(rows: list[dict[str, Any]], in_domain: dict[str, set[str]]) -> None:
    """The thresholds chosen from the in-domain images, the table, the correlations."""
    from scipy.stats import spearmanr

    from training.domain import FAR

    own = [r for r in rows if r["folder"] in in_domain.get(r["member"], set())]
    if own:
        print(f"\n95th percentile of each part over {len(own)} in-domain image(s) (FAR now):")
        for part in PARTS:
            values = [r[part] for r in own if not math.isnan(r[part])]
            p95 = np.percentile(values, 95) if values else math.nan
            print(f"  {part:<10} {p95:7.3f}   ({FAR[part]:g})")
    for row in rows:
        row["distance"] = distance(row, FAR)
        row["far"] = row["distance"] > 1
    header = f"{'model':<26} {'folder':<22} {'n':>3} {'distance':>17} {'far':>5} {'dice':>6}"
    print(f"\n{header} {'stroma':>6}  in-domain")
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model]
        for folder in dict.fromkeys(r["folder"] for r in mine):
            group = [r for r in mine if r["folder"] == folder]
            d = np.array([r["distance"] for r in group])
            print(
                f"{model:<26} {folder:<22} {len(group):>3} "
                f"{np.median(d):6.2f} [{d.min():4.2f}-{d.max():5.2f}] "
                f"{sum(r['far'] for r in group):>5} {np.mean([r['dice'] for r in group]):6.3f} "
                f"{np.mean([r['background_dice'] for r in group]):6.3f}  "
                f"{sum(r in own for r in group)}"
            )
        for label, subset in (("near", False), ("far", True)):
            chosen = [r["dice"] for r in mine if r["far"] == subset]
            if chosen:
                print(
                    f"  {label}: {len(chosen)} image(s), mean Dice {np.mean(chosen):.3f}, "
                    f"{sum(d < 0.5 for d in chosen)} below 0.5"
                )
        dice = [r["dice"] for r in mine]
        rho = spearmanr([r["distance"] for r in mine], dice)
        parts = []
        for part in PARTS:
            pairs = [(r[part], r["dice"]) for r in mine if not math.isnan(r[part])]
            if len(pairs) > 2 and len({p for p, _ in pairs}) > 1:
                parts.append(f"{part} {spearmanr(*zip(*pairs, strict=True))[0]:+.2f}")
        print(
            f"  Spearman (distance, Dice) over {len(mine)} images: {rho[0]:+.3f} "
            f"(p = {rho[1]:.2g}); by part: {', '.join(parts)}"
        )
    rho = spearmanr([r["distance"] for r in rows], [r["dice"] for r in rows])
    print(f"Spearman (distance, Dice) over all {len(rows)} rows: {rho[0]:+.3f} (p = {rho[1]:.2g})")


def write_rows(rows: list[dict[str, Any]], path: Path) -> None:
    """The rows as a CSV, atomically."""
    from training.atomic import atomic_path

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Rows written by :func:`write_rows`, numbers as floats."""
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    numeric = (*PARTS, "distance", "dice", "background_dice", "run_s", "check_s")
    for row in rows:
        for key in numeric:
            row[key] = float(row[key]) if row[key] not in ("", "None") else math.nan
        row["height"], row["width"] = int(row["height"]), int(row["width"])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", nargs="+", type=Path, default=[])
    parser.add_argument("--data", nargs="+", type=Path, default=[])
    parser.add_argument("--out", type=Path, help="write the rows here (CSV)")
    parser.add_argument("--report", type=Path, help="only report the rows of this CSV")
    parser.add_argument(
        "--in-domain",
        nargs="*",
        default=[],
        metavar="MEMBER=FOLDER",
        help="test folders in the domain of a member's training data",
    )
    parser.add_argument(
        "--timing",
        type=Path,
        metavar="COLON_TIFF",
        help="time the check on this 224 px colon image and a 3000 px phantom (first --model)",
    )
    args = parser.parse_args()
    if args.timing is not None:
        timing(args.model[0], args.timing)
        return
    in_domain: dict[str, set[str]] = {}
    for pair in args.in_domain:
        member, _, folder = pair.partition("=")
        in_domain.setdefault(member, set()).add(folder)
    if args.report is not None:
        rows = read_rows(args.report)
    else:
        rows = [row for model in args.model for row in measure(model, args.data)]
        if args.out is not None:
            write_rows(rows, args.out)
    report(rows, in_domain)


if __name__ == "__main__":
    main()
