"""Batch segmentation into a dataset folder: one train.csv row per slide, and the files asked for.

What ``napari-ftu segment`` and its torchrun ranks run; the command only parses arguments and
reports. Every check that can refuse a run (missing slides, shared ids, results that exist) is
:func:`preflight`, made before any work. A slide's row is written last, as the mark of a slide
done, and never replaces a row another run wrote meanwhile unless ``overwrite``.

Each file beside the row is one :class:`Outputs` flag, one name in :data:`SUFFIXES` and one
writer in :data:`WRITERS` (a function of the finished :class:`SlideResult` and the target path):
adding an output touches only those three places.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from training.inference.options import RunOptions
from training.inference.results import SegmentationResult

log = logging.getLogger(__name__)

# the files each output writes per slide, OUT/<id><suffix>, in the order they are written: the
# measurements before the GeoJSON that carries them, the run record and report after the files
# they name and read
SUFFIXES = {
    "measure": ".objects.csv",  # and the slide's row of OUT/summary.csv
    "labels_tiff": ".labels.tiff",
    "geojson": ".geojson",
    "overlay": ".overlay.png",
    "record": ".run.json",
    "report": (".report.html", ".report.png"),
}


@dataclass(frozen=True)
class Outputs:
    """The files written per slide beside its train.csv row (see :data:`SUFFIXES`)."""

    measure: bool = False  # first: the GeoJSON carries the measurements
    labels_tiff: bool = False
    geojson: bool = False
    overlay: bool = False
    record: bool = False
    report: bool = False

    def names(self) -> list[str]:
        """The outputs asked for, in :data:`SUFFIXES` order."""
        return [f.name for f in fields(self) if getattr(self, f.name)]

    def files(self, out: Path, image_id: str) -> list[Path]:
        """The files of slide ``image_id`` in ``out``."""
        return [out / f"{image_id}{suffix}" for name in self.names() for suffix in _suffixes(name)]


def _suffixes(name: str) -> tuple[str, ...]:
    suffixes = SUFFIXES[name]
    return (suffixes,) if isinstance(suffixes, str) else suffixes


@dataclass(frozen=True)
class BatchOptions:
    """Where and what a batch writes: the folder ``out``, the ``organ``, the ``model`` named in
    each row, the engine's ``run`` options (``run.pixel_size_um`` is the slides' pixel size
    where their files lack it), the outputs, and the post-processing (default: the model's
    threshold and minimum area for the organ)."""

    out: Path
    organ: str
    model: Path
    run: RunOptions = field(default_factory=RunOptions)
    outputs: Outputs = field(default_factory=Outputs)
    overwrite: bool = False
    threshold: float | None = None
    min_area_um2: float | None = None

    def __post_init__(self) -> None:
        if self.run.region is not None:  # a row and its files describe the whole slide
            raise ValueError("a batch segments whole slides: its run options take no region")


@dataclass
class SlideResult:
    """One slide, segmented: what a writer of an output needs."""

    image_id: str
    slide: Any  # training.slides.Slide, open while the outputs are written
    result: SegmentationResult
    labels: np.ndarray  # at the working scale
    options: BatchOptions
    members: list[Any] = field(default_factory=list)  # the ensemble's members for the organ
    check: Any = None  # their training.domain.DomainCheck of the slide
    objects: Any = None  # the objects table, once measured (training.measure)


@dataclass
class BatchResult:
    """The rows written, and one line per slide that failed."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


def write_measurements(done: SlideResult, target: Path) -> None:
    """The objects table (``target``) and the slide's row of ``summary.csv``."""
    from training.measure.io import measure_and_write

    options = done.options
    done.objects = measure_and_write(
        options.out, done.image_id, done.result, done.slide, done.labels,
        overwrite=options.overwrite,
    )  # fmt: skip


def write_labels_tiff(done: SlideResult, target: Path) -> None:
    """The objects as a label pyramid (uint16, or uint32 beyond 65535 objects)."""
    from training.slides import write_pyramid

    if target.exists() and not done.options.overwrite:
        raise FileExistsError(f"{target} exists; napari-ftu does not overwrite results")
    labels = done.labels
    dtype = np.uint16 if labels.max() < 65536 else np.uint32
    write_pyramid(target, labels.astype(dtype), done.result.pixel_size_um, labels=True)


def write_geojson(done: SlideResult, target: Path) -> None:
    """The objects' outlines in level-0 pixels (QuPath)."""
    from training.inference import outputs
    from training.measure.qupath import to_qupath

    result = done.result
    measurements = None if done.objects is None else to_qupath(done.objects)
    geojson = outputs.labels_to_geojson(
        done.labels,
        result.downsample,
        done.options.organ,
        shape=result.slide_shape,
        measurements=measurements,
    )
    outputs.write_json(target, geojson, overwrite=done.options.overwrite)


