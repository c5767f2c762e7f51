"""Training folders v1 -> train / val :class:`~segloop_train.data.Sample` lists (no Qt, no napari).

:func:`load_folders` validates every folder first (:meth:`TrainingFolder.validate`), then
reads its samples.  Policy for bad input:

* a **corrupt sample** (hash mismatch, missing or undecodable file, bad shapes or dtypes,
  unreadable ``meta.json`` ...) is **skipped with a warning** that names the sample and says
  why.  The same goes for what the folder's sample index disagrees with (the rules of
  ``segloop validate``): a sample the index lists whose folder is **missing**, a sample folder
  the index does **not list** (copied in by hand), and a sample whose ``meta.json`` (its split)
  was **edited** after export.  One damaged file should not block training on the hundreds
  of good ones, and nothing is lost: the folder is only read.  The skipped samples are
  listed in :attr:`FolderData.skipped` and end up in the trained package's record;
* a folder that is missing, not a training folder, written by a newer segloop, **empty**, or
  left with **no train samples** after skipping is refused with a
  :class:`~segloop.errors.TrainingFolderError`; so is one whose sample index is unreadable, or
  missing although ``segloop-training.json`` says it keeps one (``segloop validate --fix``
  rebuilds it).  A folder from before sample indexes is read as before;
* folders whose **classes or task** differ from each other or from the model to fine-tune
  are refused, and the message says exactly what differs (:func:`check_classes`); instance
  folders with one object class fit any one-object-class model whatever the class is called
  (recorded as :attr:`LoadedFolders.class_mapping`).

``reviewed`` masks are kept on each sample, so pixels nobody reviewed are ignored by the
loss (and by the metrics).  The ``test`` split is never read for training or validation.

Pixel size: for a 2D model that records the pixel size it works at (``spec.pixel_size``, or
``pixel_size=``), every 2D sample whose ``meta.json`` ``spacing`` (µm per pixel, y and x) is
known and differs from it by more than 5 % is resampled to it - the image bilinearly
(anti-aliased when it shrinks), labels and the reviewed mask by nearest neighbour
(:mod:`segloop.core.inference.resolution`) - so 20x and 40x tiles teach the network nuclei
of one size.  Samples of unknown spacing (none recorded, or ``[1, 1]``: napari's scale of
an image without one) are used at their own resolution and counted in a note.  Each sample's
``meta["pixel_size"]`` is the pixel size it is used at (None when unknown).

3D samples (``ZYX`` / ``ZYXC``) are read in one of two ways:

* for a **2D** model (``dims == 2``, ``context_slices == 1``, or no ``spec``) as their 2D
  slices (slices with no reviewed pixel are dropped); each slice is normalized on its own,
  as a 2D image, during training and validation;
* with ``volumes=True`` - what :func:`segloop_train.finetune` asks for a **2.5D**
  (``context_slices > 1``) or **3D** (``dims == 3``) model - as whole volumes, normalized
  with statistics of the whole volume (as ``Model.predict`` does).  2D samples then become
  volumes of one slice (``(1, Y, X[, C])``).  The training half of a held-out pair (a
  sample whose last block along one axis was held out for validation by
  :meth:`TrainingFolder.add_sample`) is cut short before that block and its gap, so no
  voxel of the validation block reaches a training patch, not even as context.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from segloop.core.formats.package import ModelSpec
from segloop.core.formats.pixel_size import check_pixel_size, differs, format_pixel_size
from segloop.core.formats.trainfolder import SPLITS, FolderInfo, TrainingFolder
from segloop.core.inference.resolution import (
    MAX_FACTOR,
    grid_shape,
    resample_image,
    resample_labels,
)
from segloop.errors import InvalidPixelSizeError, TrainingFolderError
from segloop_train.data import Sample

__all__ = ["FolderData", "LoadedFolders", "SkippedSampleWarning", "check_classes", "load_folders",
           "object_classes", "sample_pixel_size"]


class SkippedSampleWarning(UserWarning):
    """A sample of a training folder was skipped (corrupt or unusable); the message says which and why."""


@dataclass(frozen=True)
class FolderData:
    """What was read from one training folder (recorded in the trained package).

    Attributes
    ----------
    path : Path
    info : FolderInfo
    fingerprint : str
        :meth:`TrainingFolder.fingerprint` (sha256 over the samples' recorded hashes).
    samples : dict
        Samples used per split, ``{"train": n, "val": n, "test": n}`` (``test`` is counted, never read).
    slices : dict
        2D images those samples gave per split (a 3D sample gives one per reviewed slice);
        read as volumes: the slices with reviewed pixels in them.
    skipped : tuple of str
        ``"<sample_id>: <why>"`` for every sample skipped.
    resampled, unknown_pixel_size : int
        Samples (pieces) resampled to the model's pixel size / used at their own resolution
        because their pixel size is unknown (0 when the model has no pixel size).
    """

    path: Path
    info: FolderInfo
    fingerprint: str
    samples: dict[str, int]
    slices: dict[str, int]
    skipped: tuple[str, ...] = ()
    resampled: int = 0
    unknown_pixel_size: int = 0

    def to_dict(self) -> dict:
        return {"path": str(self.path), "fingerprint": self.fingerprint, "classes": list(self.info.classes),
                "task": self.info.task, "modality": self.info.modality, "samples": dict(self.samples),
                "slices": dict(self.slices), "skipped": list(self.skipped), "resampled": self.resampled,
                "unknown_pixel_size": self.unknown_pixel_size}


@dataclass
class LoadedFolders:
    """Train and validation samples of one or more training folders.

    Attributes
    ----------
    train, val : list of Sample
        2D samples: ``image`` (H, W) or (H, W, C) as exported, ``labels`` (H, W) ids,
        ``reviewed`` (H, W) uint8.  ``meta`` holds ``folder``, ``sample_id``, ``modality``,
        ``axes``, ``spacing`` (as exported, or None) and, for slices of a 3D sample, ``z``.
        With ``volumes``: ``(Z, Y, X[, C])`` images and ``(Z, Y, X)`` labels / reviewed, and
        ``meta["volume"]`` True (``meta["from_2d"]`` True for a 2D sample made a 1-slice volume).
    volumes : bool
        Whether samples were read as volumes.
    folders : list of FolderData
    classes : tuple of str
        The folders' classes (index 0 = background).
    task : {"semantic", "instance"}
    class_mapping : dict or None
        ``{folder class: model class}`` for one-object-class folders read as the model's class
        under another name (:func:`check_classes`).
    pixel_size : (float, float) or None
        µm per pixel the 2D samples of known spacing were brought to (see the module docstring).
    """

    train: list[Sample]
    val: list[Sample]
    folders: list[FolderData]
    classes: tuple[str, ...]
    task: str
    warnings: list[str] = field(default_factory=list)
    volumes: bool = False
    class_mapping: dict[str, str] | None = None
    pixel_size: tuple[float, float] | None = None

    @property
    def modalities(self) -> set[str]:
        return {f.info.modality for f in self.folders}


def object_classes(spec: ModelSpec) -> tuple[str, ...]:
    """The classes an instance model segments as objects: all but background and boundary.

    For the bundled ``nuclei-unet`` (background, nucleus, boundary) this is ``("nucleus",)``.
    """
    pp = spec.postprocess or {}
    boundary = int(pp.get("boundary_class", 2))
    return tuple(c for i, c in enumerate(spec.classes) if i not in (0, boundary))


def check_classes(info: FolderInfo, spec: ModelSpec, *, folder: str | os.PathLike = "training folder"
                  ) -> dict[str, str] | None:
    """Refuse a folder whose task or classes do not fit the model ``spec``.

    Semantic models: the folder's classes must equal the model's, in order (label value =
    class index).  Instance models: the folder's object classes (all but index 0) must equal
    the model's classes without background and boundary (:func:`object_classes`), except that
    a folder with one object class fits any model with one object class: its labels are object
    ids, whatever the class is called (``object`` from ``segloop export`` without ``--classes``
    fits ``nuclei-unet``'s ``nucleus``).  Background names (index 0) are not compared.

    Returns
    -------
    dict or None
        ``{folder class: model class}`` when a one-class folder is read as the model's class
        under another name (recorded in the new package's training record), else None.

    Raises
    ------
    TrainingFolderError
        Saying what differs and how to fix it.
    """
    if info.task != spec.task:
        raise TrainingFolderError(
            f"{folder} holds {info.task} labels but {spec.name} is a {spec.task} model; fine-tune a "
            f"{info.task} model, or train from scratch with --arch ... --task {info.task}")
    if spec.task == "instance":
        have, want = tuple(info.classes[1:]), object_classes(spec)
        if len(have) == len(want) == 1:
            return {have[0]: want[0]} if have != want else None
        if have != want:
            raise TrainingFolderError(
                f"{folder}: its object classes {list(have)} differ from the object classes of {spec.name} "
                f"{list(want)} (its classes without background and boundary); export with the model's class "
                f"names (classes background, {', '.join(want)}) or train from scratch with --arch")
    else:
        have, want = tuple(info.classes), tuple(spec.classes)
        if have != want:
            diffs = []
            if len(have) != len(want):
                diffs.append(f"{len(have)} classes vs {len(want)}")
            diffs += [f"class {i}: {a!r} vs {b!r}" for i, (a, b) in enumerate(zip(have, want)) if a != b]
            raise TrainingFolderError(
                f"{folder}: its classes {list(have)} differ from {spec.name}'s {list(want)} "
                f"({'; '.join(diffs)}); label values are class indices, so names and order must match. "
                "Fine-tune a model with these classes, or train from scratch with --arch")
    return None


def _cut_holdout(image: np.ndarray, labels: np.ndarray, reviewed: np.ndarray, meta: dict, axes: str
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict | None]:
    """The training half of a held-out pair, cut before its validation block and gap."""
    hold = meta.get("holdout") or {}
    if hold.get("role") != "train":
        return image, labels, reviewed, None
    try:
        axis = axes.rstrip("C").index(str(hold["axis"]))
        start = int(hold["block"][0]) - int(hold.get("gap", 0))
    except (KeyError, ValueError, TypeError, IndexError):
        return image, labels, reviewed, None
    if not 0 < start < labels.shape[axis]:
        return image, labels, reviewed, None
    sl = (slice(None),) * axis + (slice(0, start),)
    return image[sl], labels[sl], reviewed[sl], {"axis": hold["axis"], "kept": [0, start]}


def _slices(loaded, sid: str, folder: Path, info: FolderInfo, *, volumes: bool = False
            ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, dict]]:
    """(image, labels, reviewed, meta) pieces of one sample: 2D slices, or one volume with ``volumes``."""
    meta = loaded.meta
    axes = str(meta.get("axes", "YX"))
    base = {"folder": str(folder), "sample_id": sid, "modality": info.modality, "axes": axes,
            "split": meta.get("split"), "spacing": meta.get("spacing")}
    if volumes:
        img, lab, rev = np.asarray(loaded.image), np.asarray(loaded.labels), np.asarray(loaded.reviewed)
        if not axes.startswith("Z"):
            return [(img[None], lab[None], rev[None], {**base, "volume": True, "from_2d": True})]
        img, lab, rev, cut = _cut_holdout(img, lab, rev, meta, axes)
        return [(img, lab, rev, {**base, "volume": True, **({"holdout_cut": cut} if cut else {})})]
    if not axes.startswith("Z"):
        return [(loaded.image, loaded.labels, loaded.reviewed, base)]
    out = []
    for z in range(loaded.labels.shape[0]):
        rev = loaded.reviewed[z]
        if not rev.any():
            continue
        out.append((loaded.image[z], loaded.labels[z], rev, {**base, "z": z}))
    return out


def sample_pixel_size(spacing) -> tuple[float, float] | None:
    """A 2D sample's µm per pixel from its ``meta["spacing"]``; None when unknown.

    Unknown: nothing recorded, not two positive numbers (3D samples record three), or exactly
    ``[1, 1]`` - the scale napari gives an image without a pixel size, which the Export widget
    records as it is.
    """
    if spacing is None or len(spacing) != 2:
        return None
    try:
        px = check_pixel_size(spacing, source="spacing")
    except InvalidPixelSizeError:
        return None
    return None if px == (1.0, 1.0) else px


def _at_pixel_size(image, labels, reviewed, meta: dict, target: tuple[float, float]):
    """One 2D piece at ``target`` µm per pixel (resampled when its known spacing differs by > 5 %)."""
    known = sample_pixel_size(meta.get("spacing")) if np.ndim(labels) == 2 and not meta.get("volume") else None
    if known is None or not differs(known, target):
        return image, labels, reviewed, {**meta, "pixel_size": list(known) if known else None}
    factor = tuple(k / t for k, t in zip(known, target, strict=True))
    if any(not 1 / MAX_FACTOR <= f <= MAX_FACTOR for f in factor):
        raise InvalidPixelSizeError(f"its spacing {format_pixel_size(known)} µm/px is more than {MAX_FACTOR:.0f}x "
                                    f"off the model's {format_pixel_size(target)} µm/px; check the spacing in its "
                                    "meta.json")
    shape = grid_shape(np.shape(labels), factor)
    img = np.asarray(image)
    img = resample_image(img, shape, channel_axis=-1 if img.ndim == 3 else None)
    return (img, resample_labels(labels, shape), resample_labels(reviewed, shape),
            {**meta, "pixel_size": list(target), "resampled_from": list(known), "scale": [round(f, 6) for f in factor]})


def _warn(msg: str, collected: list[str]) -> None:
    collected.append(msg)
    warnings.warn(msg, SkippedSampleWarning, stacklevel=3)


def load_folders(folders: str | os.PathLike | Iterable[str | os.PathLike], *, spec: ModelSpec | None = None,
                 check_hashes: bool = True, volumes: bool | None = None,
                 pixel_size: float | tuple[float, float] | None = None) -> LoadedFolders:
    """Validate and read training folders into train / val samples (2D slices, or volumes).

    Parameters
    ----------
    folders : path-like or sequence of path-like
        Training folders v1 (see DESIGN.md).  All must share classes and task.
    spec : ModelSpec, optional
        The model to fine-tune: the folders' task and classes must fit it (:func:`check_classes`).
    check_hashes : bool
        Check every file against the sha256 in its ``meta.json`` (recommended; a changed or
        truncated file makes its sample skipped).
    volumes : bool, optional
        Read samples as volumes (for 2.5D and 3D models; see the module docstring).  Default:
        True when ``spec`` is 3D (``dims == 3``) or 2.5D (``context_slices > 1``), else False.
    pixel_size : float or (float, float), optional
        µm per pixel to bring 2D samples of known spacing to; default ``spec.pixel_size``.
        None (and no spec pixel size): every sample at its own resolution.

    Returns
    -------
    LoadedFolders
        ``train`` and ``val`` lists of :class:`Sample`: 2D (3D samples as their reviewed
        slices), or ``(Z, Y, X[, C])`` volumes with ``volumes``.

    Raises
    ------
    TrainingFolderError
        A folder is missing, not a training folder, empty, or has no usable train sample; the
        folders disagree on classes or task; or they do not fit ``spec``.

    Warns
    -----
    SkippedSampleWarning
        Once per skipped sample, naming it and why (see the module docstring).
    """
    if isinstance(folders, str | os.PathLike):
        folders = [folders]
    if volumes is None:
        volumes = spec is not None and (spec.dims == 3 or getattr(spec, "context_slices", 1) > 1)
    if pixel_size is None and spec is not None:
        pixel_size = spec.pixel_size
    to_px = None if pixel_size is None or volumes else check_pixel_size(pixel_size, source="pixel_size")
    paths = [Path(f) for f in folders]
    if not paths:
        raise TrainingFolderError("no training folder given; pass at least one folder exported by segloop")
    train: list[Sample] = []
    val: list[Sample] = []
    data: list[FolderData] = []
    notes: list[str] = []
    first: FolderInfo | None = None
    class_mapping: dict[str, str] = {}
    for path in paths:
        tf = TrainingFolder.open(path)        # missing / not a folder / newer version: clear errors
        info = tf.info
        if first is None:
            first = info
        elif (info.task, info.classes) != (first.task, first.classes) and not _one_object_class(info, first):
            raise TrainingFolderError(
                f"{path} has task {info.task!r} and classes {list(info.classes)}, but {paths[0]} has task "
                f"{first.task!r} and classes {list(first.classes)}; train on folders with the same classes")
        if spec is not None:
            mapping = check_classes(info, spec, folder=path)
            if mapping:
                class_mapping.update(mapping)
                notes.append(f"{path}: its one object class {next(iter(mapping))!r} is read as {spec.name}'s "
                             f"{next(iter(mapping.values()))!r} (instance labels are object ids)")
        report = tf.validate(check_hashes=False)      # hashes are checked as each sample is read
        folder_level = [p for p in report.problems if p.sample_id is None]
        if folder_level:
            raise TrainingFolderError(f"{path}: {folder_level[0].message}; run `segloop validate {path}`")
        bad = {}
        for p in report.problems:
            bad.setdefault(p.sample_id, p.message)
        records = tf.samples()
        skipped = []
        for sid in sorted(set(bad) - {r.sample_id for r in records}):   # listed in the index, folder gone
            skipped.append(f"{sid}: {bad[sid]}")
            _warn(f"{path}: sample {sid!r} skipped: {bad[sid]}", notes)
        if not records:
            raise TrainingFolderError(
                f"{path} has no samples; export corrected labels into it first (Export widget or `segloop export`)")
        counts = dict.fromkeys(SPLITS, 0)
        slices = dict.fromkeys(SPLITS, 0)
        resampled = unknown = 0
        for rec in records:
            if rec.sample_id in bad:
                msg = f"{path}: sample {rec.sample_id!r} skipped: {bad[rec.sample_id]}"
                skipped.append(f"{rec.sample_id}: {bad[rec.sample_id]}")
                _warn(msg, notes)
                continue
            split = rec.split
            if split == "test":
                counts["test"] += 1
                continue
            try:
                loaded = tf.read_sample(rec, verify=check_hashes)
            except TrainingFolderError as e:      # changed between validate and read
                skipped.append(f"{rec.sample_id}: {e}")
                _warn(f"{path}: sample {rec.sample_id!r} skipped: {e}", notes)
                continue
            pieces = _slices(loaded, rec.sample_id, path, info, volumes=volumes)
            if to_px is not None:
                try:
                    pieces = [_at_pixel_size(*piece, to_px) for piece in pieces]
                except InvalidPixelSizeError as e:
                    skipped.append(f"{rec.sample_id}: {e}")
                    _warn(f"{path}: sample {rec.sample_id!r} skipped: {e}", notes)
                    continue
            if not pieces or not any(r.any() for _, _, r, _ in pieces):
                skipped.append(f"{rec.sample_id}: no reviewed pixels")
                _warn(f"{path}: sample {rec.sample_id!r} skipped: it has no reviewed pixels, so nothing to "
                      "learn from", notes)
                continue
            if to_px is not None:
                resampled += sum(1 for *_, m in pieces if m.get("resampled_from"))
                unknown += sum(1 for *_, m in pieces if m.get("pixel_size") is None)
            counts[split] += 1
            slices[split] += sum(int(np.count_nonzero(r.reshape(r.shape[0], -1).any(1))) for _, _, r, _ in pieces) \
                if volumes else len(pieces)
            target = train if split == "train" else val
            for img, lab, rev, meta in pieces:
                src = f"{path.name}/{rec.sample_id}" + (f"[z={meta['z']}]" if "z" in meta else "")
                target.append(Sample(img, lab, np.asarray(rev, np.uint8), source=src, meta=meta))
        data.append(FolderData(path, info, tf.fingerprint(), counts, slices, tuple(skipped), resampled=resampled,
                               unknown_pixel_size=unknown))
        if resampled:
            notes.append(f"{path}: {resampled} sample(s) resampled to {format_pixel_size(to_px)} µm/px, the "
                         "model's pixel size (their spacing differed by more than 5 %)")
        if unknown:
            notes.append(f"{path}: {unknown} sample(s) have no pixel size (spacing) recorded and are used at their "
                         f"own resolution; the model works at {format_pixel_size(to_px)} µm/px")
    if not train:
        raise TrainingFolderError(
            f"no usable train samples in {', '.join(map(str, paths))} (splits: "
            + "; ".join(f"{d.path.name}: {d.samples}" for d in data)
            + "); export samples with split 'train', or fix the skipped ones")
    assert first is not None
    return LoadedFolders(train, val, data, first.classes, first.task, notes, volumes=bool(volumes),
                         class_mapping=class_mapping or None, pixel_size=to_px)


def _one_object_class(a: FolderInfo, b: FolderInfo) -> bool:
    """Two instance folders with one object class each: their labels are object ids, whatever the names."""
    return a.task == b.task == "instance" and len(a.classes) == len(b.classes) == 2
