#!/usr/bin/env bash
# Create .venv (once) and install napari-ftu in it, editable, with the dev extra. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
# torch comes from PyPI as its CUDA build (several GB on a first install): PyPI's torchvision,
# which timm needs, only works with that build.
.venv/bin/python -m pip install --quiet --progress-bar off -e ".[dev]"
