"""The OME-Zarr end of a slide run: compact ids into the NGFF labels, the pyramid, NGFF metadata.

Both passes (:func:`relabel`, :func:`pyramid`) go window by window over chunk-aligned windows,
so no two windows write the same chunk, on a small thread pool (:func:`in_threads`):
decompressing, halving and compressing release the interpreter lock, so the pass that ends a run
uses the machine's cores instead of one (on a GPU machine, where the network is fast, this pass
is a large part of a slide's time).  ``plan`` is a :class:`~segloop.core.inference.slide.SlidePlan`
(not imported here: the slide module imports this one).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from segloop.errors import Cancelled

__all__ = ["LABEL_NAME", "RUN_DIR", "check_cancel", "compressor", "half_mean", "in_threads", "ngff_metadata",
           "pyramid", "relabel"]

RUN_DIR = ".segloop-run"
LABEL_NAME = "nuclei"
#: Threads of the end passes (each holds about two chunk windows in memory).
MAX_THREADS = 4


def check_cancel(cancel) -> None:
    """Raise :class:`Cancelled` when ``cancel`` (an Event or a callable) is set."""
    if cancel is not None and (cancel.is_set() if hasattr(cancel, "is_set") else cancel()):
        raise Cancelled("cancelled: finished blocks are kept; run again with the same settings to resume")


def compressor():
    import numcodecs

    return numcodecs.Zstd(level=3)


def in_threads(fn: Callable, items: Iterable, *, cancel=None, threads: int | None = None) -> None:
    """``fn(item)`` for every item, on up to ``threads`` threads (default: the cores, at most
    :data:`MAX_THREADS`).

    The first error (a cancel included) stops the items not yet started and is raised once the
    running ones have ended; nothing is left running.
    """
    from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait

    items = list(items)
    n = threads or min(MAX_THREADS, os.cpu_count() or 1)

    def one(item):
        check_cancel(cancel)
        fn(item)

    if n <= 1 or len(items) <= 1:
        for item in items:
            one(item)
        return
    with ThreadPoolExecutor(n, thread_name_prefix="segloop-slide-output") as pool:
        futures = [pool.submit(one, item) for item in items]
        done, pending = wait(futures, return_when=FIRST_EXCEPTION)
        for f in pending:
            f.cancel()
    for f in futures:                                  # in order: the first item that failed
        if f.done() and not f.cancelled() and f.exception() is not None:
            raise f.exception()


def relabel(out: Path, plan, blocks, offsets: dict, lut: np.ndarray, *, cancel=None) -> None:
    """Write the final ids (``lut`` of each block's working ids plus its offset) into the labels,
    chunk by chunk: a few MB at a time, whatever the block."""
    import zarr

    root = zarr.open_group(str(out), mode="r+", zarr_format=2)
    raw, dst = root[f"{RUN_DIR}/raw"], root[f"labels/{LABEL_NAME}/0"]
    ry, rx = plan.region[0], plan.region[1]
    c = plan.chunk

    def window(item):
        b, y, x = item
        cy1, cx1 = b.core[1], b.core[3]
        ys, xs = slice(y - ry, min(y + c, cy1) - ry), slice(x - rx, min(x + c, cx1) - rx)
        r = np.asarray(raw[ys, xs])
        top = int(r.max()) if r.size else 0
        if top:                                        # this block's slice of the table, 0 kept as 0
            table = lut[offsets[b.key]:offsets[b.key] + top + 1].copy()
            table[0] = 0
            dst[ys, xs] = table[r]

    in_threads(window, [(b, y, x) for b in blocks for y in range(b.core[0], b.core[1], c)
                        for x in range(b.core[2], b.core[3], c)], cancel=cancel)


def pyramid(out: Path, plan, *, min_side: int = 256, cancel=None) -> int:
    """Halve labels (nearest) and image (mean of 2x2) until the shorter side is under ``min_side``;
    the number of levels."""
    import zarr

    root = zarr.open_group(str(out), mode="r+", zarr_format=2)
    n = 1
    h, w = plan.region[2], plan.region[3]
    c = plan.chunk
    step = 2 * c                                       # one chunk of the halved level per window
    while min(h, w) // 2 >= min_side:
        h2, w2 = (h + 1) // 2, (w + 1) // 2
        src = root[f"labels/{LABEL_NAME}/{n - 1}"]
        dst = root.create_array(f"labels/{LABEL_NAME}/{n}", shape=(h2, w2), chunks=(c, c), dtype="uint32",
                                fill_value=0, compressors=compressor(), overwrite=True)
        img_src = root[str(n - 1)] if plan.include_image else None
        img_dst = (root.create_array(str(n), shape=(img_src.shape[0], h2, w2), chunks=(img_src.shape[0], c, c),
                                     dtype=img_src.dtype, fill_value=0, compressors=compressor(), overwrite=True)
                   if img_src is not None else None)

        def window(yx, src=src, dst=dst, img_src=img_src, img_dst=img_dst):
            y, x = yx
            lab = np.asarray(src[y:y + step, x:x + step])
            dst[y // 2:y // 2 + (lab.shape[0] + 1) // 2, x // 2:x // 2 + (lab.shape[1] + 1) // 2] = lab[::2, ::2]
            if img_dst is not None:
                im = np.asarray(img_src[:, y:y + step, x:x + step])
                ph, pw = im.shape[1] % 2, im.shape[2] % 2
                if ph or pw:
                    im = np.pad(im, ((0, 0), (0, ph), (0, pw)), mode="edge")
                small = half_mean(im)
                img_dst[:, y // 2:y // 2 + small.shape[1], x // 2:x // 2 + small.shape[2]] = small

        in_threads(window, [(y, x) for y in range(0, h, step) for x in range(0, w, step)], cancel=cancel)
        h, w, n = h2, w2, n + 1
    return n


def half_mean(im: np.ndarray) -> np.ndarray:
    """Means of 2 x 2 pixels of a ``(C, H, W)`` array with even ``H`` and ``W``, in its dtype.

    Integers are summed in a wider integer type and rounded half up (about 20x faster than a
    float mean on uint8, which made the image pyramid a large part of a slide run's end).
    """
    if im.dtype.kind in "ui":
        wide = {1: np.uint16, 2: np.uint32}.get(im.dtype.itemsize, np.uint64) if im.dtype.kind == "u" else np.int64
        x = im.astype(wide)
        s = x[:, 0::2, 0::2] + x[:, 1::2, 0::2] + x[:, 0::2, 1::2] + x[:, 1::2, 1::2]
        return ((s + 2) // 4).astype(im.dtype)
    x = im.astype(np.float64 if im.dtype == np.float64 else np.float32)
    return ((x[:, 0::2, 0::2] + x[:, 1::2, 0::2] + x[:, 0::2, 1::2] + x[:, 1::2, 1::2]) / 4).astype(im.dtype)


def ngff_metadata(out: Path, plan, n_levels: int, summary: dict) -> None:
    """OME-NGFF 0.4 ``multiscales`` for the image and the labels, and ``image-label``."""
    import zarr

    px = plan.pixel_size or (1.0, 1.0)
    unit = "micrometer" if plan.pixel_size else None
    trans = [float(plan.region[0]) * px[0], float(plan.region[1]) * px[1]]

    def multiscales(name, with_c):
        # a 2x2 mean sits between its pixels; labels are sampled [::2, ::2], on the first one
        def shift(i):
            return 0.0 if name == LABEL_NAME else (2 ** i - 1) / 2

        axes = ([{"name": "c", "type": "channel"}] if with_c else []) + [
            {"name": a, "type": "space", **({"unit": unit} if unit else {})} for a in ("y", "x")]
        datasets = [{"path": str(i), "coordinateTransformations": [
            {"type": "scale", "scale": ([1.0] if with_c else []) + [px[0] * 2 ** i, px[1] * 2 ** i]},
            {"type": "translation", "translation": ([0.0] if with_c else [])
             + [trans[0] + shift(i) * px[0], trans[1] + shift(i) * px[1]]}]}
            for i in range(n_levels)]
        return [{"version": "0.4", "name": name, "axes": axes, "datasets": datasets,
                 "type": "nearest" if name == LABEL_NAME else "mean"}]

    root = zarr.open_group(str(out), mode="r+", zarr_format=2)
    stem = Path(plan.source).stem
    if plan.include_image:
        root.attrs.update({"multiscales": multiscales(stem, True),
                           "omero": {"channels": [{"label": c, "color": col, "window": {"start": 0, "end": 255,
                                                                                        "min": 0, "max": 255}}
                                                  for c, col in (zip("RGB", ("FF0000", "00FF00", "0000FF"))
                                                                 if plan.rgb else [("grey", "FFFFFF")])],
                                     "rdefs": {"model": "color" if plan.rgb else "greyscale"}}})
    root["labels"].attrs.update({"labels": [LABEL_NAME]})
    root[f"labels/{LABEL_NAME}"].attrs.update({
        "multiscales": multiscales(LABEL_NAME, False),
        "image-label": {"version": "0.4", "source": {"image": "../../"}},
        "segloop": summary})
