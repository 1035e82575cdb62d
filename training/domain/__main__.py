"""``python -m training.domain describe CHECKPOINT --data DIR [DIR ...] [--out FILE]``.

Adds a description of the training data to a checkpoint that has none (one trained before
descriptions existed), so that segmenting with it reports the domain distance.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from training.arguments import positive_integer


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``python -m training.domain``."""
    parser = argparse.ArgumentParser(prog="python -m training.domain")
    commands = parser.add_subparsers(dest="command", required=True)
    describe = commands.add_parser(
        "describe",
        help="write a description of the training data into a checkpoint",
        description="Describe the images of dataset folders (stain vectors, optical density, "
        "pixel sizes, encoder features) and store it in the checkpoint as meta.domain; the "
        "rest of the checkpoint is kept as it is. Give the folders the model was trained on.",
    )
    describe.add_argument("checkpoint", type=Path)
    describe.add_argument("--data", nargs="+", required=True, type=Path, metavar="DIR")
    describe.add_argument(
        "--out", type=Path, help="write the described checkpoint here (default: in place)"
    )
    describe.add_argument(
        "--max-tiles", type=positive_integer, default=64, help="tiles read in all (default 64)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; 0 on success, 2 on bad input."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from training.data.catalog import CatalogError
    from training.data.records import DataSpec, load_records
    from training.domain.records import describe_checkpoint
    from training.models import CheckpointError

    try:
        records = load_records([DataSpec(folder) for folder in args.data])
        description = describe_checkpoint(args.checkpoint, records, args.out, args.max_tiles)
    except (CatalogError, CheckpointError, FileNotFoundError, ValueError) as exc:
        print(f"python -m training.domain: error: {exc}", file=sys.stderr)
        return 2
    print(
        f"{args.out or args.checkpoint}: described {description['images']} images "
        f"({description['tiles']} tiles, {len(description['stains'])} stain groups)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
