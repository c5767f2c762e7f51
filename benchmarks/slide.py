"""Whole-slide segmentation: memory, throughput against an in-memory baseline, background cost, and
two dask workers against one process - side by side in one run.

For each size S in ``--sizes`` a slide is built (Aperio-like SVS, tiled JPEG, 0.5 µm/px, levels
1, 1/4, 1/16) from scikit-image's IHC tissue mirrored tile by tile, with ``--tissue`` of its area
tissue (an ellipse) and the rest glass.  Each measurement runs in a FRESH subprocess, so every
peak memory figure is that run's own:

* ``slide``: :func:`segment_slide` of the whole slide into OME-Zarr (blocks of ``--block``):
  wall time, Mpx/s and tiles/s of the slide (the model's tiles, at its tile step, over the whole
  slide, glass included), blocks on tissue, and peak RSS growth over the process's RSS
  after the model is loaded (sampled every 20 ms; not ``ru_maxrss``, which Linux keeps across
  exec, so a child inherits the benchmark's own peak from building the slides);
* ``in-memory`` (the named baseline, same pixels): the slide's level 0 read into one numpy array,
  then ``Model.predict`` on it; only for sizes up to ``--baseline-max`` (it needs the whole image
  and its labels in memory; a larger size gets a row that says it was not run).  Its time
  excludes the read;
* ``blank``: a slide of the same size that is all glass: what background costs;
* ``local:2`` (``--cluster``, on the first size): the same slide on two dask worker processes;
  objects and instance F1@0.5 against the one-process result, and tiles/s per worker with a
  linear projection for N workers (a projection, not a measurement).

The last line compares the slide runs' peak memory growth at the smallest and largest size with
the size of the largest slide's labels as one array.

Run::

    python benchmarks/slide.py                           # 4096 and 8192, 50 % tissue
    python benchmarks/slide.py --sizes 20480,40960 --baseline-max 20480 --cluster ''   # the issue's sizes (~50 min)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def make_slide(path: Path, size: int, tissue: float) -> Path:
    """A ``size`` x ``size`` Aperio-like slide; ``tissue`` of it (an ellipse) IHC tissue, the rest glass."""
    import tifffile
    from skimage import data

    t = data.immunohistochemistry()
    tile = np.concatenate([np.concatenate([t, t[:, ::-1]], 1), np.concatenate([t[::-1], t[::-1, ::-1]], 1)], 0)
    r = np.sqrt(max(tissue, 1e-6) / np.pi) * size           # an ellipse (circle) of that area

    def rows():
        yy = np.arange(1024)[:, None]
        xx = np.arange(size)[None, :]
        for y0 in range(0, size, 1024):
            band = np.tile(tile, (1, size // 1024 + 1, 1))[:, :size].copy()
            inside = (yy + y0 - size / 2) ** 2 + (xx - size / 2) ** 2 <= r * r if tissue > 0 else \
                np.zeros((1024, size), bool)
            band[~inside] = 242
            yield band[: min(1024, size - y0)]

    # write level 0 band by band (the slide never sits in memory), then the smaller levels
    desc = (f"Aperio Image Library v12.0.15\n{size}x{size} [0,0 {size}x{size}] (256x256) JPEG/RGB Q=90|"
            "AppMag = 20|MPP = 0.5000|Filename = bench")
    jpeg = dict(compression="jpeg", photometric="rgb", metadata=None)
    small = {f: [] for f in (4, 16)}
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        # tifffile takes tiles row-major over the whole image: regroup by rows of tiles
        def ordered():
            for band in rows():
                for f in small:
                    small[f].append(band[::f, ::f])
                for y in range(0, band.shape[0], 256):
                    for x0 in range(0, size, 256):
                        yield band[y:y + 256, x0:x0 + 256]

        tw.write(ordered(), shape=(size, size, 3), dtype=np.uint8, tile=(256, 256), description=desc, **jpeg)
        thumb = np.concatenate(small[16], 0)
        tw.write(thumb, description=f"Aperio Image Library v12.0.15\n{size}x{size} -> thumbnail", **jpeg)
        for f in (4, 16):
            tw.write(np.concatenate(small[f], 0), tile=(256, 256), description=desc, **jpeg)
    return path


class PeakRSS:
    """Peak resident memory of this process while inside the ``with`` (sampled every 20 ms)."""

    def __enter__(self):
        import psutil

        self.proc = psutil.Process()
        self.base = self.proc.memory_info().rss
        self.peak = self.base
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self):
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self.proc.memory_info().rss)

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        # not ru_maxrss: Linux keeps it across exec, so a child started by a big parent inherits its peak

    @property
    def growth_mb(self) -> float:
        return (self.peak - self.base) / 2**20


def child(args) -> dict:
    """One measurement in this (fresh) process; prints one JSON line."""
    import segloop
    from segloop.core.formats.io.wsi import open_slide
    from segloop.core.inference.slide import segment_slide

    model = segloop.load_model(args.model, device="cpu")
    predict = {"normalization": {"kind": "hematoxylin"}} if model.spec.in_channels == 1 else {}
    out = Path(args.out)
    with open_slide(args.slide) as slide:
        n_px = int(slide.levels[0].shape[0]) * int(slide.levels[0].shape[1])
        if args.child == "in-memory":
            img = np.asarray(slide.levels[0])
            norm = predict.get("normalization")
            with PeakRSS() as mem:
                t0 = time.perf_counter()
                res = model.predict(img, normalization=norm, pixel_size=slide.mpp)
                secs = time.perf_counter() - t0
            return {"run": "in-memory", "seconds": secs, "mpx_s": n_px / 1e6 / secs, "objects": res.n_objects,
                    "tiles_predicted": res.tiles_predicted, "tiles_skipped": res.tiles_skipped,
                    "peak_growth_mb": mem.growth_mb, "note": "input and labels held in memory (not in growth)"}
        client = None
        if args.cluster:
            from segloop.core.inference.distributed import make_client

            client = make_client(args.cluster)
        with PeakRSS() as mem:
            t0 = time.perf_counter()
            res = segment_slide(slide, model, out, block=args.block, predict=predict, client=client)
            secs = time.perf_counter() - t0
        if client is not None:
            client.close()
    return {"run": args.child, "seconds": secs, "mpx_s": n_px / 1e6 / secs, "objects": res.n_objects,
            "blocks": res.blocks, "blocks_run": res.blocks_run, "peak_growth_mb": mem.growth_mb,
            "timings": res.timings, "tiles_predicted": res.tiles_predicted, "tiles_skipped": res.tiles_skipped}


def tile_step(model_name: str) -> int:
    """The model's tile step in pixels (tile size times one minus its overlap)."""
    import segloop

    tile = segloop.load_model(model_name, device="cpu").spec.tile
    return max(1, int(round(int(tile["size"]) * (1 - float(tile.get("overlap", 0))))))


