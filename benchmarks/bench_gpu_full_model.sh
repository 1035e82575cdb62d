#!/usr/bin/env bash
# A full Swin-T+UPerNet (768 px, 1.0 um/px, bf16 autocast) trained on one GPU on the real kidney
# training split only, from scratch (no ImageNet weights: nothing can be downloaded), for a fixed
# time; then its mean per-image Dice on the held-out real kidney images.
# Usage: benchmarks/bench_gpu_full_model.sh DATA OUT [MINUTES]
#   DATA: kd-train, kd-val, kd-test dataset folders (benchmarks/gpu_pack_kidney.py)
set -euo pipefail
PY=${PYTHON:-python3}
DATA=$1 OUT=$2 MINUTES=${3:-7.3}
$PY -m training.train --data "$DATA/kd-train" --val-data "$DATA/kd-val" --model swin_tiny_upernet \
  --pixel-size 1.0 --tile 768 --epochs 18 --samples-per-epoch 1600 --batch-size 16 --workers 11 \
  --warmup 1 --seed 3 --no-progress --device cuda --time-limit "$MINUTES" --out "$OUT"
$PY -m training.evaluate --data "$DATA/kd-test" --model "$OUT/best.pt" --device cuda \
  --out "$OUT/eval-kd-test.json"
