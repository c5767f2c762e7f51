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

    viewer.open_sample("napari-segloop", "nuclei")
    widget.image.value = viewer.layers[-1]
    widget.uncertainty.value = True
    widget.run()
    _wait(app, widget)
    viewer.reset_view()
    viewer.screenshot(str(OUT / "segment-fluorescence.png"), canvas_only=False)
    unc = viewer.layers[-1]
    unc.visible = True
    viewer.layers[-2].visible = False
    viewer.screenshot(str(OUT / "segment-uncertainty.png"), canvas_only=True)

    viewer.layers.clear()
    viewer.open_sample("napari-segloop", "ihc")
    widget.image.value = viewer.layers[-1]
    widget.uncertainty.value = False
    widget.run()
    _wait(app, widget)
    viewer.reset_view()
    viewer.screenshot(str(OUT / "segment-ihc.png"), canvas_only=False)
    viewer.close()
    print(f"wrote screenshots to {OUT}")


if __name__ == "__main__":
    main()
