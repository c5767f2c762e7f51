"""Take the whole-slide screenshots used in docs/pathology.md (run under a display; Xvfb is fine).

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python scripts/docs_screenshots_wsi.py

Builds an Aperio-like slide (4096 x 6144 px, 0.5 µm/px, 3 levels) from scikit-image's IHC tissue
with a strip of glass, opens it with segloop's reader, segments the current view, a drawn polygon
and the whole slide in the Segment widget, and draws the GeoJSON export over the slide.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parents[1] / "docs" / "images" / "wsi"


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


def make_slide(path: Path) -> Path:
    import tifffile
    from skimage import data

    t = data.immunohistochemistry()
    row = np.concatenate([t if i % 2 == 0 else t[:, ::-1] for i in range(12)], axis=1)
    img = np.ascontiguousarray(np.concatenate([row if j % 2 == 0 else row[::-1] for j in range(8)], axis=0))
    yy, xx = np.mgrid[:img.shape[0], :img.shape[1]]
    glass = ((yy - 2048) / 2300.0) ** 2 + ((xx - 2600) / 3000.0) ** 2 > 1      # an elliptic piece of tissue
    img[glass] = 242
    h, w = img.shape[:2]
    desc = (f"Aperio Image Library v12.0.15\n{w}x{h} [0,0 {w}x{h}] (256x256) JPEG/RGB Q=90|AppMag = 20|"
            "MPP = 0.5000|Filename = case")
    jpeg = dict(compression="jpeg", photometric="rgb", metadata=None)
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        tw.write(img, tile=(256, 256), description=desc, **jpeg)
        tw.write(img[::16, ::16], description=f"Aperio Image Library v12.0.15\n{w}x{h} -> thumbnail", **jpeg)
        for f in (4, 16):
            tw.write(img[::f, ::f], tile=(256, 256), description=desc, **jpeg)
    return path


def main() -> None:
    import napari
    from qtpy.QtWidgets import QApplication

    from segloop.core.formats.io.geojson import read_geojson

    OUT.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="segloop-wsi-shots-"))
    slide = make_slide(work / "case.svs")
    viewer = napari.Viewer()
    viewer.window.resize(1500, 1000)
    app = QApplication.instance()
    viewer.open(str(slide), plugin="napari-segloop")
    layer = viewer.layers["case"]
    _, seg = viewer.window.add_plugin_dock_widget("napari-segloop", "Segment")
    seg.image.value = layer
    seg.modality.value = "he"              # IHC tissue: the H&E model reads its hematoxylin counterstain
    viewer.reset_view()
    _pump(app, 1.0)
    viewer.screenshot(str(OUT / "slide-open.png"), canvas_only=False)

    # a region: zoom in, segment what is on screen
    camera = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera
    camera.center = (1000.0, 1300.0)
    camera.zoom = 4.0
    _pump(app, 1.0)
    seg.scope.value = "current view"
    seg.run()
    _until(app, lambda: not seg.running)
    viewer.screenshot(str(OUT / "slide-region.png"), canvas_only=False)
    viewer.layers.remove(viewer.layers[-1])

    # a drawn polygon: the nuclei inside it, whole
    from segloop._napari.io import micrometer_units

    outline = [[880.0, 1150.0], [860.0, 1390.0], [980.0, 1460.0], [1130.0, 1380.0], [1120.0, 1200.0],
               [1010.0, 1230.0]]                                          # µm (y, x)
    roi = viewer.add_shapes([outline], shape_type="polygon", edge_color="cyan", face_color="transparent",
                            edge_width=2.0, name="region", **micrometer_units())
    seg.image.value = layer
    seg.scope.value = "shapes region"
    seg.run()
    _until(app, lambda: not seg.running)
    viewer.layers.move(viewer.layers.index(roi), len(viewer.layers))      # the outline above the labels
    camera.center = (995.0, 1305.0)                                       # the whole outline in view
    camera.zoom = 2.2
    _pump(app, 1.0)
    viewer.screenshot(str(OUT / "slide-polygon.png"), canvas_only=False)
    viewer.layers.remove(viewer.layers[-2])                                # the labels
    viewer.layers.remove(roi)

    # the whole slide, into an OME-Zarr next to it
    seg.scope.value = "whole image"
    seg.run()
    _until(app, lambda: not seg.running)
    viewer.reset_view()
    _pump(app, 1.0)
    viewer.screenshot(str(OUT / "slide-segmented.png"), canvas_only=False)

    # the GeoJSON export (what QuPath imports) drawn over the slide
    import subprocess
    import sys

    subprocess.run([sys.executable, "-m", "segloop.cli", "predict", str(slide), "--modality", "he", "--out", str(work / "export"), "--format", "geojson",
                    "--region", "2000,1600,800,600"], check=True)
    feats = read_geojson(work / "export" / "case.geojson")
    polys = [np.asarray(f["geometry"]["coordinates"][0])[:, ::-1] * 0.5 for f in feats
             if f["geometry"]["type"] == "Polygon"]                       # (x, y) px -> (y, x) µm
    for la in list(viewer.layers)[1:]:
        la.visible = False
    viewer.add_shapes(polys, shape_type="polygon", edge_color="yellow", face_color="transparent", edge_width=0.6,
                      name="case.geojson", **micrometer_units())
    camera.center = (1100.0, 1200.0)
    camera.zoom = 3.0
    _pump(app, 1.0)
    viewer.screenshot(str(OUT / "slide-geojson.png"), canvas_only=False)
    viewer.close()
    print(f"wrote {sorted(p.name for p in OUT.glob('*.png'))}")


if __name__ == "__main__":
    main()
