#!/usr/bin/env bash
# The datasets every training script and benchmark here uses, under runs/data/:
#   phantoms-{hpa,hubmap}-{train,val,test}  synthetic phantoms of all five organs (disjoint
#                                       seeds); -val only calibrates the default ensemble
#   kidney-dev / kidney-test            the real HuBMAP PAS kidney images (../shared), split by
#                                       a spatial block; kidney-test is never trained or tuned on
#   kidney-hitl10                       10 development images for the human-in-the-loop figure
#   colon-{dev,train,val,test,hitl10}   the real EBHI colon images, split by patient
#                                       (scripts/split_colon.py); colon-test is never trained or tuned on
set -euo pipefail
PY=${PYTHON:-.venv/bin/python}
DATA=${DATA:-runs/data}
$PY scripts/split_kidney.py --out "$DATA"
$PY scripts/split_colon.py --out "$DATA"
# each phantom covers 800 um at its domain's pixel size for the organ (HuBMAP prostate: 6.263 um/px)
make() {
  [ -f "$DATA/$1/train.csv" ] || $PY -m training.synthetic --out "$DATA/$1" --side-um 800 "${@:2}"
}
make phantoms-hpa-train --domain hpa --per-organ 10 --seed 0
make phantoms-hubmap-train --domain hubmap --per-organ 6 --seed 0
make phantoms-hpa-val --domain hpa --per-organ 4 --seed 200
make phantoms-hubmap-val --domain hubmap --per-organ 4 --seed 200
make phantoms-hpa-test --domain hpa --per-organ 4 --seed 100
make phantoms-hubmap-test --domain hubmap --per-organ 4 --seed 100
