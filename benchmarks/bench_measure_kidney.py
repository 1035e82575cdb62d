"""Glomerulus counts and sizes from the default model against the expert outlines, on the held-out
real kidney images (HuBMAP PAS, 0.65 um/px).

For every image of the dataset folder, the expert mask (its ``train.csv`` RLE, split into
connected objects) and the default model's segmentation (``training.inference.run``, the
model's own threshold and minimum area, measured by ``training.measure.measure_result``) are
measured alike: counts, areas in um² (median, p10, p90), objects cut by the image border.
Prints a Markdown table, writes the per-object tables and a histogram of areas (PNG).

    OMP_NUM_THREADS=1 nice .venv/bin/python benchmarks/bench_measure_kidney.py \\
        --data /work/main/runs/data/kidney-test --png docs/images/measure_kidney_sizes.png
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage


def measure_folder(data: Path, model: Path, organ: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every image's objects, expert and model, with columns ``id`` and ``source``."""
    from training.data import rle
    from training.data.catalog import image_path, read_catalog
    from training.inference import run
    from training.inference.tissue import tissue_area_mm2
    from training.measure import measure_objects, summarize
    from training.measure.slide import measure_result
    from training.models.ensemble import load_ensemble
    from training.slides import open_slide

    ensemble = load_ensemble(model, "cpu")
    catalog = read_catalog(data)
    tables, summaries = [], []
    for row in catalog.itertuples():
        shape = (int(row.img_height), int(row.img_width))
        with open_slide(image_path(data, row.id), float(row.pixel_size)) as slide:
            expert, _ = ndimage.label(rle.decode(row.rle, shape))
            expert_objects = measure_objects(expert, slide.pixel_size_um)
            tissue = tissue_area_mm2(slide)
            start = time.perf_counter()
            result = run(slide, ensemble, organ)
            labels = result.labels()
            model_objects, model_summary = measure_result(
                result, slide, labels, image_id=str(row.id)
            )
            seconds = time.perf_counter() - start
        # which object of the other source lies under each object's centroid (0: none)
        expert_objects["match"] = _under(expert_objects, labels, result.downsample)
        model_objects["match"] = _under(model_objects, expert, 1.0)
        for source, objects, summary in (
            ("expert", expert_objects, summarize(expert_objects, str(row.id), tissue)),
            ("model", model_objects, model_summary),
        ):
            tables.append(objects.assign(id=str(row.id), source=source))
            summaries.append({**summary, "source": source, "seconds": seconds})
        print(
            f"{row.id}: expert {len(expert_objects)}, model {len(model_objects)} ({seconds:.1f} s)",
            flush=True,
        )
    return pd.concat(tables, ignore_index=True), pd.DataFrame(summaries)


def _under(objects: pd.DataFrame, labels: np.ndarray, downsample: float) -> np.ndarray:
    """The label of ``labels`` (a grid ``downsample`` level-0 pixels per pixel) under each
    object's level-0 centroid."""
    ys = np.floor((objects["centroid_y_px"].to_numpy() + 0.5) / downsample).astype(int)
    xs = np.floor((objects["centroid_x_px"].to_numpy() + 0.5) / downsample).astype(int)
    ys = np.clip(ys, 0, labels.shape[0] - 1)
    xs = np.clip(xs, 0, labels.shape[1] - 1)
    return labels[ys, xs]


def report(objects: pd.DataFrame, summaries: pd.DataFrame) -> dict:
    """Count errors per image and the size distributions of both sources."""
    counts = summaries.pivot(index="id", columns="source", values="ftu_count")
    inner = (
        objects[~objects["touches_edge"]]
        .groupby(["id", "source"])
        .size()
        .unstack(fill_value=0)
        .reindex(counts.index, fill_value=0)
    )
    figures = {
        "images": len(counts),
        "expert_objects": int(counts["expert"].sum()),
        "model_objects": int(counts["model"].sum()),
        "count_mae": float((counts["model"] - counts["expert"]).abs().mean()),
        "count_bias": float((counts["model"] - counts["expert"]).mean()),
        "count_mae_off_edge": float((inner["model"] - inner["expert"]).abs().mean()),
        "tissue_area_mm2_mean": float(
            summaries[summaries["source"] == "model"]["tissue_area_mm2"].mean()
        ),
    }
    for source, group in objects.groupby("source"):
        figures[f"{source}_matched"] = int((group["match"] > 0).sum())
        for name, part in (("all", group), ("off_edge", group[~group["touches_edge"]])):
            areas = part["area_um2"].to_numpy()
            p10, median, p90 = np.percentile(areas, [10, 50, 90])
            figures[f"{source}_{name}_area_um2"] = {
                "n": len(areas),
                "median": float(median),
                "p10": float(p10),
                "p90": float(p90),
            }
        figures[f"{source}_circularity_median"] = float(group["circularity"].median())
        figures[f"{source}_diameter_um_median"] = float(group["equivalent_diameter_um"].median())
    model = objects[(objects["source"] == "model") & (objects["match"] > 0)]
    expert = objects[objects["source"] == "expert"].set_index(["id", "label"])["area_um2"]
    keys = list(zip(model["id"], model["match"], strict=True))
    ratio = model["area_um2"].to_numpy() / expert.reindex(keys).to_numpy()
    p10, median, p90 = np.percentile(ratio, [10, 50, 90])
    figures["matched_area_ratio"] = {"n": len(ratio), "median": median, "p10": p10, "p90": p90}
    unmatched = objects[(objects["source"] == "model") & (objects["match"] == 0)]
    figures["model_unmatched_area_um2_median"] = float(unmatched["area_um2"].median())
    figures["model_unmatched_probability_median"] = float(unmatched["mean_probability"].median())
    return figures


def histogram(objects: pd.DataFrame, path: Path) -> None:
    """Areas of the objects off the image border, expert and model side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    whole = objects[~objects["touches_edge"]]
    bins = np.linspace(0, np.percentile(whole["area_um2"], 99.5), 31)
    figure, axis = plt.subplots(figsize=(6, 3.6), dpi=120)
    for source, colour in (("expert", "#444444"), ("model", "#1b9e77")):
        areas = whole[whole["source"] == source]["area_um2"]
        axis.hist(areas, bins, histtype="step", linewidth=2, color=colour, label=source)
    axis.set_xlabel("glomerulus area (µm²), objects off the image border")
    axis.set_ylabel("objects")
    axis.set_title("24 held-out kidney images: expert outlines vs default model")
    axis.legend()
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)


def main() -> None:
    from training.models.default import default_model_path

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="a dataset folder")
    parser.add_argument("--model", type=Path, help="default: the bundled default model")
    parser.add_argument("--organ", default="kidney")
    parser.add_argument("--png", type=Path, help="write the area histogram here")
    parser.add_argument("--tables", type=Path, help="write objects and summaries CSVs here")
    args = parser.parse_args()
    objects, summaries = measure_folder(args.data, args.model or default_model_path(), args.organ)
    if args.tables:
        args.tables.mkdir(parents=True, exist_ok=True)
        objects.to_csv(args.tables / "objects.csv", index=False)
        summaries.to_csv(args.tables / "summaries.csv", index=False)
    if args.png:
        histogram(objects, args.png)
    print(json.dumps(report(objects, summaries), indent=1))


if __name__ == "__main__":
    main()
