"""Simulated prompts and training targets for interactive (click) models.

What a person does, simulated from the labels (:func:`initial_prompt`, :func:`corrective_click`),
and what the network is trained towards in a window (:func:`window_target`, :func:`click_loss`).
Used by :mod:`segloop_train.interactive`; the corrector is
:func:`segloop.core.inference.click_eval.next_click`, the one the evaluation uses.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from segloop.core.inference.click_eval import next_click
from segloop.core.inference.interactive import Prompt, Window, mask_to_window

__all__ = ["add_click", "click_loss", "corrective_click", "initial_prompt", "window_target"]


def _grow(bbox: Sequence[int], margin: int, shape: Sequence[int]) -> tuple[int, int, int, int]:
    r0, c0, r1, c1 = (int(v) for v in bbox)
    return max(0, r0 - margin), max(0, c0 - margin), min(int(shape[0]), r1 + margin), min(int(shape[1]), c1 + margin)


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1


def initial_prompt(gt: np.ndarray, rng: np.random.Generator, *, reviewed: np.ndarray | None = None,
                   labels: np.ndarray | None = None, box_p: float = 0.25, negative_p: float = 0.3,
                   inner: float = 0.5) -> Prompt:
    """A person's first prompt on the object ``gt``, simulated.

    Parameters
    ----------
    gt : (H, W) bool ndarray
        The object on its plane (not empty).
    rng : numpy Generator
    reviewed : (H, W) ndarray, optional
        Clicks go on reviewed pixels (non-zero) when there are any to choose from.
    labels : (H, W) int ndarray, optional
        The plane's labels: negative clicks prefer other objects (non-zero, not ``gt``).
    box_p : float
        Probability of a box (each side jittered by up to 10 % of the object's height / width),
        with the click (half the time) or alone.
    negative_p : float
        Probability of 1 or 2 negative clicks near the object (a neighbour or background).
    inner : float
        The click is a random pixel whose distance to the object's border is at least ``inner``
        times the largest.

    Returns
    -------
    Prompt
        Image pixel coordinates ``(y, x)``; ``previous`` None.
    """
    from scipy.ndimage import distance_transform_edt

    gt = np.asarray(gt, bool)
    bb = _bbox(gt)
    if bb is None:
        raise ValueError("the object is empty")
    h, w = bb[2] - bb[0], bb[3] - bb[1]
    r0, c0, r1, c1 = _grow(bb, 1, gt.shape)
    obj = gt[r0:r1, c0:c1]
    dt = distance_transform_edt(np.pad(obj, 1))[1:-1, 1:-1]
    cand = dt >= inner * dt.max()
    if reviewed is not None:
        rev = np.asarray(reviewed[r0:r1, c0:c1]) > 0
        if (cand & rev).any():
            cand &= rev
    ys, xs = np.nonzero(cand)
    i = int(rng.integers(len(ys)))
    positive: tuple[tuple[float, float], ...] = ((float(ys[i] + r0), float(xs[i] + c0)),)
    box = None
    if rng.random() < box_p:
        jy = rng.uniform(-0.1, 0.1, 2) * h
        jx = rng.uniform(-0.1, 0.1, 2) * w
        y0 = max(-0.5, bb[0] - 0.5 + jy[0])
        x0 = max(-0.5, bb[1] - 0.5 + jx[0])
        y1 = min(gt.shape[0] - 0.5, bb[2] - 0.5 + jy[1])
        x1 = min(gt.shape[1] - 0.5, bb[3] - 0.5 + jx[1])
        if y1 - y0 >= 1 and x1 - x0 >= 1:
            box = (float(y0), float(x0), float(y1), float(x1))
            if rng.random() < 0.5:
                positive = ()
    negative: list[tuple[float, float]] = []
    if rng.random() < negative_p:
        reach = max(8, int(0.5 * max(h, w)))
        g0, g1, g2, g3 = _grow(bb, reach, gt.shape)
        near = distance_transform_edt(~gt[g0:g2, g1:g3])
        ring = (near >= 3) & (near <= reach)
        if reviewed is not None:
            ring &= np.asarray(reviewed[g0:g2, g1:g3]) > 0
        if labels is not None and rng.random() < 0.5:
            others = ring & (np.asarray(labels[g0:g2, g1:g3]) > 0)
            if others.any():
                ring = others
        ys, xs = np.nonzero(ring)
        if len(ys):
            for j in rng.choice(len(ys), size=min(len(ys), int(rng.integers(1, 3))), replace=False):
                negative.append((float(ys[j] + g0), float(xs[j] + g1)))
    return Prompt(positive, tuple(negative), box, None)


def corrective_click(gt: np.ndarray, pred: np.ndarray, reviewed: np.ndarray | None = None, *,
                     margin: int = 16) -> tuple[tuple[int, int], bool] | None:
    """The next click of a careful corrector: ``((y, x), positive)`` or None when nothing is wrong.

    :func:`~segloop.core.inference.click_eval.next_click` (the innermost point of the larger of
    the missed and the leaked region) on the reviewed pixels only, looked for within ``margin``
    pixels of the object and the prediction.
    """
    gt = np.asarray(gt, bool)
    pred = np.asarray(pred, bool)
    bb = _bbox(gt | pred)
    if bb is None:
        return None
    r0, c0, r1, c1 = _grow(bb, margin, gt.shape)
    g, p = gt[r0:r1, c0:c1], pred[r0:r1, c0:c1]
    if reviewed is not None:
        rev = np.asarray(reviewed[r0:r1, c0:c1]) > 0
        g, p = g & rev, p & rev
    nxt = next_click(g, p)
    if nxt is None:
        return None
    (y, x), positive = nxt
    return (int(y + r0), int(x + c0)), bool(positive)


def add_click(prompt: Prompt, click: tuple[tuple[int, int], bool], previous: np.ndarray | None) -> Prompt:
    """``prompt`` with one more click and the previous round's mask (None when empty)."""
    (y, x), positive = click
    pt = ((float(y), float(x)),)
    prev = previous if previous is not None and previous.any() else None
    if positive:
        return replace(prompt, positive=prompt.positive + pt, previous=prev)
    return replace(prompt, negative=prompt.negative + pt, previous=prev)


def window_target(gt: np.ndarray, reviewed: np.ndarray | None, window: Window) -> tuple[np.ndarray, np.ndarray]:
    """The object's mask in ``window`` (``(out, out)`` float32 in [0, 1]) and the loss weights.

    A network pixel weighs 1 only when every image pixel it is interpolated from was reviewed;
    pixels next to an unreviewed one, or outside the image, weigh 0, so the labels of unreviewed
    pixels never reach the loss.
    """
    target = mask_to_window(np.asarray(gt, np.float32), window)
    rev = np.ones(gt.shape, np.float32) if reviewed is None else (np.asarray(reviewed) > 0).astype(np.float32)
    weight = (mask_to_window(rev, window) >= 1.0 - 1e-4).astype(np.float32)
    return np.clip(target, 0.0, 1.0), weight


def click_loss(logits, target, weight, *, smooth: float = 1.0):
    """Binary cross-entropy + soft Dice of the object channel, weighted per pixel.

    Parameters
    ----------
    logits : (N, 2, H, W) tensor
        Background / object logits (the network's two classes).
    target, weight : (N, H, W) tensors
        Soft object mask; 0 weight pixels contribute nothing (nor to the gradient).
    """
    import torch
    import torch.nn.functional as F

    z = logits[:, 1] - logits[:, 0]                # softmax over two classes == sigmoid of the difference
    bce = F.binary_cross_entropy_with_logits(z, target, reduction="none")
    bce = (bce * weight).sum() / weight.sum().clamp(min=1.0)
    p = torch.sigmoid(z)
    inter = (p * target * weight).sum((1, 2))
    denom = ((p + target) * weight).sum((1, 2))
    dice = (2 * inter + smooth) / (denom + smooth)
    return bce + (1 - dice).mean()
