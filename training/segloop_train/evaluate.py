"""The one evaluator of segloop_train: held-out metrics of a model, through ``Model.predict``.

:func:`evaluate_samples` predicts every held-out sample the way a user's ``Model.predict``
call does (the same preparation step, :meth:`segloop.core.inference.model.Model.prepare`),
counts agreement on the reviewed pixels and averages in one of two documented ways:

* ``average="pooled"`` (default; what fine-tuned packages and ``docs/finetune.md`` report):
  the counts of all samples are added up first (micro average), so small or empty samples
  do not dominate;
* ``average="image"`` (what the bundled 2D nuclei model cards report, through
  :func:`segloop_train.train.evaluate`): each sample's metrics, then their mean.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

from segloop.core.editing import metrics as M
from segloop.core.formats.package import ModelPackage, ModelSpec
from segloop.core.inference.model import Model
from segloop_train.data import Sample

__all__ = ["AP_THRESHOLDS", "VolumePredictor", "evaluate_samples", "is_volume_spec", "restrict_objects",
           "score_key"]

#: IoU thresholds of ``ap@0.5:0.95``.
AP_THRESHOLDS = (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)

Average = Literal["pooled", "image"]


def is_volume_spec(spec: ModelSpec) -> bool:
    """Whether a package reads volumes (3D, or 2.5D with ``context_slices > 1``)."""
    return spec.dims == 3 or spec.context_slices > 1


def score_key(task: str) -> str:
    """The metric a run keeps its best weights by: instance F1 at IoU 0.5, or Dice."""
    return "f1@0.5" if task == "instance" else "dice"


def restrict_objects(lab: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Keep the objects of ``lab`` with at least half their pixels inside ``mask``."""
    if mask.all():
        return lab
    lab = np.asarray(lab)
    n = int(lab.max()) + 1
    total = np.bincount(lab.ravel(), minlength=n)
    inside = np.bincount(lab[mask].ravel(), minlength=n)
    keep = inside * 2 >= total
    keep[0] = False
    return np.where(keep[lab], lab, 0)


class VolumePredictor:
    """Labels of whole volumes from a 2.5D / 3D package, through ``Model.predict``.

    The same preparation, sliding window and post-processing as a user's
    :meth:`segloop.core.inference.model.Model.predict` call (there is no second,
    training-only forward pass).

    Parameters
    ----------
    package : ModelPackage or Model
    device : str
        For a ``ModelPackage`` (loaded in fp32).
    """

    def __init__(self, package: ModelPackage | Model, *, device: str = "cpu"):
        if isinstance(package, Model):
            self.model, package = package, package.package
        else:
            self.model = Model(package, device=device, precision="fp32")
        self.spec = package.spec
        self.device = device

    def __call__(self, volume: np.ndarray, *, normalization: dict | None = None, batch_size: int = 8) -> np.ndarray:
        """``(Z, Y, X)`` labels of ``volume`` ``(Z, Y, X[, C])``."""
        return self.model.predict(volume, normalization=normalization, batch_size=batch_size).labels


class _Counts:
    """Agreement counts of one or more samples (added up for pooled averages)."""

    def __init__(self, k: int):
        self.inter = np.zeros(k, np.int64)
        self.t_sum = np.zeros(k, np.int64)
        self.p_sum = np.zeros(k, np.int64)
        self.correct = 0
        self.total = 0
        self.matches = {th: [0, 0, 0] for th in AP_THRESHOLDS}     # tp, fp, fn

    def add(self, other: _Counts) -> None:
        self.inter += other.inter
        self.t_sum += other.t_sum
        self.p_sum += other.p_sum
        self.correct += other.correct
        self.total += other.total
        for th, c in other.matches.items():
            for i in range(3):
                self.matches[th][i] += c[i]

    def count(self, truth: np.ndarray, pred: np.ndarray, mask: np.ndarray, task: str) -> None:
        k = len(self.inter)
        if task == "instance":
            t, p = (truth != 0)[mask], (pred != 0)[mask]
            self.inter[1] += int((t & p).sum())
            self.t_sum[1] += int(t.sum())
            self.p_sum[1] += int(p.sum())
            self.correct += int((t == p).sum())
            self.total += int(mask.sum())
            tr, pr = restrict_objects(truth, mask), restrict_objects(pred, mask)
            for th, r in zip(AP_THRESHOLDS, M.match_instances_at(tr, pr, AP_THRESHOLDS)):
                c = self.matches[th]
                c[0] += r["tp"]
                c[1] += r["fp"]
                c[2] += r["fn"]
        else:
            t, p = truth[mask].astype(np.int64), pred[mask].astype(np.int64)
            self.correct += int((t == p).sum())
            self.total += int(mask.sum())
            for c in range(1, k):
                tc, pc = t == c, p == c
                self.inter[c] += int((tc & pc).sum())
                self.t_sum[c] += int(tc.sum())
                self.p_sum[c] += int(pc.sum())

    def metrics(self, task: str, classes: Sequence[str]) -> dict[str, float]:
        k = len(self.inter)
        inter, t_sum, p_sum = self.inter, self.t_sum, self.p_sum

        def dice_of(c):
            d = t_sum[c] + p_sum[c]
            return 1.0 if d == 0 else 2 * inter[c] / d

        def jac_of(c):
            u = t_sum[c] + p_sum[c] - inter[c]
            return 1.0 if u == 0 else inter[c] / u

        out: dict[str, float] = {}
        accuracy = self.correct / self.total if self.total else 1.0
        if task == "instance":
            out["dice"], out["jaccard"] = float(dice_of(1)), float(jac_of(1))
            out["pixel_accuracy"] = accuracy
            tp, fp, fn = self.matches[0.5]
            out["f1@0.5"] = 1.0 if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)
            out["precision@0.5"] = tp / (tp + fp) if tp + fp else (1.0 if fn == 0 else 0.0)
            out["recall@0.5"] = tp / (tp + fn) if tp + fn else 1.0
            out["ap@0.5:0.95"] = float(np.mean([1.0 if sum(c) == 0 else c[0] / sum(c)
                                                for c in self.matches.values()]))
        else:
            present = [c for c in range(1, k) if t_sum[c] + p_sum[c] > 0] or list(range(1, k))
            out["dice"] = float(np.mean([dice_of(c) for c in present]))
            out["jaccard"] = float(np.mean([jac_of(c) for c in present]))
            out["pixel_accuracy"] = accuracy
            if k > 2:
                for c in range(1, k):
                    out[f"dice:{classes[c]}"] = float(dice_of(c))
                    out[f"jaccard:{classes[c]}"] = float(jac_of(c))
        return {key: float(v) for key, v in out.items()}


