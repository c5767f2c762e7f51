"""Simulated correctors: how many clicks an interactive model needs per object.

The protocol of the interactive-segmentation literature (Xu et al. 2016, RITM, SAM's NoC):
the first click is the object's innermost point; each next click goes to the innermost point
of the larger error region (a positive click in a missed part, a negative one in a leak), and
the previous round's mask is given back to the model. An object's *NoC@t* is the number of
clicks until IoU >= t, or ``max_clicks`` when it never gets there.

The trainer's held-out evaluation and ``benchmarks/clicks.py`` both use :func:`click_trace`
and :func:`summarize`, so they report the same numbers.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["ClickTrace", "click_trace", "iou", "next_click", "noc", "summarize"]


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two bool masks (1.0 when both are empty)."""
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def _innermost(region: np.ndarray) -> tuple[tuple[int, int], float]:
    """The point of ``region`` farthest from its border (the image edge counts as border)."""
    from scipy.ndimage import distance_transform_edt

    dt = distance_transform_edt(np.pad(region, 1))[1:-1, 1:-1]
    idx = int(np.argmax(dt))
    return (idx // region.shape[1], idx % region.shape[1]), float(dt.flat[idx])


def next_click(gt: np.ndarray, pred: np.ndarray | None) -> tuple[tuple[int, int], bool] | None:
    """Where a careful person clicks next: ``((y, x), positive)``, or None when there is no error.

    The innermost point of the larger of the missed region (``gt & ~pred``, a positive click)
    and the leaked region (``pred & ~gt``, a negative click), by distance to the region's border.
    """
    missed = gt if pred is None else gt & ~pred
    leaked = None if pred is None else pred & ~gt
    pm, dm = _innermost(missed) if missed.any() else (None, 0.0)
    pl, dl = _innermost(leaked) if leaked is not None and leaked.any() else (None, 0.0)
    if pm is None and pl is None:
        return None
    if dm >= dl:
        return pm, True
    return pl, False


@dataclass
class ClickTrace:
    """One object's simulated session.

    Attributes
    ----------
    ious : list of float
        IoU after each click (``ious[0]`` after the first).
    milliseconds : list of float
        Time of each model call.
    clicks : list of (y, x, positive)
    area : int
        Pixels of the object.
    """

    ious: list[float] = field(default_factory=list)
    milliseconds: list[float] = field(default_factory=list)
    clicks: list[tuple[int, int, bool]] = field(default_factory=list)
    area: int = 0


def click_trace(model: Any, image: Any, gt: np.ndarray, *, max_clicks: int = 10, stop_at: float | None = None,
                z: int | None = None, normalizer: Any = None, channel_axis: Any = "auto",
                pixel_size: float | None = None, margin: int = 64) -> ClickTrace:
    """Simulate a corrector on one object.

    Parameters
    ----------
    model : InteractiveModel
    image : array-like
        What :meth:`~segloop.core.inference.interactive.InteractiveModel.segment_crop` takes.
    gt : (H, W) bool ndarray
        The object (on plane ``z`` of a volume).
    max_clicks : int
    stop_at : float, optional
        Stop once IoU reaches this (faster; NoC at lower thresholds is unchanged).
    margin : int
        Pixels around the object and the prediction where errors are looked for.
    """
    gt = np.asarray(gt, bool)
    trace = ClickTrace(area=int(gt.sum()))
    pred = np.zeros_like(gt)
    pos: list[tuple[int, int]] = []
    neg: list[tuple[int, int]] = []
    for _ in range(max_clicks):
        rows = np.flatnonzero((gt | pred).any(axis=1))
        cols = np.flatnonzero((gt | pred).any(axis=0))
        r0, r1 = max(0, rows[0] - margin), min(gt.shape[0], rows[-1] + margin + 1)
        c0, c1 = max(0, cols[0] - margin), min(gt.shape[1], cols[-1] + margin + 1)
        nxt = next_click(gt[r0:r1, c0:c1], pred[r0:r1, c0:c1] if pos else None)
        if nxt is None:
            trace.ious.append(1.0)
            break
        (y, x), positive = nxt
        y, x = int(y + r0), int(x + c0)
        (pos if positive else neg).append((y, x))
        trace.clicks.append((y, x, positive))
        zpre = (z,) if z is not None else ()
        t0 = time.perf_counter()
        crop = model.segment_crop(image, positive=[(*zpre, *p) for p in pos], negative=[(*zpre, *p) for p in neg],
                                  previous=pred if pred.any() else None, z=z, normalizer=normalizer,
                                  channel_axis=channel_axis, pixel_size=pixel_size)
        trace.milliseconds.append((time.perf_counter() - t0) * 1e3)
        pred = np.zeros_like(gt)
        oy, ox = crop.offset[-2:]
        pred[oy:oy + crop.mask.shape[0], ox:ox + crop.mask.shape[1]] = crop.mask
        trace.ious.append(iou(pred, gt))
        if stop_at is not None and trace.ious[-1] >= stop_at:
            break
    return trace


def noc(ious: Sequence[float], threshold: float, max_clicks: int) -> int:
    """Clicks until IoU >= ``threshold`` (``max_clicks`` when never)."""
    for i, v in enumerate(ious):
        if v >= threshold:
            return i + 1
    return int(max_clicks)


def _iou_after(ious: Sequence[float], k: int) -> float:
    """IoU after ``k`` clicks; a trace that stopped early keeps its last value."""
    return float(ious[min(k, len(ious)) - 1]) if ious else 0.0


def summarize(traces: Iterable[ClickTrace], *, max_clicks: int = 10,
              thresholds: Sequence[float] = (0.85, 0.9)) -> dict[str, Any]:
    """NoC@t, mean IoU after 1 and 3 clicks, share of objects never reaching t, and time per click.

    Keys: ``objects``, ``noc@85`` (for each threshold), ``failed@85``, ``miou@1``, ``miou@3``,
    ``ms_per_click_median``, ``ms_per_click_p95``.
    """
    traces = list(traces)
    out: dict[str, Any] = {"objects": len(traces), "max_clicks": int(max_clicks)}
    if not traces:
        return out
    for t in thresholds:
        key = f"{round(t * 100):d}"
        counts = [noc(tr.ious, t, max_clicks) for tr in traces]
        out[f"noc@{key}"] = round(float(np.mean(counts)), 3)
        out[f"failed@{key}"] = round(float(np.mean([max(tr.ious or [0.0]) < t for tr in traces])), 3)
    for k in (1, 3):
        out[f"miou@{k}"] = round(float(np.mean([_iou_after(tr.ious, k) for tr in traces])), 4)
    ms = [m for tr in traces for m in tr.milliseconds]
    if ms:
        out["ms_per_click_median"] = round(float(np.median(ms)), 2)
        out["ms_per_click_p95"] = round(float(np.percentile(ms, 95)), 2)
    return out