def write_overlay(done: SlideResult, target: Path) -> None:
    """The slide's thumbnail with the objects' outlines."""
    from training.inference import outputs

    outputs.write_overlay(target, done.slide, done.labels, overwrite=done.options.overwrite)


def write_record(done: SlideResult, target: Path) -> None:
    """The run record (:mod:`training.report.record`)."""
    from training.report.outputs import write_record as write

    write(done, target)


def write_report(done: SlideResult, target: Path) -> None:
    """The slide report, HTML and PNG (:mod:`training.report`)."""
    from training.report.outputs import write_report_files

    write_report_files(done, target)


WRITERS: dict[str, Callable[[SlideResult, Path], None]] = {
    "measure": write_measurements,
    "labels_tiff": write_labels_tiff,
    "geojson": write_geojson,
    "overlay": write_overlay,
    "record": write_record,
    "report": write_report,
}


def write_slide_outputs(done: SlideResult) -> list[Path]:
    """Write the files the options ask for; returns them."""
    outputs, out = done.options.outputs, done.options.out
    for name in outputs.names():  # a writer of several files is given the first
        WRITERS[name](done, out / f"{done.image_id}{_suffixes(name)[0]}")
    return outputs.files(out, done.image_id)


def preflight(
    slides: Sequence[Path], share: Sequence[Path], options: BatchOptions
) -> tuple[list[str], list[str]]:
    """What stops a run before any work: problems with the input (missing slides of ``share``,
    ids shared among all ``slides``, an unwritable folder, an unreadable train.csv) and, unless
    ``overwrite``, the results of ``share`` that exist."""
    from training.data.catalog import CSV_NAME, read_catalog
    from training.slides.dicom_reader import is_dicom_folder

    out = options.out
    problems = [
        f"{path}: is a directory, not a slide file" if path.is_dir() else f"{path}: no such file"
        for path in share
        if not path.is_file() and not is_dicom_folder(path)  # a DICOM slide is a folder
    ]
    ids = [path.stem for path in slides]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        problems.append(f"slides share an id (file stem): {', '.join(duplicates)}")
    if out.exists() and not out.is_dir():
        problems.append(f"{out}: not a folder")
    else:
        problems.extend(_unwritable(out))
    if options.overwrite or not out.is_dir():
        return problems, []
    existing = [
        str(target)
        for path in share
        for target in options.outputs.files(out, path.stem)
        if target.exists()
    ]
    csv_path = out / CSV_NAME
    if csv_path.exists():
        try:
            known = set(read_catalog(csv_path, check_images=False, check_rle=False)["id"])
        except ValueError as exc:
            return [*problems, str(exc)], []
        existing.extend(f"{csv_path}: row {path.stem}" for path in share if path.stem in known)
    if options.outputs.measure:  # summary.csv rows (the objects tables are outputs' files)
        from training.measure.io import existing_measurements

        try:
            found = existing_measurements(out, [path.stem for path in share])
        except ValueError as exc:
            return [*problems, str(exc)], []
        existing.extend(line for line in found if line not in existing)
    return problems, existing


def segment_slides(
    paths: Sequence[Path],
    ensemble: Any,
    options: BatchOptions,
    progress: Callable[[Path], Callable[[Any], None]] | None = None,
) -> BatchResult:
    """Segment each slide and write its results; never raises for one slide (a bad slide
    costs only its own results). ``progress(path)`` makes the slide's progress callback (see
    :func:`segment_slide`)."""
    done = BatchResult()
    for path in paths:
        try:
            bar = progress(path) if progress is not None else None
            done.rows.append(segment_slide(path, ensemble, options, bar))
        except Exception as exc:  # one bad slide must not cost the others their results
            done.failures.append(f"{path}: {reason(exc)}")
            if not is_bad_input(exc):  # a bug: its traceback is wanted (bad input explains
                log.exception("%s: failed", path)  # itself, in the one line reported)
    return done


