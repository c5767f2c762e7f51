"""The oracle of the loop without a screen: ground truth stands in for the person who corrects.

:func:`check_pool` pairs the pool and held-out images with their ground truth (typed errors
for every mismatch), :func:`changed_pixels` counts what a correction changes and
:func:`paste_truth` is the labels a person has after correcting some regions;
:func:`object_fixes` counts the objects it re-draws or deletes there (effort in objects, not area), and
:func:`object_clicks` the clicks that costs with a click model (the simulated corrector of
:mod:`segloop.core.inference.click_eval`).  Used by :func:`segloop_train.loop.run_loop`.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from segloop.errors import InvalidImageError, InvalidLabelsError

__all__ = ["MAX_CLICKS", "changed_pixels", "check_pool", "fix_match", "named_arrays", "object_clicks", "object_fixes",
           "pair_with_truth", "paste_truth"]

#: Clicks an object may take before the simulated person gives up (it then counts this many).
MAX_CLICKS = 10


def named_arrays(arrays, what: str) -> dict[str, np.ndarray]:
    """``{id: array}`` from a mapping or a sequence (ids ``image-000`` ...)."""
    if isinstance(arrays, np.ndarray):
        raise InvalidImageError(f"{what}: give a list of arrays (or a {{name: array}} mapping), not one array")
    if isinstance(arrays, Mapping):
        items = [(str(k), v) for k, v in arrays.items()]
    else:
        items = [(f"image-{i:03d}", v) for i, v in enumerate(arrays)]
    return {k: np.asarray(v) for k, v in items}


def pair_with_truth(images, truth, what: str) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Check images against their ground truth; typed errors naming the first mismatch."""
    imgs, gts = named_arrays(images, f"{what} images"), named_arrays(truth, f"{what} ground truth")
    if len(imgs) != len(gts):
        raise InvalidLabelsError(f"{len(imgs)} {what} image(s) but {len(gts)} ground-truth label image(s); give "
                                 "one ground truth per image, in the same order")
    if isinstance(images, Mapping) and isinstance(truth, Mapping) and set(imgs) != set(gts):
        raise InvalidLabelsError(f"{what} images and ground truth have different names: "
                                 f"{sorted(set(imgs) ^ set(gts))[:4]}")
    if not isinstance(truth, Mapping) or not isinstance(images, Mapping):
        gts = dict(zip(imgs, gts.values()))
    for name, img in imgs.items():
        gt = gts[name]
        if gt.dtype.kind not in "iub":
            raise InvalidLabelsError(f"{what} ground truth of {name!r} has dtype {gt.dtype}; labels must be integers "
                                     "(object ids or class ids)")
        if gt.ndim not in (2, 3):
            raise InvalidLabelsError(f"{what} ground truth of {name!r} has shape {gt.shape}; give (Y, X) or (Z, Y, X)")
        if gt.size and gt.min() < 0:
            raise InvalidLabelsError(f"{what} ground truth of {name!r} has negative labels")
        if img.ndim not in (gt.ndim, gt.ndim + 1) or tuple(img.shape[:gt.ndim]) != gt.shape:
            raise InvalidLabelsError(
                f"{what} image {name!r} has shape {img.shape} but its ground truth {gt.shape}; the ground truth must "
                "have the image's spatial shape (channels last in the image)")
    return imgs, {k: gts[k] for k in imgs}


def check_pool(images, ground_truth, heldout) -> tuple[dict, dict, dict, dict]:
    """Pool and held-out images paired with their ground truth (``{id: array}`` each).

    Raises
    ------
    InvalidImageError, InvalidLabelsError
        No pool images, mismatched counts, names or shapes, non-integer or negative labels,
        a mix of 2D and 3D, non-finite pixels.
    """
    pool, truth = pair_with_truth(images, ground_truth, "pool")
    if not pool:
        raise InvalidImageError("no pool images: give at least one image with its ground truth")
    ho_imgs, ho_truth = pair_with_truth(*heldout, "held-out") if heldout is not None else ({}, {})
    if len({len(g.shape) for g in truth.values()}) != 1:
        raise InvalidLabelsError("mix of 2D and 3D pool images; give all (Y, X) or all (Z, Y, X)")
    for name, img in pool.items():
        if np.issubdtype(img.dtype, np.floating) and not np.isfinite(img).all():
            raise InvalidImageError(f"pool image {name!r} has NaN or infinite values")
    return pool, truth, ho_imgs, ho_truth


def _fg(labels: np.ndarray, task: str) -> np.ndarray:
    return labels > 0 if task == "instance" else labels


