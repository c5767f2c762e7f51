"""What an interactive trainer reads: samples ready for windows and the objects on their planes.

A :class:`ClickSource` is one sample (2D image or volume) as :func:`~segloop.core.inference.interactive.image_view`
sees it, with its normalization fitted once on the whole sample, as inference fits it on the whole
image.  Its objects come from :func:`segloop.core.editing.objects.label_objects` (one instance, or
one connected part of a class, on one plane) and are kept when at least half of their pixels were
reviewed.  :func:`click_scores` scores a model on any split of a folder with the simulated corrector
(:func:`segloop.core.inference.click_eval.click_trace`), for held-out figures.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from segloop.core.editing.objects import LabelObject, label_objects
from segloop.core.formats.package import ModelSpec
from segloop.core.inference.click_eval import click_trace, summarize
from segloop.core.inference.interactive import image_view
from segloop.core.inference.normalize import Normalizer
from segloop.errors import InvalidImageError, ModelPackageError, TrainingFolderError

__all__ = ["MIN_REVIEWED", "ClickData", "ClickSource", "click_scores", "draw_objects", "image_channels_of",
           "object_list", "object_traces", "read_click_data"]

#: Share of an object's pixels that must be reviewed for it to be trained on or scored.
MIN_REVIEWED = 0.5


@dataclass
class ClickSource:
    """One sample (2D image or volume) ready for windows: the view, its channel axis, the fitted normalizer."""

    name: str
    folder: int
    image: Any
    labels: np.ndarray
    reviewed: np.ndarray
    channel_axis: int | None
    norm_spec: Any
    pixel_size: float | None = None
    _norm: Normalizer | None = field(default=None, repr=False)

    def normalizer(self) -> Normalizer:
        """Fitted once, on the whole sample (as inference does on the whole image)."""
        if self._norm is None:
            self._norm = Normalizer.fit(self.norm_spec, self.image, channel_axis=self.channel_axis)
        return self._norm

    def plane(self, arr: np.ndarray, z: int | None) -> np.ndarray:
        """Plane ``z`` of one of the sample's arrays (the array itself for a 2D sample)."""
        return arr if z is None else arr[z]


def _sample_channels(image: np.ndarray, axes: str) -> int:
    return int(image.shape[-1]) if axes.endswith("C") else 1


def _classes_for(classes, folder: Path, n_classes: int) -> tuple[int, ...] | None:
    """The semantic class ids of ``folder`` that are objects (None: all but 0)."""
    if classes is None:
        return None
    if isinstance(classes, Mapping):
        ids = classes.get(folder.name, classes.get(str(folder)))
        if ids is None:
            return None
    else:
        ids = classes
    ids = tuple(int(v) for v in ids)
    bad = [v for v in ids if not 0 < v < n_classes]
    if bad:
        raise TrainingFolderError(f"{folder}: class id(s) {bad} are not object classes of this folder (1.."
                                  f"{n_classes - 1}); give --classes from its classes")
    return ids


def _reviewed_share(obj: LabelObject, labels: np.ndarray, reviewed: np.ndarray) -> float:
    """Share of the object's pixels (its class / id inside its bbox) that were reviewed."""
    r0, c0, r1, c1 = obj.bbox
    lab = labels if obj.z is None else labels[obj.z]
    rev = reviewed if obj.z is None else reviewed[obj.z]
    inside = lab[r0:r1, c0:c1] == obj.value
    n = int(inside.sum())
    return float((rev[r0:r1, c0:c1][inside] > 0).sum()) / n if n else 0.0


def object_list(src: ClickSource, task: str, classes, min_area: int) -> list[LabelObject]:
    """The sample's objects (:func:`~segloop.core.editing.objects.label_objects`) with at least
    :data:`MIN_REVIEWED` of their pixels reviewed."""
    objs = label_objects(src.labels, task=task, classes=classes, min_area=min_area)
    return [o for o in objs if _reviewed_share(o, src.labels, src.reviewed) >= MIN_REVIEWED]


