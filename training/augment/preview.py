"""``python -m training.augment.preview``: a grid PNG of augmented training crops.

    python -m training.augment.preview --data DIR --out preview.png [--rows 4 --cols 6]

Each pair of columns shows a crop as the model would see it without augmentation (left) and
the same crop augmented (right), FTU outlines in green, so a user can judge strengths before
training. Settings come from the same ``--augment-groups`` and YAML ``augment`` strengths as
``python -m training.train``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from training.config import AUGMENT_GROUPS


def build_parser() -> argparse.ArgumentParser:
    """The parser of the preview command."""
    parser = argparse.ArgumentParser(prog="python -m training.augment.preview")
    parser.add_argument("--data", nargs="+", required=True, metavar="DIR[:WEIGHT]")
    parser.add_argument("--out", type=Path, required=True, help="the PNG to write")
    parser.add_argument("--pixel-size", type=float, default=1.0, help="model um/px")
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--rows", type=int, default=4)
    parser.add_argument("--cols", type=int, default=3, help="pairs per row")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--config", type=Path, help="a training YAML with 'augment' strengths")
    parser.add_argument(
        "--augment-groups", nargs="*", default=list(AUGMENT_GROUPS), choices=AUGMENT_GROUPS
    )
    return parser


def preview_grid(
    data: Sequence[str],
    config: dict,
    pixel_size_um: float,
    tile: int,
    rows: int,
    cols: int,
    seed: int = 0,
) -> np.ndarray:
    """``rows x 2*cols`` crops (plain, augmented) as one RGB image with outlines."""
    from training.augment import AugmentConfig, Augmenter
    from training.data.crops import CropDataset, CropOptions
    from training.data.records import load_records, parse_data_spec, sampling_weights
    from training.inference.postprocess import outlines

    specs = [parse_data_spec(text) for text in data]
    records = load_records(specs)
    weights = sampling_weights(records, [s.weight for s in specs])
    options = CropOptions(tile, pixel_size_um)
    plain = CropDataset(records, weights, options, seed=seed)
    augmented = CropDataset(
        records, weights, options, Augmenter(AugmentConfig.from_dict(config)), seed=seed
    )
    gap = 4
    grid = np.full((rows * (tile + gap), 2 * cols * (tile + gap), 3), 255, np.uint8)
    for index in range(rows * cols):
        for side, dataset in enumerate((plain, augmented)):
            item = dataset[index]
            image, mask = item["image"].numpy().copy(), item["mask"].numpy()
            image[outlines(mask)] = (0, 220, 0)
            y = (index // cols) * (tile + gap)
            x = ((index % cols) * 2 + side) * (tile + gap)
            grid[y : y + tile, x : x + tile] = image
    return grid


def main(argv: Sequence[str] | None = None) -> int:
    """Write the preview; 0 on success, 2 on bad input."""
    args = build_parser().parse_args(argv)
    from PIL import Image

    from training.atomic import atomic_path
    from training.data.catalog import CatalogError

    strengths = {}
    if args.config is not None:
        import yaml

        strengths = (yaml.safe_load(args.config.read_text()) or {}).get("augment") or {}
    config = {**strengths, **{g: g in args.augment_groups for g in AUGMENT_GROUPS}}
    try:
        grid = preview_grid(
            args.data, config, args.pixel_size, args.tile, args.rows, args.cols, args.seed
        )
    except (CatalogError, ValueError, TypeError) as exc:
        print(f"python -m training.augment.preview: error: {exc}", file=sys.stderr)
        return 2
    with atomic_path(args.out) as tmp:
        Image.fromarray(grid).save(tmp, format="PNG")
    print(f"wrote {args.out} ({args.rows * args.cols} crops, plain | augmented)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
