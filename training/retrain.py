"""Fine-tune on a pathologist's corrections from the plugin: commands, progress and results.

The "Train on corrections" widget runs ``python -m training.train --init MODEL --data DIR ...``
as a child process (never training in napari's own process), follows its log, then scores the
model used before on the *same* validation images with ``python -m training.evaluate
--split-of RUN/best.pt``, and registers the new model (:mod:`training.models.versions`). This
module is that sequence without Qt (:class:`RetrainJob`, a generator), so it is tested without a
viewer; it imports neither torch nor Qt.

The validation images are the trainer's own split of the training folders (by image id,
stratified by organ, reproducible from ``--seed``). The new model's score is the trainer's
record (its best epoch in ``metrics.csv``, with thresholds and minimum object areas tuned on those
images, so slightly optimistic); the previous model is scored with its own.
"""

from __future__ import annotations

import csv
import functools
import importlib.util
import json
import os
import re
import sys
from collections import Counter
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from training.models.versions import ModelVersion, register
from training.process import ChildProcess
from training.retrain_plan import (
    ADAPT_STEP_COST,
    VAL_FRACTION,
    RunPlan,
    check_adaptation,
    count_split,
    count_target_images,
    crops_per_epoch,
    fitted_tile,
    flag_value,
    image_sides_um,
    own_split,
)

__all__ = [
    "RetrainEvent",
    "RetrainJob",
    "RetrainRequest",
    "RetrainResult",
    "Scores",
    "error_line",
    "evaluate_command",
    "folder_organ",
    "loop_defaults",
    "parse_progress",
    "plan_run",
    "read_scores",
    "start_checkpoint",
    "train_command",
]

CANCELLED = "CANCELLED"  # the marker a cancelled run folder gets
BEFORE = "before.json"  # the previous model's scores, beside the run
TRAIN_SHARE = 0.9  # of the progress bar; the rest is scoring the previous model

_BAR = re.compile(r"epoch (\d+)/(\d+):\s*\d+%\|[^|]*\|\s*(\d+)/(\d+)")
_EPOCH_DONE = re.compile(r"epoch (\d+)/(\d+) done:")
_ERROR = re.compile(r"python -m training\.\w+: error: (.*)")
_SPLIT = re.compile(r"(\d+) training and (\d+) validation images")


@dataclass(frozen=True)
class RetrainRequest:
    """One fine-tuning run: what to start from, on which folders, for how long, where to."""

    corrections: Path  # the exported dataset folder
    init: Path  # a checkpoint (an ensemble manifest cannot be fine-tuned)
    out: Path  # the run folder (new)
    previous: Path | None = None  # the model in use before (scored for "before"); default init
    earlier: tuple[tuple[Path, float], ...] = ()  # earlier dataset folders and their weights
    epochs: int = 4
    time_limit_min: float | None = None
    device: str = "auto"
    extra: tuple[str, ...] = ()  # further flags of python -m training.train
    target: tuple[Path, ...] = ()  # unlabeled images adapted to (--target): folders or files
    adapt: str | None = None  # --adapt: one of ADAPT_MODES, with target only

    def __post_init__(self) -> None:
        check_adaptation(self.target, self.adapt)  # refused before a child starts

    @property
    def data(self) -> list[str]:
        """The ``--data`` arguments: the corrections, then earlier folders (``DIR:WEIGHT``)."""
        earlier = [str(p) if w == 1 else f"{p}:{w:g}" for p, w in self.earlier]
        return [str(self.corrections), *earlier]


@dataclass(frozen=True)
class Scores:
    """Mean per-image validation Dice, overall and per organ, on ``images`` images, and the
    selection score (``training.validation.selection_score``; the Dice where not recorded)."""

    dice: float | None
    organs: dict[str, float] = field(default_factory=dict)
    images: int = 0
    score: float | None = None


