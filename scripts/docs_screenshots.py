"""Take the screenshots used in docs/ (run under a display; Xvfb is fine).

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python scripts/docs_screenshots.py
"""

from __future__ import annotations

import time
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "docs" / "images"


def _wait(app, widget, timeout=600):
    t0 = time.perf_counter()
    while widget.running:
        app.processEvents()
        time.sleep(0.01)
        if time.perf_counter() - t0 > timeout:
            raise TimeoutError
    for _ in range(20):
        app.processEvents()


def main() -> None:
    import napari
    from qtpy.QtWidgets import QApplication

    OUT.mkdir(parents=True, exist_ok=True)
    viewer = napari.Viewer()
    viewer.window.resize(1500, 950)
    app = QApplication.instance()
    _, widget = viewer.window.add_plugin_dock_widget("napari-segloop", "Segment")

    def segment_sample(sample: str, *, uncertainty: bool, shot: str) -> None:
        viewer.layers.clear()
        viewer.open_sample("napari-segloop", sample)
        widget.image.value = viewer.layers[-1]
        widget.uncertainty.value = uncertainty
        widget.run()
        _wait(app, widget)
        viewer.reset_view()
        viewer.screenshot(str(OUT / shot), canvas_only=False)

    segment_sample("nuclei", uncertainty=True, shot="segment-fluorescence.png")
    viewer.layers[-1].visible = True          # the uncertainty layer, on its own
    viewer.layers[-2].visible = False
    viewer.screenshot(str(OUT / "segment-uncertainty.png"), canvas_only=True)
    proofread_and_export(viewer, app)
    segment_sample("ihc", uncertainty=False, shot="segment-ihc.png")
    viewer.close()
    print(f"wrote screenshots to {OUT}")


def proofread_and_export(viewer, app) -> None:
    """Correct the fluorescence result a little, show the reviewed overlay, and export it."""
    import tempfile

    import numpy as np


    labels = next(layer for layer in viewer.layers if layer._type_string == "labels")
    image = next(layer for layer in viewer.layers if layer._type_string == "image")
    labels.visible = True
    for layer in viewer.layers:
        if layer.name.endswith("uncertainty"):
            layer.visible = False
    pdock, pw = viewer.window.add_plugin_dock_widget("napari-segloop", "Proofread")
    viewer.layers.selection.active = labels
    # two neighbouring nuclei -> merge; then click two points of the merged object and split it back
    ids = [i for i in np.unique(labels.data[150:300, 150:300]) if i][:2]
    for i in ids:
        yy, xx = np.nonzero(labels.data == i)
        pw.click(int(i), (float(yy.mean()), float(xx.mean())))
    pw.merge()
    big = int(np.bincount(labels.data.ravel())[1:].argmax()) + 1
    pw.click(big, tuple(float(c) for c in np.argwhere(labels.data == big)[0]))
    pw.delete()
    viewer.camera.center = (120, 120)          # look closely at the top-left quarter, mark it reviewed
    viewer.camera.zoom = viewer.camera.zoom * 2.2
    for _ in range(10):
        app.processEvents()
    pw.mark_view()
    viewer.reset_view()
    pw.overlay.value = True
    for _ in range(20):
        app.processEvents()
    viewer.screenshot(str(OUT / "proofread.png"), canvas_only=False)
    pw.overlay.value = False
    pw.mark_view()                             # the whole image checked: everything reviewed before export
    edock, ew = viewer.window.add_plugin_dock_widget("napari-segloop", "Export to training folder")
    ew.image.value = image
    ew.labels.value = labels
    ew.folder.value = str(Path(tempfile.mkdtemp()) / "corrections")
    ew.what.value = "whole image"
    ew.export()
    t0 = time.perf_counter()
    while ew._worker is not None and time.perf_counter() - t0 < 60:
        app.processEvents()
        time.sleep(0.01)
    for _ in range(20):
        app.processEvents()
    viewer.screenshot(str(OUT / "export.png"), canvas_only=False)
    pw.overlay.value = False
    viewer.window.remove_dock_widget(pdock)
    viewer.window.remove_dock_widget(edock)
    finetune_on(viewer, app, Path(ew.folder.value))


def finetune_on(viewer, app, folder: Path) -> None:
    """A short fine-tune of the bundled model on the folder just exported (a real run, ~2 minutes)."""
    fdock, fw = viewer.window.add_plugin_dock_widget("napari-segloop", "Fine-tune")
    fw.folder.value = str(folder)
    fw.steps.value = 80
    fw.patch.value = 128
    fw.batch.value = 4
    fw.device.value = "cpu"
    fw.start()
    t0 = time.perf_counter()
    while fw.running and time.perf_counter() - t0 < 900:
        app.processEvents()
        time.sleep(0.02)
    for _ in range(20):
        app.processEvents()
    viewer.screenshot(str(OUT / "finetune.png"), canvas_only=False)
    viewer.window.remove_dock_widget(fdock)


if __name__ == "__main__":
    main()