def segment_slide(
    path: Path,
    ensemble: Any,
    options: BatchOptions,
    on_progress: Callable[[Any], None] | None = None,
) -> dict[str, Any]:
    """Segment one slide and write its results; its train.csv row last, as the mark of a slide
    done. Returns the row. ``on_progress`` sees the engine's events and, when it has
    ``close``, is closed once the tiles are done (a progress bar ends before the log lines)."""
    from training import inference
    from training.domain import FeatureTap, check_slide
    from training.inference.engine import working_map
    from training.inference.limits import describe
    from training.inference.outputs import result_row
    from training.slides import open_slide

    run_options = options.run
    with open_slide(path, run_options.pixel_size_um) as slide:
        if slide.pixel_size_um is None:
            raise ValueError(f"{path.name}: the pixel size is unknown; give --pixel-size UM")
        # said before the tissue thumbnail, whose reading takes long on a slide without a
        # pyramid; a map that cannot fit is refused here, before any work
        members = ensemble.for_organ(options.organ)
        shape, working_px = working_map(slide, members, run_options.overlap)
        size = describe(slide.shape[:2], slide.pixel_size_um)
        log.info("%s: %s; map %d x %d px at %g um/px", path.name, size, *shape, working_px)
        try:
            with FeatureTap(members) as tap:  # the encoder features the domain check needs
                result = inference.run(
                    slide, ensemble, options.organ, run_options, on_progress=on_progress
                )
        finally:
            getattr(on_progress, "close", lambda: None)()
        check = check_slide(slide, members, tap.features, stain=run_options.stain)
        (log.warning if check.far else log.info)("%s", check.line(path.name))
        if result.meta.get("refiner"):
            name = Path(result.meta["refiner"]).name
            patches = result.meta["refined_patches"]
            log.info("%s: boundaries refined by %s (%d patches)", path.name, name, patches)
        labels = result.labels(options.threshold, options.min_area_um2)
        row = result_row(
            path.stem, result, labels, slide.pixel_size_um, {"model": Path(options.model).name}
        )
        if not options.overwrite:  # saves writing the files of a run whose row cannot be written
            _refuse_a_row_written_meanwhile(options.out, path.stem)
        done = SlideResult(path.stem, slide, result, labels, options, members, check)
        write_slide_outputs(done)
    _write_row(options, row)
    log.info("%s: %d %s object(s)", path.name, int(labels.max()), options.organ)
    return row


def restore_lost_rows(out: Path, rows: list[dict[str, Any]]) -> None:
    """Write again the ``rows`` that train.csv lost: ranks take turns on it through a file lock,
    but on a filesystem without locks two ranks can rewrite it at once and one row is lost."""
    from training.data.catalog import read_catalog, upsert_row

    frame = read_catalog(out, check_images=False, check_rle=False).set_index("id")
    for row in rows:
        if row["id"] not in frame.index or frame.loc[row["id"], "rle"] != row["rle"]:
            log.warning("%s: its row was lost by a concurrent write; writing it again", row["id"])
            upsert_row(out, row)


def is_bad_input(exc: BaseException) -> bool:
    """Whether ``exc`` is what the slide, model and image readers raise for a file they cannot
    use, with a message (as opposed to a bug)."""
    return isinstance(exc, (OSError, ValueError)) and bool(str(exc))


def reason(exc: BaseException) -> str:
    """One line for a failure: the message of bad input, else the exception's type too."""
    return str(exc) if is_bad_input(exc) else f"{type(exc).__name__}: {exc}"


def _unwritable(out: Path) -> list[str]:
    """Why results cannot be written in ``out`` (or the folder that would hold it), found by
    writing a file there: permissions alone do not tell (root, read-only mounts, ACLs)."""
    folder = out
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        with tempfile.TemporaryFile(dir=folder):
            return []
    except OSError as exc:
        return [f"{out}: cannot write there ({exc.strerror or exc})"]


def _refuse_a_row_written_meanwhile(out: Path, image_id: str) -> None:
    # Preflight found no row for this slide, but another run into the same folder may have
    # written one since. A look, not the guard (_write_row is): it spares that case the
    # writing of this run's files.
    from training.data.catalog import CSV_NAME, read_catalog

    csv_path = out / CSV_NAME
    if csv_path.exists() and image_id in set(
        read_catalog(csv_path, check_images=False, check_rle=False)["id"]
    ):
        raise _row_taken(csv_path, image_id, "results are not written (--overwrite replaces it)")


def _write_row(options: BatchOptions, row: dict[str, Any]) -> None:
    # Without overwrite, a row another run into the same folder wrote since preflight is
    # refused under the folder's lock, in the same step as the write: replacing it would
    # silently swap one run's result for another's.
    from training.data.catalog import CSV_NAME, RowExistsError, upsert_row

    try:
        upsert_row(options.out, row, replace=options.overwrite)
    except RowExistsError:
        written = ", ".join(target.name for target in options.outputs.files(options.out, row["id"]))
        also = f", only its {written}" if written else ""
        outcome = f"row is not written{also} (--overwrite replaces the row)"
        raise _row_taken(options.out / CSV_NAME, row["id"], outcome) from None


def _row_taken(csv_path: Path, image_id: str, outcome: str) -> FileExistsError:
    return FileExistsError(
        f"{csv_path}: row {image_id} was written by another run after this one started; "
        f"this run's {outcome}"
    )