@dataclass(frozen=True)
class RetrainEvent:
    """Progress of a run: a line of its log (or a redrawn progress line) and the fraction done."""

    text: str
    fraction: float | None = None
    redraw: bool = False


@dataclass(frozen=True)
class RetrainResult:
    """How a run ended: ``"done"``, ``"failed"`` (with the child's message) or ``"cancelled"``."""

    status: str
    run_dir: Path
    message: str = ""
    after: Scores | None = None
    before: Scores | None = None
    before_note: str = ""  # why there is no "before" score, when there is none
    version: ModelVersion | None = None


def train_command(request: RetrainRequest, python: str = sys.executable) -> list[str]:
    """The ``python -m training.train`` command line of ``request``."""
    argv = [python, "-m", "training.train", "--init", str(request.init), "--data", *request.data]
    argv += ["--out", str(request.out), "--epochs", str(request.epochs)]
    if request.time_limit_min:
        argv += ["--time-limit", f"{request.time_limit_min:g}"]
    if request.adapt:
        argv += ["--target", *map(str, request.target), "--adapt", request.adapt]
    argv += ["--device", request.device, *_run_size(request), *loop_defaults(request)]
    return [*argv, *request.extra]


def loop_defaults(request: RetrainRequest) -> list[str]:
    """The training flags a fine-tune on a few corrections runs with (measured on real colon,
    docs/benchmarks.md, issue 22); the request's own flags come after them, so theirs win, and
    a ``--config`` of the user's sets them itself. Under a time limit the learning rate decays
    through the limit (``--lr-schedule time``: the limit, not the epochs field, ends such a
    run) and the last epoch is kept (``--keep last``: a few validation images cannot tell the
    epochs apart, and chose an early one over the schedule's end); the colour and stain
    augmentation is strong (``--augment-preset strong-color``: the corrections show a few
    patients' stains, the slides it will segment others')."""
    if flag_value(request.extra, "--config") is not None:
        return []
    flags = ["--lr-schedule", "time", "--keep", "last"] if request.time_limit_min else []
    return [*flags, "--augment-preset", "strong-color"]


def plan_run(request: RetrainRequest) -> RunPlan:
    """The size of ``request``'s run: its images, validation images, crops per epoch and the
    training time at the rate the starting checkpoint trained at (see
    :mod:`training.retrain_plan`). A ``--samples-per-epoch`` of the user's own wins."""
    from training.config import build_parser

    flags = request.extra
    tile_flag = flag_value(flags, "--tile")
    tile, rate, adapted, model_um = _trained_at(request.init)
    folders = [request.corrections, *(path for path, _ in request.earlier)]
    fitted = None
    if tile_flag is not None:
        tile = int(tile_flag) if tile_flag.isdigit() else tile
    else:
        try:
            fitted = fitted_tile(tile, image_sides_um(folders), model_um)
        except (OSError, ValueError):
            fitted = None  # the training command says why
    if fitted and tile and rate:
        rate *= (tile / fitted) ** 2  # a step's cost follows its pixels
    fitted_from, tile = (tile, fitted) if fitted else (None, tile)
    fraction = flag_value(flags, "--val-fraction")
    try:
        train, val = count_split(folders, float(fraction) if fraction else VAL_FRACTION)
    except (OSError, ValueError):
        train = val = None
    own = flag_value(flags, "--samples-per-epoch")
    if own is not None:
        crops = int(own) if own.isdigit() else None
    else:
        default = build_parser().get_default("samples_per_epoch")
        crops = crops_per_epoch(train, tile, default)
    try:
        targets = count_target_images(request.target) if request.adapt else None
    except (OSError, ValueError):
        targets = None  # the training command says why
    return RunPlan(
        train_images=train,
        val_images=None if own_split(flags) or train is None else val,
        epochs=request.epochs,
        crops=crops,
        tile=tile,
        crops_per_s=rate,
        time_limit_min=request.time_limit_min,
        target_images=targets,
        adapt=request.adapt,
        step_cost=(ADAPT_STEP_COST if request.adapt else 1) / (ADAPT_STEP_COST if adapted else 1),
        fitted_from=fitted_from,
    )


