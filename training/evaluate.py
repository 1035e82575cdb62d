"""``python -m training.evaluate``: mean per-image Dice of a model on dataset folders.

    python -m training.evaluate --data DIR [DIR ...] --model CKPT_OR_MANIFEST [--out FILE.json]
    python -m training.evaluate --data DIR --model OLD.pt --split-of RUN/best.pt  # same images

Every image goes through the inference engine the plugin and the CLI use, at its own pixel size,
with the model's own per-organ threshold and minimum object area; the score is the competition's
(the mean over images of each image's Dice), per organ, per ``data_source`` and per both, and
beside it the background (stroma) Dice and the Dice of the trivial all-FTU prediction on the same
images (``all_ftu_dice``): a model whose ``dice`` is not above ``all_ftu_dice`` has learnt
nothing the baseline does not already get (see :mod:`training.validation`).
``python -m training.calibrate`` tunes the threshold and minimum area of an ensemble manifest.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from training.arguments import add_refine_arguments

if TYPE_CHECKING:
    from training.data.records import Record

log = logging.getLogger("training.evaluate")


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``python -m training.evaluate``."""
    parser = argparse.ArgumentParser(
        prog="python -m training.evaluate",
        description="Mean per-image Dice (the competition's metric) per organ and data source.",
    )
    parser.add_argument("--data", nargs="+", required=True, type=Path, metavar="DIR")
    parser.add_argument(
        "--model", required=True, type=Path, help="a checkpoint or an ensemble manifest"
    )
    parser.add_argument("--out", type=Path, help="write the scores as JSON here")
    # the boundary F-score at 2 px is reported beside the Dice, refined or not
    add_refine_arguments(parser, "boundaries")
    add_image_arguments(
        parser,
        "only the images CKPT was validated on (its training summary's val_ids), to compare "
        "another model with it on the same images",
    )
    return parser


def add_image_arguments(parser: argparse.ArgumentParser, split_help: str) -> None:
    """The options that choose the images and how the engine runs on them (``--device``,
    ``--tta``, ``--organ``, ``--split-of``), shared with ``training.calibrate``."""
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--tta", type=int, default=1, choices=(1, 4, 8))
    parser.add_argument("--organ", nargs="+", help="only images of these organs")
    parser.add_argument("--split-of", type=Path, metavar="CKPT", help=split_help)


def resolve_device(name: str) -> str:
    """``auto``: CUDA where available, else the CPU; any other name as it is."""
    if name != "auto":
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def evaluate(
    data: Sequence[Path],
    model: Path,
    device: str = "cpu",
    tta: int = 1,
    organs: Sequence[str] | None = None,
    ids: Sequence[str] | None = None,
    refine: Path | bool | None = None,
) -> dict[str, Any]:
    """Scores of ``model`` on the images of ``data`` (see :func:`training.validation.summarise`),
    or on those of them whose id is in ``ids``, with the threshold and minimum area (um²) used
    per organ. ``refine``: a BPR refiner checkpoint, ``False`` for none, ``None`` for the
    manifest's own (if any); the summary's ``boundary_f`` is the mean per-image boundary
    F-score at 2 level-0 px, and ``refiner`` names the refiner used."""
    from training.models.ensemble import load_ensemble
    from training.validation import predict, score, summarise

    records = load_images(data, organs, ids)
    ensemble = load_ensemble(model, device)
    if refine is not None:
        from training.refine.stage import resolve_refiner

        ensemble.refiner = resolve_refiner(refine, ensemble, device)
    scores = score(predict(ensemble, records, device=device, tta=tta))
    summary = summarise(scores)
    summary.update(boundary_scores(scores))
    summary["refiner"] = ensemble.refiner.name if ensemble.refiner is not None else None
    summary["model"] = str(model)
    summary["data"] = [str(path) for path in data]
    summary["thresholds"] = {s.record.organ: s.threshold for s in scores}
    summary["min_area_um2"] = {s.record.organ: s.min_area_um2 for s in scores}
    return summary


