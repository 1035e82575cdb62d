"""``napari-ftu report OUT_DIR``: slide reports from what a ``napari-ftu segment`` run wrote."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

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


def _fail(lines: Sequence[str], status: int) -> int:
    for line in lines:
        print(f"napari-ftu report: error: {line}", file=sys.stderr)
    return status
