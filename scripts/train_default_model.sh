#!/usr/bin/env bash
# Rebuild the bundled default model (training/models/default/) from the shared data and phantoms:
# Swin+UPerNet and CoaT+DAFormer on phantoms of all five organs (HPA and HuBMAP presets) plus the
# real kidney development images, a Swin+UPerNet lung specialist (lung drawn 25x as often) and a
# CoaT+DAFormer kidney specialist at 1 um/px on 512 px tiles, fine-tuned in turn by stages 3 and
# 5 to 8 (stage 7 on a GPU).
# About 7 hours on a 2-core CPU (stage 1: 30 minutes, stage 2: 85, stage 3: 195 one member at a
# time, about 120 with coat-k and swin-k side by side, as they were trained; stage 5: 60;
# stage 6: 45; stage 7: 7 minutes on one GPU; stage 8: 47 minutes).
# --time-limit caps each member's training time, so on a slower machine fewer epochs run (the
# epochs done are in each checkpoint's metadata).
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
# Stage 3 (session 6): the members fine-tuned again from stage 2 with the real kidney images
# drawn 4x, other crops (--seed 2) but stage 2's validation split (--split-seed 1); one torch
# thread each, so two can train side by side on two cores.
COMMON=(--data "$DATA/phantoms-hpa-train" "$DATA/phantoms-hubmap-train" "$DATA/kidney-dev:4"
        --pixel-size 1.0 --samples-per-epoch 1600 --batch-size 8 --lr 3e-4 --warmup 0.3
        --workers 1 --val-every 2 --no-progress --seed 2 --split-seed 1)
export OMP_NUM_THREADS=1
member coat-k --model coat_micro_daformer --init "$RUNS/coat-ft/best.pt" --epochs 16 --time-limit 80
member swin-k --model swin_micro_upernet --init "$RUNS/swin-ft/best.pt" --epochs 14 --time-limit 78
# CoaT once more from stage 3, the real kidney images drawn 6x, lr 2e-4 (its best epoch, 6 of
# 11, is kept: the real-kidney validation Dice fell after it). The lung specialist stays the
# stage-2 one: a stage-3 lung specialist did worse inside the ensemble on fresh lung phantoms.
COMMON=(--data "$DATA/phantoms-hpa-train" "$DATA/phantoms-hubmap-train" "$DATA/kidney-dev:6"
        --pixel-size 1.0 --samples-per-epoch 1600 --batch-size 8 --lr 2e-4 --warmup 0.3
        --workers 1 --val-every 2 --no-progress --seed 3 --split-seed 1)
member coat-k2 --model coat_micro_daformer --init "$RUNS/coat-k/best.pt" --epochs 11 --time-limit 38
# Stages 4 and 5 (sessions 7 and 8) also trained a CoaT kidney specialist at 2 um/px (runs
# kidney-coat, kidney-coat2, kidney-coat3). It was a member until stage 8 chose the 1 um/px line
# alone for kidney, so it is no longer trained here: its commands are in this script as of
# session 10, its figures in docs/benchmarks.md. The kidney specialists take these settings
# (--organ kidney: kidney images only; the kidney validation split is unchanged).
COMMON=(--data "$DATA/phantoms-hpa-train:3" "$DATA/phantoms-hubmap-train:3" "$DATA/kidney-dev:4"
        --organ kidney --oversample --pixel-size 2.0 --samples-per-epoch 1600 --batch-size 8
        --lr 3e-4 --warmup 0.5 --workers 1 --val-every 2 --no-progress --split-seed 1)
# Stage 5 (session 8): a kidney specialist at 1 um/px from stage 3's CoaT, the real development
# images drawn 8x to the phantom folders' 1x (docs/benchmarks.md, "stage 5").
member kidney-coat1 --init "$RUNS/coat-k2/best.pt" --pixel-size 1.0 --lr 2e-4 --warmup 0.3 \
    --data "$DATA/phantoms-hpa-train:1" "$DATA/phantoms-hubmap-train:1" "$DATA/kidney-dev:8" \
    --seed 9 --epochs 20 --time-limit 62
# Stage 6 (session 9): the 1 um/px specialist once more from its best epoch (its validation Dice
# was still rising as the learning rate decayed), lr 1e-4.
member kidney-coat1c --init "$RUNS/kidney-coat1/best.pt" --pixel-size 1.0 --lr 1e-4 --warmup 0.3 \
    --data "$DATA/phantoms-hpa-train:1" "$DATA/phantoms-hubmap-train:1" "$DATA/kidney-dev:8" \
    --seed 11 --epochs 16 --time-limit 58
# Stage 7 (session 10): stage 6's specialist fine-tuned on the real kidney development images
# alone, at lr 5e-5, on one GPU (an H200, beside another run). It stood in for stage 5's 1 um/px
# specialist: kidney validation chose it (docs/benchmarks.md, "stage 7"). The images were packed
# at 1.0 um/px for the GPU machine's transfer limit (benchmarks/gpu_pack_kidney.py); the run
# stopped at its time limit after 23 of its 30 epochs and keeps its best, the 6th. It started
# from the float16 copy of kidney-coat1c in the stage-6 model. On a CPU, use --device cpu and
# --epochs 23 without --time-limit (about 70 minutes on 2 cores).
PACK=${PACK:-$RUNS/kidney-1um}
[ -d "$PACK/kd-train" ] || {
  $PY benchmarks/gpu_pack_kidney.py --out "$PACK.pack" --dev "$DATA/kidney-dev" \
      --test "$DATA/kidney-test" --split-of "$RUNS/coat-k2/best.pt"
  $PY benchmarks/gpu_pack_kidney.py --unpack "$PACK.pack" --out "$PACK"
}
[ -f "$RUNS/kidney-coat1g/best.pt" ] || $PY -m training.train --data "$PACK/kd-train" \
    --val-data "$PACK/kd-val" --init "$RUNS/kidney-coat1c/best.pt" --pixel-size 1.0 --lr 5e-5 \
    --warmup 0.3 --epochs 30 --samples-per-epoch 1600 --batch-size 8 --workers 3 --seed 13 \
    --no-progress --device "${GPU_DEVICE:-cuda}" --time-limit 7.3 --out "$RUNS/kidney-coat1g"