def _run_size(request: RetrainRequest) -> list[str]:
    """``--tile`` (when the images are smaller than the model's tile) and
    ``--samples-per-epoch`` of the plan (none when the flags name their own, or the command's
    default is right as it is)."""
    plan = plan_run(request)
    flags = ["--tile", str(plan.tile)] if plan.fitted_from else []
    if flag_value(request.extra, "--samples-per-epoch") is None and plan.crops is not None:
        flags += ["--samples-per-epoch", str(plan.crops)]
    return flags


_Trained = tuple[int | None, float | None, bool, float | None]


def _trained_at(checkpoint: Path) -> _Trained:
    """The tile size a checkpoint runs at, the crops per second it trained at (None for what it
    does not record or when it cannot be read: the training command then says why), whether
    it trained with target batches (``--adapt``), which that rate includes, and its um/px."""
    try:
        stat = Path(checkpoint).stat()
    except OSError:
        return None, None, False, None
    return _recorded(str(checkpoint), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=16)
def _recorded(path: str, _mtime_ns: int, _size: int) -> _Trained:
    # cached per file version: the widget re-plans on every edit of its form
    from training.models.checkpoint import CheckpointError, read_checkpoint

    try:
        meta = read_checkpoint(path)["meta"]
    except (CheckpointError, OSError):
        return None, None, False, None
    size, training = meta.get("tile_size"), meta.get("training") or {}
    rate = training.get("samples_per_s")
    rate = float(rate) if isinstance(rate, (int, float)) and rate > 0 else None
    model_um = meta.get("pixel_size_um")
    model_um = float(model_um) if isinstance(model_um, (int, float)) else None
    size = size if isinstance(size, int) else None
    return size, rate, bool(training.get("adaptation")), model_um


def evaluate_command(request: RetrainRequest, python: str = sys.executable) -> list[str]:
    """``python -m training.evaluate`` scoring the previous model on the run's validation
    images (the run's ``best.pt`` records their ids), writing ``RUN/before.json``."""
    folders = [str(request.corrections), *(str(p) for p, _ in request.earlier)]
    model = request.previous or request.init
    return [
        python, "-m", "training.evaluate", "--data", *folders, "--model", str(model),
        "--split-of", str(request.out / "best.pt"), "--device", request.device,
        "--out", str(request.out / BEFORE),
    ]  # fmt: skip


def parse_progress(text: str) -> float | None:
    """The fraction of training done that a line of the trainer's output tells, if any: its
    progress bar (``epoch 2/4:  50%|...| 3/6``) or its ``epoch 2/4 done:`` line."""
    match = _BAR.search(text)
    if match:
        epoch, epochs, done, total = (int(g) for g in match.groups())
        return min(1.0, (epoch - 1 + done / max(total, 1)) / max(epochs, 1))
    match = _EPOCH_DONE.search(text)
    if match:
        epoch, epochs = int(match.group(1)), int(match.group(2))
        return min(1.0, epoch / max(epochs, 1))
    return None


def error_line(lines: Sequence[str], status: int) -> str:
    """What went wrong, in one line: the command's own ``error:`` line (bad input), else the
    last line of a traceback, else the exit status."""
    for line in reversed(lines):
        match = _ERROR.search(line)
        if match:
            return match.group(1).strip()
    for line in reversed(lines):
        if line.strip():
            return line.strip()
    return f"it ended with exit status {status}"


