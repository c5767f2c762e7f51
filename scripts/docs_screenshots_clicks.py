"""Take the click-to-segment screenshots used in the docs (run under a display; Xvfb is fine).

    xvfb-run -a -s "-screen 0 1600x1200x24" .venv/bin/python scripts/docs_screenshots_clicks.py \\
        [--model nuclei-click-unet] [--image ihc|bbbc007] [--out docs/images/clicks]

Opens a nuclei image that needs no download - scikit-image's ``immunohistochemistry`` (IHC tissue,
512 x 512 RGB; a one-channel model reads its hematoxylin channel) or segloop's BBBC007 fluorescence
nuclei - with an empty Labels layer, docks the Proofread widget, and uses its "click to segment"
section with the interactive model given by ``--model`` (a registered name or a package folder):

- ``clicks-candidate.png``: a positive click on a nucleus and a negative (Shift) click beside it,
  the candidate shown before it is accepted;
- ``clicks-accepted.png``: several nuclei accepted with one click each (Enter), as new labels;
- ``clicks-box.png``: a box drawn around a nucleus and its candidate.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parents[1] / "docs" / "images" / "clicks"


def _pump(app, seconds: float) -> None:
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        app.processEvents()
        time.sleep(0.01)


def _until(app, cond, timeout: float = 300.0) -> None:
    t0 = time.perf_counter()
    while not cond():
        app.processEvents()
        time.sleep(0.01)
        if time.perf_counter() - t0 > timeout:
            raise TimeoutError("the click model did not answer in time")
    _pump(app, 0.3)


def load_image(which: str) -> np.ndarray:
    if which == "ihc":
        from skimage import data

        return data.immunohistochemistry()
    import tifffile

    return tifffile.imread(Path(__file__).resolve().parents[1] / "src" / "segloop" / "data" / "bbbc007_A9_p10d.tif")


def nuclei_centres(image: np.ndarray, n: int) -> list[tuple[float, float]]:
    """Centres of ``n`` mid-sized nuclei near the image's centre (Otsu threshold on the nuclear stain)."""
    from skimage.color import rgb2hed
    from skimage.filters import gaussian, threshold_otsu
    from skimage.measure import label, regionprops

    stain = rgb2hed(image)[..., 0] if image.ndim == 3 else image.astype(np.float32)   # hematoxylin for RGB
    smooth = gaussian(stain, 1.0)
    props = [p for p in regionprops(label(smooth > threshold_otsu(smooth))) if 80 <= p.area <= 600]
    mid = np.asarray(image.shape[:2], float) / 2
    props.sort(key=lambda p: np.linalg.norm(np.asarray(p.centroid) - mid))
    return [tuple(float(c) for c in p.centroid) for p in props[:n]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="nuclei-click-unet", help="interactive model: a name or a package folder")
    parser.add_argument("--image", choices=("ihc", "bbbc007"), default="ihc",
                        help="ihc: scikit-image's immunohistochemistry; bbbc007: segloop's fluorescence nuclei")
    parser.add_argument("--out", type=Path, default=OUT, help="folder for the PNGs (default docs/images/clicks)")
    args = parser.parse_args(argv)

    from segloop._napari.click_mode import LOAD_PACKAGE
    from segloop._napari.model_pick import interactive_models

    if args.model not in interactive_models() and not Path(args.model).is_dir():
        print(f"no interactive model named or at {args.model!r}; known: {', '.join(interactive_models()) or 'none'}",
              file=sys.stderr)
        return 2

    import napari
    from qtpy.QtWidgets import QApplication
    args.out.mkdir(parents=True, exist_ok=True)
    image = load_image(args.image)
    viewer = napari.Viewer()
    viewer.window.resize(1500, 1150)
    app = QApplication.instance()
    viewer.add_image(image, name=args.image, rgb=image.ndim == 3)
    labels = viewer.add_labels(np.zeros(image.shape[:2], np.uint16), name="nuclei")
    _, widget = viewer.window.add_plugin_dock_widget("napari-segloop", "Proofread")
    section = widget.click_mode
    if args.model in interactive_models():
        section.model.value = args.model
    else:
        section.model.value = LOAD_PACKAGE
        section.package.value = args.model
    viewer.layers.selection.active = labels
    section.toggle.value = True

    centres = nuclei_centres(image, 5)
    (y, x) = centres[0]
    camera = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera
    camera.center = (y, x)
    camera.zoom = 6.0
    section.add_click((y, x))
    _until(app, lambda: not section.busy)
    section.add_click((y, x + 14), positive=False)               # Shift-click: beside the nucleus, not object
    _until(app, lambda: not section.busy)
    viewer.screenshot(str(args.out / "clicks-candidate.png"), canvas_only=False)

    section.accept()
    for cy, cx in centres[1:]:
        section.add_click((cy, cx))
        _until(app, lambda: not section.busy)
        section.accept()
    camera.center = tuple(np.mean(centres, axis=0))
    camera.zoom = 3.0
    _pump(app, 0.5)
    viewer.screenshot(str(args.out / "clicks-accepted.png"), canvas_only=False)

    by, bx = nuclei_centres(image, 8)[-1]
    shapes = viewer.add_shapes([np.array([[by - 12, bx - 12], [by + 12, bx + 12]])], shape_type="rectangle",
                               edge_color="cyan", face_color="transparent", edge_width=0.8, name="box")
    section.segment_box(shapes)
    _until(app, lambda: not section.busy)
    camera.center = (by, bx)
    camera.zoom = 6.0
    _pump(app, 0.5)
    viewer.screenshot(str(args.out / "clicks-box.png"), canvas_only=False)
    print(f"wrote {sorted(p.name for p in args.out.glob('clicks-*.png'))} to {args.out}")
    viewer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
