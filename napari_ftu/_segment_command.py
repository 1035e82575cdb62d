"""``napari-ftu segment``: segment slides without a GUI, one train.csv row per slide.

This module parses the arguments, builds the options and reports; the work (the checks before
any work, segmenting, writing rows and files) is :mod:`training.inference.batch`. Under torchrun
each rank checks and segments its share of the slides, and rank 0 reports for all.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import signal
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from napari_ftu._torchrun import Team, rank_device
from training.arguments import OneLineParser, add_refine_arguments, number, positive_integer

if TYPE_CHECKING:  # training.inference imports torch: not before a run needs it (-h, errors)
    from training.inference.batch import BatchOptions
    from training.inference.options import RunOptions

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
        "--precision",
        default="auto",
        choices=("auto", "fp32", "bf16"),
        help="auto: bf16 on CUDA, fp32 on the CPU; bf16 on a CPU with native bf16 runs the model "
        "about twice as fast, probabilities within 0.02 (docs/benchmarks.md, issue 24)",
    )
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
    args.record = args.measure  # the run record beside the measurements: napari-ftu report
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
    from training.inference.batch import preflight as check

    return check(args.slides, slides, batch_options(args))


def batch_options(args: argparse.Namespace, run: RunOptions | None = None) -> BatchOptions:
    """What the arguments ask a batch to write, with the engine's ``run`` options. Each
    :class:`~training.inference.batch.Outputs` flag is the argument of the same name."""
    from training.inference.batch import SUFFIXES, BatchOptions, Outputs
    from training.inference.options import RunOptions

    return BatchOptions(
        out=args.out,
        organ=args.organ,
        model=args.model,
        run=run or RunOptions(),
        outputs=Outputs(**{name: getattr(args, name) for name in SUFFIXES}),
        overwrite=args.overwrite,
        threshold=args.threshold,
        min_area_um2=args.min_area_um2,
    )


def run_options(
    args: argparse.Namespace, device: str, stain: Any = None, refiner: Any = None
) -> RunOptions:
    """The engine's options from the arguments, on ``device`` with the fitted ``stain``
    normaliser and the ``refiner`` (None: the model's own, False: none)."""
    from training.inference.options import RunOptions

    return RunOptions(
        pixel_size_um=args.pixel_size,
        overlap=args.overlap,
        batch_size=args.batch_size,
        tta=args.tta,
        precision=args.precision,
        device=device,
        detect_tissue=not args.no_tissue_detection,
        stain=stain,
        refiner=refiner,
    )


def _segment_share(
    args: argparse.Namespace, team: Team
) -> tuple[int, list[str], list[dict[str, Any]]]:
    """Segment this rank's slides; never raises, so that every rank reaches the final gather.
    Returns the exit status, the failures (one line each) and the rows written."""
    from training.inference.batch import reason, segment_slides

    try:
        device = rank_device(args.device, team.local_rank)
        ensemble, stain, refiner = _load(args, device)
        options = batch_options(args, run_options(args, device, stain, refiner))
    except Exception as exc:  # reported by rank 0 after the gather
        return BAD_INPUT, [reason(exc)], []

    def progress(path: Path) -> TileBar:
        return TileBar(path.name, position=team.rank, disable=args.quiet)

    done = segment_slides(team.share(args.slides), ensemble, options, progress)
    return (SLIDES_FAILED if done.failures else 0), done.failures, done.rows


def _load(args: argparse.Namespace, device: str) -> tuple[Any, Any, Any]:
    """The ensemble, the stain normaliser (or None) and the refiner for the run options."""
    from training.models.ensemble import load_ensemble

    if device.startswith("cuda:"):
        import torch

        torch.cuda.set_device(device)  # else every rank also opens a context on GPU 0
    ensemble = load_ensemble(args.model, device)
    refiner = None  # BPR: the manifest's own, replaced or dropped by --refine / --no-refine
    if args.no_refine:
        refiner = False
    elif args.refine is not None:  # loaded once for every slide, with the manifest's options
        from training.refine.stage import resolve_refiner

        refiner = resolve_refiner(args.refine, ensemble, device)
    stain = None
    if args.stain_reference is not None:
        from training.stain import StainNormalizer

        stain = StainNormalizer(args.stain or "macenko").fit(args.stain_reference)
    return ensemble, stain, refiner


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


def _restore_lost_rows(out: Path, rows: list[dict[str, Any]]) -> None:
    # rank 0, after every rank is done: see training.inference.batch.restore_lost_rows
    from training.inference.batch import restore_lost_rows

    restore_lost_rows(out, rows)


def _merged(parts: Sequence[Sequence[str]]) -> list[str]:
    """The ranks' lines in rank order, each once (every rank finds a shared-id problem)."""
    return list(dict.fromkeys(line for part in parts for line in part))


def _report(lines: Sequence[str]) -> None:
    for line in lines:
        print(f"napari-ftu segment: error: {line}", file=sys.stderr)
