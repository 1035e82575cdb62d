"""Per-epoch metrics of a training run: ``metrics.csv`` and a learning-curve PNG."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from training.atomic import atomic_path

__all__ = ["write_curve", "write_metrics"]


def write_metrics(rows: Sequence[dict[str, Any]], path: Path) -> None:
    """Write one row per epoch (columns: the union of the rows' keys), replacing the file."""
    frame = pd.DataFrame(list(rows))
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False, float_format="%.6g")


def write_curve(rows: Sequence[dict[str, Any]], path: Path, title: str = "") -> None:
    """Training loss and validation Dice (overall and per organ) against the epoch."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    frame = pd.DataFrame(list(rows))
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    left.plot(frame["epoch"], frame["loss"], marker="o", label="training loss")
    left.set_xlabel("epoch")
    left.set_ylabel("loss")
    left.legend()
    dice_columns = [c for c in frame.columns if c.startswith("val_dice")]
    for column in dice_columns:
        values = frame[["epoch", column]].dropna()
        width = 2.5 if column == "val_dice" else 1.0
        label = "mean" if column == "val_dice" else column.removeprefix("val_dice_")
        right.plot(values["epoch"], values[column], marker="o", linewidth=width, label=label)
    right.set_xlabel("epoch")
    right.set_ylabel("validation Dice (per image, mean)")
    right.set_ylim(0, 1)
    if dice_columns:
        right.legend(fontsize="small")
    for axis in (left, right):
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    figure.suptitle(title)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100)
    plt.close(figure)