def changed_pixels(prediction: np.ndarray | None, truth: np.ndarray, task: str) -> int:
    """Pixels the oracle changes when it corrects ``prediction`` to ``truth`` (one region).

    Those whose class differs; instance models: object vs background.  ``prediction`` None:
    nothing was predicted (0 everywhere).
    """
    truth = np.asarray(truth)
    pred = np.zeros(truth.shape, truth.dtype) if prediction is None else np.asarray(prediction)
    return int(np.count_nonzero(_fg(pred, task) != _fg(truth, task)))


def fix_match(prediction: np.ndarray | None, truth: np.ndarray, task: str):
    """:func:`segloop.core.editing.fix_effort.match_automatic` of one corrected region (every
    object, ``min_area=1``), shared by :func:`object_fixes` and :func:`object_clicks`."""
    from segloop.core.editing.fix_effort import match_automatic

    truth = np.asarray(truth)
    pred = np.zeros(truth.shape, truth.dtype) if prediction is None else np.asarray(prediction)
    return match_automatic(truth, pred, task="instance" if task == "instance" else "semantic", min_area=1)


def object_fixes(prediction: np.ndarray | None, truth: np.ndarray, task: str, *, match=None) -> int:
    """Objects the oracle re-draws or deletes when it corrects one region: the effort in objects.

    Reference objects not matched by a predicted one at IoU >= 0.85 (each re-segmented: one
    click or more with a click model, a brush outline without) plus predicted objects matched
    to none (each deleted with one click); :func:`segloop.core.editing.fix_effort.match_automatic`
    (per plane; per class part for semantic labels). ``prediction`` None: every object is drawn.
    ``match``: :func:`fix_match` of the same arguments, when the caller has it already.
    """
    m = match if match is not None else fix_match(prediction, truth, task)
    return int(sum(not ok for ok in m.matched) + m.false_positives)


def object_clicks(prediction: np.ndarray | None, truth: np.ndarray, region: tuple[slice, ...], *, image,
                  clicker, task: str, normalizer=None, max_clicks: int = MAX_CLICKS, match=None) -> int:
    """Clicks a person spends correcting one region with the click model ``clicker``.

    The objects :func:`object_fixes` counts, priced: each reference object not matched at IoU
    0.85 costs its NoC@85 (the corrector of :func:`~segloop.core.inference.click_eval.click_trace`:
    innermost-point clicks on the larger error, the previous mask given back; ``max_clicks`` when
    it never gets there), and each false positive one click to delete it.

    Parameters
    ----------
    prediction, truth : integer ndarray, the whole image's (or volume's) labels
        ``prediction`` None: nothing was predicted, every object is clicked.
    region : tuple of slice
        The corrected region (its objects are cut at its border, as the person corrects them).
    image : ndarray
        The whole image: the click model reads its window around each object from it.
    clicker : InteractiveModel
    normalizer : optional
        ``clicker.normalizer_for(image)``, fitted once per image.
    match : AutoMatch, optional
        :func:`fix_match` of the region, when the caller has it already.
    """
    from segloop.core.editing.fix_effort import FIX_IOU
    from segloop.core.inference.click_eval import click_trace, noc

    truth = np.asarray(truth)
    t = truth[region]
    m = match if match is not None else fix_match(None if prediction is None else np.asarray(prediction)[region],
                                                  t, task)
    clicks = int(m.false_positives)
    channel_axis = -1 if np.ndim(image) == truth.ndim + 1 else None
    for o, ok in zip(m.objects, m.matched, strict=True):
        if ok:
            continue
        gt = np.zeros(truth.shape[-2:], bool)
        gt[region[-2], region[-1]] = o.mask(t)
        z = None if o.z is None else int(region[0].start or 0) + int(o.z)
        trace = click_trace(clicker, image, gt, max_clicks=max_clicks, stop_at=FIX_IOU, z=z, normalizer=normalizer,
                            channel_axis=channel_axis)
        clicks += noc(trace.ious, FIX_IOU, max_clicks)
    return clicks


def paste_truth(prediction: np.ndarray | None, truth: np.ndarray, mask: np.ndarray, task: str) -> np.ndarray:
    """The labels a person has after correcting ``mask``: ``truth`` there, ``prediction`` elsewhere.

    Instance ids of the truth are shifted above the prediction's so no pasted object shares an
    id with a predicted one.  ``prediction`` None: nothing outside ``mask`` (0).
    """
    truth = np.asarray(truth)
    if prediction is None:
        pred = np.zeros(truth.shape, np.uint32 if task == "instance" else np.uint8)
    else:
        pred = np.asarray(prediction)
    if task != "instance":
        return np.where(mask, truth, pred).astype(np.uint8)
    offset = int(pred.max()) if pred.size else 0
    pasted = np.where(truth > 0, truth.astype(np.int64) + offset, 0)
    out = np.where(mask, pasted, pred.astype(np.int64))
    return out.astype(np.uint16 if out.max() <= np.iinfo(np.uint16).max else np.uint32)