@dataclass
class ClickData:
    """What was read: sources and objects per split, folder records, notes."""

    sources: list[ClickSource]
    train: list[list[tuple[int, LabelObject]]]          # per folder: (source index, object)
    val: list[list[tuple[int, LabelObject]]]
    folders: list[Any]                                    # FolderData
    object_counts: list[dict[str, int]]
    notes: list[str]


def image_channels_of(loaded_folders, image_channels: int | None) -> int:
    """The image channels of the network: given, or read from the samples (RGB counts as one: a
    one-channel model reads RGB through its hematoxylin channel)."""
    if image_channels is not None:
        if isinstance(image_channels, bool) or not isinstance(image_channels, int) or image_channels < 1:
            raise ModelPackageError(f"image_channels must be a whole number >= 1, got {image_channels!r}")
        return image_channels
    seen: dict[int, str] = {}
    for lf in loaded_folders:
        for s in (*lf.train, *lf.val):
            c = _sample_channels(s.image, str(s.meta.get("axes", "YX")))
            c = 1 if c in (3, 4) else c
            seen.setdefault(c, s.source)
    if len(seen) > 1:
        raise TrainingFolderError(
            "the samples have different numbers of channels ("
            + ", ".join(f"{c} in {src}" for c, src in sorted(seen.items()))
            + "); train on samples of one kind, or give image_channels")
    return next(iter(seen), 1)


def read_click_data(folders: Sequence[Path], spec: ModelSpec, loaded_folders, *, classes=None, context_slices: int = 1,
                    min_area: int = 16) -> ClickData:
    """Sources and objects (train / val, per folder) of folders read by :func:`~segloop_train.folders.load_folders`
    (``volumes=True``, one call per folder), each sample checked against ``spec`` (:func:`image_view`).

    Raises
    ------
    TrainingFolderError
        No object to train on, a class id not in a folder, a sample the model cannot read.
    """
    from segloop_train.folders import sample_pixel_size

    sources: list[ClickSource] = []
    train: list[list[tuple[int, LabelObject]]] = []
    val: list[list[tuple[int, LabelObject]]] = []
    counts: list[dict[str, int]] = []
    notes: list[str] = []
    spec_px = float(spec.pixel_size[0]) if spec.pixel_size else None
    for fi, (path, lf) in enumerate(zip(folders, loaded_folders, strict=True)):
        info = lf.folders[0].info
        ids = _classes_for(classes, path, len(info.classes)) if info.task == "semantic" else None
        per_split = {"train": [], "val": []}
        for split, samples in (("train", lf.train), ("val", lf.val)):
            for s in samples:
                axes = str(s.meta.get("axes", "YX"))
                img, lab, rev = s.image, np.asarray(s.labels), np.asarray(s.reviewed)
                if s.meta.get("from_2d") and context_slices == 1:
                    img, lab, rev = img[0], lab[0], rev[0]
                ca = -1 if axes.endswith("C") else None
                try:
                    view, ca, _, norm_spec = image_view(spec, img, channel_axis=ca)
                except InvalidImageError as e:
                    raise TrainingFolderError(f"{s.source}: {e}") from None
                px = None
                if spec_px is not None and lab.ndim == 2:
                    known = sample_pixel_size(s.meta.get("spacing"))
                    px = None if known is None else float(np.mean(known))
                src = ClickSource(s.source, fi, view, lab, rev, ca, norm_spec, px)
                objs = object_list(src, info.task, ids, min_area)
                if objs:
                    sources.append(src)
                    per_split[split] += [(len(sources) - 1, o) for o in objs]
        train.append(per_split["train"])
        val.append(per_split["val"])
        counts.append({"train": len(per_split["train"]), "val": len(per_split["val"])})
        if not per_split["train"]:
            notes.append(f"{path}: no object of at least {min_area} px (at least half reviewed) in its train "
                         "split; it is used for validation only")
        notes += lf.warnings
    if not any(train):
        raise TrainingFolderError(
            f"no objects to train on in {', '.join(map(str, folders))}: the train samples hold no object of at least "
            f"{min_area} px with at least half of it reviewed" + (
                f" among classes {classes}" if classes is not None else "")
            + "; export labelled objects (split train) first")
    return ClickData(sources, train, val, [lf.folders[0] for lf in loaded_folders], counts, notes)


