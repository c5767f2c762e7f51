"""Take the contour and seed-model screenshots of docs/radiology.md (run under a display; Xvfb is fine).

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python scripts/docs_screenshots_radiology.py \
        --rtstruct .data/src/lung-nsclc/LUNG1-001/mask_rtstruct/1-1.dcm \
        --brats .data/src/brats2013 --brain-model mri-brain-tumour-segunet25d

Needs local copies of the public data (docs/data.md §9); nothing is downloaded.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "docs" / "images" / "radiology"


def _pump(app, seconds: float) -> None:
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        app.processEvents()
        time.sleep(0.01)


def _until(app, cond, timeout=900.0) -> None:
    t0 = time.perf_counter()
    while not cond():
        app.processEvents()
        time.sleep(0.02)
        if time.perf_counter() - t0 > timeout:
            raise TimeoutError
    _pump(app, 0.5)


def main(argv=None) -> None:
    import napari
    import numpy as np
    from qtpy.QtWidgets import QApplication

    ap = argparse.ArgumentParser()
    ap.add_argument("--rtstruct", type=Path, required=True)
    ap.add_argument("--brats", type=Path, required=True, help="the deepmedic clone (or its BraTS folder)")
    ap.add_argument("--brain-model", default="mri-brain-tumour-segunet25d")
    a = ap.parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    app = QApplication.instance() or QApplication([])

    # 1. an RTSTRUCT dropped onto napari: the CT it was drawn on, with its structures
    viewer = napari.Viewer()
    viewer.window.resize(1500, 1000)
    viewer.open(str(a.rtstruct), plugin="napari-segloop")
    labels = [ly for ly in viewer.layers if ly._type_string == "labels"][0]
    z = int(np.argmax((np.asarray(labels.data) == 1).sum((1, 2))))          # the GTV's largest slice
    viewer.dims.set_current_step(0, z)
    viewer.reset_view()
    _pump(app, 1.0)
    viewer.screenshot(str(OUT / "rtstruct-napari.png"), canvas_only=False)
    viewer.close()

    # 2. a BraTS test case segmented by the brain model in the Segment widget
    from segloop._napari.segment_widget import SegmentWidget
    from segloop.core.formats.io import read_volume

    case = sorted(a.brats.glob("**/test/brats_2013_pat0001_1"))[0]
    viewer = napari.Viewer()
    viewer.window.resize(1500, 1000)
    layers = []
    for seq in ("Flair", "T1c"):                 # each sequence as its own layer, as a person opens them
        vol, info = read_volume(next(case.glob(f"{seq}_*.nii.gz")), lazy=False)
        info.modality = "MR"
        layers.append(viewer.add_image(np.asarray(vol), name=f"pat0001 {seq}", scale=info.spacing,
                                       metadata={"segloop_volume": info}, colormap="gray"))
    layers[1].visible = False
    w = SegmentWidget(viewer)
    viewer.window.add_dock_widget(w, name="Segment")
    w.image.value = layers[0]
    w.model.value = a.brain_model                # 'channel 2' is pre-filled with the T1c layer
    w.scope.value = "whole image"
    w.run()
    _until(app, lambda: not w.running)
    z = 80
    viewer.dims.set_current_step(0, z)
    viewer.reset_view()
    _pump(app, 1.0)
    viewer.screenshot(str(OUT / "brain-segment.png"), canvas_only=False)
    viewer.close()
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
