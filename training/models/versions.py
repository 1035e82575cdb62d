"""The models a user trained: a small registry in a models directory (no torch, no Qt).

Every successful "Train on corrections" run is registered in ``<models dir>/versions.json``
with its checkpoint, when it was made, the model it started from, its data and its validation
Dice. The models directory is ``$NAPARI_FTU_MODELS``, else ``$XDG_DATA_HOME/napari-ftu/models``
(``~/.local/share/napari-ftu/models``). An entry whose checkpoint is gone stays listed and says
so (:attr:`ModelVersion.missing`); it is never offered as a model to use.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime
from pathlib import Path
from typing import Any

from training.atomic import atomic_path, exclusive_lock

__all__ = [
    "MODELS_ENV",
    "ModelVersion",
    "VersionsError",
    "adapted",
    "available_models",
    "describe",
    "list_versions",
    "models_dir",
    "next_run_dir",
    "register",
    "why_not_selected",
]

MODELS_ENV = "NAPARI_FTU_MODELS"
REGISTRY = "versions.json"
_RUN_NAME = re.compile(r"^v(\d+)-")


class VersionsError(ValueError):
    """A registry file that cannot be read, with the reason."""


@dataclass(frozen=True)
class ModelVersion:
    """One trained model: its checkpoint and where it came from."""

    path: str  # the checkpoint (the run's best.pt)
    created_at: str  # ISO 8601, local time, to the second
    init: str  # the checkpoint it was fine-tuned from
    data: list[str] = field(default_factory=list)  # the --data folders (DIR or DIR:WEIGHT)
    best_val_dice: float | None = None  # the trainer's best validation Dice (None: no split)
    before_val_dice: float | None = None  # the previous model's, on the same validation images
    previous: str = ""  # the model in use before (a checkpoint or an ensemble manifest)
    val_images: int = 0
    epochs: int = 0
    # the selection score (training.validation.selection_score: the FTU Dice, on colon its mean
    # with the background Dice) of each, where known; compared instead of the Dice values
    best_val_score: float | None = None
    before_val_score: float | None = None
    # unsupervised adaptation to unlabeled images (--adapt, --target), None when not adapted;
    # the image count is the checkpoint's record where it has one
    adapt: str | None = None
    target_images: int | None = None

    @property
    def missing(self) -> bool:
        """Whether the checkpoint file is gone (the entry is then shown, never used)."""
        return not Path(self.path).is_file()

    @property
    def label(self) -> str:
        """How the model is named in lists, e.g. ``trained 2026-11-22 14:03 (val Dice 0.83)``."""
        when = self.created_at.replace("T", " ")[:16]
        score = self.best_val_dice
        dice = "no validation" if score is None else f"val Dice {score:.2f}"
        return f"trained {when} ({dice})"


def models_dir() -> Path:
    """The directory trained models and their registry go to."""
    named = os.environ.get(MODELS_ENV)
    if named:
        return Path(named).expanduser()
    data_home = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(data_home) / "napari-ftu" / "models"


def next_run_dir(directory: Path | None = None, now: datetime | None = None) -> Path:
    """A new versioned run folder, ``v<N>-<YYYYMMDD-HHMMSS>``, one number past any there."""
    directory = models_dir() if directory is None else Path(directory)
    numbers = [0]
    if directory.is_dir():
        for child in directory.iterdir():
            match = _RUN_NAME.match(child.name)
            if match:
                numbers.append(int(match.group(1)))
    stamp = (now or datetime.now()).strftime("%Y%m%d-%H%M%S")
    return directory / f"v{max(numbers) + 1}-{stamp}"


def list_versions(directory: Path | None = None) -> list[ModelVersion]:
    """The registered models, oldest first; ``VersionsError`` if the registry is damaged."""
    path = (models_dir() if directory is None else Path(directory)) / REGISTRY
    if not path.is_file():
        return []
    try:
        loaded = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise VersionsError(f"{path} cannot be read: {exc}") from None
    entries = loaded.get("versions") if isinstance(loaded, dict) else None
    if not isinstance(entries, list):
        raise VersionsError(f"{path} holds no list of versions")
    known = {f.name for f in fields(ModelVersion)}
    versions = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict) or not {"path", "created_at", "init"} <= set(entry):
            raise VersionsError(f"{path}: entry {index} lacks path, created_at or init")
        versions.append(ModelVersion(**{k: v for k, v in entry.items() if k in known}))
    return versions


def register(version: ModelVersion, directory: Path | None = None) -> ModelVersion:
    """Add ``version`` to the registry (written atomically; writers take turns)."""
    directory = models_dir() if directory is None else Path(directory)
    path = directory / REGISTRY
    with exclusive_lock(directory / f".{REGISTRY}.lock"):
        entries = [asdict(v) for v in list_versions(directory)]
        entries.append(asdict(version))
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps({"versions": entries}, indent=2) + "\n")
    return version


def available_models(versions: list[ModelVersion]) -> dict[str, Path]:
    """Label -> checkpoint of the versions whose file exists, newest last; labels made unique."""
    models: dict[str, Path] = {}
    for version in versions:
        if version.missing:
            continue
        label = version.label
        if label in models:  # two runs in the same minute with the same score
            label = f"{label} [{Path(version.path).parent.name}]"
        models[label] = Path(version.path)
    return models


def describe(version: ModelVersion) -> dict[str, Any]:
    """A row for a table of versions: date, data, Dice before and after, and the file."""

    def dice(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    return {
        "created": version.created_at.replace("T", " ")[:16],
        "data": ", ".join(Path(d).name or d for d in version.data),
        "val Dice": dice(version.best_val_dice),
        "before": dice(version.before_val_dice),
        "started from": Path(version.init).name,
        "adapted": adapted(version),
        "checkpoint": "missing: " + version.path if version.missing else version.path,
    }


def adapted(version: ModelVersion) -> str:
    """How ``version`` was adapted, e.g. ``grl, 12 unlabeled images``, or "-" when it was not."""
    if not version.adapt:
        return "-"
    count = (
        "? unlabeled images"
        if version.target_images is None
        else (
            f"{version.target_images} unlabeled image" + ("" if version.target_images == 1 else "s")
        )
    )
    return f"{version.adapt}, {count}"


def why_not_selected(version: ModelVersion) -> str:
    """Why ``version`` must not replace the model in use on its own, or "" when it may: only a
    model that scored at least as well as the previous one on the same validation images is
    selected automatically; any other is offered, and this says why it was not selected."""
    after, before, name = version.best_val_dice, version.before_val_dice, "val Dice"
    scores = (version.best_val_score, version.before_val_score)
    if None not in scores and scores != (after, before):  # colon: not fooled by dense crypts
        (after, before), name = scores, "val score (mean of FTU and background Dice)"
    if after is None:
        return "not selected: it was not validated (no validation image), so it may be worse"
    if before is None:
        return (
            f"not selected: {name} {after:.3f}, but the previous model could not be scored "
            "on the same images to compare"
        )
    if after < before:
        return (
            f"not selected: {name} {after:.3f} is below the previous model's {before:.3f} "
            f"on the same {version.val_images} validation image(s)"
        )
    return ""