def draw_objects(val: list[list[tuple[int, LabelObject]]], n: int, seed: int) -> list[tuple[int, LabelObject]]:
    """At most ``n`` val objects, the folders taking turns (a fixed draw from ``seed``)."""
    rng = np.random.default_rng([int(seed), 7919])
    queues = [[items[i] for i in rng.permutation(len(items))] for items in val]
    out: list[tuple[int, LabelObject]] = []
    while len(out) < n and any(queues):
        for q in queues:
            if q and len(out) < n:
                out.append(q.pop(0))
    return out


# --------------------------------------------------------------------------- scoring


def object_traces(model, items: Sequence[tuple[int, LabelObject]], sources: Sequence[ClickSource], *, max_clicks: int,
            stop_at: float | None = None) -> list:
    out = []
    for si, obj in items:
        src = sources[si]
        out.append(click_trace(model, src.image, obj.mask(src.labels), max_clicks=max_clicks, stop_at=stop_at,
                               z=obj.z, normalizer=src.normalizer(), channel_axis=src.channel_axis,
                               pixel_size=src.pixel_size))
    return out


def click_scores(model, folder: str | os.PathLike, *, splits: Sequence[str] = ("test",),
                 classes: Sequence[int] | None = None, max_objects: int = 150, max_clicks: int = 10,
                 min_area: int = 16, seed: int = 0, per_class: bool = True) -> dict[str, Any]:
    """Simulated-corrector scores of an interactive model on a training folder's ``splits``.

    For held-out figures: any split may be read here (the trainer itself never reads ``test``).

    Parameters
    ----------
    model : InteractiveModel
    folder : path-like
        A training folder v1.
    splits : sequence of str
    classes : sequence of int, optional
        Semantic folders: the class ids scored (default all but 0).
    max_objects : int
        At most this many objects (per class with ``per_class``), a fixed draw from ``seed``.
    per_class : bool
        Semantic folders: also a summary per class name.

    Returns
    -------
    dict
        ``{"images": n, "splits": [...], "all": summarize(...), "<class>": summarize(...) ...}``
        (:func:`~segloop.core.inference.click_eval.summarize`: ``objects``, ``noc@85``, ``noc@90``,
        ``miou@1``, ``miou@3``, ``ms_per_click_median`` ...).
    """
    from segloop.core.formats.trainfolder import TrainingFolder

    tf = TrainingFolder.open(folder)
    info = tf.info
    spec = model.spec
    sources: list[ClickSource] = []
    by_class: dict[int, list[tuple[int, LabelObject]]] = {}
    for rec in tf.samples():
        if rec.split not in splits:
            continue
        s = tf.read_sample(rec)
        axes = str(rec.meta.get("axes", "YX"))
        img, lab, rev = s.image, np.asarray(s.labels), np.asarray(s.reviewed)
        if not axes.startswith("Z") and spec.context_slices > 1:
            img, lab, rev = img[None], lab[None], rev[None]
        view, ca, _, norm_spec = image_view(spec, img, channel_axis=-1 if axes.endswith("C") else None,
                                            stain=getattr(model, "stain", "auto"))
        src = ClickSource(f"{Path(folder).name}/{rec.sample_id}", 0, view, lab, rev, ca, norm_spec)
        objs = object_list(src, info.task, classes if info.task == "semantic" else None, min_area)
        sources.append(src)
        for o in objs:
            key = o.value if info.task == "semantic" and per_class else 0
            by_class.setdefault(key, []).append((len(sources) - 1, o))
    out: dict[str, Any] = {"images": len(sources), "splits": list(splits)}
    every = []
    for key in sorted(by_class):
        traces = object_traces(model, draw_objects([by_class[key]], max_objects, seed), sources, max_clicks=max_clicks)
        every += traces
        if info.task == "semantic" and per_class:
            out[info.classes[key]] = summarize(traces, max_clicks=max_clicks)
    out["all"] = summarize(every, max_clicks=max_clicks)
    return out
