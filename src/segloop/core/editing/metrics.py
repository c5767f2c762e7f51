"""Segmentation metrics: Dice, Jaccard, accuracy, instance F1 / AP by IoU matching, AJI, PQ.

All functions take label arrays of equal shape (2D or 3D), any integer dtype.
An optional ``mask`` restricts evaluation (e.g. to reviewed pixels).

The instance metrics of nuclei papers, :func:`aggregated_jaccard_index` (Kumar et al. 2017)
and :func:`panoptic_quality` (Kirillov et al. 2019), and :func:`instance_scores` (all of them
at once) work on the sparse table of overlapping object pairs (one ``np.unique`` over pair
ids), never on a dense objects x objects matrix: a 1000 x 1000 image with ~1000 nuclei takes
a fraction of a second.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np
from scipy.optimize import linear_sum_assignment

__all__ = ["dice", "jaccard", "pixel_accuracy", "per_class_dice", "match_instances", "match_instances_at", "instance_f1",
           "average_precision", "aggregated_jaccard_index", "panoptic_quality", "instance_scores",
           "pool_instance_scores"]


def _masked(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None):
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    if mask is None:
        return a.ravel(), b.ravel()
    m = np.asarray(mask, bool).ravel()
    return a.ravel()[m], b.ravel()[m]


def dice(truth: np.ndarray, pred: np.ndarray, *, mask: np.ndarray | None = None) -> float:
    """Foreground Dice (any non-zero label is foreground); 1.0 when both are empty."""
    t, p = _masked(truth, pred, mask)
    t, p = t != 0, p != 0
    denom = t.sum() + p.sum()
    return 1.0 if denom == 0 else float(2 * (t & p).sum() / denom)


def jaccard(truth: np.ndarray, pred: np.ndarray, *, mask: np.ndarray | None = None) -> float:
    """Foreground Jaccard (IoU); 1.0 when both are empty."""
    t, p = _masked(truth, pred, mask)
    t, p = t != 0, p != 0
    union = (t | p).sum()
    return 1.0 if union == 0 else float((t & p).sum() / union)


def pixel_accuracy(truth: np.ndarray, pred: np.ndarray, *, mask: np.ndarray | None = None) -> float:
    """Fraction of pixels with the same class id."""
    t, p = _masked(truth, pred, mask)
    return float((t == p).mean()) if t.size else 1.0


def per_class_dice(truth: np.ndarray, pred: np.ndarray, classes: int, *,
                   mask: np.ndarray | None = None) -> list[float]:
    """Dice of each class id ``1 .. classes-1`` (semantic labels)."""
    t, p = _masked(truth, pred, mask)
    out = []
    for c in range(1, classes):
        tc, pc = t == c, p == c
        d = tc.sum() + pc.sum()
        out.append(1.0 if d == 0 else float(2 * (tc & pc).sum() / d))
    return out


def _iou_matrix(truth: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, int, int]:
    """IoU between every true and predicted object (dense; rows and columns in id order,
    background excluded) and the numbers of true and predicted objects."""
    ov = _overlaps(truth, pred)
    m = np.zeros((len(ov.t_area), len(ov.p_area)))
    m[ov.pair_t, ov.pair_p] = ov.iou
    return m, len(ov.t_area), len(ov.p_area)


def match_instances_at(truth: np.ndarray, pred: np.ndarray, thresholds: Sequence[float]) -> list[dict[str, float]]:
    """:func:`match_instances` at each IoU threshold, from one IoU matrix and one assignment
    (the Hungarian pairing does not depend on the threshold; each threshold keeps the pairs at
    or above it)."""
    m, n_true, n_pred = _iou_matrix(truth, pred)
    if m.size:
        rows, cols = linear_sum_assignment(-m)
        paired = m[rows, cols]
    else:
        paired = np.zeros(0)
    out = []
    for iou in thresholds:
        good = paired >= iou
        tp = int(good.sum())
        miou = float(paired[good].mean()) if tp else 0.0
        fp, fn = n_pred - tp, n_true - tp
        prec = tp / max(tp + fp, 1) if (tp + fp) else (1.0 if fn == 0 else 0.0)
        rec = tp / max(tp + fn, 1) if (tp + fn) else 1.0
        f1 = 2 * tp / max(2 * tp + fp + fn, 1) if (tp + fp + fn) else 1.0
        out.append({"tp": tp, "fp": fp, "fn": fn, "precision": prec, "recall": rec, "f1": f1,
                    "mean_matched_iou": miou})
    return out


def match_instances(truth: np.ndarray, pred: np.ndarray, *, iou: float = 0.5) -> dict[str, float]:
    """One-to-one matching of instances at an IoU threshold (Hungarian on IoU).

    Returns
    -------
    dict with ``tp, fp, fn, precision, recall, f1, mean_matched_iou``.
    """
    return match_instances_at(truth, pred, (iou,))[0]


def instance_f1(truth: np.ndarray, pred: np.ndarray, *, iou: float = 0.5) -> float:
    """Instance F1 at an IoU threshold (default 0.5)."""
    return match_instances(truth, pred, iou=iou)["f1"]


def average_precision(truth: np.ndarray, pred: np.ndarray,
                      thresholds=(0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)) -> float:
    """AP as used for nuclei (StarDist/DSB): mean over thresholds of TP / (TP + FP + FN)."""
    vals = []
    for r in match_instances_at(truth, pred, thresholds):
        d = r["tp"] + r["fp"] + r["fn"]
        vals.append(1.0 if d == 0 else r["tp"] / d)
    return float(np.mean(vals))


# ----------------------------------------------------------------------------- AJI and PQ


class _Overlaps(NamedTuple):
    """The objects of two label arrays and every pair that shares pixels (background excluded).

    ``t_area[i]`` / ``p_area[j]``: pixels of the i-th true / j-th predicted object (objects in
    increasing id order); pair ``k`` is true object ``pair_t[k]`` and predicted object
    ``pair_p[k]`` sharing ``inter[k]`` pixels.
    """

    t_area: np.ndarray
    p_area: np.ndarray
    pair_t: np.ndarray
    pair_p: np.ndarray
    inter: np.ndarray

    @property
    def iou(self) -> np.ndarray:
        return self.inter / (self.t_area[self.pair_t] + self.p_area[self.pair_p] - self.inter)


def _object_index(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(area of each object of ``a`` in id order, each pixel's object index or -1 for background)."""
    a = a.ravel()
    if a.dtype.kind in "ui" and a.size and int(a.min()) >= 0 and int(a.max()) <= max(4 * a.size, 1 << 16):
        counts = np.bincount(a)
        counts[0] = 0
        ids = np.flatnonzero(counts)
        lut = np.full(counts.size, -1, np.int64)
        lut[ids] = np.arange(ids.size)
        return counts[ids].astype(np.int64), lut[a]
    ids, inv, counts = np.unique(a, return_inverse=True, return_counts=True)
    fg = ids != 0
    index = np.cumsum(fg) - 1
    index[~fg] = -1
    return counts[fg].astype(np.int64), index[inv.ravel()]


