#!/usr/bin/env bash
# Training throughput (samples/s, crops of the model's input size) of the small models through
# the real command: DataLoader workers, augmentations, loss with deep supervision, AdamW.
# Usage: benchmarks/bench_train_throughput.sh [DEVICE] [MODEL ...]   (run on a quiet machine)
set -euo pipefail
PY=${PYTHON:-.venv/bin/python}
DEVICE=${1:-cpu}
shift || true
MODELS=("${@:-swin_micro_upernet coat_micro_daformer}")
OUT=$(mktemp -d)
bash scripts/prepare_data.sh >/dev/null
for model in ${MODELS[@]}; do
  $PY -m training.train --data runs/data/phantoms-hpa-train --model "$model" --out "$OUT/$model" \
    --epochs 2 --samples-per-epoch 480 --batch-size 8 --workers 1 --val-fraction 0 \
    --no-progress --device "$DEVICE" 2>/dev/null
  $PY -c "import pandas as pd; m = pd.read_csv('$OUT/$model/metrics.csv'); \
print(f'$model on $DEVICE: {m.samples_per_s.iloc[-1]:.1f} samples/s (epoch 2 of 2, batch 8)')"
done
rm -rf "$OUT"
