"""Proofreading one object of a large label image: bounding-box edits vs. the full-array way.

For each size (default 2048^2, 8192^2, 20000^2; ``--sizes``) a synthetic
uint32 instance label image is built: a grid of discs (radius 12 every 32
pixels, ids 1..N row by row), plus, near the centre, a two-lobed "peanut"
object (for split) and a ring with a hole (for fill holes).  Then, on ONE
object each:

=========== ============================================== =====================================================
operation   segloop (``segloop.core.editing.proofread``)           named naive baseline (full array)
=========== ============================================== =====================================================
merge       ``merge_labels(labels, [a, b])``               ``np.where(labels == b, a, labels)``
delete      ``delete_labels(labels, [a])``                 ``np.where(labels == a, 0, labels)``
split       ``split_label(labels, p, [s1, s2])``           ``watershed(-edt(labels == p), markers, mask=labels == p)``
                                                           on the full array, then ``np.where(ws == 2, new, labels)``
fill_holes  ``fill_holes(labels, [r])``                    ``binary_fill_holes(labels == r)`` on the full array,
                                                           then ``np.where(filled & (labels == 0), r, labels)``
=========== ============================================== =====================================================

segloop returns a ``LabelEdit`` (the changed voxels only); the baseline
returns a new full-size array, as a notebook user would write it.  The two
results are checked to agree (same changed voxels, same values).

Reported per operation: best wall time of ``--repeats`` runs (ms, tracemalloc
off) and the peak of memory traced by ``tracemalloc`` during one more run
(MB, above what was allocated before the call; numpy registers its array
buffers with tracemalloc, C-level scratch inside scipy/scikit-image is not
seen).  The label image itself (4 bytes/pixel) is not counted on either side.

The full-array watershed needs many GB at 20000^2, so the naive split runs
only up to ``--naive-split-max`` (default 8192).

Run from the repository root::

    .venv/bin/python benchmarks/proofread_bbox.py                    # 2048 8192 20000
    .venv/bin/python benchmarks/proofread_bbox.py --sizes 2048 --repeats 1
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import time
import tracemalloc

import numpy as np
import scipy
import skimage
from _machine import cpu_model
from scipy import ndimage as ndi
from skimage.segmentation import watershed

from segloop.core.editing import proofread as pr

SPACING = 32
RADIUS = 12
MB = 1024 * 1024


def _disc(radius: float, size: int = SPACING) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    return (yy**2 + xx**2) <= radius**2


def make_labels(size: int) -> tuple[np.ndarray, dict]:
    """Grid of discs plus a peanut and a ring near the centre; returns labels and targets."""
    n = size // SPACING
    labels = np.zeros((size, size), np.uint32)
    ids = np.arange(1, n * n + 1, dtype=np.uint32).reshape(n, n)
    grid = labels[: n * SPACING, : n * SPACING].reshape(n, SPACING, n, SPACING)
    np.multiply(_disc(RADIUS)[None, :, None, :], ids[:, None, :, None], out=grid, casting="unsafe")
    c = n // 2
    cell = lambda r, q: (slice(r * SPACING, (r + 1) * SPACING), slice(q * SPACING, (q + 1) * SPACING))  # noqa: E731
    # peanut over cells (c, c) and (c, c+1): two overlapping discs joined by a neck
    peanut = int(ids[c, c])
    box = (slice(c * SPACING, (c + 1) * SPACING), slice(c * SPACING, (c + 2) * SPACING))
    yy, xx = np.mgrid[: SPACING, : 2 * SPACING]
    y0 = (SPACING - 1) / 2
    lobe1 = (yy - y0) ** 2 + (xx - 20) ** 2 <= 13**2
    lobe2 = (yy - y0) ** 2 + (xx - 43) ** 2 <= 13**2
    win = labels[box]
    win[...] = 0
    win[lobe1 | lobe2] = peanut
    seeds = [(c * SPACING + 16, c * SPACING + 20), (c * SPACING + 16, c * SPACING + 43)]
    # ring in cell (c + 2, c): annulus with a hole of radius 5
    ring = int(ids[c + 2, c])
    labels[cell(c + 2, c)] = np.where(_disc(RADIUS) & ~_disc(5), ring, 0)
    targets = {
        "merge": (int(ids[c - 2, c]), int(ids[c - 2, c + 1])),
        "delete": int(ids[c - 4, c]),
        "split": (peanut, seeds),
        "fill": ring,
    }
    return labels, targets


def ours(op: str, labels: np.ndarray, t: dict):
    if op == "merge":
        return pr.merge_labels(labels, list(t["merge"]))
    if op == "delete":
        return pr.delete_labels(labels, [t["delete"]])
    if op == "split":
        return pr.split_label(labels, t["split"][0], t["split"][1], new_ids=[t["new"]])
    if op == "fill_holes":
        return pr.fill_holes(labels, [t["fill"]])
    raise ValueError(op)


def naive(op: str, labels: np.ndarray, t: dict) -> np.ndarray:
    if op == "merge":
        a, b = t["merge"]
        return np.where(labels == b, np.uint32(a), labels)
    if op == "delete":
        return np.where(labels == t["delete"], np.uint32(0), labels)
    if op == "split":
        pid, seeds = t["split"]
        mask = labels == pid
        dist = ndi.distance_transform_edt(mask)
        markers = np.zeros(labels.shape, np.int32)
        for k, s in enumerate(seeds):
            markers[s] = k + 1
        ws = watershed(-dist, markers, mask=mask)
        return np.where(ws == 2, np.uint32(t["new"]), labels)
    if op == "fill_holes":
        r = t["fill"]
        filled = ndi.binary_fill_holes(labels == r)
        return np.where(filled & (labels == 0), np.uint32(r), labels)
    raise ValueError(op)


def measure(fn, repeats: int) -> tuple[float, float, object]:
    """(best ms, peak traced MB above the start, result of the last call)."""
    best = float("inf")
    result = None
    for _ in range(repeats):
        result = None
        gc.collect()
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    result = None
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    tracemalloc.reset_peak()
    result = fn()
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    return best * 1e3, peak / MB, result


def agree(edit: pr.LabelEdit, out: np.ndarray, labels: np.ndarray) -> bool:
    if not np.array_equal(out[edit.indices], edit.values):
        return False
    n_diff = 0
    for start in range(0, labels.shape[0], 512):  # chunked, so the check allocates nothing big
        n_diff += int(np.count_nonzero(out[start : start + 512] != labels[start : start + 512]))
    return n_diff == edit.n_changed


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[2048, 8192, 20000])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--ops", nargs="+", default=["merge", "delete", "split", "fill_holes"])
    ap.add_argument("--naive-split-max", type=int, default=8192,
                    help="largest size at which the full-array watershed baseline runs")
    ap.add_argument("--no-naive", action="store_true")
    args = ap.parse_args(argv)

    print(f"cpu: {cpu_model()}  ({os.cpu_count()} logical cores)")
    print(f"python {platform.python_version()}  numpy {np.__version__}  scipy {scipy.__version__}  "
          f"scikit-image {skimage.__version__}")
    print(f"repeats {args.repeats} (best time), chunk {pr.CHUNK_ELEMENTS} elements")
    rows = []
    for size in args.sizes:
        labels, t = make_labels(size)
        t["new"] = pr.next_free_label(labels)
        lab_mb = labels.nbytes / MB
        print(f"\n{size} x {size} uint32 ({lab_mb:.0f} MB, {int(labels.max())} objects)", flush=True)
        for op in args.ops:
            o_ms, o_mb, edit = measure(lambda op=op, labels=labels, t=t: ours(op, labels, t), args.repeats)
            row = dict(size=size, op=op, ours_ms=o_ms, ours_mb=o_mb, n=edit.n_changed,
                       naive_ms=None, naive_mb=None, agree=None)
            skip = args.no_naive or (op == "split" and size > args.naive_split_max)
            if not skip:
                n_ms, n_mb, out = measure(lambda op=op, labels=labels, t=t: naive(op, labels, t), args.repeats)
                row.update(naive_ms=n_ms, naive_mb=n_mb, agree=agree(edit, out, labels))
                del out
            gc.collect()
            rows.append(row)
            nv = ("skipped" if row["naive_ms"] is None
                  else f"{row['naive_ms']:9.1f} ms {row['naive_mb']:8.1f} MB  agree={row['agree']}")
            print(f"  {op:<10} ours {o_ms:8.1f} ms {o_mb:8.2f} MB  ({edit.n_changed} px)   naive {nv}",
                  flush=True)
        del labels
        gc.collect()

    print("\n| size | operation | segloop ms | segloop peak MB | naive ms | naive peak MB | changed px | agree |")
    print("|---:|---|---:|---:|---:|---:|---:|---|")
    for r in rows:
        nms = "skipped" if r["naive_ms"] is None else f"{r['naive_ms']:.1f}"
        nmb = "skipped" if r["naive_mb"] is None else f"{r['naive_mb']:.1f}"
        ag = "-" if r["agree"] is None else ("yes" if r["agree"] else "NO")
        print(f"| {r['size']}^2 | {r['op']} | {r['ours_ms']:.1f} | {r['ours_mb']:.2f} | {nms} | {nmb} "
              f"| {r['n']} | {ag} |")
    print()
    for r in rows:
        print(f"size={r['size']} op={r['op']} ours_ms={r['ours_ms']:.2f} ours_peak_mb={r['ours_mb']:.3f} "
              f"naive_ms={r['naive_ms']} naive_peak_mb={r['naive_mb']} changed={r['n']} agree={r['agree']}")
    return 0 if all(r["agree"] in (None, True) for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
