#!/usr/bin/env bash
# Set up a virtual environment (if needed) and segment real sample images with the bundled model.
# Results (labels, uncertainty, overlay PNG, provenance) land in ./results/.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${SEGLOOP_VENV:-.venv}
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -c "import torch" 2>/dev/null || "$VENV/bin/python" -m pip install -q "torch==2.13.0"
"$VENV/bin/python" -m pip install -q -e ".[all]"
SEG="$VENV/bin/segloop"
"$SEG" info nuclei-unet
# Fluorescence nuclei (BBBC007, CC0; not in the model's training set)
"$SEG" predict src/segloop/data/bbbc007_A9_p10d.tif --model nuclei-unet --out results --uncertainty --overlay --overwrite
# The same nuclei model on bright-field IHC, through hematoxylin colour deconvolution
IHC=$("$VENV/bin/python" -c "import skimage, pathlib; print(pathlib.Path(skimage.__file__).parent / 'data' / 'ihc.png')")
"$SEG" predict "$IHC" --model nuclei-unet --stain hematoxylin --out results --overlay --overwrite
echo "Open results/*_overlay.png to see the outlines; results/*_labels.tif are the label images."
