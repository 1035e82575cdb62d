#!/usr/bin/env bash
# Rebuild the bundled default model (training/models/default/) from the shared data and phantoms:
# Swin+UPerNet and CoaT+DAFormer on phantoms of all five organs (HPA and HuBMAP presets) plus the
# real kidney development images, and a Swin+UPerNet lung specialist (lung drawn 25x as often).
# About 115 minutes on a 2-core CPU (stage 1: 30, stage 2: 85). --time-limit caps each member's training time, so on a
# slower machine fewer epochs run (the epochs done are in each checkpoint's metadata).
# Usage: scripts/train_default_model.sh [RUNS_DIR]
set -euo pipefail
PY=${PYTHON:-.venv/bin/python}
RUNS=${1:-runs/default}
DATA=${DATA:-runs/data}
bash scripts/prepare_data.sh
COMMON=(--data "$DATA/phantoms-hpa-train" "$DATA/phantoms-hubmap-train" "$DATA/kidney-dev:1.5"
        --pixel-size 1.0 --samples-per-epoch 1600 --batch-size 8 --lr 1e-3
        --workers 1 --val-every 2 --no-progress --seed 0)
member() { [ -f "$RUNS/$1/best.pt" ] || $PY -m training.train "${COMMON[@]}" "${@:2}" --out "$RUNS/$1"; }
member swin --model swin_micro_upernet --epochs 6 --time-limit 11
member coat --model coat_micro_daformer --epochs 5 --time-limit 8
member lung --model swin_micro_upernet --oversample lung=25 --epochs 5 --time-limit 8
# Stage 2: every member fine-tuned longer from stage 1, the real kidney images drawn twice as
# often (the stage-1 validation Dice on them was still rising when time ran out).
COMMON=(--data "$DATA/phantoms-hpa-train" "$DATA/phantoms-hubmap-train" "$DATA/kidney-dev:3"
        --pixel-size 1.0 --samples-per-epoch 1600 --batch-size 8 --lr 5e-4 --warmup 0.5
        --workers 1 --val-every 2 --no-progress --seed 1)
member swin-ft --model swin_micro_upernet --init "$RUNS/swin/best.pt" --epochs 16 --time-limit 35
member coat-ft --model coat_micro_daformer --init "$RUNS/coat/best.pt" --epochs 14 --time-limit 30
member lung-ft --model swin_micro_upernet --init "$RUNS/lung/best.pt" --oversample lung=25 \
    --epochs 10 --time-limit 20
$PY scripts/assemble_default_model.py "$RUNS"
