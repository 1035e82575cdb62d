"""The ``napari-ftu`` command: the GUI launcher, and ``napari-ftu segment`` for batch work."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("napari_ftu")

BAD_INPUT = 2  # exit status


def main(argv: Sequence[str] | None = None) -> int:
    """``napari-ftu [SLIDE...]`` opens napari; ``napari-ftu segment ...`` runs headless."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "segment":
        return segment_command(argv[1:])
    return launch(argv)


def launch(argv: Sequence[str]) -> int:
    """Open napari with the plugin and the slides given."""
    parser = argparse.ArgumentParser(
        prog="napari-ftu",
        description="Open slides in napari with napari-ftu (batch work: napari-ftu segment -h).",
    )
    parser.add_argument("slides", nargs="*", help="slide files (TIFF, OME-TIFF, SVS, PNG, JPEG)")
    args = parser.parse_args(argv)
    missing = [path for path in args.slides if not Path(path).exists()]
    if missing:  # before napari starts: a typo costs no waiting for a window
        print(f"napari-ftu: error: no such file: {', '.join(missing)}", file=sys.stderr)
        return BAD_INPUT
    # torch (and the triton it pulls in) must be imported before any OpenGL context exists:
    # importing it after a viewer is up crashes under Mesa's software OpenGL.
    import napari
    import torch  # noqa: F401

    viewer = napari.Viewer(title="napari-ftu")
    open_slides(viewer, args.slides)
    napari.run()
    return 0


def open_slides(viewer: Any, paths: Sequence[str | os.PathLike]) -> list[str]:
    """Open each slide in ``viewer`` with the plugin's reader; return the paths that failed.

    A slide that cannot be opened is reported as a napari error notification, and the others
    still open: the session goes on.
    """
    from napari.utils.notifications import show_error

    failed = []
    for path in map(str, paths):
        try:
            viewer.open(path, plugin="napari-ftu")
        except Exception as exc:  # whatever a reader raises, one slide must not end the session
            show_error(f"napari-ftu cannot open {path}: {exc}")
            failed.append(path)
    return failed


def segment_parser() -> argparse.ArgumentParser:
    """Arguments of ``napari-ftu segment``."""
    from training.data.catalog import ORGANS
    from training.stain import METHODS as STAIN_METHODS

    parser = argparse.ArgumentParser(
        prog="napari-ftu segment",
        description="Segment FTUs in slides without a GUI. Writes OUT/train.csv (one RLE row per "
        "slide at level-0 size, id = file stem) and, on request, label TIFFs and GeoJSON. Under "
        "torchrun, each rank takes its share of the slides and rank 0 merges the rows.",
    )
    parser.add_argument("slides", nargs="+", type=Path)
    parser.add_argument("--organ", required=True, choices=ORGANS)
    parser.add_argument("--model", required=True, type=Path, help="checkpoint or ensemble manifest")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    group = parser.add_argument_group("inference")
    group.add_argument(
        "--pixel-size", type=float, help="um/px of the slides if their files lack it"
    )
    group.add_argument("--overlap", type=float, default=0.25)
    group.add_argument("--batch-size", type=int, default=4)
    group.add_argument("--tta", type=int, default=1, choices=(1, 4, 8))
    group.add_argument("--device", default="cpu")
    group.add_argument("--no-tissue-detection", action="store_true")
    group.add_argument(
        "--stain",
        choices=STAIN_METHODS,
        help="normalise tile stains to --stain-reference (default method: macenko)",
    )
    group.add_argument(
        "--stain-reference", type=Path, help="reference image (PNG/JPEG/TIFF) for --stain"
    )
    post = parser.add_argument_group("post-processing and outputs")
    post.add_argument("--threshold", type=float, help="default: the model's for this organ")
    post.add_argument("--min-area-um2", type=float, default=0.0)
    post.add_argument("--labels-tiff", action="store_true", help="write OUT/<id>.labels.tiff")
    post.add_argument("--geojson", action="store_true", help="write OUT/<id>.geojson (QuPath)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def segment_command(argv: Sequence[str]) -> int:
    """Run ``napari-ftu segment``; returns the exit status."""
    parser = segment_parser()
    args = parser.parse_args(argv)
    if args.stain and args.stain_reference is None:
        parser.error("--stain needs --stain-reference IMAGE")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    try:
        rows = _segment_share(args, args.slides[rank::world], rank)
        if world > 1:
            rows = _gather_rows(rows, rank, world)
        if rank == 0:
            from training.data.catalog import upsert_row

            for row in rows:
                upsert_row(args.out, row)
            log.info("wrote %d row(s) to %s", len(rows), args.out / "train.csv")
    except (OSError, ValueError, TypeError, RuntimeError) as exc:
        print(f"napari-ftu segment: error: {exc}", file=sys.stderr)
        return 2
    return 0


def _segment_share(args: argparse.Namespace, slides: Sequence[Path], rank: int) -> list[dict]:
    from training.inference import run
    from training.inference.outputs import labels_to_geojson, result_row, write_json
    from training.models.ensemble import load_ensemble
    from training.slides import open_slide, write_pyramid

    ids = [p.stem for p in args.slides]
    duplicates = {i for i in ids if ids.count(i) > 1}
    if duplicates:
        raise ValueError(f"slides share an id (file stem): {', '.join(sorted(duplicates))}")
    ensemble = load_ensemble(args.model, args.device)
    stain = None
    if args.stain_reference is not None:
        from training.stain import StainNormalizer

        stain = StainNormalizer(args.stain or "macenko").fit(args.stain_reference)
    rows = []
    for path in slides:
        with open_slide(path, args.pixel_size) as slide:
            bar = TileBar(path.name, position=rank, disable=args.quiet)
            try:
                result = run(
                    slide,
                    ensemble,
                    args.organ,
                    overlap=args.overlap,
                    batch_size=args.batch_size,
                    tta=args.tta,
                    device=args.device,
                    detect_tissue=not args.no_tissue_detection,
                    stain=stain,
                    on_progress=bar,
                )
            finally:
                bar.close()
            labels = result.labels(args.threshold, args.min_area_um2)
            rows.append(
                result_row(
                    path.stem, result, labels, slide.pixel_size_um, {"model": Path(args.model).name}
                )
            )
        if args.labels_tiff:
            target = args.out / f"{path.stem}.labels.tiff"
            if target.exists():
                raise FileExistsError(f"{target} exists; napari-ftu does not overwrite results")
            write_pyramid(
                target,
                labels.astype(np.uint16 if labels.max() < 65536 else np.uint32),
                result.pixel_size_um,
                labels=True,
            )
        if args.geojson:
            write_json(
                args.out / f"{path.stem}.geojson",
                labels_to_geojson(labels, result.downsample, args.organ),
            )
        log.info("%s: %d %s object(s)", path.name, int(labels.max()), args.organ)
    return rows


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
        self.bar.n = event.done
        self.bar.refresh()

    def close(self) -> None:
        """Finish the bar, if one was shown."""
        if self.bar is not None:
            self.bar.close()


def _gather_rows(rows: list[dict], rank: int, world: int) -> list[dict]:
    import torch.distributed as dist

    dist.init_process_group("gloo")
    try:
        gathered: list[list[dict] | None] = [None] * world
        dist.all_gather_object(gathered, rows)
    finally:
        dist.destroy_process_group()
    return [row for part in gathered for row in (part or [])] if rank == 0 else []


if __name__ == "__main__":
    raise SystemExit(main())
