"""Copy the members' best checkpoints into training/models/default/ (weights stored as float16,
half the size) with the manifest.

python scripts/assemble_default_model.py runs/default [runs/data]

Each member gets a description of the images it trained on (``meta.domain``: the domain check's
reference), from the dataset folders under ``runs/data`` named in :data:`DESCRIBED_ON`.

The manifest is written without calibration; scripts/train_default_model.sh then tunes its
per-organ thresholds and minimum areas with ``python -m training.calibrate --write``.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import yaml

from training.data.catalog import ORGANS
from training.data.records import DataSpec, load_records
from training.domain import describe_checkpoint
from training.models import load_checkpoint, save_checkpoint

TARGET = Path(__file__).resolve().parents[1] / "training" / "models" / "default"
GENERAL = [organ for organ in ORGANS if organ not in ("kidney", "largeintestine")]
MEMBERS = (  # from scripts/train_default_model.sh: the stage-3 fine-tunes and the stage-2 lung
    # specialist for spleen, lung and prostate; for kidney stage 8's 1 um/px specialist with
    # 512 px tiles, the choice of kidney validation (docs/benchmarks.md, "stage 8"); for the large
    # intestine stage 9's colon specialist, trained on real colon (docs/benchmarks.md, "colon
    # member"). Corrections of an organ fine-tune its specialist.
    ("swin-k", "swin_upernet.pt", {"weight": 1.0, "organs": GENERAL}),
    ("coat-k2", "coat_daformer.pt", {"weight": 1.0, "organs": GENERAL}),
    ("lung-ft", "lung_swin_upernet.pt", {"weight": 2.0, "organs": ["lung"]}),
    ("kidney-coat1g512", "kidney_coat_daformer.pt", {"weight": 1.0, "organs": ["kidney"]}),
    ("colon-coat", "colon_coat_daformer.pt", {"weight": 1.0, "organs": ["largeintestine"]}),
    ("colon-mix", "colon_mix_coat_daformer.pt", {"weight": 1.0, "organs": ["largeintestine"]}),
    # stage 10 (session 14): UNeXt from the architecture comparison, which large-intestine
    # validation added beside the colon pair (docs/benchmarks.md, "The seeds' other methods")
    ("unext_micro", "colon_unext.pt", {"weight": 1.0, "organs": ["largeintestine"]}),
)
DESCRIBED_ON = {  # the folders of runs/data each member trained on, for its domain description
    "swin_upernet.pt": ("phantoms-hpa-train", "phantoms-hubmap-train", "kidney-dev"),
    "coat_daformer.pt": ("phantoms-hpa-train", "phantoms-hubmap-train", "kidney-dev"),
    "lung_swin_upernet.pt": ("phantoms-hpa-train", "phantoms-hubmap-train", "kidney-dev"),
    "kidney_coat_daformer.pt": ("kidney-dev",),
    "colon_coat_daformer.pt": ("colon-train",),
    "colon_mix_coat_daformer.pt": ("colon-train", "phantoms-hpa-train", "phantoms-hubmap-train"),
    "colon_unext.pt": (
        "phantoms-hpa-train",
        "phantoms-hubmap-train",
        "kidney-train49",
        "colon-train",
    ),
}


def main() -> None:
    runs = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/default")
    data = Path(sys.argv[2] if len(sys.argv) > 2 else "runs/data")
    TARGET.mkdir(parents=True, exist_ok=True)
    members = []
    for run, name, extra in MEMBERS:
        model, meta = load_checkpoint(runs / run / "best.pt")
        del meta["architecture"]  # load_checkpoint's addition; the file keeps its own
        save_checkpoint(TARGET / name, model, meta, half=True)
        folders = [DataSpec(data / folder) for folder in DESCRIBED_ON[name]]
        describe_checkpoint(TARGET / name, load_records(folders))  # the domain check's reference
        members.append({"checkpoint": name, **copy.deepcopy(extra)})  # no YAML anchors
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