def boundary_scores(scores: Sequence[Any]) -> dict[str, Any]:
    """The mean per-image boundary F-score (2 px at level 0) of the scored masks, overall
    (``boundary_f``) and per organ (``boundary_f_by_organ``)."""
    from training.refine.metrics import boundary_f_score
    from training.validation import full_size_mask

    by_organ: dict[str, list[float]] = {}
    for item in scores:
        value = boundary_f_score(full_size_mask(item), item.truth, tolerance_px=2)
        by_organ.setdefault(item.record.organ, []).append(value)
    every = [v for values in by_organ.values() for v in values]
    return {
        "boundary_f": round(float(sum(every) / len(every)), 4),
        "boundary_f_by_organ": {
            organ: round(float(sum(v) / len(v)), 4) for organ, v in sorted(by_organ.items())
        },
    }


def load_images(
    data: Sequence[Path], organs: Sequence[str] | None = None, ids: Sequence[str] | None = None
) -> list[Record]:
    """The records of the dataset folders ``data``, only of ``organs`` and only those whose id
    is in ``ids`` where given; ``ValueError`` when none is left."""
    from training.data.records import DataSpec, load_records

    records = load_records([DataSpec(Path(path)) for path in data])
    if organs:
        records = [r for r in records if r.organ in set(organs)]
        if not records:
            raise ValueError(f"no image of organ(s) {', '.join(organs)} in {data}")
    if ids is not None:
        records = [r for r in records if str(r.id) in {str(i) for i in ids}]
        if not records:
            raise ValueError(f"none of the {len(ids)} validation image(s) is in {data}")
    return records


def validation_ids(checkpoint: Path) -> list[str]:
    """The ids of the images ``checkpoint``'s training validated on; ``ValueError`` if none."""
    from training.models import read_checkpoint

    training = read_checkpoint(checkpoint)["meta"].get("training") or {}
    ids = training.get("val_ids")
    if not ids:
        raise ValueError(f"{checkpoint.name} records no validation images (val_ids)")
    return [str(i) for i in ids]


def format_summary(summary: dict[str, Any]) -> str:
    """A small text table of the scores: per group, the FTU Dice, the background Dice, the
    all-FTU baseline's Dice and whether the model's FTU Dice beats that baseline."""
    lines = [f"mean per-image Dice {summary['dice']:.4f} over {summary['images']} images"]
    if "boundary_f" in summary:
        refiner = Path(summary["refiner"]).name if summary.get("refiner") else "none"
        lines.append(
            f"mean per-image boundary F-score (2 px) {summary['boundary_f']:.4f} "
            f"(boundary refiner: {refiner})"
        )
    lines.append(
        f"  {'group':<12} {'name':<28} {'images':>6} {'dice':>7} {'background':>10} "
        f"{'all-FTU':>7}  beats all-FTU"
    )
    overall = {name: summary[name] for name in ("dice", "background_dice", "all_ftu_dice")}
    rows = [("all", "all", {**overall, "images": summary["images"]})]
    for group in ("organ", "data_source", "source_organ"):
        rows += [(group, name, row) for name, row in summary[f"by_{group}"].items()]
    for group, name, row in rows:
        beats = "yes" if row["dice"] > row["all_ftu_dice"] else "NO"
        lines.append(
            f"  {group:<12} {name:<28} {row['images']:>6} {row['dice']:>7.4f} "
            f"{row['background_dice']:>10.4f} {row['all_ftu_dice']:>7.4f}  {beats}"
        )
    for organ, threshold in summary.get("thresholds", {}).items():
        area = summary.get("min_area_um2", {}).get(organ, 0.0)
        lines.append(f"  {'used':<12} {organ:<28} threshold {threshold:.2f}, min area {area:g} um²")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; 0 on success, 2 on bad input."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from training.data.catalog import CatalogError
    from training.models import CheckpointError

    try:
        ids = validation_ids(args.split_of) if args.split_of is not None else None
        device = resolve_device(args.device)
        refine = False if args.no_refine else args.refine
        summary = evaluate(args.data, args.model, device, args.tta, args.organ, ids, refine)
    except (CatalogError, CheckpointError, FileNotFoundError, ValueError) as exc:
        print(f"python -m training.evaluate: error: {exc}", file=sys.stderr)
        return 2
    print(format_summary(summary))
    if args.out is not None:
        from training.atomic import atomic_path

        with atomic_path(args.out) as tmp:
            tmp.write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
