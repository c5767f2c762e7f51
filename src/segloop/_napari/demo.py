"""``segloop demo``: napari on real sample data, segmented with the bundled model."""

from __future__ import annotations

from pathlib import Path


def run_demo(*, sample: str = "nuclei", model: str | None = None, screenshot: str | None = None,
             timeout_s: float = 300.0) -> int:
    """Open napari, load a sample, open the Segment widget and press Segment.

    With ``screenshot``, save a screenshot of the whole window once the labels
    are shown, then close napari and return (for headless checks).
    """
    import napari
    from qtpy.QtCore import QTimer

    viewer = napari.Viewer(title="segloop demo")
    viewer.window.resize(1500, 950)
    viewer.open_sample("napari-segloop", sample)
    _, widget = viewer.window.add_plugin_dock_widget("napari-segloop", "Segment")
    if model:
        widget.model.value = model
    outcome = {"code": 0}

    def finished():
        if screenshot is None:
            return
        labels = [layer for layer in viewer.layers if layer._type_string == "labels"]
        if not labels:
            outcome["code"] = 1
        QTimer.singleShot(300, lambda: (viewer.screenshot(str(Path(screenshot)), canvas_only=False),
                                        viewer.close()))

    widget.run()
    if widget._worker is None:          # did not start: the error was shown
        viewer.close()
        return 1
    widget._worker.finished.connect(finished)
    if screenshot is not None:
        QTimer.singleShot(int(timeout_s * 1000), lambda: (outcome.update(code=1), viewer.close()))
    napari.run()
    return outcome["code"]
