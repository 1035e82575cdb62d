#!/usr/bin/env bash
# The domain-adaptation table (issue 22): a model trained on phantoms only (HPA and HuBMAP
# presets, all five organs, the seeds' augmentations) is fine-tuned for the same time budget
# without adaptation (the control), with --adapt grl, pseudo and both, the target being real
# images WITHOUT their masks: the kidney development images, then the colon development images
# (their train.csv is ignored by --target). Each is scored on the held-out real images of the
# target's organ (kidney-test; colon-test: crypt and stroma Dice) and on the HPA test phantoms.
# Each fine-tune has a wall-clock budget of $MINUTES (default 10) minutes, the four rows of a
# target side by side so that each gets the same share of the machine (on 2 cores, about 5 CPU
# minutes each); a step with a target batch costs about twice a plain one, so the adapted rows
# see fewer source crops in the same time, as a user's run would.
# Usage: benchmarks/bench_adapt.sh [RUNS_DIR]   (about 60 minutes on a 2-core CPU)
set -euo pipefail
PY=${PYTHON:-.venv/bin/python}
RUNS=${1:-runs/adapt}
DATA=${DATA:-runs/data}
MINUTES=${MINUTES:-10}
export OMP_NUM_THREADS=1
SOURCE=(--data "$DATA/phantoms-hpa-train" "$DATA/phantoms-hubmap-train")
COMMON=(--pixel-size 1.0 --batch-size 8 --workers 1 --val-every 100 --no-progress --seed 0)
[ -f "$RUNS/base/best.pt" ] || $PY -m training.train "${SOURCE[@]}" "${COMMON[@]}" \
  --model swin_micro_upernet --epochs 6 --samples-per-epoch 1600 --lr 1e-3 --out "$RUNS/base"
run() {  # run NAME [FLAGS...]: fine-tune the base for $MINUTES minutes
  [ -f "$RUNS/$1/best.pt" ] || $PY -m training.train "${SOURCE[@]}" "${COMMON[@]}" \
    --init "$RUNS/base/best.pt" --epochs 100 --samples-per-epoch 400 --lr 3e-4 --warmup 0.3 \
    --time-limit "$MINUTES" "${@:2}" --out "$RUNS/$1" > "$RUNS/$1.log" 2>&1
}
mkdir -p "$RUNS"
for target in kidney colon; do  # the four rows of a target side by side: the same share of the CPU
  dev="$DATA/$target-dev"
  run "$target-control" &
  run "$target-grl" --target "$dev" --adapt grl &
  run "$target-pseudo" --target "$dev" --adapt pseudo &
  run "$target-both" --target "$dev" --adapt both &
  wait
done
score() {  # score RUN TEST
  [ -f "$RUNS/$1/eval-$2.json" ] || $PY -m training.evaluate --data "$DATA/$2" \
    --model "$RUNS/$1/best.pt" --out "$RUNS/$1/eval-$2.json" > /dev/null
}
for test in kidney-test colon-test phantoms-hpa-test; do score base "$test"; done
for target in kidney colon; do
  for mode in control grl pseudo both; do
    score "$target-$mode" "$target-test"
    score "$target-$mode" phantoms-hpa-test
  done
done
$PY benchmarks/report_adapt.py "$RUNS"
