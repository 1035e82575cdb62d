"""Write phantom dataset folders of all five organs with a physical side (not a pixel count).

    python scripts/make_phantoms.py --out runs/data/phantoms-hpa-train --domain hpa --per-organ 10

Each image covers ``--side-um`` micrometres at its domain's pixel size for the organ (HPA: 0.4
um/px everywhere; HuBMAP: the competition's table, up to 6.263 um/px for prostate), so FTU
counts per image are alike across domains. Seeds start at ``--seed``: use disjoint seed ranges for
training and test sets. These images are synthetic (see training/synthetic.py).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from training.data import rle
from training.data.catalog import ORGANS, upsert_row
from training.synthetic import DOMAINS, make_phantom


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--domain", choices=list(DOMAINS), default="hpa")
    parser.add_argument("--organs", nargs="+", choices=ORGANS, default=list(ORGANS))
    parser.add_argument("--per-organ", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--side-um", type=float, default=800.0)
    args = parser.parse_args()
    for organ in args.organs:
        pixel_size = DOMAINS[args.domain]["pixel_size"][organ]
        side = max(64, round(args.side_um / pixel_size))
        for seed in range(args.seed, args.seed + args.per_organ):
            image, mask, meta = make_phantom(organ, args.domain, side, seed)
            row = {
                "id": f"{organ}_{args.domain}_{seed}",
                "organ": organ,
                "data_source": meta["data_source"],
                "pixel_size": meta["pixel_size_um"],
                "tissue_thickness": meta["thickness_um"],
                "rle": rle.encode(mask),
                "synthetic": "phantom",
                "stain_vectors": json.dumps(np.round(meta["stain_vectors"], 4).tolist()),
            }
            upsert_row(args.out, row, image=image)
    print(f"{args.out}: {len(args.organs) * args.per_organ} phantoms ({args.domain})")


if __name__ == "__main__":
    main()