def run_child(kind: str, slide: Path, out: Path, args, cluster: str | None = None) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", kind, "--slide", str(slide), "--out", str(out),
           "--model", args.model, "--block", str(args.block)] + (["--cluster", cluster] if cluster else [])
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"{kind} on {slide.name} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def f1_between(a: Path, b: Path) -> tuple[int, int, float]:
    import zarr

    from segloop.core.editing.metrics import instance_scores

    la = np.asarray(zarr.open_group(str(a), mode="r")["labels/nuclei/0"])
    lb = np.asarray(zarr.open_group(str(b), mode="r")["labels/nuclei/0"])
    return int(la.max()), int(lb.max()), float(instance_scores(la, lb)["f1@0.5"])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="4096,8192", help="slide sides in pixels (comma-separated)")
    ap.add_argument("--tissue", type=float, default=0.5, help="fraction of the slide that is tissue")
    ap.add_argument("--model", default="nuclei-unet", help="a 1-channel model runs on the hematoxylin channel")
    ap.add_argument("--block", type=int, default=4096)
    ap.add_argument("--baseline-max", type=int, default=8192, help="largest size for the in-memory baseline")
    ap.add_argument("--cluster", default="local:2", help="dask cluster compared on the first size ('' for none)")
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--slide", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        args.cluster = args.cluster if args.child == "cluster" else None
        print(json.dumps(child(args)))
        return 0
    sys.path.insert(0, str(HERE))
    from _machine import cpu_model

    sizes = [int(s) for s in args.sizes.split(",")]
    step = tile_step(args.model)
    rows, work = [], Path(tempfile.mkdtemp(prefix="segloop-slide-bench-"))
    for i, size in enumerate(sizes):
        slide = make_slide(work / f"s{size}.svs", size, args.tissue)
        blank = make_slide(work / f"blank{size}.svs", size, 0.0)
        one = run_child("slide", slide, work / f"s{size}.zarr", args)
        rows.append({"size": size, **one})
        rows.append({"size": size, **run_child("blank", blank, work / f"b{size}.zarr", args)})
        if size <= args.baseline_max:
            rows.append({"size": size, **run_child("in-memory", slide, work / "unused", args)})
        else:
            gb = size * size * (3 + 4 + 4) / 2**30            # RGB, the float input, uint32 labels
            rows.append({"size": size, "run": "in-memory", "skipped":
                         f"not run: size > --baseline-max {args.baseline_max} (needs > {gb:.0f} GB in memory)"})
        if i == 0 and args.cluster:
            two = run_child("cluster", slide, work / f"c{size}.zarr", args, cluster=args.cluster)
            na, nb, f1 = f1_between(work / f"s{size}.zarr", work / f"c{size}.zarr")
            n = int(args.cluster.split(":")[1])
            per_worker = two["mpx_s"] * 1e6 / step ** 2 / n
            two.update(objects_one_process=na, object_difference_pct=100 * abs(na - nb) / max(na, 1), f1_vs_one=f1,
                       mpx_s_per_worker=two["mpx_s"] / n, tiles_s_per_worker=per_worker,
                       projection=f"projection, not measured: ~{per_worker:.1f} tiles/s x N workers "
                                  f"(N = 8: ~{8 * per_worker:.0f} tiles/s) if each worker has its own cores")
            rows.append({"size": size, **two})
    for r in rows:
        if "mpx_s" in r:
            r["tiles_s"] = r["mpx_s"] * 1e6 / step ** 2
    print(f"machine: {cpu_model()}, {os.cpu_count()} cores; model {args.model} (tile step {step} px); "
          f"block {args.block}; tissue {args.tissue:.0%}")
    print(f"{'size':>7} {'run':>10} {'seconds':>8} {'Mpx/s':>7} {'tiles/s':>8} {'objects':>8} {'peak growth MB':>15}"
          "  notes")
    for r in rows:
        if "skipped" in r:
            print(f"{r['size']:>7} {r['run']:>10} {'-':>8} {'-':>7} {'-':>8} {'-':>8} {'-':>15}  {r['skipped']}")
            continue
        extra = ""
        if r["run"] == "cluster":
            extra = (f"peak growth: this process, not the workers; "
                     f"objects {r['objects']} vs {r['objects_one_process']} ({r['object_difference_pct']:.2f} %), "
                     f"F1 {r['f1_vs_one']:.4f}; {r['projection']}")
        elif "blocks" in r:
            extra = f"{r['blocks_run']} of {r['blocks']} blocks on tissue"
        else:
            extra = r.get("note", "")
        print(f"{r['size']:>7} {r['run']:>10} {r['seconds']:>8.1f} {r['mpx_s']:>7.2f} {r['tiles_s']:>8.1f} "
              f"{r['objects']:>8} {r['peak_growth_mb']:>15.0f}  {extra}")
    for r in rows:
        if "tiles_predicted" in r:
            print(f"{r['size']:>7} {r['run']:>10} model tiles run {r['tiles_predicted']}, skipped as background "
                  f"{r['tiles_skipped']}")
    for r in rows:
        if r.get("timings"):
            print(f"{r['size']:>7} {r['run']:>10} phases (s): "
                  + ", ".join(f"{k} {v:.1f}" for k, v in r["timings"].items()))
    growth = [(r["size"], r["peak_growth_mb"]) for r in rows if r["run"] == "slide"]
    if len(growth) > 1:
        (s0, g0), (s1, g1) = growth[0], growth[-1]
        labels_mb = s1 * s1 * 4 / 2**20
        print(f"peak RSS growth of segment_slide: {g0:.0f} MB at {s0} px, {g1:.0f} MB at {s1} px: "
              f"{g1 - g0:+.0f} MB for {(s1 / s0) ** 2:.0f}x the pixels (its labels as one uint32 array: "
              f"{labels_mb:.0f} MB)")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": cpu_model(), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
