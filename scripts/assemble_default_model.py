"""Copy the three members' best checkpoints into training/models/default/ with the manifest.

python scripts/assemble_default_model.py runs/default

The manifest is written without calibration; scripts/train_default_model.sh then tunes its
per-organ thresholds and minimum areas with ``python -m training.calibrate --write``.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import yaml

TARGET = Path(__file__).resolve().parents[1] / "training" / "models" / "default"
MEMBERS = (  # the stage-3 fine-tunes of scripts/train_default_model.sh, the stage-2 lung specialist
    ("swin-k", "swin_upernet.pt", {"weight": 1.0}),
    ("coat-k2", "coat_daformer.pt", {"weight": 1.0}),
    ("lung-ft", "lung_swin_upernet.pt", {"weight": 2.0, "organs": ["lung"]}),
)


def main() -> None:
    runs = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/default")
    TARGET.mkdir(parents=True, exist_ok=True)
    members = []
    for run, name, extra in MEMBERS:
        shutil.copyfile(runs / run / "best.pt", TARGET / name)
        members.append({"checkpoint": name, **extra})
    manifest = {
        "name": "napari-ftu default (small CPU ensemble)",
        "card": "docs/model_card.md",
        "members": members,
    }
    (TARGET / "ensemble.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    size = sum(p.stat().st_size for p in TARGET.iterdir()) / 2**20
    print(f"{TARGET}: {len(members)} members, {size:.1f} MB")


if __name__ == "__main__":
    main()
