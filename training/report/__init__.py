"""Slide reports: a self-contained HTML page and a PNG per segmented slide (the thumbnail with
FTU outlines, the summary, the size histogram, the most and least confident objects, the model,
the domain check and the settings), and an index page per run folder.

A run leaves ``<id>.run.json`` (:mod:`training.report.record`) beside its objects table and
outlines; :func:`write_report` makes the report from those alone, so ``napari-ftu report OUT``
can make it again later.
"""

from training.report.record import (
    ReportError,
    RunRecord,
    read_run_record,
    run_record,
    write_run_record,
)
from training.report.write import report_paths, run_ids, write_batch_report, write_report

__all__ = [
    "ReportError",
    "RunRecord",
    "read_run_record",
    "report_paths",
    "run_ids",
    "run_record",
    "write_batch_report",
    "write_report",
    "write_run_record",
]
