"""The report's outputs of a batch run (``napari-ftu segment``): the run record of each slide
and, on request, its report; written after the slide's measurements and outlines, which they
name and read."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from training.report.record import RunRecord, run_record, write_run_record
from training.report.write import write_report

# the batch's outputs whose files the record names: output name -> its kind in the record
RECORDED = {"measure": "objects", "geojson": "geojson", "labels_tiff": "labels"}
SUFFIXES = {"objects": ".objects.csv", "geojson": ".geojson", "labels": ".labels.tiff"}


def batch_settings(options: Any, image_id: str) -> dict[str, Any]:
    """The record's settings of a batch's options (a ``training.inference.batch.BatchOptions``:
    its ``run`` options, threshold, minimum area and outputs)."""
    run, asked = options.run, set(options.outputs.names())
    stain = getattr(run.stain, "method", None) if run.stain is not None else None
    return {
        "threshold": options.threshold,
        "min_area_um2": options.min_area_um2,
        "overlap": run.overlap,
        "tta": run.tta,
        "stain": stain,
        "tissue_detection": run.detect_tissue,
        "outputs": {
            kind: f"{image_id}{SUFFIXES[kind]}" for name, kind in RECORDED.items() if name in asked
        },
    }


def record_of(done: Any) -> RunRecord:
    """The run record of a finished batch slide (a ``training.inference.batch.SlideResult``
    with the ``members`` that segmented it and their domain ``check``)."""
    options = done.options
    settings = batch_settings(options, done.image_id)
    return run_record(
        done.slide, done.result, done.members, done.check, model=options.model, settings=settings
    )


def write_record(done: Any, target: Path) -> None:
    """The batch writer of ``OUT/<id>.run.json``."""
    record = record_of(done)
    if target != Path(done.options.out) / f"{record.id}.run.json":
        raise ValueError(f"{target}: a run record is OUT/<id>.run.json")
    write_run_record(done.options.out, record, overwrite=done.options.overwrite)


def write_report_files(done: Any, target: Path) -> None:
    """The batch writer of ``OUT/<id>.report.html`` and ``.report.png``, from the run record
    and the outputs written before it."""
    write_report(Path(target).parent, done.image_id, overwrite=done.options.overwrite)
