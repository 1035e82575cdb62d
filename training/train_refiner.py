"""``python -m training.train_refiner``: train a BPR boundary refiner on dataset folders.

    python -m training.train_refiner --data DIR [DIR:WEIGHT ...] --val-data VAL --out RUN
    python -m training.train_refiner --data DIR --split-of M.pt --coarse-model M.pt --out RUN

Pairs come from the same dataset folders as ``training.train`` (images + ``train.csv`` RLE
masks), read at the refiner's pixel size (``--pixel-size``, default the finest of the images').
The coarse masks are either simulated from the truth (downsampled 4x or 8x and back, shifted,
grown or shrunk a little: the blocky outlines a 1/4-resolution decoder leaves) or, with
``--coarse-model CKPT_OR_MANIFEST``, predicted by that model through the engine (as the paper
prefers: the refiner learns the model's own errors). Each step trains on patches centred on
boundaries (BCE + Dice); every ``--val-every`` steps the held-out images (``--val-data``; else
the images ``--split-of CKPT`` validated on, the segmentation model's held-out split; else
``--val-fraction`` of each organ's images, by ``--seed``) are refined whole (their coarse maps
fixed: simulated with a set seed, or the model's) and scored with the boundary F-score at 2 px
and the Dice. The run folder gets ``best.pt`` (best boundary
F-score), ``last.pt`` (both refiner checkpoints: give them to ``napari-ftu segment --refine``
or a manifest's ``refiner:``) and ``metrics.csv``. ``--time-limit`` (minutes) and
``--time-clock cpu`` work as in ``training.train``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("training.train_refiner")


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``python -m training.train_refiner``."""
    from training.arguments import OneLineParser, positive_integer

    parser = OneLineParser(
        prog="python -m training.train_refiner",
        description="Train a Boundary Patch Refinement (BPR) refiner on dataset folders.",
    )
    parser.add_argument("--data", nargs="+", required=True, metavar="DIR[:W]")
    parser.add_argument(
        "--val-data",
        nargs="+",
        type=Path,
        metavar="DIR",
        help="held-out images (default: a "
        "split of --data: --split-of's validation images, else --val-fraction of each organ's)",
    )
    parser.add_argument(
        "--split-of",
        type=Path,
        metavar="CKPT",
        help="validate on the images CKPT validated on (its val_ids), train on the others",
    )
    parser.add_argument("--val-fraction", type=float, default=0.2)
    parser.add_argument("--out", required=True, type=Path, help="run folder (must not hold a run)")
    parser.add_argument(
        "--coarse-model", type=Path, help="checkpoint or manifest whose maps are refined"
    )
    parser.add_argument("--organ", nargs="+", help="only images of these organs")
    parser.add_argument("--pixel-size", type=float, help="um/px the refiner sees")
    parser.add_argument("--patch", type=positive_integer, default=64, help="patch side (px)")
    parser.add_argument(
        "--base",
        type=positive_integer,
        default=24,
        help="channels at full size (24: 0.27 M parameters)",
    )
    parser.add_argument("--levels", type=positive_integer, default=3)
    parser.add_argument("--batch-size", type=positive_integer, default=16)
    parser.add_argument("--steps", type=positive_integer, default=2000)
    parser.add_argument("--val-every", type=positive_integer, default=200, help="steps")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--time-limit", type=float, help="minutes; stop, validate and save after")
    parser.add_argument("--time-clock", choices=("wall", "cpu"), default="wall")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; 0 on success, 2 on bad input."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    from training.data.catalog import CatalogError
    from training.models import CheckpointError

    try:
        summary = train(args)
    except (CatalogError, CheckpointError, FileNotFoundError, FileExistsError, ValueError) as exc:
        print(f"python -m training.train_refiner: error: {exc}", file=sys.stderr)
        return 2
    log.info(
        "done: %d steps, best boundary F %.4f (from %.4f) at step %d; %s",
        summary["steps"],
        summary["best_val_bf"],
        summary["coarse_val_bf"],
        summary["best_step"],
        args.out / "best.pt",
    )
    return 0


