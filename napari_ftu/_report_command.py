"""``napari-ftu report OUT_DIR``: slide reports from what a ``napari-ftu segment`` run wrote."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from training.arguments import OneLineParser

log = logging.getLogger("napari_ftu")

BAD_INPUT, SLIDES_FAILED = 2, 1  # exit statuses, as napari-ftu segment's


def report_parser() -> argparse.ArgumentParser:
    """Arguments of ``napari-ftu report``."""
    parser = OneLineParser(
        prog="napari-ftu report",
        description="Write OUT_DIR/<id>.report.html (self-contained) and <id>.report.png for "
        "every slide a napari-ftu segment --measure or --report run left there (its "
        "<id>.run.json, objects table and outlines), and OUT_DIR/report.html, the index. "
        "Exit status: 2 for bad input, 1 if a slide's report failed (the others are written).",
    )
    parser.add_argument("out_dir", type=Path, metavar="OUT_DIR", help="a segment run's folder")
    parser.add_argument("--ids", nargs="+", metavar="ID", help="only these slides (file stems)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing slide reports")
    return parser


def report_command(argv: Sequence[str]) -> int:
    """Run ``napari-ftu report``; returns the exit status."""
    from training.report import ReportError, run_ids, write_batch_report, write_report

    args = report_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        known = run_ids(args.out_dir)
    except ReportError as exc:
        return _fail([str(exc)], BAD_INPUT)
    unknown = [i for i in args.ids or [] if i not in known]
    if unknown:
        return _fail([f"{args.out_dir}: no run of {i} here" for i in unknown], BAD_INPUT)
    failures = []
    for image_id in args.ids or known:
        try:
            html, _ = write_report(args.out_dir, image_id, overwrite=args.overwrite)
        except FileExistsError as exc:
            failures.append(f"{exc} (--overwrite replaces it)")
            continue
        except (OSError, ValueError) as exc:  # ReportError, SlideError: one line each
            failures.append(str(exc))
            continue
        log.info("%s: wrote %s and its .png", image_id, html)
    index = write_batch_report(args.out_dir)
    log.info("wrote %s", index)
    return _fail(failures, SLIDES_FAILED) if failures else 0


def record_run(
    args: argparse.Namespace, slide: Any, result: Any, members: Sequence[Any], check: Any
) -> list[Path]:
    """For ``napari-ftu segment``: write ``OUT/<id>.run.json`` for a slide just segmented and
    measured and, with ``--report``, its report. Returns the paths written."""
    from training.report import run_record, write_report, write_run_record

    outputs = {"objects": f"{Path(slide.path).stem}.objects.csv"}
    if args.geojson:
        outputs["geojson"] = f"{Path(slide.path).stem}.geojson"
    if args.labels_tiff:
        outputs["labels"] = f"{Path(slide.path).stem}.labels.tiff"
    stain = args.stain_reference and f"{args.stain or 'macenko'} to {args.stain_reference.name}"
    settings = {
        "threshold": args.threshold,
        "min_area_um2": args.min_area_um2,
        "overlap": args.overlap,
        "tta": args.tta,
        "stain": stain or None,
        "tissue_detection": not args.no_tissue_detection,
        "outputs": outputs,
    }
    record = run_record(slide, result, members, check, model=args.model, settings=settings)
    written = [write_run_record(args.out, record, overwrite=args.overwrite)]
    if args.report:
        written += write_report(args.out, record.id, overwrite=args.overwrite)
    return written


def _fail(lines: Sequence[str], status: int) -> int:
    for line in lines:
        print(f"napari-ftu report: error: {line}", file=sys.stderr)
    return status
