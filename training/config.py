"""The training command's configuration: argparse groups plus an optional YAML ``--config``.

As in timm's ``train.py``: the YAML file sets defaults, flags on the command line win, and the
resolved configuration is saved beside the run's outputs (``config.yaml``), so a run can be
repeated with ``--config RUN_DIR/config.yaml``. Augmentation strengths, too many for flags,
live under the YAML key ``augment`` (the fields of ``training.augment.AugmentConfig``).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from training.adapt import ADAPT_MODES
from training.data.catalog import ORGANS
from training.slides import PLAUSIBLE_UM_PER_PX

__all__ = ["AUGMENT_GROUPS", "AUGMENT_PRESETS", "build_parser", "parse_config", "save_config"]

AUGMENT_GROUPS = ("geometric", "color", "stain", "domain", "mix")
# named sets of augmentation strengths (--augment-preset; a config's ``augment`` settings win).
# "strong-color", for a fine-tune on a few patients' slides whose stain other patients' or
# labs' slides do not share: HED jitter near Tellez et al. 2018's "strong" setting and wider
# hue/saturation/value shifts, each drawn more often
AUGMENT_PRESETS: dict[str, dict[str, float]] = {
    "none": {},  # the trainer's own strengths (turns a loop's default preset off)
    "strong-color": {
        "stain_p": 0.8,
        "stain_scale": 0.25,
        "stain_shift": 0.1,
        "hsv_p": 0.8,
        "hue": 15.0,
        "saturation": 30.0,
        "value": 15.0,
    },
}


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``python -m training.train``."""
    parser = argparse.ArgumentParser(
        prog="python -m training.train",
        description="Train or fine-tune an FTU segmentation model on dataset folders "
        "(train.csv with RLE masks + train_images/, the competition's layout).",
    )
    parser.add_argument("--config", type=Path, help="YAML file of defaults (flags win)")

    data = parser.add_argument_group("data")
    data.add_argument(
        "--data",
        nargs="+",
        metavar="DIR[:WEIGHT]",
        help="dataset folders; WEIGHT (default 1) sets how often a folder's images are drawn",
    )
    data.add_argument("--val-fraction", type=float, default=0.2, help="per organ, by image id")
    data.add_argument("--fold", type=int, help="validate on this value of a 'fold' column")
    data.add_argument(
        "--split-seed",
        type=int,
        help="seed of the validation split (default: --seed); keep a parent run's split when "
        "fine-tuning with another --seed",
    )
    data.add_argument(
        "--val-data",
        nargs="+",
        metavar="DIR",
        help="validate on these folders instead of a split of --data",
    )
    data.add_argument(
        "--oversample",
        nargs="*",
        default=["lung=5"],
        metavar="ORGAN=FACTOR",
        help="draw an organ's images FACTOR times as often (the seeds: lung=5)",
    )
    data.add_argument(
        "--organ",
        nargs="+",
        choices=ORGANS,
        metavar="ORGAN",
        help="train and validate on these organs' images only (an organ specialist); their "
        "validation images stay those of a run without it",
    )
    data.add_argument("--samples-per-epoch", type=int, default=2000)
    data.add_argument("--ftu-fraction", type=float, default=0.6, help="crops centred on an FTU")
    data.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    data.add_argument(
        "--augment-groups",
        nargs="*",
        default=list(AUGMENT_GROUPS),
        choices=AUGMENT_GROUPS,
        help="augmentation groups to use (domain: pixel-size and thickness adaptation; "
        "mix: CutMix and CutOut); none for no augmentation",
    )
    data.add_argument(
        "--augment-preset",
        choices=sorted(AUGMENT_PRESETS),
        help="a named set of augmentation strengths (strong-color: the colour and stain "
        "variation of other patients and labs; a config's 'augment' settings win)",
    )

    adapt = parser.add_argument_group(
        "adaptation", "adapt to a lab's unlabelled images (both flags together)"
    )
    adapt.add_argument(
        "--target",
        nargs="+",
        type=Path,
        metavar="PATH",
        help="unlabelled target images: folders of images or slides, image or slide files, or "
        "dataset folders (their masks are ignored)",
    )
    adapt.add_argument(
        "--adapt",
        choices=ADAPT_MODES,
        help="grl: domain-adversarial features (gradient reversal); pseudo: self-training on "
        "confident pseudo-labels; both",
    )
    adapt.add_argument(
        "--target-pixel-size",
        type=float,
        metavar="UM",
        help="um/px of target images whose files carry no pixel size",
    )
    adapt.add_argument(
        "--adapt-weight",
        type=float,
        default=0.1,
        help="grl: the gradient reversal's strength at the end of its ramp",
    )
    adapt.add_argument(
        "--pseudo-weight", type=float, default=1.0, help="pseudo: weight of the target loss"
    )
    adapt.add_argument(
        "--pseudo-high", type=float, default=0.9, help="pseudo: probability >= this is FTU"
    )
    adapt.add_argument(
        "--pseudo-low", type=float, default=0.1, help="pseudo: probability <= this is background"
    )

    model = parser.add_argument_group("model")
    model.add_argument("--model", help="a registered model name (see training.models)")
    model.add_argument("--init", type=Path, help="checkpoint to fine-tune (human-in-the-loop)")
    model.add_argument("--pretrained", type=Path, help="local ImageNet weights for the encoder")
    model.add_argument(
        "--pixel-size",
        type=float,
        help="um/px the model works at (default: --init's, else 0.4 for full models, "
        "1.0 for small ones)",
    )
    model.add_argument("--tile", type=int, help="crop side in pixels (default: the model's)")

    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--epochs", type=int, default=10)
    optim.add_argument("--batch-size", type=int, default=8)
    optim.add_argument("--lr", type=float, default=5e-4)
    optim.add_argument("--weight-decay", type=float, default=1e-2)
    optim.add_argument(
        "--lr-schedule",
        choices=("epochs", "time"),
        default="epochs",
        help="the cosine decay runs through --epochs, or (time) through --time-limit when the "
        "limit comes first, so a run the limit stops still ends at a low learning rate",
    )
    optim.add_argument(
        "--keep",
        choices=("best", "last"),
        default="best",
        help="the epoch best.pt holds: the best validated one, or the last (when a few "
        "validation images cannot tell epochs apart and the schedule ends low)",
    )
    optim.add_argument("--warmup", type=float, default=0.5, help="warm-up length in epochs")
    optim.add_argument("--clip-grad", type=float, default=1.0, help="max gradient norm; 0: off")
    optim.add_argument("--accumulate", type=int, default=1, help="batches per optimiser step")
    optim.add_argument("--ema", type=float, default=0.0, help="EMA decay of weights; 0: off")
    optim.add_argument("--seed", type=int, default=0)

    loss = parser.add_argument_group("loss weights")
    loss.add_argument("--bce", type=float, default=1.0)
    loss.add_argument("--dice", type=float, default=1.0)
    loss.add_argument("--focal", type=float, default=0.0)
    loss.add_argument("--aux", type=float, default=0.4, help="deep-supervision losses")

    run = parser.add_argument_group("run")
    run.add_argument("--out", type=Path, help="run folder for checkpoints and metrics")
    run.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    run.add_argument("--resume", action="store_true", help="continue the run in --out")
    run.add_argument("--overwrite", action="store_true", help="replace a finished run in --out")
    run.add_argument("--time-limit", type=float, help="minutes; stop, validate and save after")
    run.add_argument(
        "--time-clock",
        choices=("wall", "cpu"),
        default="wall",
        help="what --time-limit counts: wall-clock time, or this process's CPU time (fair "
        "budgets on a shared machine; use --workers 0 so data loading is counted too)",
    )
    run.add_argument("--val-every", type=int, default=1, help="validate every N epochs")
    run.add_argument("--val-tta", type=int, default=1, choices=(1, 4, 8))
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def parse_config(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse flags over the defaults of ``--config``; ``augment`` holds YAML-only strengths."""
    parser = build_parser()
    first, _ = parser.parse_known_args(argv)
    augment: dict[str, Any] = {}
    if first.config is not None:
        defaults = _read_yaml(first.config, parser)
        augment = defaults.pop("augment", None) or {}
        if not isinstance(augment, dict):
            parser.error(f"{first.config}: 'augment' must be a mapping of strengths")
        known = {action.dest for action in parser._actions}
        unknown = sorted(set(defaults) - known)
        if unknown:
            parser.error(f"{first.config}: unknown setting(s) {', '.join(unknown)}")
        parser.set_defaults(**defaults)
    args = parser.parse_args(argv)
    args.augment = augment
    if not args.data:
        parser.error("--data is required (on the command line or in --config)")
    if args.out is None:
        parser.error("--out is required (on the command line or in --config)")
    if args.model is None and args.init is None:
        parser.error("name a model with --model, or a checkpoint to fine-tune with --init")
    args.oversample = _organ_factors(args.oversample, parser)
    for name in ("epochs", "batch_size", "samples_per_epoch", "accumulate", "val_every"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.workers < 0:
        parser.error("--workers must be 0 or more")
    if args.time_limit is not None and not args.time_limit > 0:
        parser.error("--time-limit must be positive")
    if bool(args.target) != (args.adapt is not None):
        given, missing = ("--target", "--adapt") if args.target else ("--adapt", "--target")
        modes = ",".join(ADAPT_MODES)
        parser.error(f"{given} needs {missing} (--target PATH... --adapt {{{modes}}})")
    for name, low, high, bounds in NUMBER_BOUNDS:
        value = getattr(args, name)
        # also a value from --config, which argparse types never see; NaN is never inside
        if value is not None and not low <= value <= high:
            parser.error(f"--{name.replace('_', '-')} must be {bounds}; got {value}")
    return args


BELOW_ONE = math.nextafter(1.0, 0.0)
# (setting, lowest, highest, in words): checked before any work, since a NaN learning rate
# trains silently to nothing and a pixel size a checkpoint refuses fails only at the first save
NUMBER_BOUNDS = [
    ("val_fraction", 0.0, BELOW_ONE, "in [0, 1)"),
    ("ftu_fraction", 0.0, 1.0, "in [0, 1]"),
    ("pixel_size", *PLAUSIBLE_UM_PER_PX, "{:g} to {:g} um/px".format(*PLAUSIBLE_UM_PER_PX)),
    ("tile", 32, 4096, "32 to 4096 px"),
    ("lr", math.ulp(0.0), 10.0, "a positive number up to 10"),
    ("ema", 0.0, BELOW_ONE, "in [0, 1)"),
    ("target_pixel_size", *PLAUSIBLE_UM_PER_PX, "{:g} to {:g} um/px".format(*PLAUSIBLE_UM_PER_PX)),
    ("pseudo_low", 0.0, 1.0, "in [0, 1]"),
    ("pseudo_high", 0.0, 1.0, "in [0, 1]"),
    *(
        (name, 0.0, sys.float_info.max, "a finite number >= 0")
        for name in (
            *("weight_decay", "warmup", "clip_grad", "bce", "dice", "focal", "aux"),
            *("adapt_weight", "pseudo_weight"),
        )
    ),
]


def save_config(args: argparse.Namespace, path: Path) -> None:
    """Write the resolved configuration as YAML (paths as text)."""
    from training.atomic import atomic_path

    plain = {
        key: _plain(value) for key, value in sorted(vars(args).items()) if key not in ("config",)
    }
    with atomic_path(path) as tmp:
        tmp.write_text(yaml.safe_dump(plain, sort_keys=False))


def _read_yaml(path: Path, parser: argparse.ArgumentParser) -> dict[str, Any]:
    try:
        loaded = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        parser.error(f"cannot read --config {path}: {exc.strerror}")
    except yaml.YAMLError as exc:
        parser.error(f"--config {path} is not valid YAML: {exc}")
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        parser.error(f"--config {path} must be a mapping of settings")
    return {str(key).replace("-", "_"): value for key, value in loaded.items()}


def _organ_factors(items: Any, parser: argparse.ArgumentParser) -> dict[str, float]:
    if isinstance(items, dict):
        items = [f"{key}={value}" for key, value in items.items()]
    factors = {}
    for item in items or []:
        organ, sep, value = str(item).partition("=")
        if not sep or organ not in ORGANS:
            parser.error(f"--oversample takes ORGAN=FACTOR with an organ among {ORGANS}; {item}")
        try:
            factors[organ] = float(value)
        except ValueError:
            parser.error(f"--oversample {item}: FACTOR must be a number")
        if not factors[organ] >= 0:
            parser.error(f"--oversample {item}: FACTOR must be 0 or more")
    return factors


def _plain(value: Any) -> Any:
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value
