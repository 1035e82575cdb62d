"""Print the domain-shift table from bench_domain_shift.sh's evaluation files (Markdown).

python benchmarks/report_domain_shift.py runs/domain
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from training.organs import ORGANS

TESTS = ("phantoms-hpa-test", "phantoms-hubmap-test", "kidney-test")


def main() -> None:
    runs = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/domain")
    print(
        "| trained on HPA phantoms | HPA phantoms | HuBMAP phantoms | real PAS kidney (held out) |"
    )
    print("|---|---|---|---|")
    scores = {}
    for run, label in (
        ("plain", "without adaptations"),
        ("adapted", "with the seeds' adaptations"),
    ):
        scores[run] = {t: json.loads((runs / run / f"eval-{t}.json").read_text()) for t in TESTS}
        cells = [f"{scores[run][t]['dice']:.3f}" for t in TESTS]
        print(f"| {label} | " + " | ".join(cells) + " |")
    gain = (
        scores["adapted"]["phantoms-hubmap-test"]["dice"]
        - scores["plain"]["phantoms-hubmap-test"]["dice"]
    )
    print(f"\nadaptations on HuBMAP phantoms: {gain:+.3f} Dice\n")
    print("| per organ (HuBMAP phantoms) | " + " | ".join(ORGANS) + " |")
    print("|---|" + "---|" * len(ORGANS))
    for run in ("plain", "adapted"):
        organ = scores[run]["phantoms-hubmap-test"]["organ"]
        print(
            f"| {run} | " + " | ".join(f"{organ.get(o, float('nan')):.3f}" for o in ORGANS) + " |"
        )


if __name__ == "__main__":
    main()
