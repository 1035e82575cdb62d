"""The human-in-the-loop figure through the plugin's own path, on real tissue.

A model trained without any real image (HPA phantoms with the seeds' adaptations:
runs/domain/adapted/best.pt from benchmarks/bench_domain_shift.sh) segments 10 real kidney
images (runs/data/kidney-hitl10) in "Segment FTUs"; each mask is corrected in its layer to the
experts' outlines (the pathologist's work, simulated: the expert mask at the working scale
painted over the model's); "Export corrections" writes the 10 rows; "Train on corrections"
fine-tunes the model in a child process for at most 15 minutes on this CPU; both models are
then scored on the 24 held-out real kidney images (runs/data/kidney-test).

xvfb-run -a python benchmarks/bench_hitl_gui.py [--out runs/hitl-gui]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import timm  # noqa: F401  (before any viewer: see DESIGN.md's platform traps)
import torch  # noqa: F401

FLAGS = (
    "--samples-per-epoch 1000 --batch-size 8 --lr 5e-4 --warmup 0.2 --workers 1 "
    "--val-every 3 --seed 0 --no-progress"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/hitl-gui"))
    parser.add_argument("--start", type=Path, default=Path("runs/domain/adapted/best.pt"))
    parser.add_argument("--data", type=Path, default=Path("runs/data"))
    parser.add_argument("--minutes", type=float, default=15)
    args = parser.parse_args()
    if not args.start.is_file():
        sys.exit(f"{args.start} is missing: run benchmarks/bench_domain_shift.sh first")
    if args.out.exists():
        shutil.rmtree(args.out)
    slides = copy_slides(args.data / "kidney-hitl10", args.out / "slides")

    import napari
    from qtpy.QtWidgets import QApplication

    from napari_ftu._export_widget import ExportWidget
    from napari_ftu._segment_widget import SegmentWidget
    from napari_ftu._train_widget import TrainWidget

    app = QApplication.instance() or QApplication([])
    viewer = napari.Viewer(show=False)
    segment = SegmentWidget(viewer)
    viewer.window.add_dock_widget(segment, name="Segment FTUs")  # Train starts from its model
    segment.add_model(args.start, "phantom-only")
    exporter = ExportWidget(viewer)
    exporter.folder.value = args.out / "corrections"
    timings: dict[str, float] = {}
    begin = time.perf_counter()
    for path, truth in slides:
        (layer,) = viewer.open(str(path), plugin="napari-ftu")
        segment.image.value, segment.organ.value = layer.name, "kidney"
        segment.start()
        wait(app, lambda: not segment.running)
        mask = viewer.layers[f"{layer.name} FTU mask"]
        correct(mask, truth)
        exporter.mask.value = mask.name
        exporter.export()
        wait(app, lambda: not exporter.running)
        viewer.layers.clear()
    timings["segment_correct_export_seconds"] = round(time.perf_counter() - begin, 1)

    trainer = TrainWidget(viewer)
    trainer.corrections.value = args.out / "corrections"
    trainer.out.value = args.out / "run"
    trainer.epochs.value, trainer.device.value = 12, "cpu"
    trainer.time_limit.value = args.minutes
    trainer.flags.value = FLAGS
    begin = time.perf_counter()
    trainer.start()
    wait(app, lambda: not trainer.running)
    timings["train_on_corrections_seconds"] = round(time.perf_counter() - begin, 1)
    checkpoint = args.out / "run" / "best.pt"
    if not checkpoint.is_file():
        sys.exit(f"training failed:\n{trainer.log.value}")
    viewer.close()

    scores = {
        "before": evaluate(args.data / "kidney-test", args.start, args.out / "eval-before.json"),
        "after": evaluate(args.data / "kidney-test", checkpoint, args.out / "eval-after.json"),
    }
    report = {**timings, **scores, "gain": round(scores["after"] - scores["before"], 4)}
    (args.out / "report.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


def copy_slides(dataset: Path, folder: Path) -> list[tuple[Path, np.ndarray]]:
    """The dataset's images copied out of the shared folder (each gets a mask store beside it),
    with their expert masks."""
    from training.data.catalog import image_path, read_catalog
    from training.data.rle import decode

    folder.mkdir(parents=True)
    slides = []
    for row in read_catalog(dataset).itertuples():
        source = image_path(dataset, row.id)
        target = folder / source.name
        shutil.copyfile(source, target)
        slides.append((target, decode(row.rle, (row.img_height, row.img_width))))
    return slides


def correct(mask, truth: np.ndarray) -> None:
    """Paint the expert mask (at the mask's working scale) over the model's, as edits."""
    from scipy import ndimage

    from training.inference import resize_labels

    expert = resize_labels(ndimage.label(truth)[0], mask.data.shape).astype(mask.data.dtype)
    changed = np.nonzero(np.asarray(mask.data) != expert)
    mask.data_setitem(changed, expert[changed])


def wait(app, done) -> None:
    while not done():
        app.processEvents()
        time.sleep(0.01)


def evaluate(data: Path, model: Path, out: Path) -> float:
    command = [sys.executable, "-m", "training.evaluate", "--data", str(data)]
    subprocess.run([*command, "--model", str(model), "--out", str(out)], check=True)
    return round(json.loads(out.read_text())["dice"], 4)


if __name__ == "__main__":
    main()
