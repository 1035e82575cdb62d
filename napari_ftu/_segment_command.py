"""``napari-ftu segment``: segment slides without a GUI, one train.csv row per slide.

Every check that can refuse a run (missing slides, shared ids, results that exist) is made before
any work; under torchrun each rank checks and segments its share of the slides, and rank 0
reports for all.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import signal
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from napari_ftu._report_command import record_run
from napari_ftu._torchrun import Team, rank_device
from training.arguments import OneLineParser, add_refine_arguments, number, positive_integer

log = logging.getLogger("napari_ftu")

BAD_INPUT, SLIDES_FAILED = 2, 1  # exit statuses


def segment_parser() -> argparse.ArgumentParser:
    """Arguments of ``napari-ftu segment``."""
    from training.data.catalog import ORGANS
    from training.slides import PLAUSIBLE_UM_PER_PX
    from training.stain import METHODS as STAIN_METHODS

    parser = OneLineParser(
        prog="napari-ftu segment",
        description="Segment FTUs in slides without a GUI. Writes OUT/train.csv (one RLE row per "
        "slide at level-0 size, id = file stem, written as each slide finishes) and, on request, "
        "label TIFFs and GeoJSON. Existing outputs are refused before any work unless "
        "--overwrite, and a row another run writes meanwhile is never replaced. Under "
        "torchrun, each rank takes its share of the slides. Exit status: 2 for bad input, 1 if "
        "a slide failed (the other slides' results are written).",
    )
    parser.add_argument("slides", nargs="+", type=Path)
    parser.add_argument("--organ", required=True, choices=ORGANS)
    parser.add_argument(
        "--model",
        type=Path,
        help="checkpoint or ensemble manifest (default: the bundled default model; see "
        "docs/model_card.md)",
    )
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace existing label TIFFs and GeoJSON, and rows of OUT/train.csv (replaced "
        "rows are kept in OUT/train.backup.csv)",
    )
    group = parser.add_argument_group("inference")
    group.add_argument(
        "--pixel-size",
        type=number(*PLAUSIBLE_UM_PER_PX),
        help="um/px of the slides if their files lack it (0.01 to 100)",
    )
    group.add_argument(
        "--overlap", type=number(0, 1, upper_open=True), default=0.25, help="in [0, 1)"
    )
    group.add_argument("--batch-size", type=positive_integer, default=4)
    group.add_argument("--tta", type=int, default=1, choices=(1, 4, 8))
    group.add_argument(
        "--device", default="cpu", help="cpu, cuda (under torchrun: cuda:LOCAL_RANK), cuda:N"
    )
    group.add_argument("--no-tissue-detection", action="store_true")
    add_refine_arguments(group, "FTU boundaries")
    group.add_argument(
        "--stain",
        choices=STAIN_METHODS,
        help="normalise tile stains to --stain-reference (default method: macenko)",
    )
    group.add_argument(
        "--stain-reference", type=Path, help="reference image (PNG/JPEG/TIFF) for --stain"
    )
    post = parser.add_argument_group("post-processing and outputs")
    post.add_argument(
        "--threshold", type=number(0, 1), help="in [0, 1]; default: the model's for this organ"
    )
    post.add_argument(
        "--min-area-um2",
        type=number(0, math.inf, upper_open=True),
        help="drop objects smaller than this (um²); default: the model's for this organ",
    )
    post.add_argument("--labels-tiff", action="store_true", help="write OUT/<id>.labels.tiff")
    post.add_argument("--geojson", action="store_true", help="write OUT/<id>.geojson (QuPath)")
    post.add_argument(
        "--overlay", action="store_true", help="write OUT/<id>.overlay.png (FTU outlines)"
    )
    post.add_argument(
        "--measure",
        action="store_true",
        help="write OUT/<id>.objects.csv (per-FTU measurements) and a row of OUT/summary.csv",
    )
    post.add_argument(
        "--report",
        action="store_true",
        help="write OUT/<id>.report.html (self-contained) and .report.png, the slide report, "
        "and OUT/report.html; implies --measure and, without --labels-tiff, --geojson",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def segment_command(argv: Sequence[str]) -> int:
    """Run ``napari-ftu segment``; returns the exit status."""
    parser = segment_parser()
    args = parser.parse_args(argv)
    if args.model is None:
        from training.models.default import default_model_path

        try:
            args.model = default_model_path()
        except FileNotFoundError as exc:
            parser.error(str(exc))
    if args.stain and args.stain_reference is None:
        parser.error("--stain needs --stain-reference IMAGE")
    if args.report:  # a report shows the measurements and draws the outlines the run writes
        args.measure, args.geojson = True, args.geojson or not args.labels_tiff
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from training.inference.store import remove_stale_folders

    remove_stale_folders()  # the maps on disk of runs killed before they could clean up
    with _exit_on_sigterm(), Team() as team:
        # Every rank checks its share before any rank writes: the gather is the barrier.
        checks = team.gather(preflight(args, team.share(args.slides)))
        problems = _merged([problem for problem, _ in checks])
        existing = _merged([found for _, found in checks])
        if problems or existing:
            if team.rank == 0:
                hint = " (--overwrite replaces it)"
                _report(problems + [f"{what} exists{hint}" for what in existing])
            return BAD_INPUT
        outcomes = team.gather(_segment_share(args, team))
    status = max(outcome[0] for outcome in outcomes)
    if team.rank != 0:
        return status
    failures = _merged([outcome[1] for outcome in outcomes])
    rows = [row for outcome in outcomes for row in outcome[2]]
    if team.world > 1 and rows:
        try:
            _restore_lost_rows(args.out, rows)
        except (OSError, ValueError) as exc:
            failures.append(f"{args.out / 'train.csv'}: {exc}")
            status = max(status, SLIDES_FAILED)
    if rows:
        log.info("wrote %d row(s) to %s", len(rows), args.out / "train.csv")
    if rows and args.report:
        from training.report import write_batch_report

        log.info("wrote %s", write_batch_report(args.out))
    if failures:
        if rows:
            log.info("%d of %d slide(s) segmented", len(rows), len(args.slides))
        _report(failures)
    return status


@contextlib.contextmanager
def _exit_on_sigterm() -> Iterator[None]:
    """Turn SIGTERM (``kill``, a batch scheduler's time limit) into ``SystemExit(143)``, which
    unwinds like Ctrl-C: the engine removes its partial outputs on the way out."""

    def terminate(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    try:
        previous = signal.signal(signal.SIGTERM, terminate)
    except ValueError:  # not the main thread: signals are not this caller's to handle
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def preflight(args: argparse.Namespace, slides: Sequence[Path]) -> tuple[list[str], list[str]]:
    """What stops a run before any work: problems with the input (missing slides, shared ids,
    an unreadable train.csv) and, unless ``--overwrite``, results of ``slides`` that exist."""
    from training.data.catalog import CSV_NAME, read_catalog
    from training.slides.dicom_reader import is_dicom_folder

    problems = [
        f"{path}: is a directory, not a slide file" if path.is_dir() else f"{path}: no such file"
        for path in slides
        if not path.is_file() and not is_dicom_folder(path)  # a DICOM slide is a folder
    ]
    ids = [path.stem for path in args.slides]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        problems.append(f"slides share an id (file stem): {', '.join(duplicates)}")
    if args.out.exists() and not args.out.is_dir():
        problems.append(f"{args.out}: not a folder")
    else:
        problems.extend(_unwritable(args.out))
    if args.overwrite or not args.out.is_dir():
        return problems, []
    existing = [
        str(target)
        for path in slides
        for target in _result_files(args, path.stem)
        if target.exists()
    ]
    csv_path = args.out / CSV_NAME
    if args.measure:  # objects tables and summary.csv rows
        from training.measure.io import existing_measurements

        try:
            existing.extend(existing_measurements(args.out, [path.stem for path in slides]))
        except ValueError as exc:
            return [*problems, str(exc)], []
    if csv_path.exists():
        try:
            known = set(read_catalog(csv_path, check_images=False, check_rle=False)["id"])
        except ValueError as exc:
            return [*problems, str(exc)], []
        existing.extend(f"{csv_path}: row {path.stem}" for path in slides if path.stem in known)
    return problems, existing


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


def _result_files(args: argparse.Namespace, image_id: str) -> list[Path]:
    return [
        *([args.out / f"{image_id}.labels.tiff"] if args.labels_tiff else []),
        *([args.out / f"{image_id}.geojson"] if args.geojson else []),
        *([args.out / f"{image_id}.overlay.png"] if args.overlay else []),
        *([args.out / f"{image_id}.run.json"] if args.measure else []),
        *(
            [args.out / f"{image_id}.report.{kind}" for kind in ("html", "png")]
            if args.report
            else []
        ),
    ]


def _segment_share(
    args: argparse.Namespace, team: Team
) -> tuple[int, list[str], list[dict[str, Any]]]:
    """Segment this rank's slides; never raises, so that every rank reaches the final gather.
    Returns the exit status, the failures (one line each) and the rows written."""
    try:
        device = rank_device(args.device, team.local_rank)
        ensemble, stain = _load(args, device)
    except Exception as exc:  # reported by rank 0 after the gather
        return BAD_INPUT, [_reason(exc)], []
    failures, rows = [], []
    for path in team.share(args.slides):
        try:
            rows.append(_segment_slide(args, path, ensemble, stain, device, team.rank))
        except Exception as exc:  # one bad slide must not cost the others their results
            failures.append(f"{path}: {_reason(exc)}")
            if not _is_bad_input(exc):  # a bug: its traceback is wanted (bad input explains
                log.exception("%s: failed", path)  # itself, in the one line reported at the end)
    return (SLIDES_FAILED if failures else 0), failures, rows


def _load(args: argparse.Namespace, device: str) -> tuple[Any, Any]:
    from training.models.ensemble import load_ensemble

    if device.startswith("cuda:"):
        import torch

        torch.cuda.set_device(device)  # else every rank also opens a context on GPU 0
    ensemble = load_ensemble(args.model, device)
    if args.refine is not None or args.no_refine:  # BPR: replaces or drops the manifest's
        from training.refine import Refiner

        ensemble.refiner = None
        if args.refine is not None:
            ensemble.refiner = Refiner.load(args.refine, device, ensemble.refiner_options)
    stain = None
    if args.stain_reference is not None:
        from training.stain import StainNormalizer

        stain = StainNormalizer(args.stain or "macenko").fit(args.stain_reference)
    return ensemble, stain


def _segment_slide(
    args: argparse.Namespace, path: Path, ensemble: Any, stain: Any, device: str, rank: int
) -> dict[str, Any]:
    """Segment one slide and write its results; its train.csv row last, as the mark of a slide
    done. Returns the row."""
    from training.domain import FeatureTap, check_slide
    from training.inference import run
    from training.inference.engine import working_map
    from training.inference.limits import describe
    from training.inference.outputs import (
        labels_to_geojson,
        result_row,
        write_json,
        write_overlay,
    )
    from training.slides import open_slide, write_pyramid

    with open_slide(path, args.pixel_size) as slide:
        if slide.pixel_size_um is None:
            raise ValueError(f"{path.name}: the pixel size is unknown; give --pixel-size UM")
        # said before the tissue thumbnail, whose reading takes long on a slide without a
        # pyramid; a map that cannot fit is refused here, before any work
        members = ensemble.for_organ(args.organ)
        shape, working_px = working_map(slide, members, args.overlap)
        log.info(
            "%s: %s; map %d x %d px at %g um/px",
            path.name,
            describe(slide.shape[:2], slide.pixel_size_um),
            *shape,
            working_px,
        )
        bar = TileBar(path.name, position=rank, disable=args.quiet)
        try:
            with FeatureTap(members) as tap:  # the encoder features the domain check needs
                result = run(
                    slide,
                    ensemble,
                    args.organ,
                    overlap=args.overlap,
                    batch_size=args.batch_size,
                    tta=args.tta,
                    device=device,
                    detect_tissue=not args.no_tissue_detection,
                    stain=stain,
                    on_progress=bar,
                )
        finally:
            bar.close()
        check = check_slide(slide, members, tap.features, stain=stain)
        (log.warning if check.far else log.info)("%s", check.line(path.name))
        if result.meta.get("refiner"):
            name = Path(result.meta["refiner"]).name
            log.info(
                "%s: boundaries refined by %s (%d patches)",
                path.name,
                name,
                result.meta["refined_patches"],
            )
        labels = result.labels(args.threshold, args.min_area_um2)
        row = result_row(
            path.stem, result, labels, slide.pixel_size_um, {"model": Path(args.model).name}
        )
        if not args.overwrite:  # saves writing the files of a run whose row cannot be written
            _refuse_a_row_written_meanwhile(args.out, path.stem)
        if args.labels_tiff:
            target = args.out / f"{path.stem}.labels.tiff"
            if target.exists() and not args.overwrite:
                raise FileExistsError(f"{target} exists; napari-ftu does not overwrite results")
            write_pyramid(
                target,
                labels.astype(np.uint16 if labels.max() < 65536 else np.uint32),
                result.pixel_size_um,
                labels=True,
            )
        measurements = None
        if args.measure:
            from training.measure.io import measure_and_write
            from training.measure.qupath import to_qupath

            objects = measure_and_write(
                args.out, path.stem, result, slide, labels, overwrite=args.overwrite
            )
            measurements = to_qupath(objects)  # carried by the GeoJSON
        if args.geojson:
            write_json(
                args.out / f"{path.stem}.geojson",
                labels_to_geojson(
                    labels,
                    result.downsample,
                    args.organ,
                    shape=result.slide_shape,
                    measurements=measurements,
                ),
                overwrite=args.overwrite,
            )
        if args.overlay:
            write_overlay(
                args.out / f"{path.stem}.overlay.png", slide, labels, overwrite=args.overwrite
            )
    if args.measure:  # the run record (and with --report, the report) made from the outputs
        record_run(args, slide, result, members, check)
    _write_row(args, row)
    log.info("%s: %d %s object(s)", path.name, int(labels.max()), args.organ)
    return row


class TileBar:
    """A tqdm bar for one slide, made at the first progress event: before it, the number of
    tiles is unknown, and a bar without a total prints a stray ``0tile`` line."""

    def __init__(self, name: str, position: int = 0, disable: bool = False) -> None:
        self.name, self.position, self.disable = name, position, disable
        self.bar: Any = None

    def __call__(self, event: Any) -> None:
        """Show ``event.done`` of ``event.total`` tiles."""
        if self.disable:
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(
                total=event.total, desc=self.name, unit="tile", position=self.position, leave=True
            )
        self.bar.total = event.total  # grows when boundary refinement (BPR) adds its patches
        self.bar.n = event.done
        self.bar.refresh()

    def close(self) -> None:
        """Finish the bar, if one was shown."""
        if self.bar is not None:
            self.bar.close()


def _refuse_a_row_written_meanwhile(out: Path, image_id: str) -> None:
    # Preflight found no row for this slide, but another run into the same folder may have
    # written one since. A look, not the guard (_write_row is): it spares that case the
    # writing of this run's label TIFF, GeoJSON and overlay.
    from training.data.catalog import CSV_NAME, read_catalog

    csv_path = out / CSV_NAME
    if csv_path.exists() and image_id in set(
        read_catalog(csv_path, check_images=False, check_rle=False)["id"]
    ):
        raise _row_taken(csv_path, image_id, "results are not written (--overwrite replaces it)")


def _write_row(args: argparse.Namespace, row: dict[str, Any]) -> None:
    # Without --overwrite, a row another run into the same folder wrote since preflight is
    # refused under the folder's lock, in the same step as the write: replacing it would
    # silently swap one run's result for another's.
    from training.data.catalog import CSV_NAME, RowExistsError, upsert_row

    try:
        upsert_row(args.out, row, replace=args.overwrite)
    except RowExistsError:
        written = ", ".join(target.name for target in _result_files(args, row["id"]))
        also = f", only its {written}" if written else ""
        outcome = f"row is not written{also} (--overwrite replaces the row)"
        raise _row_taken(args.out / CSV_NAME, row["id"], outcome) from None


def _row_taken(csv_path: Path, image_id: str, outcome: str) -> FileExistsError:
    return FileExistsError(
        f"{csv_path}: row {image_id} was written by another run after this one started; "
        f"this run's {outcome}"
    )


def _restore_lost_rows(out: Path, rows: list[dict[str, Any]]) -> None:
    # Ranks take turns on train.csv through a file lock; on a filesystem without locks two
    # ranks can rewrite it at once and one row is lost. Rank 0 checks, after every rank is done.
    from training.data.catalog import read_catalog, upsert_row

    frame = read_catalog(out, check_images=False, check_rle=False).set_index("id")
    for row in rows:
        if row["id"] not in frame.index or frame.loc[row["id"], "rle"] != row["rle"]:
            log.warning("%s: its row was lost by a concurrent write; writing it again", row["id"])
            upsert_row(out, row)


def _is_bad_input(exc: BaseException) -> bool:
    # What the slide, model and image readers raise for a file they cannot use, with a message.
    return isinstance(exc, (OSError, ValueError)) and bool(str(exc))


def _reason(exc: BaseException) -> str:
    return str(exc) if _is_bad_input(exc) else f"{type(exc).__name__}: {exc}"


def _merged(parts: Sequence[Sequence[str]]) -> list[str]:
    """The ranks' lines in rank order, each once (every rank finds a shared-id problem)."""
    return list(dict.fromkeys(line for part in parts for line in part))


def _report(lines: Sequence[str]) -> None:
    for line in lines:
        print(f"napari-ftu segment: error: {line}", file=sys.stderr)
