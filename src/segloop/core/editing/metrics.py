"""Segmentation metrics: Dice, Jaccard, accuracy, instance F1 / AP by IoU matching.

All functions take label arrays of equal shape (2D or 3D), any integer dtype.
An optional ``mask`` restricts evaluation (e.g. to reviewed pixels).
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix

__all__ = ["dice", "jaccard", "pixel_accuracy", "per_class_dice", "match_instances", "instance_f1",
           "average_precision"]


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


def _iou_matrix(truth: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """IoU between every true and predicted instance (dense over present ids)."""
    t = truth.ravel().astype(np.int64)
    p = pred.ravel().astype(np.int64)
    t_ids, t_inv = np.unique(t, return_inverse=True)
    p_ids, p_inv = np.unique(p, return_inverse=True)
    inter = coo_matrix((np.ones_like(t_inv), (t_inv, p_inv)), shape=(len(t_ids), len(p_ids))).toarray()
    t_area = inter.sum(1, keepdims=True)
    p_area = inter.sum(0, keepdims=True)
    iou = inter / np.maximum(t_area + p_area - inter, 1)
    tk, pk = t_ids != 0, p_ids != 0
    return iou[np.ix_(tk, pk)], t_ids[tk], p_ids[pk]


def match_instances(truth: np.ndarray, pred: np.ndarray, *, iou: float = 0.5) -> dict[str, float]:
    """One-to-one matching of instances at an IoU threshold (Hungarian on IoU).

    Returns
    -------
    dict with ``tp, fp, fn, precision, recall, f1, mean_matched_iou``.
    """
    m, t_ids, p_ids = _iou_matrix(truth, pred)
    if m.size:
        rows, cols = linear_sum_assignment(-m)
        good = m[rows, cols] >= iou
        tp = int(good.sum())
        miou = float(m[rows, cols][good].mean()) if tp else 0.0
    else:
        tp, miou = 0, 0.0
    fp, fn = len(p_ids) - tp, len(t_ids) - tp
    prec = tp / max(tp + fp, 1) if (tp + fp) else (1.0 if fn == 0 else 0.0)
    rec = tp / max(tp + fn, 1) if (tp + fn) else 1.0
    f1 = 2 * tp / max(2 * tp + fp + fn, 1) if (tp + fp + fn) else 1.0
    return {"tp": tp, "fp": fp, "fn": fn, "precision": prec, "recall": rec, "f1": f1,
            "mean_matched_iou": miou}


def instance_f1(truth: np.ndarray, pred: np.ndarray, *, iou: float = 0.5) -> float:
    """Instance F1 at an IoU threshold (default 0.5)."""
    return match_instances(truth, pred, iou=iou)["f1"]


def average_precision(truth: np.ndarray, pred: np.ndarray,
                      thresholds=(0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)) -> float:
    """AP as used for nuclei (StarDist/DSB): mean over thresholds of TP / (TP + FP + FN)."""
    vals = []
    for th in thresholds:
        r = match_instances(truth, pred, iou=th)
        d = r["tp"] + r["fp"] + r["fn"]
        vals.append(1.0 if d == 0 else r["tp"] / d)
    return float(np.mean(vals))
