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
    segment_sample("ihc", uncertainty=False, shot="segment-ihc.png")
    viewer.close()
    print(f"wrote screenshots to {OUT}")


if __name__ == "__main__":
    main()
