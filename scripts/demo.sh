#!/usr/bin/env bash
# Set up, then generate a kidney phantom slide (pyramidal OME-TIFF), its ground truth as a
# competition train.csv (RLE) and an overlay PNG, in runs/demo/ (or the folder given); then
# segment a real held-out kidney image (or, without ../shared, the phantom) and a real H&E colon
# image of a held-out patient with the bundled default model into runs/demo/segmented/:
# train.csv (RLE rows) and an overlay PNG of each image's outlines.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/demo}
bash scripts/setup.sh
.venv/bin/python -m training.synthetic --out "$out" --organs kidney --size 2048 --overlay
echo "slide:        $out/train_images/kidney_hpa_0.tiff"
echo "ground truth: $out/train.csv"
echo "overlay:      $out/overlays/kidney_hpa_0.png"
slide=../shared/data/hubmap-kidney-pas/train_images/250.tiff
[ -f "$slide" ] || slide="$out/train_images/kidney_hpa_0.tiff"
.venv/bin/napari-ftu segment "$slide" --organ kidney --out "$out/segmented" --overlay --overwrite
stem=$(basename "$slide" .tiff)
echo "segmented:    $out/segmented/train.csv, $out/segmented/$stem.overlay.png (default model)"
colon=../shared/data/ebhi-colon-normal/train_images/GTXC2012096-4-400-003.tiff
if [ -f "$colon" ]; then  # a patient the colon member never trained or was tuned on
  .venv/bin/napari-ftu segment "$colon" --organ largeintestine --out "$out/segmented" --overlay \
      --overwrite
  echo "colon:        $out/segmented/$(basename "$colon" .tiff).overlay.png (crypts)"
fi
echo "open it in napari: .venv/bin/napari-ftu $out/train_images/kidney_hpa_0.tiff"