def _overlaps(truth: np.ndarray, pred: np.ndarray) -> _Overlaps:
    truth, pred = np.asarray(truth), np.asarray(pred)
    if truth.shape != pred.shape:
        raise ValueError(f"shapes differ: {truth.shape} vs {pred.shape}")
    t_area, ti = _object_index(truth)
    p_area, pi = _object_index(pred)
    both = (ti >= 0) & (pi >= 0)
    n_p = max(len(p_area), 1)
    pairs = ti[both] * n_p + pi[both]
    if len(t_area) * n_p <= 4 * pairs.size + (1 << 16):      # few objects: count in O(n), no sort
        counts = np.bincount(pairs, minlength=len(t_area) * n_p)
        keys = np.flatnonzero(counts)
        inter = counts[keys]
    else:
        keys, inter = np.unique(pairs, return_counts=True)
    pair_t, pair_p = np.divmod(keys, n_p)
    return _Overlaps(t_area, p_area, pair_t, pair_p, inter.astype(np.int64))


def _aji_counts(ov: _Overlaps) -> tuple[int, int]:
    """Kumar's AJI numerator and denominator (see :func:`aggregated_jaccard_index`)."""
    if not len(ov.inter):
        return 0, int(ov.t_area.sum() + ov.p_area.sum())
    # each true object's pair of highest IoU; a tie goes to the lowest predicted id
    order = np.lexsort((ov.pair_p, -ov.iou, ov.pair_t))
    t_sorted = ov.pair_t[order]
    best = order[np.r_[True, t_sorted[1:] != t_sorted[:-1]]]
    bt, bp, bi = ov.pair_t[best], ov.pair_p[best], ov.inter[best]
    inter = int(bi.sum())
    union = int((ov.t_area[bt] + ov.p_area[bp] - bi).sum())
    unmatched_t = np.ones(len(ov.t_area), bool)
    unmatched_t[bt] = False
    unused_p = np.ones(len(ov.p_area), bool)
    unused_p[bp] = False
    return inter, union + int(ov.t_area[unmatched_t].sum()) + int(ov.p_area[unused_p].sum())


