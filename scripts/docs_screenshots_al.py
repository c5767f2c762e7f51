"""Take the active-learning screenshots used in docs/active-learning.md (run under a display; Xvfb is fine).

    xvfb-run -a -s "-screen 0 1600x1100x24" .venv/bin/python scripts/docs_screenshots_al.py

What a user does: segment the bundled BBBC007 image with nuclei-unet, open the Active learning
widget, Find regions (entropy, 128-px tiles, budget 6), then Next, Next, Skip.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "docs" / "images"


def _pump(app, seconds: float) -> None:
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        app.processEvents()
        time.sleep(0.01)


def main() -> None:
    import napari
    import tifffile
    from qtpy.QtWidgets import QApplication

    import segloop
    from segloop._napari.active_widget import ActiveLearningWidget
    from segloop._napari.correction_tracking import track
    from segloop.core.editing.corrections import PredictionSnapshot

    app = QApplication.instance() or QApplication([])
    data = Path(segloop.__file__).parent / "data"
    v = napari.Viewer(show=True)
    v.window._qt_window.resize(1500, 1000)
    img = tifffile.imread(data / "bbbc007_A9_p10d.tif")
    res = segloop.load_model("nuclei-unet", device="cpu").predict(img)
    v.add_image(img, name="nuclei")
    lab = v.add_labels(res.labels, name="nuclei · nuclei-unet v1.0.0",
                       metadata={"segloop": {**res.provenance, "source_layer": "nuclei"}})
    track(lab, snapshot=PredictionSnapshot(res.labels))
    w = ActiveLearningWidget(v)
    v.window.add_dock_widget(w, name="Active learning")
    w.device.value = "cpu"
    w.budget.value = 6
    w.size.value = 128
    w.folder.value = str(Path(tempfile.mkdtemp()) / "training")
    _pump(app, 0.3)
    w.find()
    while w.running:
        _pump(app, 0.1)
    w.next()
    w.next()
    w.skip()
    _pump(app, 1.0)
    OUT.mkdir(parents=True, exist_ok=True)
    v.screenshot(str(OUT / "al-widget-region.png"), canvas_only=False)
    v.reset_view()
    _pump(app, 0.5)
    v.screenshot(str(OUT / "al-widget-overview.png"), canvas_only=False)
    print(w.status.value, "|", w.reviewed_text.value)
    v.close()


if __name__ == "__main__":
    main()
