"""Import QuPath GeoJSON outlines into a dataset folder: ``python -m training.data.import_geojson``.

One image and its GeoJSON, or two folders paired by file stem::

    python -m training.data.import_geojson IMAGE GEOJSON --out DIR --organ ORGAN [options]
    python -m training.data.import_geojson IMAGE_DIR GEOJSON_DIR --out DIR --organ ORGAN [options]

With folders, every ``GEOJSON_DIR/<stem>.geojson`` (or ``.json``) is paired with the image of the
same stem in ``IMAGE_DIR``; images without a GeoJSON are left alone. Each pair becomes the row
``<stem>`` (or ``--id``) of ``DIR/train.csv`` with the mask as RLE, and the image is copied to
``DIR/train_images/<id>.tiff``. A row with the same id is replaced and kept in
``train.backup.csv``. Every pair is checked (id a plain file name, image readable, pixel size
known, outlines rasterised) before anything is written; bad input exits with status 2 and a
one-line error.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from training.data.catalog import (
    ORGANS,
    CatalogError,
    catalog_paths,
    check_id,
    read_catalog,
    upsert_row,
)
from training.data.geojson import GeoJSONError, rasterize
from training.data.polygon_fill import CONVENTIONS
from training.data.rle import encode
from training.slides import SLIDE_SUFFIXES, SlideError, open_slide

__all__ = ["build_parser", "main"]

log = logging.getLogger(__name__)

BAD_INPUT = 2  # exit status, as argparse uses for a bad command line
GEOJSON_SUFFIXES = (".geojson", ".json")
PROG = "python -m training.data.import_geojson"


class BadInput(ValueError):
    """Input the command cannot import: a missing file, an unpaired GeoJSON, no pixel size."""


@dataclass(frozen=True)
class _Checked:
    """A pair that passed every check: what is left is reading the pixels and writing."""

    image_id: str
    image: Path
    pixel_size_um: float
    rle: str
    foreground: float  # fraction of the image


def build_parser() -> argparse.ArgumentParser:
    """The command's arguments."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Rasterise QuPath GeoJSON outlines (level-0 pixel coordinates) and add "
        "image + mask as rows of a dataset folder (DIR/train.csv, DIR/train_images/).",
    )
    parser.add_argument(
        "image", type=Path, metavar="IMAGE", help="an image file, or a folder of images"
    )
    parser.add_argument(
        "geojson",
        type=Path,
        metavar="GEOJSON",
        help="its GeoJSON file, or a folder of <stem>.geojson files paired with IMAGE's images",
    )
    parser.add_argument(
        "--out", type=Path, required=True, metavar="DIR", help="the dataset folder to add to"
    )
    parser.add_argument("--organ", required=True, choices=ORGANS)
    parser.add_argument(
        "--id", dest="image_id", metavar="ID", help="row id (one image only; default: its stem)"
    )
    parser.add_argument(
        "--pixel-size",
        type=_positive,
        metavar="UM",
        help="micrometres per level-0 pixel; needed when the image does not say, wins if it does",
    )
    parser.add_argument("--data-source", default="", metavar="NAME", help="e.g. HPA, Hubmap")
    parser.add_argument(
        "--thickness", type=_positive, metavar="UM", help="tissue section thickness"
    )
    parser.add_argument(
        "--classification",
        action="append",
        metavar="NAME",
        help="import only outlines of this class (case-insensitive; repeat for several)",
    )
    parser.add_argument(
        "--convention",
        choices=CONVENTIONS,
        default="qupath",
        help="pixel convention: qupath (pixel centres at +0.5, QuPath's own; the default) or "
        "labelme (centres on integers, outline included, as LabelMe rasterises)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; return its exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        existing = _existing_ids(args.out)
        pairs = _pairs(args.image, args.geojson, args.image_id)
        for image_id, _, _ in pairs:
            check_id(image_id)  # an id such as ../../x would write outside DIR
        checked = [_check(args, *pair) for pair in pairs]
    except (BadInput, GeoJSONError, SlideError, CatalogError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return BAD_INPUT
    csv_path, _ = catalog_paths(args.out)
    for item in checked:
        _write(args, item)
        note = " (replaced a row, kept in train.backup.csv)" if item.image_id in existing else ""
        log.info(
            "%s: %.2f%% foreground -> %s%s", item.image_id, 100 * item.foreground, csv_path, note
        )
    return 0


def _pairs(image: Path, geojson: Path, image_id: str | None) -> list[tuple[str, Path, Path]]:
    """``(id, image, geojson)`` for every pair to import."""
    for path in (image, geojson):
        if not path.exists():
            raise BadInput(f"{path}: no such file or folder")
    if image.is_dir() != geojson.is_dir():
        raise BadInput(
            f"IMAGE and GEOJSON must both be files or both be folders; got {image} and {geojson}"
        )
    if not image.is_dir():
        return [(image_id or _stem(image), image, geojson)]
    if image_id:
        raise BadInput("--id names one image; it cannot be used with folders")
    annotations = sorted(p for p in geojson.iterdir() if p.suffix.lower() in GEOJSON_SUFFIXES)
    if not annotations:
        raise BadInput(f"{geojson} holds no {' or '.join(GEOJSON_SUFFIXES)} files")
    images: dict[str, list[Path]] = {}
    for path in sorted(image.iterdir()):
        if path.is_file() and path.suffix.lower() in SLIDE_SUFFIXES:
            images.setdefault(_stem(path), []).append(path)
    unpaired = [a.name for a in annotations if _stem(a) not in images]
    if unpaired:
        raise BadInput(f"no image in {image} for {', '.join(unpaired)}")
    pairs = []
    for annotation in annotations:
        candidates = images[_stem(annotation)]
        if len(candidates) > 1:
            names = ", ".join(p.name for p in candidates)
            raise BadInput(f"{annotation.name} matches several images ({names})")
        pairs.append((_stem(annotation), candidates[0], annotation))
    stems = [_stem(a) for a in annotations]
    twice = sorted({a.name for a in annotations if stems.count(_stem(a)) > 1})
    if twice:
        raise BadInput(f"{', '.join(twice)} would import the same image twice")
    return pairs


def _stem(path: Path) -> str:
    """``slide`` for ``slide.tiff``, ``slide.ome.tiff`` and ``slide.geojson``."""
    stem = path.name[: -len(path.suffix)] if path.suffix else path.name
    return stem[: -len(".ome")] if stem.lower().endswith(".ome") else stem


def _existing_ids(out: Path) -> set[str]:
    # A broken catalogue is reported now, before any pair is written next to it.
    csv_path, _ = catalog_paths(out)
    if not csv_path.exists():
        return set()
    return set(read_catalog(out, check_images=False, check_rle=False)["id"])


def _check(args: argparse.Namespace, image_id: str, image: Path, geojson: Path) -> _Checked:
    with open_slide(image, pixel_size_um=args.pixel_size) as slide:
        shape, pixel_size = slide.shape[:2], slide.pixel_size_um
    if pixel_size is None:
        raise BadInput(f"{image.name} does not say its pixel size; pass --pixel-size UM")
    mask = rasterize(geojson, shape, classification=args.classification, convention=args.convention)
    return _Checked(image_id, image, pixel_size, encode(mask), float(mask.mean()))


def _write(args: argparse.Namespace, item: _Checked) -> None:
    with open_slide(item.image) as slide:
        height, width = slide.shape[:2]
        pixels = slide.read_region(0, 0, height, width)
    row = {
        "id": item.image_id,
        "organ": args.organ,
        "data_source": args.data_source,
        "pixel_size": item.pixel_size_um,
        "tissue_thickness": "" if args.thickness is None else args.thickness,
        "rle": item.rle,
        "age": "",
        "sex": "",
    }
    upsert_row(args.out, row, image=pixels)


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number")
    return value


if __name__ == "__main__":
    sys.exit(main())
