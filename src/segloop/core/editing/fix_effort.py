"""What fixing an automatic segmentation costs, object by object.

The reference objects (:func:`~segloop.core.editing.objects.label_objects`, per plane and per
class for semantic labels) are matched to an automatic model's objects with
:func:`~segloop.core.editing.metrics.match_instances`: a reference object matched at IoU >=
:data:`FIX_IOU` needs no fix, every other one needs re-segmenting (its clicks with an interactive
model, or a brush), and each automatic object not matched one-to-one at IoU >= :data:`FP_IOU`
is a false positive a person deletes with one click. ``benchmarks/clicks.py`` and the
active-learning loop's effort count use it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from segloop.errors import InvalidLabelsError

__all__ = ["FIX_IOU", "FP_IOU", "AutoMatch", "fix_cost", "match_automatic", "pool_fix_costs", "reviewed_objects"]

#: IoU at which an automatic object needs no fix, and at which NoC is counted for the workflow.
FIX_IOU = 0.85
#: Predicted objects not matched one-to-one at this IoU are false positives (deleted with a click).
FP_IOU = 0.5


def reviewed_objects(labels: np.ndarray, reviewed: np.ndarray | None, *, task: str,
                     classes: Sequence[int] | None = None, min_area: int = 16) -> list:
    """:func:`label_objects` of ``labels``, without the objects less than half reviewed.

    Parameters
    ----------
    labels : (H, W) or (Z, H, W) integer ndarray
    reviewed : ndarray of the same shape, or None (everything reviewed)
    task : {"instance", "semantic"}
    """
    from segloop.core.editing.objects import label_objects

    objects = label_objects(labels, task=task, classes=classes, min_area=min_area)
    if reviewed is None or np.all(reviewed):
        return objects
    rev = np.asarray(reviewed) > 0
    out = []
    for o in objects:
        plane = rev if o.z is None else rev[o.z]
        if 2 * int(plane[o.mask(labels)].sum()) >= o.area:
            out.append(o)
    return out


def _id_images(labels: np.ndarray, objects: Sequence, task: str) -> dict[tuple, tuple[np.ndarray, dict]]:
    """Per group (plane, and class for semantic labels): an id image of just ``objects`` and
    ``{id: object}``.  Instance ids are the labels' own; a semantic part's id is its ``part``
    (the numbering of ``scipy.ndimage.label``, as in :func:`label_objects`)."""
    from scipy import ndimage as ndi

    wanted: dict[tuple, dict] = {}
    for o in objects:
        key = (o.z, None if task == "instance" else o.value)
        wanted.setdefault(key, {})[o.value if task == "instance" else o.part] = o
    out = {}
    for key, by_id in wanted.items():
        z, value = key
        plane = np.asarray(labels if z is None else labels[z])
        ids = plane.astype(np.int64) if value is None else ndi.label(plane == value)[0].astype(np.int64)
        out[key] = (np.where(np.isin(ids, list(by_id)), ids, 0), by_id)
    return out


@dataclass(frozen=True)
class AutoMatch:
    """An automatic segmentation against the reference, object by object.

    Attributes
    ----------
    objects : tuple of LabelObject
        The reference objects.
    matched : tuple of bool
        ``matched[i]``: ``objects[i]`` has an automatic object at IoU >= ``iou`` (needs no fix).
    false_positives : int
        Automatic objects not matched one-to-one at IoU >= 0.5 (each deleted with one click).
    predicted_objects : int
    iou : float
    """

    objects: tuple
    matched: tuple[bool, ...]
    false_positives: int
    predicted_objects: int
    iou: float = FIX_IOU


def match_automatic(truth: np.ndarray, pred: np.ndarray, *, task: str, classes: Sequence[int] | None = None,
                    min_area: int = 16, reviewed: np.ndarray | None = None, iou: float = FIX_IOU) -> AutoMatch:
    """Match an automatic model's labels to the reference objects, with the metrics module's matching.

    Objects of both are found by :func:`reviewed_objects` (so per plane, and per class for
    semantic labels); within each plane (and class) a reference object is matched when
    :func:`segloop.core.editing.metrics.match_instances` pairs it with an automatic object at
    IoU >= ``iou`` (the object against every automatic object it overlaps, cropped to their
    joint bounding box: exact, as objects outside it do not overlap), and the false positives
    are the automatic objects that ``match_instances`` leaves unmatched at IoU >= 0.5.

    Parameters
    ----------
    truth, pred : (H, W) or (Z, H, W) integer ndarray
        Reference and automatic labels (instance ids, or class ids for ``task="semantic"``).
    task : {"instance", "semantic"}
    classes, min_area, reviewed
        As :func:`reviewed_objects`, for both.
    iou : float
        IoU at which a reference object needs no fix.
    """
    from scipy import ndimage as ndi

    from segloop.core.editing.metrics import match_instances

    truth, pred = np.asarray(truth), np.asarray(pred)
    if truth.shape != pred.shape:
        raise InvalidLabelsError(f"automatic labels have shape {pred.shape}, the reference {truth.shape}")
    gt_objects = reviewed_objects(truth, reviewed, task=task, classes=classes, min_area=min_area)
    pred_objects = reviewed_objects(pred, reviewed, task=task, classes=classes, min_area=min_area)
    gt_ids, pred_ids = _id_images(truth, gt_objects, task), _id_images(pred, pred_objects, task)
    matched: dict[Any, bool] = {}
    fps = 0
    for key in gt_ids.keys() | pred_ids.keys():
        g, by_id = gt_ids.get(key, (None, {}))
        p, p_by_id = pred_ids.get(key, (None, {}))
        if g is None:
            fps += len(p_by_id)
            continue
        if p is None:
            matched.update(dict.fromkeys(by_id.values(), False))
            continue
        fps += match_instances(g, p, iou=FP_IOU)["fp"]
        boxes = ndi.find_objects(p)
        for gid, o in by_id.items():
            r0, c0, r1, c1 = o.bbox
            over = np.unique(p[r0:r1, c0:c1][g[r0:r1, c0:c1] == gid])
            over = over[over != 0]
            if not over.size:
                matched[o] = False
                continue
            for pid in over:
                sl = boxes[pid - 1]
                r0, c0 = min(r0, sl[0].start), min(c0, sl[1].start)
                r1, c1 = max(r1, sl[0].stop), max(c1, sl[1].stop)
            t_crop = (g[r0:r1, c0:c1] == gid).astype(np.uint8)
            p_crop = p[r0:r1, c0:c1]
            p_crop = np.where(np.isin(p_crop, over), p_crop, 0)
            matched[o] = match_instances(t_crop, p_crop, iou=iou)["tp"] == 1
    objects = tuple(gt_objects)
    return AutoMatch(objects, tuple(matched[o] for o in objects), int(fps), len(pred_objects), float(iou))


def fix_cost(match: AutoMatch, noc: Mapping[Any, int], *, objects: Sequence | None = None) -> dict[str, int]:
    """Clicks of "automatic model + per-object fix" on one image (counts, to pool with :func:`pool_fix_costs`).

    Parameters
    ----------
    match : AutoMatch
    noc : mapping LabelObject -> int
        Interactive NoC@85 of the objects that need a fix (matched ones need no entry).
    objects : sequence of LabelObject, optional
        The benchmarked objects (a sample of ``match.objects``); default all of them.

    Returns
    -------
    dict
        ``objects`` (benchmarked), ``matched``, ``to_fix``, ``fix_clicks`` (NoC@85 of those to
        fix), ``false_positives`` (= delete clicks) and ``objects_in_images`` (every reference
        object, the denominator of the false positives).
    """
    status = dict(zip(match.objects, match.matched, strict=True))
    objects = list(match.objects if objects is None else objects)
    missing = [o for o in objects if o not in status]
    if missing:
        raise InvalidLabelsError(f"{len(missing)} object(s) are not reference objects of this match")
    to_fix = [o for o in objects if not status[o]]
    return {"objects": len(objects), "matched": len(objects) - len(to_fix), "to_fix": len(to_fix),
            "fix_clicks": int(sum(int(noc[o]) for o in to_fix)), "false_positives": int(match.false_positives),
            "objects_in_images": len(match.objects)}


def pool_fix_costs(rows: Sequence[Mapping[str, int]]) -> dict[str, Any]:
    """:func:`fix_cost` of several images added up, and the workflow's clicks per object:
    fix clicks / benchmarked objects + false positives / reference objects of the images."""
    keys = ("objects", "matched", "to_fix", "fix_clicks", "false_positives", "objects_in_images")
    c = {k: int(sum(r[k] for r in rows)) for k in keys}
    per = (c["fix_clicks"] / c["objects"] if c["objects"] else 0.0) + (
        c["false_positives"] / c["objects_in_images"] if c["objects_in_images"] else 0.0)
    return {**c, "clicks_per_object": round(per, 3)}
