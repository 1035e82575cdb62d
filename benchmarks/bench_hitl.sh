#!/usr/bin/env bash
# The human-in-the-loop figure on real tissue: a model trained without any real image (HPA
# phantoms with the seeds' adaptations, from bench_domain_shift.sh) is fine-tuned with --init on
# 10 "corrected" real kidney images (their true masks, in the dataset format) for at most 15
# minutes on this CPU; Dice on the held-out real kidney images before and after.
# Usage: benchmarks/bench_hitl.sh [RUNS_DIR]
set -euo pipefail
PY=${PYTHON:-.venv/bin/python}
RUNS=${1:-runs/domain}
DATA=${DATA:-runs/data}
BASE="$RUNS/adapted/best.pt"
[ -f "$BASE" ] || { echo "run benchmarks/bench_domain_shift.sh first ($BASE)"; exit 2; }
[ -f "$RUNS/adapted/eval-kidney-test.json" ] || $PY -m training.evaluate \
  --data "$DATA/kidney-test" --model "$BASE" --out "$RUNS/adapted/eval-kidney-test.json"
[ -f "$RUNS/hitl/best.pt" ] || $PY -m training.train --init "$BASE" --data "$DATA/kidney-hitl10" \
  --epochs 12 --samples-per-epoch 1000 --batch-size 8 --lr 5e-4 --warmup 0.2 --workers 1 \
  --val-every 3 --time-limit 15 --no-progress --seed 0 --out "$RUNS/hitl"
$PY -m training.evaluate --data "$DATA/kidney-test" --model "$RUNS/hitl/best.pt" \
  --out "$RUNS/hitl/eval-kidney-test.json"
$PY -c "
import json, sys
before = json.load(open('$RUNS/adapted/eval-kidney-test.json'))['dice']
after = json.load(open('$RUNS/hitl/eval-kidney-test.json'))['dice']
print(f'held-out real kidney Dice: before {before:.4f}, after {after:.4f}, gain {after - before:+.4f}')
"
