#!/usr/bin/env bash
# Rebuild the bundled default model (training/models/default/) from the shared data and phantoms:
# Swin+UPerNet and CoaT+DAFormer on phantoms of all five organs (HPA and HuBMAP presets) plus the
# real kidney development images, and a Swin+UPerNet lung specialist (lung drawn 25x as often).
# About 35 minutes on a 2-core CPU. Usage: scripts/train_default_model.sh [RUNS_DIR]
set -euo pipefail
PY=${PYTHON:-.venv/bin/python}
RUNS=${1:-runs/default}
DATA=${DATA:-runs/data}
bash scripts/prepare_data.sh
COMMON=(--data "$DATA/phantoms-hpa-train" "$DATA/phantoms-hubmap-train" "$DATA/kidney-dev:1.5"
        --pixel-size 1.0 --epochs 6 --samples-per-epoch 1600 --batch-size 8 --lr 1e-3
        --workers 1 --val-every 2 --time-limit 11 --no-progress --seed 0)
member() { [ -f "$RUNS/$1/best.pt" ] || $PY -m training.train "${COMMON[@]}" "${@:2}" --out "$RUNS/$1"; }
member swin --model swin_micro_upernet
member coat --model coat_micro_daformer
member lung --model swin_micro_upernet --oversample lung=25
$PY scripts/assemble_default_model.py "$RUNS"
