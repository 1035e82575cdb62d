"""A copy of a checkpoint rebuilt for another tile size, weights unchanged: to see how a model
trained on one tile size does on wider tiles before training it on them (docs/benchmarks.md,
"stage 8").

    python benchmarks/retile_checkpoint.py runs/default/kidney-coat1g/best.pt 512 OUT.pt
"""

from __future__ import annotations

import argparse
from pathlib import Path

from training.models import load_checkpoint, save_checkpoint
from training.models.registry import rebuilt_for_tile


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("tile", type=int)
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    model, meta = load_checkpoint(args.checkpoint)
    model = rebuilt_for_tile(model, args.tile)
    del meta["architecture"]  # load_checkpoint's addition; the copy gets its own
    save_checkpoint(args.out, model, {**meta, "tile_size": args.tile})
    print(f"{args.out}: {model.config['name']} on {args.tile} px tiles")


if __name__ == "__main__":
    main()
