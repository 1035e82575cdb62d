"""How long a "Train on corrections" run will be and what it will validate on, before it starts.

The training command's default epoch (2000 crops of 256 px) is sized for a dataset of dozens of
images; a pathologist's first corrections are a few. An epoch here draws
:data:`CROPS_PER_IMAGE` crops' worth of 256 px pixels per training image, never more than the
default epoch, so a few images train for minutes, not an hour. The validation images are counted
with the trainer's own rule (:func:`training.data.records.split_records`: per organ, a fraction of
the images, at least one when the organ has two or more), so a run with no or one validation
image is announced before it starts. No torch, no pandas, no Qt.
"""

from __future__ import annotations

import csv
import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from training.adapt import ADAPT_MODES as _TRAIN_MODES

__all__ = [
    "ADAPT_MODES",
    "ADAPT_STEP_COST",
    "CROPS_PER_IMAGE",
    "RunPlan",
    "check_adaptation",
    "count_split",
    "count_target_images",
    "crops_per_epoch",
    "fitted_tile",
    "flag_value",
    "image_sides_um",
    "own_split",
]

BASE_TILE = 256  # the tile the training command's default epoch (2000 crops) is sized for
CROPS_PER_IMAGE = 100  # 256 px crops per training image and epoch (25 of 512 px)
MIN_CROPS = 8  # one default batch
VAL_FRACTION = 0.2  # the training command's --val-fraction default
# --adapt's modes (training.adapt's, one list) and how the plugin names them
ADAPT_MODES = dict(
    zip(
        _TRAIN_MODES,
        ("align features (grl)", "pseudo-labels", "both (grl and pseudo-labels)"),
        strict=True,
    )
)
# a step with adaptation also runs a batch of target crops through the model (grl: encoder and
# domain classifier, forward and backward; pseudo: the segmenter on its pseudo-labels): about
# twice a plain step. An estimate, not a measurement: the rate shown during the run is measured.
ADAPT_STEP_COST = 2.0
_EPOCH_RATE = re.compile(r"epoch (\d+)/(\d+) done: .*?([\d.]+) samples/s")
# flags after which the plan cannot tell the validation images
_OWN_SPLIT = ("--val-data", "--fold", "--config")


@dataclass(frozen=True)
class RunPlan:
    """A run's size: images, epochs, crops per epoch and, when known, its training time."""

    train_images: int | None  # None: train.csv could not be read (the trainer will say why)
    val_images: int | None  # None: the flags choose the validation images themselves
    epochs: int
    crops: int | None  # per epoch; None: the training command's default
    tile: int | None
    crops_per_s: float | None = None  # the rate the starting checkpoint trained at
    time_limit_min: float | None = None
    target_images: int | None = None  # unlabeled images adapted to (None: not adapting)
    adapt: str | None = None  # --adapt: one of ADAPT_MODES
    # a step's cost against the recorded rate's: ADAPT_STEP_COST when this run adapts and the
    # starting checkpoint did not, its inverse the other way round
    step_cost: float = 1.0
    fitted_from: int | None = None  # the model's own tile, when the images asked for a smaller

    @property
    def minutes(self) -> float | None:
        """Training minutes at the starting checkpoint's recorded rate (validation apart)."""
        if self.crops is None or not self.crops_per_s:
            return self.time_limit_min
        minutes = self.epochs * self.crops / self.crops_per_s / 60 * self.step_cost
        return min(minutes, self.time_limit_min) if self.time_limit_min else minutes

    @property
    def warning(self) -> str:
        """Why the new model's score would mean little (no or one validation image), or ""."""
        if self.val_images is None or self.val_images > 1:
            return ""
        if self.val_images == 0:
            return (
                "no validation image: the new model cannot be scored against the previous one "
                "(export at least two images per organ, or add earlier data)"
            )
        return (
            "only 1 validation image: the before/after Dice rests on one image "
            "(export more images, or add earlier data)"
        )

    def describe(self) -> str:
        """One line for the widget: images, epochs, crops and the expected duration."""
        if self.train_images is None:
            return "the corrections' train.csv cannot be read"
        val = (
            "validation as the flags say"
            if self.val_images is None
            else (f"{self.val_images} validation")
        )
        size = (
            "the training command's default epoch"
            if self.crops is None
            else (f"{self.crops} crops of {self.tile or BASE_TILE} px")
        )
        text = f"{self.train_images} training + {val} image(s); {self.epochs} epoch(s) of {size}"
        if self.fitted_from:
            text += f" (the images are smaller than the model's {self.fitted_from} px tile)"
        if self.adapt:
            count = "?" if self.target_images is None else self.target_images
            text += f"; adapting to {count} unlabeled image(s) ({self.adapt})"
        minutes = self.minutes
        if minutes is None:
            return text + "; duration unknown (set a time limit to bound it)"
        rate = (
            f" at the {self.crops_per_s:g} crops/s it trained at (this machine may be slower)"
            if self.crops_per_s
            else ""
        )
        if self.crops_per_s and self.step_cost != 1:
            rate += f", estimated x{self.step_cost:g} " + (
                "for the target batches"
                if self.step_cost > 1
                else "as it trained with target batches and this run has none"
            )
        return text + f"; about {math.ceil(minutes)} min of training{rate}, plus validation"

    def left(self, line: str) -> str:
        """From the trainer's ``epoch N/M done: ..., R samples/s`` line, the time left at the
        rate measured on this machine, or "" for any other line."""
        match = _EPOCH_RATE.search(line)
        if match is None or self.crops is None:
            return ""
        # the trainer's rate is training crops per second of the whole step: with adaptation it
        # already includes the target batches, so it is not doubled here
        epoch, epochs, rate = int(match[1]), int(match[2]), float(match[3])
        if rate <= 0:
            return ""
        minutes = (epochs - epoch) * self.crops / rate / 60
        return (
            f"epoch {epoch}/{epochs} done at {rate:g} crops/s here: about "
            f"{math.ceil(minutes)} min of training left, plus validation"
        )


