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
    ct = sample == "liver_ct"
    viewer.open_sample("napari-segloop", sample)
    _, widget = viewer.window.add_plugin_dock_widget("napari-segloop", "Segment")
    if ct:
        from segloop import list_models

        viewer.window.add_plugin_dock_widget("napari-segloop", "CT tools")
        widget.image.value = viewer.layers[0]
        model = model or next((m for m in list_models() if m.startswith("ct-liver")), None)
        viewer.dims.set_current_step(0, viewer.layers[0].data.shape[0] // 2)
        for layer in viewer.layers[1:]:
            layer.visible = False                 # the reference labels: compare later
        viewer.reset_view()
    if model:
        widget.model.value = model
    outcome = {"code": 0}
    if ct:
        # the radiologist's flow: live per-slice segmentation while scrolling
        widget.live.value = True
        live = widget._live
        if live is None:
            viewer.close()
            return 1
        if screenshot is not None:
            def check():
                if live.done:
                    labels = [la for la in viewer.layers if la.name.endswith("(live)")]
                    outcome["code"] = 0 if labels else 1
                    viewer.screenshot(str(Path(screenshot)), canvas_only=False)
                    viewer.close()
                else:
                    QTimer.singleShot(500, check)

            QTimer.singleShot(1000, check)
            QTimer.singleShot(int(timeout_s * 1000), lambda: (outcome.update(code=1), viewer.close()))
        napari.run()
        return outcome["code"]

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