# Stage 8 (session 11): stage 7's specialist fine-tuned on the real kidney development images
# alone with 512 px crops (512 um of tissue at 1 um/px, where its 256 px tiles saw 256 um;
# --tile rebuilds CoaT for them with its weights), lr 5e-5, its full 16 epochs of 400 crops in 47
# minutes beside another run (best at epoch 14). For kidney it alone stands in for the three
# specialists of stages 5 to 7: kidney validation chose it (docs/benchmarks.md, "stage 8").
[ -f "$RUNS/kidney-coat1g512/best.pt" ] || $PY -m training.train --data "$PACK/kd-train" \
    --val-data "$PACK/kd-val" --init "$RUNS/kidney-coat1g/best.pt" --tile 512 --lr 5e-5 \
    --warmup 0.3 --samples-per-epoch 400 --batch-size 8 --epochs 16 --workers 1 --val-every 2 \
    --seed 31 --no-progress --device cpu --time-limit 55 --out "$RUNS/kidney-coat1g512"
# Stage 9 (session 13): a colon specialist, stage 3's CoaT fine-tuned on the 24 real colon
# training images (3 patients, runs/data/colon-train) alone, validated on 6 images of 3 other
# patients (colon-val); colon-test's 5 patients are never trained or tuned on. It started from
# the float16 copy of coat-k2 in the stage-8 model (training/models/default/coat_daformer.pt);
# its full 30 epochs in 45 minutes beside other jobs (best at epoch 17).
[ -f "$RUNS/colon-coat/best.pt" ] || $PY -m training.train --data "$DATA/colon-train" \
    --val-data "$DATA/colon-val" --init "$RUNS/coat-k2/best.pt" --lr 3e-4 --warmup 0.5 \
    --epochs 30 --samples-per-epoch 400 --batch-size 8 --workers 1 --val-every 1 --seed 41 \
    --no-progress --device cpu --time-limit 45 --out "$RUNS/colon-coat"
# Stage 9, second member: the colon specialist once more, from its best epoch, on the real colon
# images (drawn 2x) and the large-intestine phantoms together (alone it failed on them: 0.49 Dice
# on HPA phantoms), validated on colon-val and the large-intestine validation phantoms; its 25
# minute limit stopped it after 10 of 20 epochs beside other jobs (best at 10). The two colon
# members serve the large intestine together: validation chose them (docs/benchmarks.md).
[ -f "$RUNS/colon-mix/best.pt" ] || $PY -m training.train --data "$DATA/colon-train:2" \
    "$DATA/phantoms-hpa-train" "$DATA/phantoms-hubmap-train" --organ largeintestine \
    --val-data "$DATA/colon-val" "$DATA/phantoms-hpa-val" "$DATA/phantoms-hubmap-val" \
    --init "$RUNS/colon-coat/best.pt" --lr 2e-4 --warmup 0.3 --epochs 20 --samples-per-epoch 400 \
    --batch-size 8 --workers 1 --val-every 1 --seed 43 --no-progress --device cpu --time-limit 25 \
    --out "$RUNS/colon-mix"
# Stage 10 (session 14): UNeXt (unext_micro) from scratch, as in the architecture comparison
# (benchmarks/compare_architectures.py: phantoms, real kidney 4x, real colon 4x, 20 CPU minutes
# of one thread, about 24 epochs). Large-intestine validation (6 real colon images of 3 patients
# and the 8 large-intestine validation phantoms) added it to the two colon members
# (docs/benchmarks.md, "The seeds' other methods").
[ -f "$DATA/kidney-train49/train.csv" ] || $PY benchmarks/compare_architectures.py prepare --data "$DATA"
[ -f "$RUNS/unext_micro/best.pt" ] || $PY benchmarks/compare_architectures.py train unext_micro \
    --budget 20 --data "$DATA" --runs "$RUNS"
$PY scripts/assemble_default_model.py "$RUNS" "$DATA"
# Calibrate the ensemble's threshold and minimum object area per organ on validation images:
# fresh phantoms (seeds 200-203, never trained on) for the other organs, and for kidney the
# stage-2/3 validation split (12 real kidney images and 3 kidney phantoms; stage 1 validated on
# another split, so some of them were among its training images).
MANIFEST=training/models/default/ensemble.yaml
$PY -m training.calibrate --model "$MANIFEST" --write \
    --data "$DATA/phantoms-hpa-val" "$DATA/phantoms-hubmap-val" \
    --organ spleen lung prostate
# the large intestine on the colon members' validation images (threshold 0.60 with UNeXt): 6 real colon images of 3 patients
# and the 8 large-intestine validation phantoms
$PY -m training.calibrate --model "$MANIFEST" --write --organ largeintestine \
    --data "$DATA/colon-val" "$DATA/phantoms-hpa-val" "$DATA/phantoms-hubmap-val"
$PY -m training.calibrate --model "$MANIFEST" --write --organ kidney --split-of "$RUNS/coat-k2/best.pt" \
    --data "$DATA/phantoms-hpa-train" "$DATA/phantoms-hubmap-train" "$DATA/kidney-dev"
