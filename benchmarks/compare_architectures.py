"""The architecture comparison of docs/benchmarks.md: every small model under one CPU budget.

Each small architecture trains from scratch with the same data, crops, augmentations and CPU
time: the phantoms of both presets, the real kidney development images (the default model's
training split, drawn 4x) and the 24 real colon training images (drawn 4x), validated on the
default model's 12 real kidney validation images and the 6 colon validation images (3 other
patients). The budget counts this process's CPU time (``--time-clock cpu``, one torch thread,
no loader workers), so runs side by side on a shared machine get the same compute. The planned
epochs fit the budget from a measured training step, so each run's learning-rate schedule ends
near its budget whatever its speed.

    python benchmarks/compare_architectures.py prepare               # kidney train/val folders
    python benchmarks/compare_architectures.py train unext_micro --budget 20
    python benchmarks/compare_architectures.py report                # the table (held-out too)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

DATA = Path("runs/data")
RUNS = Path("runs/arch")
SPLIT_OF = Path("training/models/default/coat_daformer.pt")  # the default model's kidney split
SAMPLES_PER_EPOCH = 800
BATCH = 8
TILE = 256
OVERHEAD = 1.35  # data loading, augmentation and validation on top of the model's steps


def prepare(data: Path) -> None:
    """Split kidney-dev into the default model's kidney training and validation images."""
    from training.evaluate import validation_ids

    val = set(validation_ids(SPLIT_OF))
    rows = pd.read_csv(data / "kidney-dev" / "train.csv", dtype={"id": str})
    for name, part in (
        ("kidney-train49", rows[~rows.id.isin(val)]),
        ("kidney-val12", rows[rows.id.isin(val)]),
    ):
        folder = data / name
        (folder / "train_images").mkdir(parents=True, exist_ok=True)
        for image_id in part.id:
            link = folder / "train_images" / f"{image_id}.tiff"
            if not link.exists():
                link.symlink_to(
                    (data / "kidney-dev" / "train_images" / f"{image_id}.tiff").resolve()
                )
        part.to_csv(folder / "train.csv", index=False)
        print(f"{folder}: {len(part)} images")


def seconds_per_step(name: str, steps: int = 4) -> float:
    """CPU seconds of one training step (batch 8, 256 px, main + auxiliary logits, backward)."""
    import torch

    from training.models import build_model

    torch.set_num_threads(1)
    model = build_model(name, input_size=TILE).train()
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(BATCH, 3, TILE, TILE)
    times = []
    for index in range(steps + 1):
        began = time.process_time()
        main, aux = model.forward_with_aux(x)
        (main.mean() + sum(a.mean() for a in aux)).backward()
        optimiser.step()
        optimiser.zero_grad()
        if index:  # the first step pays for allocation
            times.append(time.process_time() - began)
    return statistics.median(times)


def train(name: str, budget_min: float, runs: Path, data: Path) -> None:
    """Train ``name`` from scratch under ``budget_min`` CPU minutes; log to RUN/train.log."""
    step = seconds_per_step(name)
    steps_per_epoch = SAMPLES_PER_EPOCH // BATCH
    epochs = max(2, int(budget_min * 60 / (step * steps_per_epoch * OVERHEAD)))
    out = runs / name
    out.mkdir(parents=True, exist_ok=True)
    print(f"{name}: {step:.2f} CPU s/step -> {epochs} epochs of {SAMPLES_PER_EPOCH} crops")
    command = [
        sys.executable, "-m", "training.train", "--model", name,
        "--data", str(data / "phantoms-hpa-train"), str(data / "phantoms-hubmap-train"),
        f"{data / 'kidney-train49'}:4", f"{data / 'colon-train'}:4",
        "--val-data", str(data / "kidney-val12"), str(data / "colon-val"),
        "--pixel-size", "1.0", "--tile", str(TILE), "--samples-per-epoch", str(SAMPLES_PER_EPOCH),
        "--batch-size", str(BATCH), "--lr", "1e-3", "--warmup", "0.5", "--epochs", str(epochs),
        "--workers", "0", "--val-every", "2", "--seed", "0", "--no-progress",
        "--time-limit", f"{budget_min:g}", "--time-clock", "cpu", "--device", "cpu",
        "--out", str(out),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    with open(out / "train.log", "a") as log:
        subprocess.run(command, env=env, stdout=log, stderr=subprocess.STDOUT, check=True)


def ms_per_tile(checkpoint: Path, repeats: int = 5) -> float:
    """CPU milliseconds per 256 px tile (batch 8, inference mode, one thread, median)."""
    import torch

    from training.models import load_checkpoint

    torch.set_num_threads(1)
    model, _ = load_checkpoint(checkpoint)
    x = torch.randn(BATCH, 3, TILE, TILE)
    times = []
    with torch.inference_mode():
        model(x)
        for _ in range(repeats):
            began = time.process_time()
            model(x)
            times.append(time.process_time() - began)
    return 1000 * statistics.median(times) / BATCH


def held_out(checkpoint: Path, data: Path, folder: str) -> dict:
    """``training.evaluate`` of ``checkpoint`` on ``data/folder`` (cached beside the run)."""
    out = checkpoint.parent / f"eval-{folder}.json"
    if not out.is_file():
        command = [sys.executable, "-m", "training.evaluate", "--model", str(checkpoint),
                   "--data", str(data / folder), "--out", str(out)]  # fmt: skip
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return json.loads(out.read_text())


def row(run: Path, data: Path) -> dict:
    """The comparison's figures for one run folder."""
    from training.models import read_checkpoint

    best = run / "best.pt"
    payload = read_checkpoint(best)
    training = payload["meta"]["training"]
    params = sum(v.numel() for v in payload["state_dict"].values() if v.is_floating_point())
    metrics = pd.read_csv(run / "metrics.csv").set_index("epoch").loc[training["best_epoch"]]
    kidney, colon = held_out(best, data, "kidney-test"), held_out(best, data, "colon-test")
    return {
        "model": run.name,
        "params_M": round(params / 1e6, 2),
        "ms_per_tile": round(ms_per_tile(best), 1),
        "epochs": f"{training['epochs']}/{training['epochs_planned']}",
        "cpu_min": round(training["seconds"] / 60, 1),
        "val_kidney": round(metrics["val_dice_kidney"], 3),
        "val_crypt": round(metrics["val_dice_largeintestine"], 3),
        "val_stroma": round(metrics["val_background_dice_largeintestine"], 3),
        "test_kidney": kidney["dice"],
        "test_crypt": colon["dice"],
        "test_stroma": colon["background_dice"],
    }


def report(runs: Path, data: Path) -> None:
    """Print (and write to RUNS/report.md) the table of every finished run."""
    rows = [row(run, data) for run in sorted(runs.iterdir()) if (run / "best.pt").is_file()]
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(r[c]) for c in columns) + " |" for r in rows]
    table = "\n".join(lines)
    (runs / "report.md").write_text(table + "\n")
    print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("prepare", "train", "report"))
    parser.add_argument("model", nargs="?", help="a registered small model (train)")
    parser.add_argument("--budget", type=float, default=20, help="CPU minutes per model")
    parser.add_argument("--runs", type=Path, default=RUNS)
    parser.add_argument("--data", type=Path, default=DATA)
    args = parser.parse_args()
    if args.command == "prepare":
        prepare(args.data)
    elif args.command == "train":
        if not args.model:
            parser.error("train needs a model name")
        train(args.model, args.budget, args.runs, args.data)
    else:
        report(args.runs, args.data)


if __name__ == "__main__":
    main()
