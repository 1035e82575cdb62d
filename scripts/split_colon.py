"""Split the real EBHI colon set by patient into development, validation, test and
human-in-the-loop folders.

    python scripts/split_colon.py --out runs/data

Tiles of one patient are correlated, so whole patients go to one side (the id's part before
`-<slide>-400-<n>`). `colon-test` (16 images, 5 patients) is never trained, validated or tuned
on. `colon-dev` (30 images, 6 patients) splits into `colon-train` (24 images, 3 patients) and
`colon-val` (6 images, 3 patients), which selects checkpoints and calibrates the threshold.
`colon-hitl10` holds the 10 development images of 3 patients that the human-in-the-loop
benchmark "corrects"; it is scored on `colon-test`, other patients.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from split_kidney import write_subset

from training.data.catalog import read_catalog

SOURCE = Path(__file__).resolve().parents[1].parent / "shared/data/ebhi-colon-normal"
TEST_PATIENTS = ("GT2012915", "GT2016907", "GTXC2012096", "GT2012221", "GT2013112")
VAL_PATIENTS = ("GT2100275", "GT2013128", "GTDC2100276")
HITL_PATIENTS = ("GT2100093", "GT2100275", "GT2013119")


def patient(image_id: str) -> str:
    """The patient part of an EBHI id `<patient>-<slide>-400-<n>`."""
    return image_id.rsplit("-", 3)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/data"))
    parser.add_argument("--source", type=Path, default=SOURCE)
    args = parser.parse_args()
    frame = read_catalog(args.source)
    ids = list(frame["id"])

    def of(patients: tuple[str, ...], keep: bool = True) -> list[str]:
        return [i for i in ids if (patient(i) in patients) == keep]

    dev = of(TEST_PATIENTS, keep=False)
    subsets = {
        "colon-test": of(TEST_PATIENTS),
        "colon-dev": dev,
        "colon-val": of(VAL_PATIENTS),
        "colon-train": [i for i in dev if patient(i) not in VAL_PATIENTS],
        "colon-hitl10": of(HITL_PATIENTS),
    }
    for name, subset in subsets.items():
        write_subset(frame, subset, args.out / name, args.source, what="real colon")


if __name__ == "__main__":
    main()
