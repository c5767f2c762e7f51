#!/usr/bin/env bash
# Set up a virtual environment (if needed), segment real sample images from the command line,
# then open napari on the sample and segment it there (`segloop demo`).
# Results (labels, uncertainty, overlay PNGs, provenance) land in ./results/.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${SEGLOOP_VENV:-.venv}
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -c "import torch" 2>/dev/null || "$VENV/bin/python" -m pip install -q "torch==2.13.0"
"$VENV/bin/python" -m pip install -q -e ".[all]"
SEG="$VENV/bin/segloop"
"$SEG" info nuclei-unet
# Fluorescence nuclei (BBBC007, CC0; held out from the model's training)
"$SEG" predict src/segloop/data/bbbc007_A9_p10d.tif --model nuclei-unet --out results --uncertainty --overlay --overwrite
# Cross-domain: the same fluorescence model on bright-field IHC through hematoxylin deconvolution.
# Expect a rough result: this is what correcting and fine-tuning are for.
IHC=$("$VENV/bin/python" -c "import skimage, pathlib; print(pathlib.Path(skimage.__file__).parent / 'data' / 'ihc.png')")
"$SEG" predict "$IHC" --model nuclei-unet --stain hematoxylin --out results --overlay --overwrite
echo "Outlines: results/*_overlay.png; label images: results/*_labels.tif"
# napari: the Segment widget on the sample image
if [ -n "${DISPLAY:-}${WAYLAND_DISPLAY:-}" ] || [ "$(uname)" = "Darwin" ]; then
  "$SEG" demo
elif command -v xvfb-run >/dev/null 2>&1; then
  xvfb-run -a -s "-screen 0 1600x1000x24" "$SEG" demo --screenshot results/demo.png
  echo "No display: napari ran off-screen; see results/demo.png"
else
  echo "No display: run 'segloop demo' on a machine with a screen to open napari."
fi