def evaluate_samples(model: Model | ModelPackage, samples: Sequence[Sample], *, normalization: dict | None = None,
                     batch_size: int = 8, device: str = "cpu", average: Average = "pooled") -> dict[str, float]:
    """Held-out metrics of ``model`` on ``samples``, predicted through ``Model.predict``.

    Only reviewed pixels (voxels) count; for instance metrics an object (true or predicted)
    counts when at least half of it is reviewed.

    Parameters
    ----------
    model : Model or ModelPackage
        A 2.5D or 3D package (``context_slices > 1`` or ``dims == 3``) may be given as a
        ``ModelPackage``: its volumes are predicted by :class:`VolumePredictor`.
    samples : sequence of Sample
        2D samples, or volumes (``meta["volume"]``, as :func:`segloop_train.folders.load_folders`
        reads them for 2.5D / 3D models); ``labels`` are object ids (instance) or class ids
        (semantic).
    normalization : dict, optional
        Override the model's normalization (e.g. hematoxylin for a fluorescence model).
    batch_size : int
        Tiles per engine call.
    device : str
        For a ``ModelPackage``.
    average : {"pooled", "image"}
        ``"pooled"`` (default): counts are pooled over all samples (micro averages), so small
        or empty samples do not dominate; what fine-tuned packages record.  ``"image"``: the
        metrics of each sample, then their mean (what the bundled nuclei model cards report).

    Returns
    -------
    dict
        ``dice``, ``jaccard``, ``pixel_accuracy`` (foreground vs background for instance
        models, class ids for semantic ones); instance: ``f1@0.5``, ``precision@0.5``,
        ``recall@0.5``, ``ap@0.5:0.95``; semantic with 2+ foreground classes: ``dice:<class>``
        and ``jaccard:<class>`` (Dice and Jaccard are then the mean over the classes present).
        Empty when ``samples`` is empty.
    """
    if average not in ("pooled", "image"):
        raise ValueError(f"average must be 'pooled' or 'image', got {average!r}")
    if not samples:
        return {}
    if not isinstance(model, Model) and not is_volume_spec(model.spec):
        model = Model(model, device=device, precision="fp32")
    vp = VolumePredictor(model, device=device) if is_volume_spec(model.spec) else None
    spec = model.spec
    pooled = _Counts(spec.n_classes)
    per_image: list[dict[str, float]] = []
    for s in samples:
        if vp is not None:
            volume = s.meta.get("volume") or np.asarray(s.labels).ndim == 3
            img = s.image if volume else np.asarray(s.image)[None]
            pred = vp(img, normalization=normalization, batch_size=batch_size)
            pred = pred if volume else pred[0]
        else:
            # samples read for this model are at its pixel size already (or of unknown size: as they are)
            pred = model.predict(s.image, normalization=normalization, batch_size=batch_size,
                                 pixel_size=s.meta.get("pixel_size") or spec.pixel_size).labels
        truth = np.asarray(s.labels)
        mask = np.ones(truth.shape, bool) if s.reviewed is None else np.asarray(s.reviewed) > 0
        counts = _Counts(spec.n_classes)
        counts.count(truth, pred, mask, spec.task)
        if average == "pooled":
            pooled.add(counts)
        else:
            per_image.append(counts.metrics(spec.task, spec.classes))
    if average == "pooled":
        return pooled.metrics(spec.task, spec.classes)
    return {k: float(np.mean([m[k] for m in per_image])) for k in per_image[0]}
