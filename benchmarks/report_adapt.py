"""Print the domain-adaptation table from bench_adapt.sh's evaluation files (Markdown).

python benchmarks/report_adapt.py runs/adapt
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROWS = (
    ("control", "fine-tuned on phantoms, no adaptation (control)"),
    ("grl", "`--adapt grl`"),
    ("pseudo", "`--adapt pseudo`"),
    ("both", "`--adapt both`"),
)


def cell(runs: Path, run: str, test: str, background: bool = False) -> str:
    path = runs / run / f"eval-{test}.json"
    if not path.is_file():
        return "-"
    summary = json.loads(path.read_text())
    text = f"{summary['dice']:.3f}"
    return f"{text} / {summary['background_dice']:.3f}" if background else text


def main() -> None:
    runs = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/adapt")
    for target, test, label in (
        ("kidney", "kidney-test", "real PAS kidney (held out): Dice"),
        ("colon", "colon-test", "real H&E colon (held-out patients): crypt / stroma Dice"),
    ):
        colon = target == "colon"
        print(f"\ntarget: the real {target} development images, masks ignored\n")
        print(f"| model | {label} | HPA phantoms: Dice |")
        print("|---|---|---|")
        print(f"| phantoms only (before) | {cell(runs, 'base', test, colon)} | "
              f"{cell(runs, 'base', 'phantoms-hpa-test')} |")  # fmt: skip
        for mode, name in ROWS:
            run = f"{target}-{mode}"
            print(f"| {name} | {cell(runs, run, test, colon)} | "
                  f"{cell(runs, run, 'phantoms-hpa-test')} |")  # fmt: skip
    base = runs / "base" / "eval-colon-test.json"
    if base.is_file():
        baseline = json.loads(base.read_text())["all_ftu_dice"]
        print(f"\nall-crypt prediction on colon-test: {baseline:.3f}")


if __name__ == "__main__":
    main()
