"""Human in the loop on a new organ and stain: real H&E colon, through "Train on corrections".

A model that has never seen a real colon (by default the bundled kidney member, trained on real
PAS kidney) is fine-tuned on 10 "corrected" real colon images of 3 patients (their true masks,
in the dataset format: runs/data/colon-hitl10) by the plugin's own job (``RetrainJob``: the
command line, run size and scoring "Train on corrections" uses), for at most ``--minutes`` CPU
minutes; both models are then scored on the held-out colon images of 5 other patients
(runs/data/colon-test): crypt Dice, stroma (background) Dice and the all-crypt prediction.

python benchmarks/bench_hitl_colon.py [--start CKPT_OR_MANIFEST] [--nearest] [--out runs/hitl-colon]

``--nearest``: with a manifest, start from the member the domain check finds nearest the
corrections (``training.retrain_start.nearest_member``) instead of the plugin's default rule.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from training.retrain import RetrainJob, RetrainRequest, start_checkpoint, train_command
from training.retrain_start import nearest_member

KIDNEY_MEMBER = Path("training/models/default/kidney_coat_daformer.pt")


def evaluate(model: Path, data: Path, out: Path) -> dict:
    """``python -m training.evaluate`` of ``model`` on ``data``; its JSON summary."""
    command = [sys.executable, "-m", "training.evaluate", "--data", str(data),
               "--model", str(model), "--out", str(out), "--device", "cpu"]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(out.read_text())


def row(summary: dict) -> str:
    return (
        f"FTU (crypt) {summary['dice']:.3f}, background (stroma) {summary['background_dice']:.3f} "
        f"(all-FTU {summary['all_ftu_dice']:.3f})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--start", type=Path, default=KIDNEY_MEMBER)
    parser.add_argument("--data", type=Path, default=Path("runs/data"))
    parser.add_argument("--out", type=Path, default=Path("runs/hitl-colon"))
    parser.add_argument("--minutes", type=float, default=15)
    parser.add_argument("--epochs", type=int, default=4, help="the widget's epochs field")
    parser.add_argument("--flags", default="", help="the widget's extra flags field")
    parser.add_argument("--nearest", action="store_true", help="the member nearest the images")
    parser.add_argument("--organ", default="largeintestine", help="of the corrections")
    parser.add_argument("--corrections", help="folder under --data (default: colon-hitl10)")
    parser.add_argument("--test", help="held-out folder under --data (default: colon-test)")
    args = parser.parse_args()
    corrections = args.data / (args.corrections or "colon-hitl10")
    test = args.data / (args.test or "colon-test")
    if args.out.exists():
        shutil.rmtree(args.out)
    args.out.mkdir(parents=True)
    if args.nearest:
        init, note = nearest_member(args.start, [corrections], args.organ)
    else:
        init, note = start_checkpoint(args.start, args.organ)
    print(f"start {init}: {note}", flush=True)
    request = RetrainRequest(
        corrections=corrections,
        init=init,
        out=args.out / "run",
        epochs=args.epochs,
        time_limit_min=args.minutes,
        device="cpu",
        extra=tuple(shlex.split(args.flags)),
    )
    began = time.perf_counter()
    job = RetrainJob(request, models_dir=args.out / "versions")
    events = job.run()
    try:
        while True:
            event = next(events)
            if not event.redraw:
                print(event.text, flush=True)
    except StopIteration as stop:
        result = stop.value
    minutes = (time.perf_counter() - began) / 60
    if result.status != "done":
        sys.exit(f"the run {result.status}: {result.message}")
    before = evaluate(init, test, args.out / "before.json")
    after = evaluate(result.run_dir / "best.pt", test, args.out / "after.json")
    summary = {
        "start": str(init), "start_note": note, "flags": args.flags, "epochs": args.epochs,
        "minutes_limit": args.minutes, "minutes_job": round(minutes, 1),
        "command": shlex.join(train_command(request)),
        "before": before, "after": after,
        "validation_before": None if result.before is None else result.before.__dict__,
        "validation_after": None if result.after is None else result.after.__dict__,
    }  # fmt: skip
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    print(f"start {init.name}; job {minutes:.1f} min (training limit {args.minutes:g})")
    print(f"held-out {test.name} ({before['images']} images, other patients) before: {row(before)}")
    print(f"held-out {test.name} ({after['images']} images, other patients) after:  {row(after)}")


if __name__ == "__main__":
    main()