def aggregated_jaccard_index(truth: np.ndarray, pred: np.ndarray) -> float:
    """Aggregated Jaccard Index (Kumar et al., IEEE TMI 36:1550, 2017).

    Every true object ``G`` is paired with the predicted object ``S`` of highest IoU with it
    (a predicted object may serve several true objects; a tie goes to the lowest id); ``C``
    adds ``|G & S|`` and ``U`` adds ``|G | S|`` over the pairs.  A true object that overlaps
    no prediction adds its area to ``U``; so does every predicted object paired with no true
    object.  ``AJI = C / U``.  This is the definition of Kumar et al. and of HoVer-Net's
    ``get_fast_aji`` (not the one-to-one "AJI+").

    Parameters
    ----------
    truth, pred : ndarray of int, same shape
        Instance labels, 0 = background.

    Returns
    -------
    float
        In [0, 1]; 1.0 when both are empty, 0.0 when only one is.
    """
    inter, union = _aji_counts(_overlaps(truth, pred))
    return 1.0 if union == 0 else inter / union


def _pq_counts(ov: _Overlaps) -> dict[str, float]:
    iou = ov.iou
    matched = iou > 0.5                        # IoU > 0.5 makes the matching unique (Kirillov et al.)
    tp = int(matched.sum())
    return {"tp": tp, "fp": len(ov.p_area) - tp, "fn": len(ov.t_area) - tp, "iou_sum": float(iou[matched].sum())}


def _pq_from_counts(tp: int, fp: int, fn: int, iou_sum: float) -> dict[str, float]:
    if tp + fp + fn == 0:
        return {"pq": 1.0, "sq": 1.0, "dq": 1.0}
    sq = iou_sum / tp if tp else 0.0
    dq = tp / (tp + 0.5 * fp + 0.5 * fn)
    return {"pq": sq * dq, "sq": sq, "dq": dq}