def train(args: argparse.Namespace) -> dict[str, Any]:
    """Train as ``args`` say; the training summary (also in the checkpoints' meta)."""
    import torch

    from training.data.records import load_records, parse_data_spec, split_records
    from training.evaluate import load_images, validation_ids
    from training.refine.fit import RefinerFit
    from training.refine.model import build_refiner, save_refiner
    from training.refine.pairs import load_pair
    from training.refine.stage import Refiner

    for name in ("best.pt", "last.pt", "metrics.csv"):
        if (args.out / name).exists():
            raise FileExistsError(f"{args.out / name} exists: give a new --out")
    if args.patch % 2 ** (args.levels - 1):
        raise ValueError(f"--patch {args.patch} must be a multiple of {2 ** (args.levels - 1)}")
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    specs = [parse_data_spec(text) for text in args.data]
    records = load_records(specs)
    if args.organ:
        records = [r for r in records if r.organ in set(args.organ)]
    if args.val_data:
        val_records = load_images(args.val_data, args.organ)
    elif args.split_of is not None:
        held = set(validation_ids(args.split_of))
        val_records = [r for r in records if r.id in held]
        records = [r for r in records if r.id not in held]
    else:
        records, val_records = split_records(records, args.val_fraction, args.seed)
    if not records or not val_records:
        raise ValueError(
            f"{len(records)} training and {len(val_records)} validation image(s): both are needed"
        )
    pixel_size = args.pixel_size or min(r.pixel_size_um for r in records)
    coarse_model = None
    if args.coarse_model is not None:
        from training.models.ensemble import load_ensemble

        coarse_model = load_ensemble(args.coarse_model, args.device)
    log.info("reading %d training and %d validation images", len(records), len(val_records))
    pairs = [load_pair(r, pixel_size, coarse_model, args.device) for r in records]
    val_pairs = [load_pair(r, pixel_size, coarse_model, args.device) for r in val_records]
    for index, pair in enumerate(val_pairs):  # fixed coarse maps: scores comparable across steps
        pair.coarse = pair.coarse_for(np.random.default_rng(10_000 + index))
    model = build_refiner(base=args.base, levels=args.levels).to(args.device)
    meta = {
        "pixel_size_um": pixel_size,
        "patch_size": args.patch,
        "training": {
            "data": [str(spec.path) for spec in specs],
            "val_data": [str(path) for path in (args.val_data or [spec.path for spec in specs])],
            "val_ids": [pair.id for pair in val_pairs],
            "coarse": str(args.coarse_model.name) if args.coarse_model else "simulated",
            "organs": sorted({r.organ for r in records}),
        },
    }
    refiner = Refiner(model, {**meta, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]})
    weights = np.array(
        [specs[r.folder].weight * pair.truth.any() for r, pair in zip(records, pairs, strict=True)],
        float,
    )
    if not weights.any():
        raise ValueError("no training image has an FTU: the refiner learns from outlines")
    batches = _batches(pairs, weights / weights.sum(), args, rng)
    fit = RefinerFit(refiner, lr=args.lr)
    clock = time.process_time if args.time_clock == "cpu" else time.monotonic
    coarse_bf = validate(refiner, val_pairs, refine=False)["val_bf"]
    start, rows, step = clock(), [], 0  # the time limit counts training and its validations

    def out_of_time() -> bool:
        return args.time_limit is not None and clock() - start > 60 * args.time_limit

    best = {"val_bf": -1.0, "step": 0}
    args.out.mkdir(parents=True, exist_ok=True)
    while step < args.steps:
        losses = fit.run(batches, min(args.val_every, args.steps - step), out_of_time)
        step += len(losses)
        scores = validate(refiner, val_pairs)
        row = {"step": step, "loss": float(np.mean(losses)) if losses else float("nan"), **scores}
        row["seconds"] = clock() - start
        rows.append(row)
        log.info("step %d: %s", step, ", ".join(f"{k} {v:.4g}" for k, v in row.items()))
        summary = {
            **meta["training"],
            "steps": step,
            "coarse_val_bf": coarse_bf,
            "clock": args.time_clock,
            "seconds": row["seconds"],
        }
        if scores["val_bf"] > best["val_bf"]:
            best = {"val_bf": scores["val_bf"], "step": step}
            save_refiner(
                args.out / "best.pt", model, {**refiner.meta, "training": {**summary, **scores}}
            )
        save_refiner(
            args.out / "last.pt", model, {**refiner.meta, "training": {**summary, **scores}}
        )
        from training.curves import write_metrics

        write_metrics(rows, args.out / "metrics.csv")
        if out_of_time() or not losses:
            break
    return {**summary, "best_val_bf": best["val_bf"], "best_step": best["step"]}


def _batches(
    pairs: Sequence[Any], weights: np.ndarray, args: argparse.Namespace, rng: np.random.Generator
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Endless batches of boundary patches, each from one image drawn by folder weight."""
    from training.refine.samples import boundary_patches

    while True:
        pair = pairs[int(rng.choice(len(pairs), p=weights))]
        batch = boundary_patches(
            pair.image, pair.coarse_for(rng), pair.truth, args.patch, args.batch_size, rng
        )
        if len(batch[0]):
            yield batch


def validate(refiner: Any, pairs: Sequence[Any], refine: bool = True) -> dict[str, float]:
    """Mean per-image boundary F-score (2 px) and Dice of the held-out images' coarse maps,
    refined whole (``refine``) or as they are."""
    from training.refine.metrics import boundary_f_score
    from training.refine.stage import refine_map
    from training.slides import Slide
    from training.validation import dice

    bf, dices = [], []
    for pair in pairs:
        probability = pair.coarse.copy()
        if refine:
            slide = Slide.from_array(pair.image, refiner.pixel_size_um)
            for _ in refine_map(probability, slide, refiner, refiner.pixel_size_um, (0.5, 0.0)):
                pass
        bf.append(boundary_f_score(probability >= 0.5, pair.truth > 0, 2))
        dices.append(dice(probability >= 0.5, pair.truth > 0))
    return {"val_bf": float(np.mean(bf)), "val_dice": float(np.mean(dices))}


if __name__ == "__main__":
    raise SystemExit(main())
