"""Print the default model's scores (Markdown) from its evaluation files.

    for t in phantoms-hpa-test phantoms-hubmap-test kidney-test colon-test; do
      python -m training.evaluate --data runs/data/$t \\
          --model training/models/default/ensemble.yaml --out runs/default/eval-$t.json
    done
    python benchmarks/report_default_model.py runs/default
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from training.organs import ORGANS

SETS = (
    ("phantoms-hpa-test", "HPA phantoms (synthetic)"),
    ("phantoms-hubmap-test", "HuBMAP phantoms (synthetic)"),
    ("kidney-test", "real PAS kidney, held out"),
    ("colon-test", "real H&E colon, held-out patients"),
)


def main() -> None:
    runs = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/default")
    print("| test set | images | mean | " + " | ".join(ORGANS) + " |")
    print("|---|---|---|" + "---|" * len(ORGANS))
    for name, label in SETS:
        path = runs / f"eval-{name}.json"
        if not path.is_file():
            continue
        scores = json.loads(path.read_text())
        cells = [f"{scores['organ'][o]:.3f}" if o in scores["organ"] else "" for o in ORGANS]
        print(
            f"| {label} | {scores['images']} | {scores['dice']:.3f} | " + " | ".join(cells) + " |"
        )
    colon = runs / "eval-colon-test.json"
    if colon.is_file():  # crypt-dense tiles: the stroma Dice and the all-crypt prediction beside
        scores = json.loads(colon.read_text())
        print(
            f"\nreal colon, held-out patients: crypt Dice {scores['dice']:.3f}, stroma "
            f"(background) Dice {scores['background_dice']:.3f}; the all-crypt prediction scores "
            f"{scores['all_ftu_dice']:.3f}"
        )


if __name__ == "__main__":
    main()
