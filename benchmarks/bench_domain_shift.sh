#!/usr/bin/env bash
# The domain-shift table: train on HPA phantoms only, with and without the seeds' adaptations
# (stain augmentation, pixel-size and thickness adaptation, CutMix/CutOut), and evaluate on HPA
# and HuBMAP test phantoms and on the held-out real PAS kidney images.
# Usage: benchmarks/bench_domain_shift.sh [RUNS_DIR]   (about 22 minutes on a 2-core CPU)
set -euo pipefail
PY=${PYTHON:-.venv/bin/python}
RUNS=${1:-runs/domain}
DATA=${DATA:-runs/data}
bash scripts/prepare_data.sh
COMMON=(--data "$DATA/phantoms-hpa-train" --model swin_micro_upernet --pixel-size 1.0
        --epochs 5 --samples-per-epoch 1600 --batch-size 8 --lr 1e-3 --workers 1 --val-every 2
        --time-limit 9 --no-progress --seed 0)
train() { [ -f "$RUNS/$1/best.pt" ] || $PY -m training.train "${COMMON[@]}" "${@:2}" --out "$RUNS/$1"; }
train adapted --augment-groups geometric color stain domain mix
train plain --augment-groups geometric color
for run in adapted plain; do
  for test in phantoms-hpa-test phantoms-hubmap-test kidney-test; do
    [ -f "$RUNS/$run/eval-$test.json" ] || $PY -m training.evaluate --data "$DATA/$test" \
      --model "$RUNS/$run/best.pt" --out "$RUNS/$run/eval-$test.json"
  done
done
$PY benchmarks/report_domain_shift.py "$RUNS"