def panoptic_quality(truth: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """Panoptic quality of one class of instances (Kirillov et al., CVPR 2019).

    A true and a predicted object match when their IoU is **greater than** 0.5 (so each has at
    most one match).  ``SQ`` = mean IoU of the matches, ``DQ = TP / (TP + FP/2 + FN/2)`` (the
    F1 score at IoU > 0.5), ``PQ = SQ * DQ``.

    Parameters
    ----------
    truth, pred : ndarray of int, same shape
        Instance labels, 0 = background.

    Returns
    -------
    dict
        ``pq``, ``sq``, ``dq`` and the counts ``tp``, ``fp``, ``fn``, ``iou_sum`` (the matched
        IoUs added up, for pooling over images).  All three scores are 1.0 when both are empty;
        ``sq`` is 0.0 when nothing matched.
    """
    c = _pq_counts(_overlaps(truth, pred))
    return {**_pq_from_counts(c["tp"], c["fp"], c["fn"], c["iou_sum"]), **c}


def instance_scores(truth: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """Every instance metric of one image: F1@0.5, AJI, PQ / SQ / DQ, foreground Dice, counts.

    Parameters
    ----------
    truth, pred : ndarray of int, same shape
        Instance labels, 0 = background.

    Returns
    -------
    dict
        ``f1@0.5``, ``precision@0.5``, ``recall@0.5`` (:func:`match_instances`, IoU >= 0.5),
        ``aji`` (:func:`aggregated_jaccard_index`), ``pq``, ``sq``, ``dq``
        (:func:`panoptic_quality`), ``dice`` (foreground), ``n_true``, ``n_pred``; and the
        counts that pool over images: ``tp``, ``fp``, ``fn`` (at IoU >= 0.5), ``aji_inter``,
        ``aji_union``, ``pq_tp``, ``pq_fp``, ``pq_fn``, ``pq_iou_sum``, ``fg_inter``,
        ``fg_sum`` (foreground pixels shared, and of both arrays together).
    """
    truth, pred = np.asarray(truth), np.asarray(pred)
    ov = _overlaps(truth, pred)
    m = match_instances(truth, pred, iou=0.5)
    inter, union = _aji_counts(ov)
    pq = _pq_counts(ov)
    t, p = truth != 0, pred != 0
    fg_inter, fg_sum = int((t & p).sum()), int(t.sum() + p.sum())
    return {"f1@0.5": m["f1"], "precision@0.5": m["precision"], "recall@0.5": m["recall"],
            "aji": 1.0 if union == 0 else inter / union,
            **_pq_from_counts(pq["tp"], pq["fp"], pq["fn"], pq["iou_sum"]),
            "dice": 1.0 if fg_sum == 0 else 2 * fg_inter / fg_sum,
            "n_true": len(ov.t_area), "n_pred": len(ov.p_area),
            "tp": m["tp"], "fp": m["fp"], "fn": m["fn"], "aji_inter": inter, "aji_union": union,
            "pq_tp": pq["tp"], "pq_fp": pq["fp"], "pq_fn": pq["fn"], "pq_iou_sum": pq["iou_sum"],
            "fg_inter": fg_inter, "fg_sum": fg_sum}


#: The counts of :func:`instance_scores` that :func:`pool_instance_scores` adds up.
POOLED_COUNTS = ("tp", "fp", "fn", "aji_inter", "aji_union", "pq_tp", "pq_fp", "pq_fn", "pq_iou_sum",
                 "fg_inter", "fg_sum")


def pool_instance_scores(per_image: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Scores of several images with their counts added up first (micro average).

    Parameters
    ----------
    per_image : sequence of dict
        :func:`instance_scores` of each image.

    Returns
    -------
    dict
        ``f1@0.5`` (object-level), ``aji`` (sum of C over sum of U: the aggregate AJI), ``pq``,
        ``sq``, ``dq``, ``dice`` (foreground pixels) and the summed counts; every score is 1.0
        for no images or only empty ones.
    """
    c = {k: sum(r[k] for r in per_image) for k in POOLED_COUNTS}
    d = 2 * c["tp"] + c["fp"] + c["fn"]
    return {"f1@0.5": 1.0 if d == 0 else 2 * c["tp"] / d,
            "aji": 1.0 if c["aji_union"] == 0 else c["aji_inter"] / c["aji_union"],
            **_pq_from_counts(c["pq_tp"], c["pq_fp"], c["pq_fn"], c["pq_iou_sum"]),
            "dice": 1.0 if c["fg_sum"] == 0 else 2 * c["fg_inter"] / c["fg_sum"], **c}
