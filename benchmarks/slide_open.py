"""Opening a whole slide in napari: time to the first view, memory, and panning at full resolution.

Run under a display (Xvfb is fine)::

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python benchmarks/slide_open.py

A ``--size`` square Aperio-like SVS (default 100000 px a side, 0.25 µm/px, levels 1, 1/4, 1/16,
1/64, 256 px JPEG tiles of scikit-image's IHC tissue) is written from JPEG tiles encoded once (so
building it takes seconds and never holds the 30 GB level in memory).  Then, in this process:

* **segloop**: ``viewer.open(slide, plugin="napari-segloop")``, then a canvas screenshot (which
  renders the frame and reads it back; it must show tissue): seconds until the first view is on
  screen, and the RSS growth over the viewer's own.  Targets: < 2 s and < 200 MB.
* **panning**: ``--pans`` moves of the camera at full resolution (level 0 on screen, each to an
  area not seen before); per pan the time until the new view is drawn, and the longest gap of
  the Qt event loop during the pans (smoothness).
* named baseline **OpenSlide read**: ``read_region`` of the same number of level-0 pixels as one
  screen of the pans, in the same run: the cost of decoding what is shown, without napari.

Last lines are ``key=value`` figures.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
MPP = 0.25


def encoded_tiles(quality: int = 75) -> tuple[list[bytes], int]:
    """JPEG tiles (256 px, YCbCr as tifffile writes them) of the IHC image: 4 quadrants x 4 flips."""
    import tifffile
    from skimage import data

    t = data.immunohistochemistry()
    quads = [t[y:y + 256, x:x + 256] for y in (0, 256) for x in (0, 256)]
    tiles = [np.ascontiguousarray(f(q)) for q in quads for f in (lambda a: a, np.fliplr, np.flipud,
                                                                  lambda a: a[::-1, ::-1])]
    buf = io.BytesIO()
    tifffile.imwrite(buf, np.concatenate(tiles, axis=0), tile=(256, 256), compression="jpeg",
                     compressionargs={"level": quality}, photometric="rgb")
    buf.seek(0)
    with tifffile.TiffFile(buf) as tf:
        page, fh = tf.pages[0], tf.filehandle
        out = []
        for off, n in zip(page.dataoffsets, page.databytecounts):
            fh.seek(off)
            out.append(fh.read(n))
    return out, len(tiles)


def make_slide(path: Path, size: int) -> Path:
    """An Aperio-like SVS of ``size`` x ``size`` px: level 0, a thumbnail, levels 1/4, 1/16, 1/64."""
    import tifffile

    tiles, k = encoded_tiles()
    rng = np.random.default_rng(0)

    def level(n):
        count = ((n + 255) // 256) ** 2
        picks = rng.integers(0, k, count)
        return (tiles[i] for i in picks)

    desc = (f"Aperio Image Library v12.0.15\n{size}x{size} [0,0 {size}x{size}] (256x256) JPEG/RGB Q=75|"
            f"AppMag = 40|MPP = {MPP:.4f}|Filename = bench")
    jpeg = dict(compression="jpeg", photometric="rgb", metadata=None, dtype=np.uint8)
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        tw.write(level(size), shape=(size, size, 3), tile=(256, 256), description=desc, **jpeg)
        tw.write(np.full((size // 256, size // 256, 3), 220, np.uint8),
                 description=f"Aperio Image Library v12.0.15\n{size}x{size} -> thumbnail",
                 compression="jpeg", photometric="rgb", metadata=None)
        for f in (4, 16, 64):
            n = -(-size // f)
            tw.write(level(n), shape=(n, n, 3), tile=(256, 256), description=desc, **jpeg)
    return path


class Frames:
    """Times of the canvas's draws and of the layer's slicing (``set_data``), and event-loop gaps."""

    def __init__(self, viewer):
        from qtpy.QtCore import QTimer

        canvas = viewer.window._qt_viewer.canvas
        scene = getattr(canvas, "_scene_canvas", canvas)
        scene.events.draw.connect(lambda e: self.draws.append(time.perf_counter()))
        self.draws: list[float] = []
        self.sliced: list[float] = []
        self.ticks: list[float] = []
        self.timer = QTimer()
        self.timer.setInterval(5)
        self.timer.timeout.connect(lambda: self.ticks.append(time.perf_counter()))
        self.timer.start()

    def watch(self, layer):
        layer.events.set_data.connect(lambda e: self.sliced.append(time.perf_counter()))

    def drawn_after(self, t0: float, app, settle: float = 1.0) -> float:
        """Seconds from ``t0`` to the first draw after the last slicing since ``t0`` (waits ``settle`` s
        of quiet after it)."""
        while True:
            t_end = time.perf_counter() + settle
            n = len(self.sliced)
            while time.perf_counter() < t_end:
                app.processEvents()
                time.sleep(0.001)
            if len(self.sliced) == n:
                break
        last = max([t0] + [t for t in self.sliced if t >= t0])
        after = [t for t in self.draws if t >= last]
        if not after:
            raise TimeoutError("napari drew no frame after slicing the slide")
        return after[0] - t0

    def longest_gap(self, t0: float, t1: float) -> float:
        ts = np.array([t for t in self.ticks if t0 <= t <= t1])
        return float(np.diff(ts).max()) if len(ts) > 1 else 0.0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=100_000, help="slide side in pixels")
    ap.add_argument("--pans", type=int, default=8, help="camera moves at full resolution")
    ap.add_argument("--keep", default=None, help="write the slide here and keep it (default: a temp folder)")
    a = ap.parse_args(argv)
    if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY") or sys.platform == "darwin"):
        print("needs a display: run under xvfb-run -a", file=sys.stderr)
        return 2
    import napari
    import openslide
    import psutil
    from qtpy.QtWidgets import QApplication

    sys.path.insert(0, str(HERE))
    from _machine import cpu_model

    work = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="segloop-slide-open-"))
    work.mkdir(parents=True, exist_ok=True)
    path = work / f"bench{a.size}.svs"
    t = time.perf_counter()
    if not path.is_file():
        make_slide(path, a.size)
    print(f"slide {a.size} x {a.size} px ({path.stat().st_size / 2**30:.1f} GB on disk), built in "
          f"{time.perf_counter() - t:.0f} s; machine: {cpu_model()}, {os.cpu_count()} cores")
    os.sync()                                           # the slide on disk before it is opened

    viewer = napari.Viewer(show=True)
    app = QApplication.instance()
    viewer.window._qt_window.resize(1600, 1000)
    frames = Frames(viewer)
    t_end = time.perf_counter() + 1.0
    while time.perf_counter() < t_end:                  # the empty viewer settles first
        app.processEvents()
        time.sleep(0.001)
    proc = psutil.Process()
    rss0 = proc.memory_info().rss

    t0 = time.perf_counter()
    viewer.open(str(path), plugin="napari-segloop")       # napari slices the new layer before it returns
    opened = time.perf_counter() - t0
    shot = viewer.screenshot(canvas_only=True, flash=False)   # renders the frame and reads it back
    first = time.perf_counter() - t0
    layer = viewer.layers[-1]
    frames.watch(layer)
    tissue = float((shot[..., :3].astype(int).std(axis=-1) > 20).mean())   # coloured (stained) pixels
    assert tissue > 0.05, f"the first frame shows no tissue ({tissue:.1%} coloured pixels)"
    growth = (proc.memory_info().rss - rss0) / 2**20
    assert layer.multiscale, "the slide did not open as a multiscale layer"

    # pans at full resolution: one screen pixel per level-0 pixel, to places not seen yet
    cam = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera   # napari >= 0.9 / older
    cam.zoom = 1 / MPP
    rng = np.random.default_rng(1)
    frames.drawn_after(time.perf_counter(), app)
    pans, t_pans = [], time.perf_counter()
    for _ in range(a.pans):
        y, x = rng.uniform(0.1, 0.9, 2) * a.size * MPP
        tp = time.perf_counter()
        cam.center = (y, x)
        pans.append(frames.drawn_after(tp, app, settle=0.5))
    gap = frames.longest_gap(t_pans, time.perf_counter())
    level_shown = layer.data_level
    canvas = viewer.window._qt_viewer.canvas.size
    h, w = (int(v) for v in canvas) if canvas else (1000, 1600)
    growth_after = (proc.memory_info().rss - rss0) / 2**20
    viewer.close()

    # named baseline: OpenSlide decoding one screen of level-0 pixels, 3 places
    slide = openslide.OpenSlide(str(path))
    reads = []
    for _ in range(3):
        y, x = (rng.uniform(0.1, 0.9, 2) * a.size).astype(int)
        tr = time.perf_counter()
        slide.read_region((int(x), int(y)), 0, (w, h))
        reads.append(time.perf_counter() - tr)
    slide.close()

    print(f"segloop: viewer.open returned in {opened:.2f} s; first view rendered (screenshot) at {first:.2f} s, "
          f"{tissue:.0%} of it tissue; RSS growth {growth:.0f} MB "
          f"({growth_after:.0f} MB after {a.pans} pans)")
    print(f"panning at full resolution (level {level_shown} on screen, {w} x {h} canvas): median "
          f"{np.median(pans) * 1e3:.0f} ms, worst {max(pans) * 1e3:.0f} ms per new view; longest event-loop "
          f"gap {gap * 1e3:.0f} ms")
    print(f"baseline 'OpenSlide read' of one screen ({w} x {h} level-0 px): median {np.median(reads) * 1e3:.0f} ms")
    print(f"first_view_s={first:.2f} {'PASS' if first < 2 else 'MISS'} (target < 2)")
    print(f"open_rss_growth_mb={growth:.0f} {'PASS' if growth < 200 else 'MISS'} (target < 200)")
    print(f"pan_median_ms={np.median(pans) * 1e3:.0f}")
    print(f"pan_worst_ms={max(pans) * 1e3:.0f}")
    print(f"baseline_openslide_screen_ms={np.median(reads) * 1e3:.0f}")
    if not a.keep:
        path.unlink()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