def read_scores(run_dir: Path) -> Scores | None:
    """The best validated epoch's scores from ``RUN/metrics.csv``; ``None`` without any."""
    from training.data.catalog import ORGANS  # pandas: not at the widget's import

    path = Path(run_dir) / "metrics.csv"
    if not path.is_file():
        return None
    with path.open(newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if _number(r.get("val_dice")) is not None]
    if not rows:
        return None

    def score(row: dict[str, str]) -> float:  # a run from before selection scores: its Dice
        value = _number(row.get("val_score"))
        return _number(row["val_dice"]) if value is None else value

    # as the trainer chose best.pt: the first of equal scores, or the last epoch (--keep last)
    best = rows[-1] if _kept_last(Path(run_dir)) else max(rows, key=score)
    organs = {
        organ: value
        for organ in ORGANS
        if (value := _number(best.get(f"val_dice_{organ}"))) is not None
    }
    return Scores(_number(best["val_dice"]), organs, score=score(best))


def _kept_last(run_dir: Path) -> bool:
    """Whether the run kept its last validated epoch as best.pt (its ``config.yaml``)."""
    import yaml

    try:
        config = yaml.safe_load((run_dir / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return False
    return isinstance(config, dict) and config.get("keep") == "last"


def folder_organ(folder: Path) -> str | None:
    """The most common organ of a dataset folder's ``train.csv`` (``None`` if unreadable)."""
    try:
        with (Path(folder) / "train.csv").open(newline="") as handle:
            organs = Counter(row.get("organ") for row in csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error):
        return None
    organs.pop(None, None)
    return organs.most_common(1)[0][0] if organs else None


def start_checkpoint(model: Path, organ: str | None) -> tuple[Path, str]:
    """The checkpoint to fine-tune for ``model``, and a note when it is not ``model`` itself.

    A checkpoint is itself. An ensemble manifest cannot be fine-tuned as a whole: its member for
    ``organ`` is (a specialist for the organ first, else the heaviest general member).
    ``ValueError`` when the manifest cannot be read or names no member.
    """
    model = Path(model)
    if model.suffix.lower() not in (".yaml", ".yml", ".json"):
        return model, ""
    try:
        text = model.read_text()
        if model.suffix.lower() == ".json":
            manifest = json.loads(text)
        else:
            import yaml

            manifest = yaml.safe_load(text)
        members = [m for m in manifest["members"] if isinstance(m, dict) and "checkpoint" in m]
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise ValueError(f"{model.name}: not a readable ensemble manifest ({exc})") from None
    if not members:
        raise ValueError(f"{model.name}: the manifest lists no member checkpoint")
    specialists = [m for m in members if organ and organ in (m.get("organs") or ())]
    general = [m for m in members if not m.get("organs")]
    pool = specialists or general or members
    chosen = max(pool, key=lambda m: float(m.get("weight", 1.0)))  # the first of equals
    path = (model.parent / chosen["checkpoint"]).resolve()
    for_organ = f" for {organ}" if organ else ""
    note = (
        f"{model.name} is an ensemble, which cannot be fine-tuned as a whole: its member "
        f"{path.name}{for_organ} is the starting point (choose a checkpoint to start from "
        "another)"
    )
    return path, note


class RetrainJob:
    """Train, score the previous model, register: a generator of :class:`RetrainEvent` that
    returns a :class:`RetrainResult`. :meth:`cancel` (from any thread) stops the child."""

    def __init__(self, request: RetrainRequest, models_dir: Path | None = None) -> None:
        self.request, self.models_dir = request, models_dir
        self._child: ChildProcess | None = None
        self.cancelled = False

    def cancel(self) -> None:
        """Stop the running child and its children; the run folder stays as they left it."""
        self.cancelled = True
        if self._child is not None:
            self._child.stop()

    def run(self) -> Generator[RetrainEvent, None, RetrainResult]:
        """Run the whole sequence (see the module's docstring)."""
        request, out = self.request, self.request.out
        yield RetrainEvent("$ " + " ".join(train_command(request)), 0.0)
        lines: list[str] = []
        status = yield from self._child_run(train_command(request), lines, TRAIN_SHARE)
        if self.cancelled:
            return self._cancelled()
        if status != 0:
            return RetrainResult("failed", out, message=error_line(lines, status))
        after = read_scores(out)
        val_images = _val_images(lines)
        before, note = None, "no validation images (too few images per organ to hold one out)"
        if after is not None:
            after = Scores(after.dice, after.organs, val_images, after.score)
            yield RetrainEvent("scoring the previous model on the same validation images", 0.9)
            lines = []
            status = yield from self._child_run(evaluate_command(request), lines, None)
            if self.cancelled:
                return self._cancelled()
            before, note = _before_scores(out / BEFORE, status, lines)
        version = ModelVersion(
            path=str(out / "best.pt"),
            created_at=datetime.now().isoformat(timespec="seconds"),
            init=str(request.init),
            data=request.data,
            best_val_dice=None if after is None else after.dice,
            before_val_dice=None if before is None else before.dice,
            best_val_score=None if after is None else after.score,
            before_val_score=None if before is None else before.score,
            previous=str(request.previous or request.init),
            val_images=val_images,
            epochs=request.epochs,
            adapt=request.adapt,
            target_images=_target_images(out / "best.pt", request),
        )
        register(version, self.models_dir)
        yield RetrainEvent("done", 1.0)
        return RetrainResult("done", out, after=after, before=before, before_note=note,
                             version=version)  # fmt: skip

    def _child_run(
        self, argv: list[str], lines: list[str], share: float | None
    ) -> Generator[RetrainEvent, None, int]:
        if self.cancelled:
            return -1
        self._child = ChildProcess(argv, env={"PYTHONPATH": _python_path()})
        if self.cancelled:  # cancelled while it started
            self._child.stop()
        for piece in self._child.output():
            if not piece.redraw:
                lines.append(piece.text)
            done = parse_progress(piece.text) if share is not None else None
            yield RetrainEvent(piece.text, None if done is None else done * share, piece.redraw)
        status = self._child.wait()
        self._child = None
        return status

    def _cancelled(self) -> RetrainResult:
        out = self.request.out
        if out.is_dir():
            stamp = datetime.now().isoformat(timespec="seconds")
            (out / CANCELLED).write_text(f"cancelled from napari-ftu at {stamp}\n")
        return RetrainResult("cancelled", out, message="cancelled")


def _before_scores(path: Path, status: int, lines: list[str]) -> tuple[Scores | None, str]:
    if status != 0:
        return None, "the previous model could not be scored: " + error_line(lines, status)
    try:
        summary = json.loads(path.read_text())
        organs, images = dict(summary.get("organ", {})), summary["images"]
        return Scores(summary["dice"], organs, images, summary.get("score", summary["dice"])), ""
    except (OSError, ValueError, KeyError) as exc:
        return None, f"the previous model's scores cannot be read: {exc}"


def _target_images(checkpoint: Path, request: RetrainRequest) -> int | None:
    """The unlabeled images the run adapted to: the checkpoint's record of them (the trainer's
    ``meta.training.adaptation.targets``), else the count of ``request.target``; None when the
    run did not adapt."""
    from training.models.checkpoint import CheckpointError, read_checkpoint

    if not request.adapt:
        return None
    try:
        record = read_checkpoint(checkpoint)["meta"].get("training", {}).get("adaptation")
        return sum(int(target["images"]) for target in record["targets"])
    except (CheckpointError, OSError, AttributeError, KeyError, TypeError, ValueError):
        pass  # a trainer that does not record it
    try:
        return count_target_images(request.target)
    except (OSError, ValueError):
        return None


def _val_images(lines: Sequence[str]) -> int:
    for line in lines:
        match = _SPLIT.search(line)
        if match:
            return int(match.group(2))
    return 0


def _number(text: str | None) -> float | None:
    try:
        value = float(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return value if value == value else None  # NaN: not validated that epoch


def _python_path() -> str:
    """PYTHONPATH for a child that must import this very ``training`` package."""
    root = str(Path(importlib.util.find_spec("training").origin).parent.parent)
    return os.pathsep.join([root, *filter(None, [os.environ.get("PYTHONPATH")])])
