"""``napari-ftu measure``: measure the FTUs of an existing mask on its slide, as
``napari-ftu segment --measure`` measures a segmentation: ``OUT/<id>.objects.csv`` and a row of
``OUT/summary.csv``."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from training.arguments import OneLineParser, number

log = logging.getLogger("napari_ftu")

BAD_INPUT = 2  # exit status, as napari-ftu segment's


def measure_parser() -> argparse.ArgumentParser:
    """Arguments of ``napari-ftu measure``."""
    from training.organs import ORGANS
    from training.slides import PLAUSIBLE_UM_PER_PX

    parser = OneLineParser(
        prog="napari-ftu measure",
        description="Measure the FTUs of an existing mask on its slide: OUT/<id>.objects.csv "
        "(one row per object: area, perimeter, diameters, shape, centroid, stain densities) and "
        "the slide's row of OUT/summary.csv (count, tissue area, density, sizes). Existing "
        "results are refused unless --overwrite. Exit status 2 for bad input.",
    )
    parser.add_argument("slide", type=Path)
    parser.add_argument(
        "--mask",
        required=True,
        type=Path,
        help="a labels TIFF (as segment --labels-tiff writes; a binary mask is split into its "
        "objects), a dataset folder holding the slide's row in train.csv, or QuPath GeoJSON",
    )
    parser.add_argument("--organ", required=True, choices=ORGANS)
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--id", help="the slide's id (default: its file stem)")
    parser.add_argument(
        "--pixel-size",
        type=number(*PLAUSIBLE_UM_PER_PX),
        help="um/px of the slide if its file (or the dataset row) lacks it (0.01 to 100)",
    )
    parser.add_argument(
        "--geojson", action="store_true", help="also write OUT/<id>.geojson with measurements"
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace the objects table and summary row"
    )
    return parser


def measure_command(argv: Sequence[str]) -> int:
    """Run ``napari-ftu measure``; returns the exit status."""
    args = measure_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    image_id = args.id or args.slide.stem
    try:
        _, summary, written = measure_mask(args, image_id)
    except (OSError, ValueError) as exc:  # bad input explains itself in one line
        print(f"napari-ftu measure: error: {exc}", file=sys.stderr)
        return BAD_INPUT
    log.info(
        "%s: %d %s object(s), %s mm² of tissue; wrote %s",
        image_id,
        summary["ftu_count"],
        args.organ,
        f"{summary['tissue_area_mm2']:.4g}",
        ", ".join(str(path) for path in written),
    )
    return 0


def measure_mask(args: argparse.Namespace, image_id: str) -> tuple[Any, dict, list[Path]]:
    """Measure ``args.mask`` on ``args.slide`` and write the results; returns the objects, the
    summary row and the paths written."""
    from training.data.catalog import check_id
    from training.measure.io import objects_path, summary_has, write_measurements
    from training.measure.masks import load_mask
    from training.measure.slide import measure_labels
    from training.slides import open_slide

    check_id(image_id)  # a file name part as train.csv ids are: no separators
    if args.out.exists() and not args.out.is_dir():
        raise ValueError(f"{args.out}: not a folder")
    if not args.overwrite:  # refused before the work, not after it
        geojson = [args.out / f"{image_id}.geojson"] if args.geojson else []
        for path in [objects_path(args.out, image_id), *geojson]:
            if path.exists():
                raise FileExistsError(f"{path} exists (--overwrite replaces it)")
        if summary_has(args.out, image_id):
            raise FileExistsError(
                f"{args.out / 'summary.csv'}: row {image_id} exists (--overwrite replaces it)"
            )
    if not args.slide.is_file():
        raise ValueError(f"{args.slide}: no such slide file")
    with open_slide(args.slide, args.pixel_size) as slide:
        mask = load_mask(args.mask, slide.shape[:2], image_id)
        if slide.pixel_size_um is None and mask.pixel_size_um is not None:
            slide = slide.with_pixel_size(mask.pixel_size_um)
        if slide.pixel_size_um is None:
            raise ValueError(f"{args.slide}: the pixel size is unknown; give --pixel-size UM")
        objects, summary = measure_labels(
            mask.labels, slide, image_id=image_id, downsample=mask.downsample
        )
        level0 = tuple(slide.shape[:2])
    written = []
    if args.geojson:
        written.append(_write_geojson(args, image_id, mask, objects, level0))
    written += write_measurements(args.out, image_id, objects, summary, overwrite=args.overwrite)
    return objects, summary, written


def _write_geojson(
    args: argparse.Namespace, image_id: str, mask: Any, objects: Any, level0: tuple[int, int]
) -> Path:
    from training.data.geojson_export import labels_to_geojson
    from training.inference.outputs import write_json
    from training.measure.qupath import to_qupath

    path = args.out / f"{image_id}.geojson"
    collection = labels_to_geojson(
        mask.labels, mask.downsample, args.organ, shape=level0, measurements=to_qupath(objects)
    )
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(path, collection, overwrite=args.overwrite)
    return path