def count_split(folders: Sequence[Path], val_fraction: float = VAL_FRACTION) -> tuple[int, int]:
    """``(training, validation)`` image counts of the trainer's split of ``folders``' rows;
    ``OSError``/``ValueError`` when a ``train.csv`` cannot be read."""
    organs: Counter[str] = Counter()
    for folder in folders:
        try:
            with (Path(folder) / "train.csv").open(newline="") as handle:
                organs.update(row.get("organ") or "" for row in csv.DictReader(handle))
        except (UnicodeDecodeError, csv.Error) as exc:
            raise ValueError(f"{folder}/train.csv: {exc}") from None
    val = 0
    for count in organs.values():
        held = round(val_fraction * count)
        if val_fraction > 0 and count >= 2:
            held = min(max(held, 1), count - 1)
        val += held
    return sum(organs.values()) - val, val


def check_adaptation(target: Sequence[Path], adapt: str | None) -> None:
    """``ValueError`` in one line when ``--target target --adapt adapt`` cannot run: an unknown
    mode, a mode without images or images without a mode, or images that do not exist."""
    if adapt is not None and adapt not in ADAPT_MODES:
        raise ValueError(f"unknown adaptation mode {adapt!r} (one of grl, pseudo, both)")
    if adapt and not target:
        raise ValueError(
            f"adapting ({adapt}) needs unlabeled target images: check an open slide or add a "
            "folder, or turn adaptation off"
        )
    if target and not adapt:
        raise ValueError("target images given without an adaptation mode (grl, pseudo, both)")
    missing = [str(p) for p in target if not Path(p).exists()]
    if missing:
        raise ValueError(f"target image(s) not found: {', '.join(missing)}")


def count_target_images(paths: Sequence[Path]) -> int:
    """How many unlabeled images ``--target paths`` names, counted as the trainer finds them
    (``training.adapt.target``): a dataset folder's ``train.csv`` rows (its masks ignored), a
    folder's image and slide files (not hidden, not in subfolders), a file itself;
    ``OSError``/``ValueError`` when a path cannot be read."""
    from training.slides import SLIDE_SUFFIXES

    count = 0
    for path in map(Path, paths):
        table = path / "train.csv"
        if table.is_file():
            try:
                with table.open(newline="") as handle:
                    count += sum(1 for _ in csv.DictReader(handle))
            except (UnicodeDecodeError, csv.Error) as exc:
                raise ValueError(f"{table}: {exc}") from None
        elif path.is_dir():
            count += sum(
                1
                for p in path.iterdir()
                if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in SLIDE_SUFFIXES
            )
        elif path.is_file():
            count += 1
        else:
            raise FileNotFoundError(f"{path} does not exist")
    return count


def image_sides_um(folders: Sequence[Path]) -> list[float]:
    """The shorter side in um of each image of ``folders``' ``train.csv`` rows that states its
    size and pixel size (others are skipped); ``OSError``/``ValueError`` when unreadable."""
    sides = []
    for folder in folders:
        try:
            with (Path(folder) / "train.csv").open(newline="") as handle:
                rows = list(csv.DictReader(handle))
        except (UnicodeDecodeError, csv.Error) as exc:
            raise ValueError(f"{folder}/train.csv: {exc}") from None
        for row in rows:
            try:
                side = min(float(row["img_height"]), float(row["img_width"]))
                side *= float(row["pixel_size"])
            except (KeyError, TypeError, ValueError):
                continue
            if math.isfinite(side) and side > 0:
                sides.append(side)
    return sides


def fitted_tile(tile: int | None, sides_um: Sequence[float], model_um: float | None) -> int | None:
    """:data:`BASE_TILE` when a model's ``tile`` is larger than it and than most training images
    at the model's scale (such crops would be mostly padding, which teaches nothing and costs
    pixels: a 512 px tile on a 269 px image is three quarters padding); else None, the model's
    own. Every model here takes BASE_TILE crops (its registry default)."""
    if not tile or tile <= BASE_TILE or not sides_um or not model_um or model_um <= 0:
        return None
    median_px = sorted(sides_um)[len(sides_um) // 2] / model_um
    return BASE_TILE if median_px < tile else None


def crops_per_epoch(train_images: int | None, tile: int | None, default: int) -> int | None:
    """Crops per epoch for ``train_images`` images on ``tile`` px crops: the default epoch's
    pixels at most, :data:`CROPS_PER_IMAGE` 256 px crops' worth per image; None when the
    command's own default (256 px tiles or less, and no count) is right as it is."""
    scale = (BASE_TILE / tile) ** 2 if tile and tile > BASE_TILE else 1.0
    full = round(default * scale)
    if train_images is None:
        return full if scale < 1 else None
    sized = max(MIN_CROPS, round(CROPS_PER_IMAGE * train_images * scale))
    return None if sized >= full and scale == 1 else min(sized, full)


def flag_value(flags: Sequence[str], name: str) -> str | None:
    """The value of ``--name VALUE`` or ``--name=VALUE`` among ``flags`` (the last wins)."""
    value = None
    for i, flag in enumerate(flags):
        if flag.startswith(f"{name}="):
            value = flag.split("=", 1)[1]
        elif flag == name and i + 1 < len(flags):
            value = flags[i + 1]
    return value


def own_split(flags: Sequence[str]) -> bool:
    """Whether ``flags`` choose the validation images in a way this plan does not follow."""
    return any(flag.split("=")[0] in _OWN_SPLIT for flag in flags)
