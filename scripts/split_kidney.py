"""Split the real HuBMAP kidney set into a development folder and a held-out test folder.

    python scripts/split_kidney.py --out runs/data

The test images are a spatial block (ids 245 and above): neighbouring ids are neighbouring tiles
of the same slides, so a random split would train on the neighbours of test tiles. The test
folder is never used for training, validation or threshold tuning; `kidney-hitl10` holds the 10
development images the human-in-the-loop benchmark "corrects".
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from training.data.catalog import image_path, read_catalog, write_catalog

SOURCE = Path(__file__).resolve().parents[1].parent / "shared/data/hubmap-kidney-pas"
TEST_FROM_ID = 245
HITL_IDS = ("16", "30", "44", "60", "75", "92", "106", "120", "134", "218")


def write_subset(frame, ids, out: Path, source: Path, what: str = "real kidney") -> None:
    subset = frame[frame["id"].isin(ids)].reset_index(drop=True)
    (out / "train_images").mkdir(parents=True, exist_ok=True)
    for image_id in subset["id"]:
        source_image = image_path(source, image_id)
        link = out / "train_images" / source_image.name
        if not link.exists():
            os.symlink(source_image.resolve(), link)
    write_catalog(out, subset)
    print(f"{out}: {len(subset)} {what} images")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/data"))
    parser.add_argument("--source", type=Path, default=SOURCE)
    args = parser.parse_args()
    frame = read_catalog(args.source)
    test = [i for i in frame["id"] if int(i) >= TEST_FROM_ID]
    dev = [i for i in frame["id"] if int(i) < TEST_FROM_ID]
    write_subset(frame, dev, args.out / "kidney-dev", args.source)
    write_subset(frame, test, args.out / "kidney-test", args.source)
    write_subset(frame, list(HITL_IDS), args.out / "kidney-hitl10", args.source)


if __name__ == "__main__":
    main()
