"""``python -m training.train``: train or fine-tune an FTU model on dataset folders.

    python -m training.train --data DIR [DIR:WEIGHT ...] --model swin_micro_upernet --out RUN
    python -m training.train --data corrections/ --init model.pt --out RUN2 --epochs 5
    python -m training.train --data DIR --init model.pt --out RUN3 --target my_slides/ --adapt both
    torchrun --nproc_per_node 2 -m training.train --data DIR --model NAME --out RUN

Everything that can be wrong with the input (an empty dataset, an unknown organ, an unreadable
image, a damaged ``--init``, a run folder that already holds a run, a ``--target`` without
images) is found before the first step and reported in one line. The run folder gets
``best.pt`` (the best validated weights, with per-organ thresholds and minimum object areas
tuned on validation), ``last.pt``, ``train_state.pt`` (for ``--resume``), ``metrics.csv``,
``learning_curve.png`` and ``config.yaml``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from training.config import AUGMENT_GROUPS, AUGMENT_PRESETS, parse_config, save_config

log = logging.getLogger("training.train")

RUN_FILES = ("best.pt", "last.pt", "train_state.pt", "metrics.csv")


class InputError(ValueError):
    """Input that stops a run before training, with the reason."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; 0 on success, 2 on bad input."""
    args = parse_config(argv)
    from training.distributed import start, stop

    world, device = start(args.device)
    logging.basicConfig(
        level=logging.INFO if world.is_main else logging.WARNING,
        format="%(asctime)s %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        trainer = prepare(args, world, device)
        summary = trainer.fit()
    except InputError as exc:
        print(f"python -m training.train: error: {exc}", file=sys.stderr)
        stop(world)
        return 2
    if world.is_main:
        log.info(
            "done: %d epochs, best validation Dice %s (epoch %d); %s",
            summary["epochs"],
            summary["best_val_dice"],
            summary["best_epoch"],
            args.out / "best.pt",
        )
    stop(world)
    return 0


def prepare(args: argparse.Namespace, world: Any, device: Any) -> Any:
    """Check every input and build the trainer (the model, data, loss and loop)."""
    from training.augment import AugmentConfig, Augmenter
    from training.data.catalog import CatalogError
    from training.data.crops import CropDataset, CropOptions
    from training.data.records import (
        load_records,
        parse_data_spec,
        sampling_weights,
        split_records,
    )
    from training.losses import SegmentationLoss
    from training.trainer import Trainer, TrainerOptions

    _check_run_folder(args)
    model, meta = _model(args)
    try:
        specs = [parse_data_spec(text) for text in args.data]
        records = _only_organs(load_records(specs), args.organ)
        if args.val_data:
            train = records
            val = _only_organs(
                load_records([parse_data_spec(text) for text in args.val_data]), args.organ
            )
        else:
            train, val = split_records(records, args.val_fraction, _split_seed(args), args.fold)
        probabilities = sampling_weights(train, [s.weight for s in specs], args.oversample)
    except (CatalogError, ValueError) as exc:
        raise InputError(str(exc)) from None
    if not train:
        raise InputError("no training images are left after the validation split")
    adapt = _adapt_inputs(args)
    meta["organs"] = sorted({*meta.get("organs", []), *(r.organ for r in train)})
    meta["training"] = _data_summary(args, train, val, meta.get("training", {}))
    if adapt is not None:
        settings, targets = adapt
        record = [(path.resolve().name or str(path), len(images)) for path, images in targets]
        meta["training"]["adaptation"] = settings.record(record)

    try:
        augment_config = AugmentConfig.from_dict(
            {
                **AUGMENT_PRESETS.get(args.augment_preset or "", {}),
                **args.augment,
                **{group: group in args.augment_groups for group in AUGMENT_GROUPS},
            }
        )
        criterion = SegmentationLoss(bce=args.bce, dice=args.dice, focal=args.focal, aux=args.aux)
    except (TypeError, ValueError) as exc:
        raise InputError(str(exc)) from None
    dataset = CropDataset(
        train,
        probabilities,
        CropOptions(meta["tile_size"], meta["pixel_size_um"], ftu_fraction=args.ftu_fraction),
        augment=Augmenter(augment_config),
        seed=args.seed,
    )
    options = TrainerOptions(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        warmup=args.warmup,
        clip_grad=args.clip_grad,
        accumulate=args.accumulate,
        ema=args.ema,
        workers=args.workers,
        val_every=args.val_every,
        val_tta=args.val_tta,
        time_limit_s=args.time_limit * 60 if args.time_limit else None,
        time_clock=args.time_clock,
        lr_schedule=args.lr_schedule,
        keep=args.keep,
        progress=not args.no_progress,
        seed=args.seed,
    )
    import torch

    torch.manual_seed(args.seed)
    if world.is_main:
        args.out.mkdir(parents=True, exist_ok=True)
        args.augment = augment_config.to_dict()
        save_config(args, args.out / "config.yaml")
        log.info(
            "%s at %.3g um/px, %d px crops: %d training and %d validation images on %s",
            model.config["name"],
            meta["pixel_size_um"],
            meta["tile_size"],
            len(train),
            len(val),
            device,
        )
    world.barrier()
    try:
        trainer = Trainer(
            model,
            meta,
            dataset,
            args.samples_per_epoch,
            val,
            criterion,
            options,
            world,
            device,
            args.out,
        )
    except ValueError as exc:
        raise InputError(str(exc)) from None
    if adapt is not None:
        trainer.adaptation = _adaptation(args, trainer, augment_config, *adapt)
    if args.resume:
        try:
            trainer.resume()
        except FileNotFoundError as exc:
            raise InputError(str(exc)) from None
    return trainer


def _adapt_inputs(args: argparse.Namespace) -> tuple[Any, list[Any]] | None:
    """``--adapt``'s settings and each ``--target`` with its images (None without ``--adapt``)."""
    if args.adapt is None:
        return None
    from training.adapt.adaptation import AdaptSettings
    from training.adapt.target import find_targets

    try:
        settings = AdaptSettings(
            args.adapt, args.adapt_weight, args.pseudo_weight, args.pseudo_low, args.pseudo_high
        )
        return settings, find_targets(args.target, args.target_pixel_size)
    except ValueError as exc:  # TargetError is one
        raise InputError(str(exc)) from None


def _adaptation(
    args: argparse.Namespace, trainer: Any, augment: Any, settings: Any, targets: list[Any]
) -> Any:
    """The trainer's adaptation hook: tissue crops of the target images, augmented like the
    training crops but for the groups that need a mask or an organ (mixing, acquisition)."""
    import dataclasses

    from training.adapt.adaptation import Adaptation
    from training.adapt.target import TargetDataset
    from training.augment import Augmenter

    images = [image for _, found in targets for image in found]
    dataset = TargetDataset(
        images,
        trainer.meta["tile_size"],
        trainer.meta["pixel_size_um"],
        augment=Augmenter(dataclasses.replace(augment, domain=False, mix=False)),
        seed=args.seed,
    )
    if trainer.world.is_main:
        log.info("adapting (%s) to %d unlabelled target images", settings.mode, len(images))
    return Adaptation(settings, dataset, trainer)


def _check_run_folder(args: argparse.Namespace) -> None:
    present = [name for name in RUN_FILES if (args.out / name).exists()]
    if args.resume:
        if not (args.out / "last.pt").is_file():
            raise InputError(f"--resume: {args.out} holds no last.pt to continue from")
        return
    if present and not args.overwrite:
        raise InputError(
            f"{args.out} already holds a run ({', '.join(present)}); pass --resume to continue "
            "it or --overwrite to replace it"
        )


def _model(args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    """The model to train and its metadata: from ``--init``, or built fresh."""
    from training.models import CheckpointError, build_model, list_models, load_checkpoint
    from training.models.checkpoint import default_meta

    if args.init is not None:
        if not args.init.is_file():
            raise InputError(f"--init {args.init}: no such checkpoint file")
        try:
            model, meta = load_checkpoint(args.init)
        except (CheckpointError, OSError) as exc:
            raise InputError(f"--init {args.init}: {exc}") from None
        name = model.config["name"]
        if args.model is not None and args.model != name:
            raise InputError(f"--model {args.model} differs from --init's model {name}")
        if args.pretrained is not None:
            raise InputError("--pretrained and --init exclude each other (--init has weights)")
        meta["training"] = {"init": str(args.init), "init_training": meta.get("training", {})}
        if args.tile is not None and args.tile != model.config["input_size"]:
            model = _rebuilt_for_tile(model, args.tile, args.init)
    else:
        if args.model not in list_models():
            raise InputError(f"--model {args.model}: not one of {', '.join(list_models())}")
        if args.pretrained is not None and not args.pretrained.is_file():
            raise InputError(f"--pretrained {args.pretrained}: no such file")
        overrides = {"input_size": args.tile} if args.tile else {}
        try:
            model = build_model(args.model, pretrained=args.pretrained, **overrides)
        except (ValueError, TypeError, OSError, RuntimeError) as exc:
            raise InputError(f"--model {args.model}: {exc}") from None
        meta = default_meta(model)
        meta["organs"] = []  # the organs it is trained on, filled in from the data
        meta["pixel_size_um"] = 0.4 if model.config["input_size"] >= 512 else 1.0
        meta["training"] = {"pretrained": str(args.pretrained) if args.pretrained else None}
    if args.pixel_size is not None:
        if not args.pixel_size > 0:
            raise InputError(f"--pixel-size must be positive; got {args.pixel_size}")
        meta["pixel_size_um"] = float(args.pixel_size)
    if args.tile is not None:
        try:
            model.encoder.check_input_size(args.tile, args.tile)
        except ValueError as exc:
            raise InputError(f"--tile {args.tile}: {exc}") from None
        meta["tile_size"] = int(args.tile)
    return model, meta


def _rebuilt_for_tile(model: Any, tile: int, init: Path) -> Any:
    """``model`` rebuilt for ``tile`` px crops with its own weights, to fine-tune at another tile
    size; ``InputError`` when it cannot take them."""
    from training.models.registry import rebuilt_for_tile

    try:
        return rebuilt_for_tile(model, tile)
    except ValueError as exc:
        raise InputError(
            f"--tile {tile}: the model of --init {init} (built for "
            f"{model.config['input_size']} px) cannot take {tile} px crops with its weights: {exc}"
        ) from None


def _only_organs(records: list[Any], organs: Sequence[str] | None) -> list[Any]:
    """The records of ``organs`` (all when None). The split shuffles each organ on its own, so
    the validation images of an organ are the same with or without this filter."""
    if not organs:
        return records
    kept = [r for r in records if r.organ in organs]
    if not kept:
        found = sorted({r.organ for r in records})
        raise ValueError(f"--organ {' '.join(organs)}: no such image in the data (it has {found})")
    return kept


def _split_seed(args: argparse.Namespace) -> int:
    """The validation split's seed: ``--split-seed``, else ``--seed``."""
    return args.seed if args.split_seed is None else args.split_seed


def _data_summary(
    args: argparse.Namespace, train: list[Any], val: list[Any], previous: dict[str, Any]
) -> dict[str, Any]:
    return {
        **previous,
        "data": [str(text) for text in args.data],
        "train_images": len(train),
        "val_images": len(val),
        "val_ids": sorted(r.id for r in val),
        "augment_groups": list(args.augment_groups),
    }


if __name__ == "__main__":
    raise SystemExit(main())
