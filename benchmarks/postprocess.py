"""Cost of instance post-processing, with and without seed splitting (``split_h``).

::

    .venv/bin/python benchmarks/postprocess.py                 # 2048^2, 3 repeats
    .venv/bin/python benchmarks/postprocess.py --size 4096 --repeats 1

The input is a crowded synthetic probability map (a grid of nuclei, every other pair touching
with joined interiors, as a network gives them in dense tissue).  It times, in one run:

* ``instances_from_probs`` with ``split_h`` 0 (the default: connected seeds) and 1;
* the splitting step alone, :func:`segloop.core.inference.postprocess.split_seeds`, against the
  **named baseline**: the textbook markers of ``skimage.morphology.h_maxima`` on the smoothed
  distance transform + ``skimage.segmentation.watershed`` (what ``split_seeds`` computes
  without the morphological reconstruction), with the objects each finds and their agreement
  (instance F1 at IoU 0.5).

With ``--model NAME --image PATH`` it also times a whole ``Model.predict`` of that image with the
model's own ``split_h`` and with 0 (the same weights, thresholds and engine), best of
``--repeats`` after one warm-up run, to show what splitting adds to a prediction.

Prints a table, then ``key=value`` lines.
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
from scipy import ndimage as ndi


def crowded_probs(side: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(probs (3, side, side) float32, truth)``: nuclei of radius 8-12 on a 26 px grid with
    jitter, every other pair overlapping with its neighbour and their interiors joined."""
    rng = np.random.default_rng(seed)
    truth = np.zeros((side, side), np.int32)
    yy, xx = np.ogrid[:side, :side]
    k = 0
    for cy in range(14, side - 14, 26):
        for cx in range(14, side - 30, 52):
            for dx in (0, int(rng.integers(15, 19))):
                k += 1
                r = int(rng.integers(8, 12))
                y, x = cy + int(rng.integers(-2, 3)), cx + dx
                y0, y1, x0, x1 = max(y - r, 0), min(y + r + 1, side), max(x - r, 0), min(x + r + 1, side)
                disc = (yy[y0:y1] - y) ** 2 + (xx[:, x0:x1] - x) ** 2 <= r * r
                sub = truth[y0:y1, x0:x1]
                sub[disc & (sub == 0)] = k
    probs = np.zeros((3, side, side), np.float32)
    probs[1] = (truth > 0) * 0.9
    probs[0] = 1 - probs[1]
    return probs, truth


def skimage_split(seeds: np.ndarray, h: float) -> tuple[np.ndarray, int]:
    """The baseline: h_maxima markers of the smoothed distance transform, then watershed."""
    from skimage.morphology import h_maxima
    from skimage.segmentation import watershed

    d = ndi.gaussian_filter(ndi.distance_transform_edt(seeds).astype(np.float32), 1.0)
    markers, n = ndi.label(h_maxima(d, h).astype(bool) & seeds)
    return watershed(-d, markers, mask=seeds), n


def best_of(fn, repeats: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def end_to_end(model_name: str, image_path: str, repeats: int) -> None:
    """Time ``Model.predict`` on one image with the package's ``split_h`` and with 0."""
    from dataclasses import replace

    from skimage.io import imread

    from segloop import load_model

    model = load_model(model_name, device="cpu")
    image = imread(image_path)
    own = float(model.spec.postprocess.get("split_h", 0.0))
    print(f"\n{model_name} {model.spec.version} on {image_path} {image.shape}, best of {repeats} after a warm-up")
    times = {}
    for h in (own, 0.0) if own else (0.0,):
        model.spec = replace(model.spec, postprocess={**model.spec.postprocess, "split_h": h})
        model.predict(image)
        t, res = best_of(lambda: model.predict(image), repeats)
        times[h] = t
        print(f"split_h {h:g}: {t:.2f} s, {int(res.labels.max())} objects")
    if own:
        print(f"model={model_name} t_predict_split={times[own]:.3f} t_predict_nosplit={times[0.0]:.3f} "
              f"overhead={times[own] / times[0.0] - 1:.3f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=2048, help="side of the square map (default 2048)")
    ap.add_argument("--repeats", type=int, default=3, help="best of this many runs (default 3)")
    ap.add_argument("--h", type=float, default=1.0, help="split_h (default 1)")
    ap.add_argument("--model", help="also time Model.predict of --image with this model's split_h and with 0")
    ap.add_argument("--image", help="the image for --model")
    a = ap.parse_args(argv)
    if bool(a.model) != bool(a.image):
        ap.error("--model and --image go together")

    from segloop.core.editing.metrics import instance_f1
    from segloop.core.inference.postprocess import InstanceParams, instances_from_probs, split_seeds

    probs, truth = crowded_probs(a.size)
    seeds = probs[1] > 0.5
    off = InstanceParams(min_size=10)
    on = InstanceParams(min_size=10, split_h=a.h)
    t_off, lab_off = best_of(lambda: instances_from_probs(probs, off), a.repeats)
    t_on, lab_on = best_of(lambda: instances_from_probs(probs, on), a.repeats)
    t_ours, (ours, n_ours) = best_of(lambda: split_seeds(seeds, a.h), a.repeats)
    t_base, (base, n_base) = best_of(lambda: skimage_split(seeds, a.h), a.repeats)
    mpx = a.size * a.size / 1e6
    rows = [("instances_from_probs, split_h 0", t_off, int(lab_off.max()), instance_f1(truth, lab_off)),
            (f"instances_from_probs, split_h {a.h:g}", t_on, int(lab_on.max()), instance_f1(truth, lab_on)),
            ("split_seeds (segloop)", t_ours, n_ours, instance_f1(truth, ours)),
            ("h_maxima + watershed (skimage, baseline)", t_base, n_base, instance_f1(truth, base))]
    print(f"{a.size}^2 crowded map, {int(truth.max())} true nuclei; {platform.processor() or platform.machine()}, "
          f"best of {a.repeats}")
    print(f"{'step':<44} {'seconds':>8} {'µs/px':>7} {'objects':>8} {'F1@0.5':>7}")
    for name, t, n, f1 in rows:
        print(f"{name:<44} {t:8.3f} {t / mpx:7.3f} {n:8d} {f1:7.3f}")
    agree = instance_f1(base, ours)
    print(f"split_seeds vs baseline: {t_base / t_ours:.1f}x faster, agreement F1@0.5 {agree:.3f}")
    print(f"size={a.size} split_h={a.h} t_split_off={t_off:.4f} t_split_on={t_on:.4f} t_split_seeds={t_ours:.4f} "
          f"t_skimage={t_base:.4f} speedup={t_base / t_ours:.2f} agreement={agree:.4f}")
    if a.model:
        end_to_end(a.model, a.image, a.repeats)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
