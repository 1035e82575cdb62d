"""Pack the real kidney data for a GPU machine that takes at most 64 MiB per transfer.

The development images (the training split and the 12 validation images of the default model's
split, ``--split-of``) are resampled to 1.0 um/px (the full model's pixel size; the loader
would resample them there anyway) and saved as JPEG (quality 92); the held-out test images are
copied as they are. On the GPU machine, ``--unpack`` decodes them with Pillow into uncompressed
TIFF dataset folders. Used for the GPU-trained full model in docs/benchmarks.md:

    python benchmarks/gpu_pack_kidney.py --out PACK                # here
    python benchmarks/gpu_pack_kidney.py --unpack PACK --out DATA  # there
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import tifffile
from PIL import Image
from skimage.transform import resize

PIXEL_SIZE = 1.0


def pack(dev: Path, test: Path, split_of: Path, out: Path) -> None:
    from training.data.rle import decode, encode
    from training.evaluate import validation_ids

    val = set(validation_ids(split_of))
    rows = pd.read_csv(dev / "train.csv", dtype={"id": str})
    for name, part in (("kd-train", rows[~rows.id.isin(val)]), ("kd-val", rows[rows.id.isin(val)])):
        (out / name / "src").mkdir(parents=True)
        packed = []
        for row in part.to_dict("records"):
            image = tifffile.imread(dev / "train_images" / f"{row['id']}.tiff")
            mask = decode(row["rle"], (row["img_height"], row["img_width"]))
            scale = row["pixel_size"] / PIXEL_SIZE
            shape = (round(row["img_height"] * scale), round(row["img_width"] * scale))
            small = resize(image, shape, order=1, anti_aliasing=True, preserve_range=True)
            Image.fromarray(np.round(small).astype(np.uint8)).save(
                out / name / "src" / f"{row['id']}.jpg", quality=92
            )
            small_mask = resize(mask.astype(np.float32), shape, order=1, anti_aliasing=True) >= 0.5
            row.update(
                img_height=shape[0],
                img_width=shape[1],
                pixel_size=PIXEL_SIZE,
                rle=encode(small_mask.astype(np.uint8)),
            )
            packed.append(row)
        pd.DataFrame(packed).to_csv(out / name / "train.csv", index=False)
    (out / "kd-test" / "src").mkdir(parents=True)
    for path in sorted((test / "train_images").glob("*.tiff")):
        shutil.copy(path, out / "kd-test" / "src")
    shutil.copy(test / "train.csv", out / "kd-test" / "train.csv")


def unpack(pack_dir: Path, out: Path) -> None:
    for folder in sorted(p for p in pack_dir.iterdir() if p.is_dir()):
        images = out / folder.name / "train_images"
        images.mkdir(parents=True, exist_ok=True)
        shutil.copy(folder / "train.csv", out / folder.name / "train.csv")
        for src in sorted((folder / "src").iterdir()):
            rgb = np.asarray(Image.open(src).convert("RGB"))
            tifffile.imwrite(images / f"{src.stem}.tiff", rgb)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--unpack", type=Path, help="a folder this script packed")
    parser.add_argument("--dev", type=Path, default=Path("runs/data/kidney-dev"))
    parser.add_argument("--test", type=Path, default=Path("runs/data/kidney-test"))
    parser.add_argument("--split-of", type=Path, default=Path("runs/default/coat-k2/best.pt"))
    args = parser.parse_args()
    if args.unpack:
        unpack(args.unpack, args.out)
    else:
        pack(args.dev, args.test, args.split_of, args.out)


if __name__ == "__main__":
    main()
