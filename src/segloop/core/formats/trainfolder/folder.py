"""Training folder v1: :class:`TrainingFolder`, which creates, lists, reads and writes samples.

It is long because it is one transaction: ``add_sample`` checks the arrays, decides the split
and a held-out block under the folder's lock (``_plan``), then writes and renames the sample
folders in with a journal (``_commit``); splitting those steps across modules would spread
one lock-held critical section over several files.  The parts that stand alone live beside
it: :mod:`.schema` (names and records), :mod:`.storage` (lock, journal, listing, file I/O),
:mod:`.checks` (input checks), :mod:`.regions` (the leak guard) and :mod:`.validate`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from segloop._version import __version__
from segloop.core._runtime import atomic_write_bytes, fsync_dir, sha256_bytes, sha256_file
from segloop.core.formats.trainfolder.checks import (
    array_sha256,
    check_image,
    check_labels,
    check_reviewed,
    check_sample_id,
    int_pairs,
    jsonable,
    model_summary,
    slug,
    val_draw,
)
from segloop.core.formats.trainfolder.index import (
    IndexEntry,
    entries_from_disk,
    parse_index,
    read_index_bytes,
    write_index,
)
from segloop.core.formats.trainfolder.regions import clear_overlap, reviewed_region, source_region
from segloop.core.formats.trainfolder.schema import (
    ACTIVE_STATE_FILE,
    FORMAT,
    HOLDOUT_FRACTION,
    HOLDOUT_GAP,
    HOLDOUT_MIN,
    IMAGE_FILE,
    INDEX_FILE,
    INFO_FILE,
    LABELS_FILE,
    META_FILE,
    MIN_SOURCES,
    REVIEWED_FILE,
    SAMPLE_SCHEMA,
    SAMPLE_SCHEMA_VERSION,
    SAMPLES_DIR,
    SPLITS,
    VAL_FRACTION,
    AddResult,
    FolderInfo,
    LoadedSample,
    SampleRecord,
    ValidationReport,
    now_iso,
)
from segloop.core.formats.trainfolder.storage import (
    TMP_PREFIX,
    apply_journal,
    export_error,
    folder_lock,
    json_bytes,
    open_info,
    read_meta,
    read_tif,
    recover_samples,
    rmtree,
    scan_samples,
    write_bytes_synced,
    write_tif,
)
from segloop.core.formats.trainfolder.validate import validate_folder
from segloop.errors import FolderVersionError, SampleExistsError, TrainingFolderError

__all__ = ["TrainingFolder"]

_AXIS_WORD = {"Z": "slices", "Y": "rows", "X": "columns"}


@dataclass
class _Planned:
    sample_id: str
    image: np.ndarray
    labels: np.ndarray
    reviewed: np.ndarray
    meta: dict


class TrainingFolder:
    """A training folder v1 on disk (see the module docstring for the layout).

    Create one with :meth:`create`, open one with :meth:`open`.  Writing is safe against
    crashes (a sample is complete or absent) and against concurrent writers (a file lock).

    Attributes
    ----------
    path : Path
    info : FolderInfo
    """

    def __init__(self, path: str | os.PathLike, info: FolderInfo):
        self.path = Path(path)
        self.info = info

    def __repr__(self) -> str:
        return f"TrainingFolder({str(self.path)!r}, task={self.info.task!r}, classes={list(self.info.classes)!r})"

    @property
    def samples_dir(self) -> Path:
        return self.path / SAMPLES_DIR

    # ----------------------------------------------------------------- create / open

    @classmethod
    def create(cls, path: str | os.PathLike, *, classes: tuple[str, ...] | list[str], task: str,
               modality: str = "other", exist_ok: bool = False) -> TrainingFolder:
        """Make a new, empty training folder.

        Parameters
        ----------
        path : path-like
            A new or empty directory (files starting with ``.`` are ignored, and so is an
            active-learning state saved there before the first export).
        classes : sequence of str
            Class names, index 0 = background.
        task : {"semantic", "instance"}
        modality : str
        exist_ok : bool
            Open an existing training folder instead of failing, if its classes and task match.

        Raises
        ------
        TrainingFolderError
            ``path`` is a file, a non-empty directory that is not a training folder, or (without
            ``exist_ok``, or with other classes / task) an existing training folder.
        ExportError
            The folder cannot be written.
        """
        path = Path(path)
        if isinstance(classes, str):
            raise TrainingFolderError(f"classes must be a list of names such as ['background', 'nucleus'], got "
                                      f"{classes!r}")
        info = FolderInfo(classes=tuple(classes), task=task, modality=modality)
        if path.exists() and not path.is_dir():
            raise TrainingFolderError(f"{path} is a file, not a folder; choose a new or empty folder for training data")
        if (path / INFO_FILE).exists():
            return cls._existing(path, info, exist_ok)
        if path.is_dir() and any(not n.startswith(".") and n not in (ACTIVE_STATE_FILE, INDEX_FILE)
                                 for n in os.listdir(path)):
            raise TrainingFolderError(f"{path} is not empty and is not a segloop training folder (no {INFO_FILE}); "
                                      "choose a new or empty folder")
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise export_error(e, path, "create the training folder") from None
        with folder_lock(path, 30.0):
            if (path / INFO_FILE).exists():                     # another writer was first
                return cls._existing(path, info, exist_ok)
            try:
                (path / SAMPLES_DIR).mkdir(exist_ok=True)
                write_index(path, {})                           # before the info file, which makes it a folder
                atomic_write_bytes(path / INFO_FILE, json_bytes(info.to_dict()))
            except OSError as e:
                raise export_error(e, path, "create the training folder") from None
        return cls(path, info)

    @classmethod
    def _existing(cls, path: Path, info: FolderInfo, exist_ok: bool) -> TrainingFolder:
        if not exist_ok:
            raise TrainingFolderError(f"{path} is already a training folder; open it with TrainingFolder.open, "
                                      "pass exist_ok=True, or choose a new folder")
        folder = cls.open(path)
        diff = []
        if folder.info.classes != info.classes:
            diff.append(f"classes {list(folder.info.classes)} (you asked for {list(info.classes)})")
        if folder.info.task != info.task:
            diff.append(f"task {folder.info.task!r} (you asked for {info.task!r})")
        if diff:
            raise TrainingFolderError(f"{path} already holds training data with {' and '.join(diff)}; use the same "
                                      "classes and task, or choose a new folder")
        return folder

    @classmethod
    def open(cls, path: str | os.PathLike) -> TrainingFolder:
        """Open an existing training folder (or its ``segloop-training.json``).

        Raises
        ------
        TrainingFolderError
            Missing, not a training folder, or a malformed ``segloop-training.json``.
        FolderVersionError
            Written by a newer segloop.
        """
        path, info = open_info(path)
        return cls(path, info)


    # ----------------------------------------------------------------- reading

    def samples(self, split: str | None = None) -> list[SampleRecord]:
        """The samples, sorted by id (optionally only one split).  Temporary folders of writes in
        progress or interrupted are never listed; an interrupted replace shows the old sample."""
        if split is not None and split not in SPLITS:
            raise TrainingFolderError(f"split must be one of {', '.join(SPLITS)} (or None), got {split!r}")
        out = []
        for sid, p in scan_samples(self.samples_dir).view.items():
            rec = SampleRecord(sid, p, read_meta(p))
            if split is None or rec.split == split:
                out.append(rec)
        return out

    def split_counts(self) -> dict[str, int]:
        """Number of samples per split: ``{"train": n, "val": n, "test": n}``."""
        counts = dict.fromkeys(SPLITS, 0)
        for rec in self.samples():
            if rec.split in counts:
                counts[rec.split] += 1
        return counts

    def _record(self, sample: str | SampleRecord) -> SampleRecord:
        if isinstance(sample, SampleRecord):
            return sample
        view = scan_samples(self.samples_dir).view
        if sample not in view:
            raise TrainingFolderError(f"no sample {sample!r} in {self.path}; list the samples with samples()")
        return SampleRecord(sample, view[sample], read_meta(view[sample]))

    def read_sample(self, sample: str | SampleRecord, *, verify: bool = True) -> LoadedSample:
        """Read one sample's arrays.

        Parameters
        ----------
        sample : str or SampleRecord
        verify : bool
            Check each tif's sha256 against ``meta.json`` (the bytes are read once either way).

        Raises
        ------
        TrainingFolderError
            Missing or unreadable files, a hash mismatch (the file was changed or truncated after
            export), or arrays whose shapes disagree; the message names the sample.
        """
        rec = self._record(sample)
        sid = rec.sample_id
        meta = rec.meta or read_meta(rec.path)
        if not meta:
            raise TrainingFolderError(f"sample {sid!r}: {META_FILE} is missing or unreadable; re-export the sample "
                                      f"or remove {rec.path}")
        arrays = {}
        for name in (IMAGE_FILE, LABELS_FILE, REVIEWED_FILE):
            try:
                data = (rec.path / name).read_bytes()
            except OSError as e:
                raise TrainingFolderError(f"sample {sid!r}: cannot read {name} ({e.strerror or e}); re-export the "
                                          f"sample or remove {rec.path}") from None
            if verify:
                want = (meta.get("files") or {}).get(name)
                got = sha256_bytes(data)
                if got != want:
                    raise TrainingFolderError(
                        f"sample {sid!r}: {name} has sha256 {got[:12]}..., meta.json records "
                        f"{str(want)[:12]}...: the file was changed or truncated after export. Re-export the sample "
                        f"or remove {rec.path}")
            try:
                arrays[name] = read_tif(data)
            except Exception as e:  # tifffile raises many types for a damaged file
                raise TrainingFolderError(f"sample {sid!r}: {name} cannot be decoded ({type(e).__name__}: {e}); "
                                          f"re-export the sample or remove {rec.path}") from None
        img, lab, rev = arrays[IMAGE_FILE], arrays[LABELS_FILE], arrays[REVIEWED_FILE]
        spatial = img.shape[:-1] if str(meta.get("axes", "")).endswith("C") else img.shape
        if not (lab.shape == rev.shape == spatial):
            raise TrainingFolderError(f"sample {sid!r}: shapes disagree (image {img.shape}, labels {lab.shape}, "
                                      f"reviewed {rev.shape}); re-export the sample")
        return LoadedSample(img, lab, rev, meta)

    def fingerprint(self) -> str:
        """sha256 identifying the folder's data, for trained models to record.

        Computed from the hashes recorded in ``meta.json`` (fast): over the classes and task,
        then per sample (sorted by id) its id, split and the sha256 of its three tifs.  Run
        :meth:`validate` first to be sure the files match their recorded hashes.
        """
        h = hashlib.sha256(json.dumps({"format": FORMAT, "classes": list(self.info.classes),
                                       "task": self.info.task}, sort_keys=True).encode())
        for rec in self.samples():
            files = rec.meta.get("files") or {}
            h.update("\t".join([rec.sample_id, str(rec.split),
                                *(str(files.get(n)) for n in (IMAGE_FILE, LABELS_FILE, REVIEWED_FILE))]).encode())
            h.update(b"\n")
        return h.hexdigest()

    def validate(self, *, check_hashes: bool = True) -> ValidationReport:
        """Check the whole folder; see :func:`validate_folder`."""
        return validate_folder(self.path, check_hashes=check_hashes)

    def cleanup(self, *, lock_timeout: float | None = 30.0) -> int:
        """Remove what killed writers left behind, holding the lock (every add does this first).

        Recovery rules: a stray ``.tmp-*`` folder is an unfinished sample and is deleted.  A
        journal ``.txn-*.json`` whose new sample folders are all in place (matched by the
        ``write_id`` in their ``meta.json``) is finished: the old folders it moved aside are
        deleted.  Otherwise it is rolled back: its new folders are removed and the moved-aside
        old ones (``.old-<uuid>-<id>``) are renamed back, so a replace interrupted at any point
        leaves the old sample, never neither.  Recovery can itself be interrupted and rerun.

        Returns
        -------
        int
            How many leftovers (temporary folders, journals, moved-aside folders) were handled.
        """
        if not self.samples_dir.is_dir():
            return 0
        with folder_lock(self.path, lock_timeout):
            try:
                return recover_samples(self.samples_dir)
            except OSError as e:
                raise export_error(e, self.path, "clean up interrupted writes") from None

    # ----------------------------------------------------------------- writing

    def add_sample(self, image: Any, labels: Any, reviewed: Any = None, *, axes: str,
                   source: str | os.PathLike | None = None, source_sha256: str | None = None,
                   crop: Any = None, slice_range: Any = None, spacing: Any = None, model: Any = None,
                   corrections: Mapping | None = None, split: str | None = None, sample_id: str | None = None,
                   replace: bool = False, extra: Mapping | None = None, lock_timeout: float | None = 30.0
                   ) -> AddResult:
        """Write one corrected sample atomically.

        Parameters
        ----------
        image : (Y, X), (Y, X, C), (Z, Y, X) or (Z, Y, X, C) array-like
            Any integer or float dtype (kept as is; bool becomes uint8); float images must be
            finite.  Dask and other array-likes are read with ``np.asarray``.
        labels : array-like of int, the image's spatial shape
            Class ids (semantic; < number of classes) or object ids (instance; 0 = background).
            Stored as uint8 (semantic), uint16 or, above 65,535, uint32.  Float or negative
            labels are refused.
        reviewed : array-like of bool or 0/1 int, labels' shape, optional
            Pixels a person reviewed; None means all of them.  The caller's array is not modified.
        axes : {"YX", "YXC", "ZYX", "ZYXC"}
            The image's axes (``S`` is read as ``C``).
        source, source_sha256 : str, optional
            The source image's path and sha256; they decide the split (see Notes) and the id.
        crop : sequence of (start, stop), optional
            Where the sample lies in the source, one pair per spatial axis; must match the
            image's spatial shape.  None = the whole source image.
        slice_range : (start, stop), optional
            The source slices a 2D sample or a 3D sub-volume came from.
        spacing : sequence of float, optional
            Pixel / voxel size per spatial axis (e.g. mm for CT).
        model : dict or ModelSpec, optional
            The predicting model; ``name``, ``version`` and ``sha256`` are recorded.
        corrections : dict, optional
            Summary of the proofreading (objects added / deleted / merged / split, pixels changed).
        split : {"train", "val", "test"}, optional
            Force the split; None decides it per source image (see Notes).
        sample_id : str, optional
            ASCII ``[A-Za-z0-9._-]``; default ``<source stem>_<NNNN>``.
        replace : bool
            Replace an existing sample with this id (atomically); otherwise an existing id is an error.
        extra : dict, optional
            Anything else JSON-able, stored under ``meta["extra"]``.
        lock_timeout : float or None
            Seconds to wait for another writer (None = forever).

        Returns
        -------
        AddResult

        Raises
        ------
        InvalidImageError, InvalidLabelsError
            Bad arrays (nothing is written).
        SampleExistsError
            ``sample_id`` exists and ``replace`` is False.
        FolderLockedError
            Another writer held the folder longer than ``lock_timeout``.
        ExportError
            The disk is full, the folder is read-only ...; nothing partial is left behind.

        Notes
        -----
        Splits are decided per source image, so crops of one image never end up on both
        sides: a source that already has samples keeps its split; a new one goes to ``val``
        when ``sha256(identity)`` falls in the lowest 20% (identity = ``source_sha256``, else
        ``source``, else the image's own hash), and is forced to ``val`` if the folder then has
        3 or more sources and none in ``val``.  While the folder has fewer than 3 sources, the
        last 25% of the sample along its longest spatial axis is written as a separate
        ``<id>-val`` sample and cleared (with an 8-pixel gap) from the reviewed mask of the
        training sample.  When the split is decided automatically, reviewed pixels that lie
        (within 8 pixels) in a region of the same source already used by another split are
        cleared too; regions come from ``crop``.
        """
        img, ax = check_image(image, axes)
        n_sp = len(ax.rstrip("C"))
        spatial = tuple(img.shape[:n_sp])
        lab = check_labels(labels, spatial, img.shape, self.info)
        rev = check_reviewed(reviewed, spatial)
        if split is not None and split not in SPLITS:
            raise TrainingFolderError(f"split must be one of {', '.join(SPLITS)} or None, got {split!r}")
        if sample_id is not None:
            check_sample_id(sample_id)
        if source_sha256 is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", str(source_sha256)):
            raise TrainingFolderError(f"source_sha256 must be 64 hex digits, got {source_sha256!r}")
        crop_l = None
        if crop is not None:
            crop_l = int_pairs(crop, "crop")
            if tuple(b - a for a, b in crop_l) != spatial:
                raise TrainingFolderError(f"crop {crop_l} spans {tuple(b - a for a, b in crop_l)} pixels but the "
                                          f"image's spatial shape is {spatial}; give one [start, stop] per spatial "
                                          "axis in source coordinates")
        slices = None
        if slice_range is not None:
            slices = int_pairs([slice_range], "slice_range")[0]
        spacing_l = None
        if spacing is not None:
            try:
                spacing_l = [float(s) for s in spacing]
            except (TypeError, ValueError):
                raise TrainingFolderError(f"spacing must be numbers, one per spatial axis, got {spacing!r}") from None
            if len(spacing_l) != n_sp or not all(np.isfinite(s) and s > 0 for s in spacing_l):
                raise TrainingFolderError(f"spacing {spacing_l} must be {n_sp} positive numbers, one per spatial "
                                          f"axis ({ax.rstrip('C')})")
        src = None if source is None else os.fspath(source)
        identity = (str(source_sha256).lower() if source_sha256 else src if src is not None
                    else array_sha256(img))
        base_meta = {
            "source": src, "source_sha256": source_sha256.lower() if source_sha256 else None,
            "source_identity": identity, "crop": crop_l, "slice_range": slices, "spacing": spacing_l,
            "model": model_summary(model), "corrections": jsonable(corrections, "corrections"),
            "extra": jsonable(extra, "extra") or {},
        }
        try:
            self.samples_dir.mkdir(exist_ok=True)
        except OSError as e:
            raise export_error(e, self.path, f"create {SAMPLES_DIR}/") from None
        with folder_lock(self.path, lock_timeout):
            try:
                recover_samples(self.samples_dir)
            except OSError as e:
                raise export_error(e, self.path, "clean up an interrupted write") from None
            index, index_notice = self._stored_index()
            planned, asides, notice = self._plan(img, ax, lab, rev, base_meta, split=split,
                                                 sample_id=sample_id, replace=replace)
            records, written_notice = self._commit(planned, asides, index)
        notices = [n for n in (notice, index_notice if written_notice is None else None, written_notice) if n]
        return AddResult(tuple(records), " ".join(notices) or None)

    def _stored_index(self) -> tuple[dict[str, IndexEntry] | None, str | None]:
        """The index as stored (call with the lock held, after recovery), or None with a sentence saying
        why it will be rebuilt from the disk (None, None: a folder from before indexes).

        Raises
        ------
        FolderVersionError
            The index was written by a newer segloop (it is never overwritten).
        """
        try:
            raw = read_index_bytes(self.path)
            if raw is not None:
                return parse_index(raw, source=self.path / INDEX_FILE), None
        except FolderVersionError:
            raise
        except TrainingFolderError as e:
            return None, (f"the sample index {INDEX_FILE} could not be read ({e}), so it was rebuilt from the "
                          "samples on disk; a sample folder deleted by hand before now is no longer noticed")
        if self.info.indexed:
            return None, (f"the sample index {INDEX_FILE} was missing, so it was rebuilt from the samples on "
                          "disk; a sample folder deleted by hand before now is no longer noticed")
        return None, None

    def _mark_indexed(self) -> None:
        """Record in ``segloop-training.json`` that the folder keeps an index (once, for an older folder)."""
        if not self.info.indexed:
            info = dataclasses.replace(self.info, indexed=True)
            atomic_write_bytes(self.path / INFO_FILE, json_bytes(info.to_dict()))
            self.info = info

    def rebuild_index(self, *, lock_timeout: float | None = 30.0) -> list[str]:
        """Make the sample index describe the samples on disk now (``segloop validate --fix``).

        Holding the lock, interrupted writes are recovered first (as :meth:`cleanup`); then every
        sample folder on disk is recorded as it is: folders missing from the index are added,
        entries whose folder is gone are dropped, and entries whose ``meta.json`` changed are
        re-recorded.  Nothing in ``samples/`` is changed or deleted, and problems of the samples
        themselves (hashes, shapes ...) remain for :meth:`validate` to report.  A folder written by
        a segloop that kept no index gets one (and ``segloop-training.json`` says so).

        Returns
        -------
        list of str
            One sentence per change, naming the sample (empty: the index was right).

        Raises
        ------
        FolderVersionError
            The index was written by a newer segloop.
        FolderLockedError
            Another writer held the folder longer than ``lock_timeout``.
        ExportError
            The index (or ``segloop-training.json``) could not be written.
        """
        try:
            self.samples_dir.mkdir(exist_ok=True)
        except OSError as e:
            raise export_error(e, self.path, f"create {SAMPLES_DIR}/", after="then run it again") from None
        with folder_lock(self.path, lock_timeout):
            try:
                recover_samples(self.samples_dir)
                old, why = self._stored_index()
                new = entries_from_disk(scan_samples(self.samples_dir).view)
                changes: list[str] = []
                if old is None:
                    changes.append(why or f"the folder kept no sample index ({INDEX_FILE}; earlier segloop versions "
                                          f"wrote none): one was made of the {len(new)} samples on disk")
                for sid in sorted(set(old) | set(new)) if old is not None else ():
                    was, now = old.get(sid), new.get(sid)
                    if was is None:
                        changes.append(f"{sid}: added to the index (its folder was not listed there)")
                    elif now is None:
                        changes.append(f"{sid}: dropped from the index (its folder samples/{sid} is missing)")
                    elif was.split != now.split:
                        changes.append(f"{sid}: split {was.split!r} -> {now.split!r} recorded (meta.json was edited)")
                    elif was.meta_sha256 != now.meta_sha256:
                        changes.append(f"{sid}: its changed meta.json was recorded")
                if old != new or not self.info.indexed:
                    write_index(self.path, new)
                    self._mark_indexed()
            except OSError as e:
                raise export_error(e, self.path, "rewrite the sample index",
                                   after="then run it again. The samples were not changed") from None
        return changes

    def _plan(self, img, ax, lab, rev, base_meta, *, split, sample_id, replace):
        """Decide split, ids and held-out block; returns the samples to write and the ids to move aside."""
        existing = {r.sample_id: r for r in self.samples()}
        identity = base_meta["source_identity"]
        # A source's split comes from its earliest sample that is not a held-out block.
        source_split: dict[str, str | None] = {}
        for rec in sorted(existing.values(), key=lambda r: (str(r.meta.get("created", "")), r.sample_id)):
            ident = rec.meta.get("source_identity")
            if ident is None:
                continue
            if (rec.meta.get("holdout") or {}).get("role") == "val":
                source_split.setdefault(ident, None)
            elif source_split.get(ident) is None:
                source_split[ident] = rec.meta.get("split")
        source_split = {k: (v or "train") for k, v in source_split.items()}
        n_sources = len(source_split.keys() | {identity})
        notices: list[str] = []
        holdout = False
        if split is not None:
            chosen = split
        elif identity in source_split:
            chosen = source_split[identity]
            holdout = chosen == "train" and n_sources < MIN_SOURCES
        elif n_sources < MIN_SOURCES:
            chosen, holdout = "train", True
        else:
            chosen = "val" if val_draw(identity) < VAL_FRACTION else "train"
            if chosen == "train" and "val" not in source_split.values():
                chosen = "val"
                notices.append(f"the folder now has {n_sources} source images and none in validation: samples of "
                               "this source image go to 'val'")
        spatial = lab.shape
        region = source_region(spatial, base_meta["crop"], base_meta["slice_range"])
        axis = int(np.argmax(spatial))
        length = spatial[axis]
        block = int(length * HOLDOUT_FRACTION)
        letter = ax.rstrip("C")[axis]
        if holdout and block < HOLDOUT_MIN:
            holdout = False
            notices.append(f"fewer than {MIN_SOURCES} source images, and this sample is too small ({length} "
                           f"{_AXIS_WORD[letter]}) to hold out a {HOLDOUT_MIN}-pixel block for validation: it goes to "
                           f"'train'. Export from {MIN_SOURCES} or more images to get a validation split")

        # ids
        if sample_id is None:
            stem = slug(base_meta["source"])
            pat = re.compile(rf"^{re.escape(stem)}_(\d+)(?:-val)?$", re.IGNORECASE)
            nums = [int(m.group(1)) for sid in existing if (m := pat.match(sid))]
            main_id = f"{stem}_{max(nums, default=0) + 1:04d}"
        else:
            main_id = sample_id
        ids = [main_id, f"{main_id}-val"] if holdout else [main_id]
        if len(ids[-1]) > 120:
            check_sample_id(ids[-1])
        folded = {sid.casefold(): sid for sid in existing}
        to_aside: list[str] = []
        for sid in ids:
            other = folded.get(sid.casefold())
            if other is None:
                continue
            if other != sid:
                raise SampleExistsError(f"sample {other!r} exists and differs from {sid!r} only in case, which "
                                        "clashes on Windows and macOS; choose another sample id")
            if not replace:
                raise SampleExistsError(f"sample {sid!r} already exists in {self.path}; pass replace=True (--replace) "
                                        "to replace it, or leave sample_id=None (no --id) to add a new sample")
            role = (existing[sid].meta.get("holdout") or {}).get("role")
            if role == "val" and sid == main_id:
                raise TrainingFolderError(f"sample {sid!r} is a validation block held out from "
                                          f"{existing[sid].meta['holdout'].get('partner')!r}; replace that sample "
                                          "instead")
            to_aside.append(sid)
        for sid in list(to_aside):                      # a replaced sample takes its held-out block along
            partner = (existing[sid].meta.get("holdout") or {}).get("partner")
            if partner in existing and partner not in to_aside and partner not in ids:
                to_aside.append(partner)

        # arrays for each new sample
        created = now_iso()
        pair = uuid.uuid4().hex
        parts: list[tuple[str, str, np.ndarray, np.ndarray, np.ndarray, list, dict | None]] = []
        if holdout:
            start = length - block
            sl = [slice(None)] * len(spatial)
            sl[axis] = slice(start, length)
            cleared = [slice(None)] * len(spatial)
            cleared[axis] = slice(max(0, start - HOLDOUT_GAP), length)
            main_rev = rev.copy()
            main_rev[tuple(cleared)] = 0
            val_region = [list(r) for r in region]
            val_region[len(region) - len(spatial) + axis] = [region[len(region) - len(spatial) + axis][0] + start,
                                                             region[len(region) - len(spatial) + axis][1]]
            info = {"axis": letter, "block": [start, length], "gap": HOLDOUT_GAP, "pair": pair}
            parts.append((main_id, "train", img, lab, main_rev, region,
                          {"role": "train", "partner": ids[1], **info}))
            parts.append((ids[1], "val", img[tuple(sl)], lab[tuple(sl)], rev[tuple(sl)].copy(), val_region,
                          {"role": "val", "partner": main_id, **info}))
            notices.insert(0, f"fewer than {MIN_SOURCES} source images: the last {int(HOLDOUT_FRACTION * 100)}% of "
                              f"{_AXIS_WORD[letter]} ({letter.lower()} >= {start}) was held out for validation as "
                              f"sample {ids[1]!r}, and the reviewed mask of {main_id!r} was cleared there plus a "
                              f"gap of {HOLDOUT_GAP} pixels. Export from {MIN_SOURCES} or more images to validate on "
                              "whole images instead")
        else:
            parts.append((main_id, chosen, img, lab, rev, region, None))

        planned = []
        for sid, sp, im, lb, rv, reg, hold in parts:
            guard = None
            if split is None:                            # keep the splits of one source apart
                hits, n_cleared = [], 0
                for rec in existing.values():
                    m = rec.meta
                    if (m.get("source_identity") != identity or m.get("split") == sp or rec.sample_id in to_aside
                            or not m.get("reviewed_region")):
                        continue
                    n = clear_overlap(rv, reg, m["reviewed_region"], HOLDOUT_GAP)
                    if n:
                        hits.append(rec.sample_id)
                        n_cleared += n
                if hits:
                    guard = {"pixels_cleared": n_cleared, "overlapping": sorted(hits)}
                    notices.append(f"{n_cleared} reviewed pixels of {sid!r} overlap region(s) of the same source "
                                   f"used for another split ({', '.join(sorted(hits))}) and were marked not reviewed")
            meta = self._meta(sid, ax, im, lb, rv, sp, reg, hold, guard, created, base_meta)
            if sid != main_id:
                meta["crop"] = reg[-len(spatial):] if base_meta["crop"] is not None else None
            planned.append(_Planned(sid, im, lb, rv, meta))
        return planned, to_aside, " ".join(notices) or None

    def _meta(self, sid, ax, im, lb, rv, sp, region, holdout, guard, created, base) -> dict:
        counts: dict[str, Any]
        if self.info.task == "semantic":
            bc = np.bincount(lb.ravel(), minlength=len(self.info.classes))
            counts = {"class_pixels": {name: int(bc[i]) for i, name in enumerate(self.info.classes)}}
        else:
            ids = np.unique(lb)
            counts = {"n_objects": int(np.count_nonzero(ids))}
        meta = {
            "schema": SAMPLE_SCHEMA, "schema_version": SAMPLE_SCHEMA_VERSION, "sample_id": sid, "axes": ax,
            "shape": list(im.shape),
            "dtypes": {"image": str(im.dtype), "labels": str(lb.dtype), "reviewed": "uint8"},
            "split": sp, **{k: base[k] for k in ("source", "source_sha256", "source_identity", "crop",
                                                 "slice_range", "spacing", "model", "corrections")},
            "source_region": region, "reviewed_region": reviewed_region(rv, region),
            "reviewed_fraction": float(rv.mean()), **counts, "holdout": holdout, "split_guard": guard,
            "task": self.info.task, "created": created, "segloop_version": __version__,
            "write_id": uuid.uuid4().hex, "files": {}, "extra": base["extra"],
        }
        return meta

    def _write_tmp(self, p: _Planned) -> Path:
        tmp = self.samples_dir / f"{TMP_PREFIX}{uuid.uuid4().hex}"
        os.mkdir(tmp)
        spatial_axes = p.meta["axes"].rstrip("C")
        for name, arr, axes in ((IMAGE_FILE, p.image, p.meta["axes"]), (LABELS_FILE, p.labels, spatial_axes),
                                (REVIEWED_FILE, p.reviewed, spatial_axes)):
            write_tif(tmp / name, arr, axes)
            p.meta["files"][name] = sha256_file(tmp / name)
        write_bytes_synced(tmp / META_FILE, json_bytes(p.meta))     # last: a folder with meta.json is complete
        fsync_dir(tmp)
        return tmp

    def _commit(self, planned: list[_Planned], to_aside: list[str], index: dict[str, IndexEntry] | None
                ) -> tuple[list[SampleRecord], str | None]:
        """Write the planned samples, rename them in under a journal, then record them in the index.

        ``index`` is the stored index (None: rebuild it from the disk).  Returns the records and,
        if the index could not be written, a sentence saying so (the journal is kept: readers and
        the next writer record the samples from it).
        """
        samples = self.samples_dir
        tmps: list[Path] = []
        what = f"write sample {planned[0].sample_id!r}"
        token = uuid.uuid4().hex
        asides = {sid: f".old-{token}-{sid}" for sid in to_aside}
        content = {"puts": [{"id": p.sample_id, "write_id": p.meta["write_id"]} for p in planned],
                   "asides": asides, "created": now_iso()}
        journal = samples / f".txn-{token}.json"
        try:
            for p in planned:
                tmps.append(self._write_tmp(p))
            part = samples / f"{TMP_PREFIX}{token}.txn"
            write_bytes_synced(part, json_bytes(content))
            os.rename(part, journal)
            fsync_dir(samples)
            for sid, aside in asides.items():
                os.rename(samples / sid, samples / aside)
            for p, tmp in zip(planned, tmps):
                os.rename(tmp, samples / p.sample_id)
            fsync_dir(samples)
        except BaseException as e:
            with contextlib.suppress(OSError):
                recover_samples(samples)                 # rolls back this journal and removes the temp folders
            for tmp in tmps:
                rmtree(tmp)
            if isinstance(e, OSError):
                raise export_error(e, self.path, what) from None
            raise
        # committed: the samples are in; record them in the index (a crash from here on is rolled forward)
        notice = None
        try:
            base = index if index is not None else entries_from_disk(scan_samples(samples).view)
            write_index(self.path, apply_journal(base, samples, content))
            self._mark_indexed()
        except OSError as e:
            notice = (f"the samples were written, but the sample index {INDEX_FILE} could not be updated "
                      f"({e.strerror or e}); it is brought up to date by the next export or `segloop validate "
                      "--fix`")
        with contextlib.suppress(OSError):          # done: the old folders (and the journal) are garbage now
            for sid in to_aside:
                rmtree(samples / asides[sid])
            if notice is None:
                journal.unlink()
            fsync_dir(samples)
        return [SampleRecord(p.sample_id, samples / p.sample_id, p.meta) for p in planned], notice
