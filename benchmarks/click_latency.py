"""Milliseconds per click against image size: a click model reads only a window around the prompt.

Run
---
``python benchmarks/click_latency.py [--model nuclei-click-unet] [--sizes 512,4096,20000]
[--clicks 30] [--threads 2] [--device cpu] [--json OUT]``

For each size a random uint8 image of that side is written to a memory-mapped TIFF in a
temporary folder (a 20,000² image is 400 MB on disk, never read whole), the model's
normalizer is fitted once (as napari does per layer), and ``--clicks`` clicks at random places
are timed one by one (``segment_crop``: reading the window, normalizing, the network, mapping
back). The **baseline** is the smallest size in the same run: the figure to read is the ratio
of each size's median to it (1.0 = the cost does not grow with the image). Also printed: the
95th percentile, and the time of the one-off normalizer fit.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _image(path: Path, side: int, seed: int) -> np.ndarray:
    import tifffile

    mm = tifffile.memmap(path, shape=(side, side), dtype=np.uint8)
    rng = np.random.default_rng(seed)
    step = 4096
    for r in range(0, side, step):
        mm[r:r + step] = rng.integers(0, 255, (min(step, side - r), side), dtype=np.uint8)
    mm.flush()
    return tifffile.memmap(path, mode="r")


def measure(model, side: int, clicks: int, seed: int, folder: Path) -> dict:
    img = _image(folder / f"img_{side}.tif", side, seed)
    t0 = time.perf_counter()
    norm = model.normalizer_for(img, channel_axis=None)
    fit_ms = (time.perf_counter() - t0) * 1e3
    rng = np.random.default_rng(seed)
    model.segment_crop(img, positive=[(side // 2, side // 2)], normalizer=norm, channel_axis=None)   # warm-up
    ms = []
    for _ in range(clicks):
        y, x = (int(v) for v in rng.integers(0, side, 2))
        ms.append(model.segment_crop(img, positive=[(y, x)], normalizer=norm, channel_axis=None).milliseconds)
    return {"side": side, "clicks": clicks, "median_ms": round(float(np.median(ms)), 2),
            "p95_ms": round(float(np.percentile(ms, 95)), 2), "normalizer_fit_ms": round(fit_ms, 1)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="nuclei-click-unet")
    ap.add_argument("--sizes", default="512,4096,20000")
    ap.add_argument("--clicks", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    import torch

    import segloop
    from segloop.errors import SegloopError

    torch.set_num_threads(a.threads)
    try:
        sizes = sorted(int(s) for s in a.sizes.split(","))
        if not sizes or min(sizes) < 64 or a.clicks < 1:
            raise ValueError
    except ValueError:
        print("error: --sizes must be sides >= 64 (comma-separated) and --clicks >= 1", file=sys.stderr)
        return 2
    try:
        model = segloop.load_interactive(a.model, device=a.device)
    except SegloopError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        rows = [measure(model, s, a.clicks, a.seed, Path(tmp)) for s in sizes]
    base = rows[0]["median_ms"]
    print(f"{model.spec.name} {model.spec.version}, {a.device}, {torch.get_num_threads()} threads, "
          f"{a.clicks} clicks per size; baseline = the {sizes[0]} px image")
    print(f"{'side':>7} {'median ms':>10} {'p95 ms':>8} {'x baseline':>10} {'normalizer fit ms':>18}")
    for r in rows:
        r["x_baseline"] = round(r["median_ms"] / base, 2)
        print(f"{r['side']:>7} {r['median_ms']:>10.1f} {r['p95_ms']:>8.1f} {r['x_baseline']:>10.2f} "
              f"{r['normalizer_fit_ms']:>18.0f}")
    if a.json:
        out = {"model": {"name": model.spec.name, "version": model.spec.version, "sha256": model.spec.sha256},
               "device": a.device, "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
               "torch": torch.__version__, "rows": rows}
        Path(a.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
