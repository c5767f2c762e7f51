"""Training folder v1: write, read and validate corrected samples (DESIGN.md, "Training folder v1").

Layout::

    <folder>/segloop-training.json              FolderInfo: format, format_version, classes, task, modality ...
    <folder>/.segloop.lock                      the writers' lock file; holds no data
    <folder>/samples/<sample_id>/image.tif      the pixels exported, dtype preserved (zlib)
    <folder>/samples/<sample_id>/labels.tif     uint8 class ids, or uint16 / uint32 ids (zlib)
    <folder>/samples/<sample_id>/reviewed.tif   uint8, 1 = a person reviewed this pixel (zlib)
    <folder>/samples/<sample_id>/meta.json      provenance, split, sha256 of the three tifs

Crash safety
------------
Every sample is written into ``samples/.tmp-<uuid>/`` (each file fsynced, ``meta.json``
last, then the directory) and renamed to ``samples/<sample_id>`` in one step, so a sample
folder is either complete or absent.  Writers hold ``.segloop.lock`` for the whole add.

Adds that change more than one sample folder at once (a replace, or a sample with its
held-out validation block) first write a journal ``samples/.txn-<uuid>.json`` listing
what goes in and what is moved aside (``samples/.old-<uuid>-<sample_id>``).  The change
takes effect when the last new folder is renamed in; until then readers see the old state
(:func:`_scan` applies the journal when listing), and :meth:`TrainingFolder.cleanup` (run
by every writer before it writes) rolls an interrupted change back or finishes it.
Nothing starting with ``.`` in ``samples/`` is ever listed as a sample.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import re
import shutil
import unicodedata
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from filelock import FileLock, Timeout

from segloop import __version__
from segloop.errors import (
    ExportError,
    FolderLockedError,
    FolderVersionError,
    InvalidImageError,
    InvalidLabelsError,
    SampleExistsError,
    TrainingFolderError,
)

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "INFO_FILE",
    "SAMPLES_DIR",
    "LOCK_FILE",
    "SPLITS",
    "SAMPLE_FILES",
    "FolderInfo",
    "SampleRecord",
    "LoadedSample",
    "AddResult",
    "Problem",
    "ValidationReport",
    "TrainingFolder",
    "validate_folder",
]

FORMAT = "segloop-training"
FORMAT_VERSION = 1
INFO_FILE = "segloop-training.json"
#: The active-learning state (:class:`segloop.core.active.ActiveLearningState`) kept beside the
#: samples; a folder holding only it may still become a training folder.
ACTIVE_STATE_FILE = "segloop-active-learning.json"
SAMPLES_DIR = "samples"
LOCK_FILE = ".segloop.lock"
SAMPLE_SCHEMA = "segloop-sample"
SAMPLE_SCHEMA_VERSION = 1
IMAGE_FILE, LABELS_FILE, REVIEWED_FILE, META_FILE = "image.tif", "labels.tif", "reviewed.tif", "meta.json"
SAMPLE_FILES = (IMAGE_FILE, LABELS_FILE, REVIEWED_FILE, META_FILE)
SPLITS = ("train", "val", "test")
TASKS = ("semantic", "instance")

VAL_FRACTION = 0.2
"""Share of new source images that go to ``val`` (decided by a hash of the source)."""
MIN_SOURCES = 3
"""With fewer distinct source images than this, a block of each sample is held out instead."""
HOLDOUT_FRACTION = 0.25
HOLDOUT_GAP = 8
HOLDOUT_MIN = 32

_TMP_PREFIX = ".tmp-"
_OLD_RE = re.compile(r"^\.old-([0-9a-f]{32})-(.+)$")
_TXN_RE = re.compile(r"^\.txn-[0-9a-f]{32}\.json$")
_ID_RE = re.compile(r"^[A-Za-z0-9._-]+$")
_WINDOWS_RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(1, 10)),
                     *(f"lpt{i}" for i in range(1, 10))}
_AXIS_WORD = {"Z": "slices", "Y": "rows", "X": "columns"}
_LABEL_DTYPES = ("uint8", "uint16", "uint32")
_META_REQUIRED = ("schema", "schema_version", "sample_id", "axes", "shape", "dtypes", "split", "files",
                  "created")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


# --------------------------------------------------------------------------- dataclasses


@dataclass(frozen=True)
class FolderInfo:
    """The contents of ``segloop-training.json``.

    Parameters
    ----------
    classes : tuple of str
        Class names; index 0 is the background.  For ``task="semantic"`` the label value
        is the class index; for ``"instance"`` labels are object ids (0 = background).
    task : {"semantic", "instance"}
    modality : str
        Free text for people and converters (``"histology"``, ``"ct"``, ``"fluorescence"`` ...).
    created_by, created : str
        ``"segloop <version>"`` and the UTC ISO time the folder was created.
    format_version : int
    """

    classes: tuple[str, ...]
    task: str
    modality: str = "other"
    created_by: str = f"segloop {__version__}"
    created: str = field(default_factory=_now)
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        object.__setattr__(self, "classes", tuple(self.classes))
        _check_info(self, source="training folder")

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "format_version": self.format_version, "classes": list(self.classes),
                "task": self.task, "modality": self.modality, "created_by": self.created_by,
                "created": self.created}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, source: str = INFO_FILE) -> FolderInfo:
        """Parse and check a ``segloop-training.json`` object.

        Raises
        ------
        FolderVersionError
            ``format_version`` is newer than this segloop reads.
        TrainingFolderError
            Anything else malformed; the message names the field.
        """
        if not isinstance(d, Mapping):
            raise TrainingFolderError(f"{source}: expected a JSON object")
        if d.get("format") != FORMAT:
            raise TrainingFolderError(f"{source}: 'format' is {d.get('format')!r}, expected {FORMAT!r}; "
                                      "this is not a segloop training folder")
        fv = d.get("format_version")
        if isinstance(fv, int) and not isinstance(fv, bool) and fv > FORMAT_VERSION:
            raise FolderVersionError(
                f"{source}: format_version {fv} was written by a newer segloop (this one reads version "
                f"{FORMAT_VERSION}); upgrade napari-segloop to use this folder")
        if fv != FORMAT_VERSION:
            raise TrainingFolderError(f"{source}: format_version {fv!r} is not valid (expected {FORMAT_VERSION})")
        missing = [k for k in ("classes", "task") if k not in d]
        if missing:
            raise TrainingFolderError(f"{source}: missing required field(s) {', '.join(missing)}")
        classes = d["classes"]
        if not isinstance(classes, list | tuple):
            raise TrainingFolderError(f"{source}: 'classes' must be a list of names, got {classes!r}")
        info = cls.__new__(cls)
        for k, v in (("classes", tuple(classes)), ("task", d["task"]), ("modality", d.get("modality", "other")),
                     ("created_by", d.get("created_by", "")), ("created", d.get("created", "")),
                     ("format_version", fv)):
            object.__setattr__(info, k, v)
        _check_info(info, source=source)
        return info


def _check_info(info: FolderInfo, *, source: str) -> None:
    c = info.classes
    if len(c) < 2 or not all(isinstance(n, str) and n.strip() for n in c):
        raise TrainingFolderError(f"{source}: 'classes' must name at least 2 classes (index 0 = background) as "
                                  f"non-empty strings, got {list(c)!r}")
    if len(set(c)) != len(c):
        raise TrainingFolderError(f"{source}: class names must be unique, got {list(c)!r}")
    if info.task not in TASKS:
        raise TrainingFolderError(f"{source}: 'task' must be 'semantic' or 'instance', got {info.task!r}")
    if not isinstance(info.modality, str):
        raise TrainingFolderError(f"{source}: 'modality' must be a string, got {info.modality!r}")


@dataclass(frozen=True)
class SampleRecord:
    """One sample folder as listed: its id, where it is, and its parsed ``meta.json``.

    ``meta`` is ``{}`` when ``meta.json`` cannot be read (:meth:`TrainingFolder.validate` says why).
    """

    sample_id: str
    path: Path
    meta: dict = field(default_factory=dict, hash=False, compare=False)

    @property
    def split(self) -> str | None:
        """``"train"``, ``"val"``, ``"test"`` (or None for an unreadable sample)."""
        return self.meta.get("split")


@dataclass(frozen=True, eq=False)
class LoadedSample:
    """A sample's arrays as stored.

    Attributes
    ----------
    image : ndarray
        Shape ``meta["shape"]`` with axes ``meta["axes"]`` (channels last), dtype as exported.
    labels : ndarray
        The image's spatial shape; uint8 class ids (semantic) or uint8 / uint16 / uint32 ids.
    reviewed : ndarray of uint8
        Same shape as ``labels``; 1 = reviewed, 0 = ignore in the loss.
    meta : dict
    """

    image: np.ndarray
    labels: np.ndarray
    reviewed: np.ndarray
    meta: dict


@dataclass(frozen=True)
class AddResult:
    """What :meth:`TrainingFolder.add_sample` wrote.

    ``records`` holds the sample first, then its held-out validation block if one was made.
    ``notice`` is a sentence to show the user (a held-out block, a split decision), or None.
    """

    records: tuple[SampleRecord, ...]
    notice: str | None = None


@dataclass(frozen=True)
class Problem:
    """One thing wrong in a training folder; ``sample_id`` is None for folder-level problems."""

    sample_id: str | None
    message: str

    def __str__(self) -> str:
        return f"{self.sample_id}: {self.message}" if self.sample_id else self.message


@dataclass(frozen=True)
class ValidationReport:
    """The result of :func:`validate_folder`.  ``ok`` is True when there are no problems;
    notes (leftovers of interrupted writes, an empty split) do not make it fail."""

    folder: Path
    n_samples: int
    split_counts: dict[str, int]
    problems: tuple[Problem, ...]
    notes: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        """Human-readable lines: a header, then one line per problem and note."""
        counts = ", ".join(f"{k} {v}" for k, v in self.split_counts.items())
        head = (f"{self.folder}: {self.n_samples} samples ({counts}); "
                + ("ok" if self.ok else f"{len(self.problems)} problem(s)"))
        return "\n".join([head, *(f"  problem: {p}" for p in self.problems), *(f"  note: {n}" for n in self.notes)])


# --------------------------------------------------------------------------- small file helpers


def _sha256_file(path: Path, *, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    if os.name == "nt":          # directories cannot be opened for fsync there; renames are journaled by NTFS
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_bytes_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, allow_nan=False) + "\n").encode("ascii")


def _read_json(path: Path) -> Any:
    return json.loads(path.read_bytes().decode("utf-8"))


def _rmtree(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()


def _export_error(e: OSError, folder: Path, what: str, *,
                  after: str = "then export again. Nothing partial was left in the folder") -> ExportError:
    """An ExportError saying what happened and what to do (``after``: what then, and what was kept)."""
    code = e.errno
    if code in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
        why = ("the disk is full (or your quota is used up)", "free some space or choose a folder on another disk")
    elif code == errno.EFBIG:
        why = ("a file grew past the size the file system (or this process) allows",
               "choose a folder on another file system, or export a smaller crop")
    elif code == errno.EROFS:
        why = ("the folder is on a read-only file system", "choose a writable folder")
    elif code in (errno.EACCES, errno.EPERM):
        why = ("permission denied", "choose a folder you can write to (or fix its permissions)")
    else:
        why = (f"{type(e).__name__}: {e.strerror or e}", "check that the folder exists, is writable and has free space")
    return ExportError(f"could not {what} in {folder}: {why[0]}; {why[1]}, {after}")


@contextlib.contextmanager
def _folder_lock(folder: Path, timeout: float | None) -> Iterator[None]:
    """Hold ``folder/.segloop.lock`` (an OS file lock, released if the process dies)."""
    lock = FileLock(str(folder / LOCK_FILE), timeout=-1 if timeout is None else float(timeout))
    try:
        lock.acquire()
    except Timeout:
        raise FolderLockedError(
            f"{folder} is being written by another segloop writer (another napari window, script or "
            f"process) for more than {timeout} s; wait for it to finish, then export again") from None
    except OSError as e:
        raise _export_error(e, folder, "lock the training folder (create " + LOCK_FILE + ")") from None
    try:
        yield
    finally:
        lock.release()


# --------------------------------------------------------------------------- listing with journal recovery


@dataclass
class _Scan:
    """What is in ``samples/``: the visible samples (id -> folder) and the leftovers of interrupted writes."""

    view: dict[str, Path]
    journals: list[tuple[Path, dict | None]]
    asides: dict[Path, str]
    tmps: list[Path]

    @property
    def debris(self) -> list[Path]:
        return [p for p, _ in self.journals] + list(self.asides) + self.tmps


def _write_id(folder: Path) -> str | None:
    try:
        meta = _read_json(folder / META_FILE)
    except (OSError, ValueError):
        return None
    return meta.get("write_id") if isinstance(meta, dict) else None


def _journal_committed(samples: Path, journal: dict) -> bool:
    return all(_write_id(samples / p["id"]) == p["write_id"] for p in journal.get("puts", []))


def _scan(samples: Path) -> _Scan:
    """List ``samples/`` as a reader should see it: an interrupted multi-folder change counts as
    not made (its old folders are shown from their aside names), a finished one as made."""
    view: dict[str, Path] = {}
    journals: list[tuple[Path, dict | None]] = []
    asides: dict[Path, str] = {}
    tmps: list[Path] = []
    try:
        names = sorted(os.listdir(samples))
    except FileNotFoundError:
        return _Scan(view, journals, asides, tmps)
    for name in names:
        p = samples / name
        if not name.startswith("."):
            if p.is_dir():
                view[name] = p
        elif _TXN_RE.match(name):
            try:
                j = _read_json(p)
                journals.append((p, j if isinstance(j, dict) else None))
            except (OSError, ValueError):
                journals.append((p, None))
        elif m := _OLD_RE.match(name):
            asides[p] = m.group(2)
        elif name.startswith(_TMP_PREFIX):
            tmps.append(p)
    restored: set[Path] = set()
    for _, j in journals:
        if j is None or _journal_committed(samples, j):
            continue
        for put in j.get("puts", []):
            sid = put["id"]
            if sid in view and _write_id(view[sid]) == put["write_id"]:
                del view[sid]
        for sid, aside in j.get("asides", {}).items():
            ap = samples / aside
            if ap in asides and sid not in view:
                view[sid] = ap
                restored.add(ap)
    for ap, sid in asides.items():       # an aside without a journal: show it where its id is missing
        if ap not in restored and sid not in view and not any(
                j and ap.name in j.get("asides", {}).values() for _, j in journals):
            view[sid] = ap
    return _Scan(dict(sorted(view.items())), journals, asides, tmps)


def _recover(samples: Path) -> int:
    """Make ``samples/`` match what :func:`_scan` shows; call with the lock held.  Returns how many
    leftovers (journals, aside folders, temp folders) were dealt with."""
    scan = _scan(samples)
    count = 0
    for jp, j in scan.journals:
        if j is not None:
            if _journal_committed(samples, j):           # finished: drop the old folders
                for aside in j.get("asides", {}).values():
                    if (samples / aside).exists():
                        _rmtree(samples / aside)
                        count += 1
            else:                                         # interrupted: roll back
                for put in j.get("puts", []):
                    dest = samples / put["id"]
                    if _write_id(dest) == put["write_id"]:
                        os.rename(dest, samples / f"{_TMP_PREFIX}{uuid.uuid4().hex}")
                for sid, aside in j.get("asides", {}).items():
                    if (samples / aside).exists() and not (samples / sid).exists():
                        os.rename(samples / aside, samples / sid)
                        count += 1
                _fsync_dir(samples)
        jp.unlink(missing_ok=True)
        count += 1
        _fsync_dir(samples)
    for ap, sid in _scan(samples).asides.items():       # asides no journal speaks for
        if not (samples / sid).exists():
            os.rename(ap, samples / sid)
        else:
            _rmtree(ap)
        count += 1
    for name in os.listdir(samples):
        if name.startswith(_TMP_PREFIX):
            _rmtree(samples / name)
            count += 1
    _fsync_dir(samples)
    return count


def _read_meta(path: Path) -> dict:
    try:
        meta = _read_json(path / META_FILE)
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


# --------------------------------------------------------------------------- input checks


def _normalize_axes(axes: str, ndim: int) -> str:
    if not isinstance(axes, str):
        raise InvalidImageError(f"axes must be a string such as 'YX', 'YXC', 'ZYX' or 'ZYXC', got {axes!r}")
    ax = axes.upper().replace("S", "C")
    if ax not in ("YX", "YXC", "ZYX", "ZYXC"):
        raise InvalidImageError(f"axes {axes!r} not supported; use 'YX', 'YXC', 'ZYX' or 'ZYXC' (channels last)")
    if len(ax) != ndim:
        raise InvalidImageError(f"axes {axes!r} has {len(ax)} letters but the image has {ndim} dimensions; "
                                "give one letter per dimension")
    return ax


def _check_image(image: Any, axes: str) -> tuple[np.ndarray, str]:
    try:
        img = np.asarray(image)
    except (TypeError, ValueError) as e:
        raise InvalidImageError(f"image cannot be read as an array ({e})") from None
    ax = _normalize_axes(axes, img.ndim)
    if img.size == 0:
        raise InvalidImageError(f"image is empty (shape {img.shape}); export a region with pixels in it")
    if img.dtype == bool:
        img = img.astype(np.uint8)
    if img.dtype.kind not in "uif":
        raise InvalidImageError(f"image dtype {img.dtype} cannot be exported; use an integer or float image")
    if not img.dtype.isnative:
        img = img.astype(img.dtype.newbyteorder("="))
    if img.dtype.kind == "f":
        bad = int(np.count_nonzero(~np.isfinite(img)))
        if bad:
            raise InvalidImageError(f"image has {bad} NaN or infinite pixel(s); replace them (e.g. np.nan_to_num) "
                                    "before exporting")
    return img, ax


def _label_dtype(max_value: int, task: str) -> np.dtype:
    if task == "semantic" and max_value < 256:
        return np.dtype(np.uint8)
    if max_value <= 65535:
        return np.dtype(np.uint16)
    return np.dtype(np.uint32)


def _check_labels(labels: Any, spatial: tuple[int, ...], image_shape: tuple[int, ...], info: FolderInfo
                  ) -> np.ndarray:
    lab = np.asarray(labels)
    if lab.shape != spatial:
        raise InvalidLabelsError(f"labels shape {lab.shape} does not match the image's spatial shape {spatial} "
                                 f"(image shape {image_shape}); export labels and image of the same region")
    if lab.size == 0:
        raise InvalidLabelsError("labels are empty; export a region with pixels in it")
    if lab.dtype == bool:
        lab = lab.astype(np.uint8)
    if lab.dtype.kind == "f":
        raise InvalidLabelsError(f"labels have float dtype {lab.dtype}; labels must be integers (convert with "
                                 ".astype(np.uint16) after checking the values are whole numbers)")
    if lab.dtype.kind not in "ui":
        raise InvalidLabelsError(f"labels dtype {lab.dtype} is not an integer type")
    lo, hi = int(lab.min()), int(lab.max())
    if lo < 0:
        raise InvalidLabelsError(f"labels contain negative values (min {lo}); labels must be >= 0 (0 = background)")
    if info.task == "semantic" and hi >= len(info.classes):
        raise InvalidLabelsError(
            f"label value {hi} is not a class of this folder: it has {len(info.classes)} classes "
            f"(0..{len(info.classes) - 1}: {', '.join(info.classes)}); fix the labels or use a folder with these "
            "classes")
    if hi > np.iinfo(np.uint32).max:
        raise InvalidLabelsError(f"label id {hi} does not fit uint32; relabel the objects sequentially "
                                 "(skimage.segmentation.relabel_sequential)")
    dt = _label_dtype(hi, info.task)
    return lab if lab.dtype == dt else lab.astype(dt)


def _check_reviewed(reviewed: Any, shape: tuple[int, ...]) -> np.ndarray:
    """A fresh uint8 0/1 copy (never a view of the caller's array)."""
    if reviewed is None:
        return np.ones(shape, np.uint8)
    rev = np.asarray(reviewed)
    if rev.shape != shape:
        raise InvalidLabelsError(f"reviewed mask shape {rev.shape} does not match the labels shape {shape}")
    if rev.dtype != bool:
        if rev.dtype.kind not in "ui":
            raise InvalidLabelsError(f"reviewed mask must be bool or uint8 0/1, got dtype {rev.dtype}")
        if rev.size and (int(rev.min()) < 0 or int(rev.max()) > 1):
            raise InvalidLabelsError("reviewed mask must hold only 0 (not reviewed) and 1 (reviewed)")
    return np.array(rev, dtype=np.uint8, copy=True)


def _check_sample_id(sample_id: str) -> str:
    if (not isinstance(sample_id, str) or not _ID_RE.match(sample_id) or sample_id.startswith(".")
            or len(sample_id) > 120 or sample_id.split(".")[0].lower() in _WINDOWS_RESERVED):
        raise TrainingFolderError(
            f"sample id {sample_id!r} is not valid: use ASCII letters, digits, '.', '_' and '-' (not starting "
            "with '.', at most 120 characters), or leave sample_id=None to get one")
    return sample_id


def _int_pairs(value: Any, what: str) -> list[list[int]]:
    try:
        pairs = [[int(a), int(b)] for a, b in value]
    except (TypeError, ValueError):
        raise TrainingFolderError(f"{what} must be a list of [start, stop] pairs, got {value!r}") from None
    if any(a < 0 or b <= a for a, b in pairs):
        raise TrainingFolderError(f"{what} {pairs} must have 0 <= start < stop on every axis")
    return pairs


def _model_summary(model: Any) -> dict | None:
    if model is None:
        return None
    get = model.get if isinstance(model, Mapping) else (lambda k: getattr(model, k, None))
    out = {k: get(k) for k in ("name", "version", "sha256")}
    if not out["name"]:
        raise TrainingFolderError(f"model must name the predicting model: a dict with 'name', 'version', "
                                  f"'sha256' (or a ModelSpec), got {model!r}")
    return {k: (None if v is None else str(v)) for k, v in out.items()}


def _jsonable(value: Any, what: str) -> Any:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise TrainingFolderError(f"{what} must be a dict (JSON-able), got {type(value).__name__}")
    try:
        return json.loads(json.dumps(dict(value), allow_nan=False))
    except (TypeError, ValueError) as e:
        raise TrainingFolderError(f"{what} cannot be stored as JSON ({e}); use plain numbers, strings, lists "
                                  "and dicts") from None


def _slug(source: Any) -> str:
    """An ASCII id stem from a source path: 'Gewebe ü 1.ome.tif' -> 'gewebe-u-1'."""
    if source is None:
        return "sample"
    name = re.split(r"[\\/]", str(source).rstrip("\\/"))[-1]
    low = name.lower()
    for suffix in (".ome.tiff", ".ome.tif", ".nii.gz"):
        if low.endswith(suffix):
            name = name[: -len(suffix)]
            break
    else:
        if "." in name[1:]:
            name = name.rsplit(".", 1)[0]
    s = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii")
    s = re.sub(r"[^A-Za-z0-9._-]+", "-", s)
    s = re.sub(r"-{2,}", "-", s).strip(".-_")[:40].rstrip(".-_").lower()
    return s or "sample"


def _array_sha256(a: np.ndarray) -> str:
    h = hashlib.sha256(f"{a.dtype.str}{a.shape}".encode())
    h.update(memoryview(np.ascontiguousarray(a)).cast("B"))
    return h.hexdigest()


def _val_draw(identity: str) -> float:
    return int(hashlib.sha256(identity.encode("utf-8", "surrogatepass")).hexdigest()[:8], 16) / 2**32


# --------------------------------------------------------------------------- regions (leak guard)


def _source_region(spatial: tuple[int, ...], crop: list | None, slice_range: list | None) -> list[list[int]]:
    """Where the sample lies in its source image; no crop = the whole source from its origin."""
    if crop is not None:
        return [list(c) for c in crop]
    region = [[0, n] for n in spatial]
    if slice_range is not None:
        if len(spatial) == 3:
            region[0] = list(slice_range)
        else:
            region = [list(slice_range), *region]       # one 2D slice of a volume
    return region


def _reviewed_region(rev: np.ndarray, region: list[list[int]]) -> list[list[int]] | None:
    """Bounding box of the reviewed pixels, in source coordinates; None when nothing is reviewed."""
    if not rev.any():
        return None
    lead = len(region) - rev.ndim
    out = [list(r) for r in region[:lead]]
    for ax in range(rev.ndim):
        other = tuple(i for i in range(rev.ndim) if i != ax)
        hit = np.flatnonzero(rev.any(axis=other) if other else rev)
        start = region[lead + ax][0]
        out.append([start + int(hit[0]), start + int(hit[-1]) + 1])
    return out


def _clear_overlap(rev: np.ndarray, region: list[list[int]], other: list[list[int]], gap: int) -> int:
    """Zero ``rev`` where ``other`` (grown by ``gap``) overlaps ``region``; axes are matched from the
    end, axes only one side has are unconstrained.  Returns the number of pixels cleared."""
    k = min(len(region), len(other))
    inter = []
    for (a0, a1), (b0, b1) in zip(region[-k:], other[-k:]):
        lo, hi = max(a0, b0 - gap), min(a1, b1 + gap)
        if lo >= hi:
            return 0
        inter.append((lo, hi))
    lead = len(region) - rev.ndim                       # region axes beyond the array (a slice's Z)
    index = []
    for ax in range(rev.ndim):
        ri = lead + ax
        ki = ri - (len(region) - k)
        if ki >= 0:
            lo, hi = inter[ki]
            index.append(slice(lo - region[ri][0], hi - region[ri][0]))
        else:
            index.append(slice(None))
    block = rev[tuple(index)]
    n = int(np.count_nonzero(block))
    block[...] = 0
    return n


# --------------------------------------------------------------------------- the folder


def _write_tif(path: Path, arr: np.ndarray, axes: str) -> None:
    import tifffile

    photometric, planar = "minisblack", None
    if axes.endswith("C") and arr.shape[-1] > 1:
        if arr.shape[-1] in (3, 4) and arr.dtype in (np.uint8, np.uint16):
            photometric = "rgb"
        else:
            planar = "contig"
    with open(path, "wb") as f:
        tifffile.imwrite(f, arr, photometric=photometric, planarconfig=planar, compression="zlib",
                         bigtiff=arr.nbytes > 2**31, metadata={"axes": axes})
        f.flush()
        os.fsync(f.fileno())


def _read_tif(data: bytes | Path) -> np.ndarray:
    import tifffile

    return tifffile.imread(io.BytesIO(data) if isinstance(data, bytes) else data)


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
        if path.is_dir() and any(not n.startswith(".") and n != ACTIVE_STATE_FILE for n in os.listdir(path)):
            raise TrainingFolderError(f"{path} is not empty and is not a segloop training folder (no {INFO_FILE}); "
                                      "choose a new or empty folder")
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise _export_error(e, path, "create the training folder") from None
        with _folder_lock(path, 30.0):
            if (path / INFO_FILE).exists():                     # another writer was first
                return cls._existing(path, info, exist_ok)
            tmp = path / f"{_TMP_PREFIX}{uuid.uuid4().hex}.json"
            try:
                (path / SAMPLES_DIR).mkdir(exist_ok=True)
                _write_bytes_synced(tmp, _json_bytes(info.to_dict()))
                os.rename(tmp, path / INFO_FILE)
                _fsync_dir(path)
            except OSError as e:
                tmp.unlink(missing_ok=True)
                raise _export_error(e, path, "create the training folder") from None
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
        path = Path(path)
        if path.name == INFO_FILE and path.is_file():
            path = path.parent
        if not path.exists():
            raise TrainingFolderError(f"{path}: no such folder; create a training folder first (segloop export)")
        if not path.is_dir():
            raise TrainingFolderError(f"{path} is a file, not a training folder")
        info_path = path / INFO_FILE
        if not info_path.is_file():
            raise TrainingFolderError(f"{path} is not a segloop training folder (no {INFO_FILE}); choose the folder "
                                      "segloop exported to, or create one")
        try:
            raw = _read_json(info_path)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise TrainingFolderError(f"{info_path} cannot be read ({e}); the file may be truncated, restore it "
                                      "from a backup") from None
        return cls(path, FolderInfo.from_dict(raw, source=str(info_path)))

    # ----------------------------------------------------------------- reading

    def samples(self, split: str | None = None) -> list[SampleRecord]:
        """The samples, sorted by id (optionally only one split).  Temporary folders of writes in
        progress or interrupted are never listed; an interrupted replace shows the old sample."""
        if split is not None and split not in SPLITS:
            raise TrainingFolderError(f"split must be one of {', '.join(SPLITS)} (or None), got {split!r}")
        out = []
        for sid, p in _scan(self.samples_dir).view.items():
            rec = SampleRecord(sid, p, _read_meta(p))
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
        view = _scan(self.samples_dir).view
        if sample not in view:
            raise TrainingFolderError(f"no sample {sample!r} in {self.path}; list the samples with samples()")
        return SampleRecord(sample, view[sample], _read_meta(view[sample]))

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
        meta = rec.meta or _read_meta(rec.path)
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
                got = hashlib.sha256(data).hexdigest()
                if got != want:
                    raise TrainingFolderError(
                        f"sample {sid!r}: {name} has sha256 {got[:12]}..., meta.json records "
                        f"{str(want)[:12]}...: the file was changed or truncated after export. Re-export the sample "
                        f"or remove {rec.path}")
            try:
                arrays[name] = _read_tif(data)
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
        with _folder_lock(self.path, lock_timeout):
            try:
                return _recover(self.samples_dir)
            except OSError as e:
                raise _export_error(e, self.path, "clean up interrupted writes") from None

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
        img, ax = _check_image(image, axes)
        n_sp = len(ax.rstrip("C"))
        spatial = tuple(img.shape[:n_sp])
        lab = _check_labels(labels, spatial, img.shape, self.info)
        rev = _check_reviewed(reviewed, spatial)
        if split is not None and split not in SPLITS:
            raise TrainingFolderError(f"split must be one of {', '.join(SPLITS)} or None, got {split!r}")
        if sample_id is not None:
            _check_sample_id(sample_id)
        if source_sha256 is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", str(source_sha256)):
            raise TrainingFolderError(f"source_sha256 must be 64 hex digits, got {source_sha256!r}")
        crop_l = None
        if crop is not None:
            crop_l = _int_pairs(crop, "crop")
            if tuple(b - a for a, b in crop_l) != spatial:
                raise TrainingFolderError(f"crop {crop_l} spans {tuple(b - a for a, b in crop_l)} pixels but the "
                                          f"image's spatial shape is {spatial}; give one [start, stop] per spatial "
                                          "axis in source coordinates")
        slices = None
        if slice_range is not None:
            slices = _int_pairs([slice_range], "slice_range")[0]
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
                    else _array_sha256(img))
        base_meta = {
            "source": src, "source_sha256": source_sha256.lower() if source_sha256 else None,
            "source_identity": identity, "crop": crop_l, "slice_range": slices, "spacing": spacing_l,
            "model": _model_summary(model), "corrections": _jsonable(corrections, "corrections"),
            "extra": _jsonable(extra, "extra") or {},
        }
        try:
            self.samples_dir.mkdir(exist_ok=True)
        except OSError as e:
            raise _export_error(e, self.path, f"create {SAMPLES_DIR}/") from None
        with _folder_lock(self.path, lock_timeout):
            try:
                _recover(self.samples_dir)
            except OSError as e:
                raise _export_error(e, self.path, "clean up an interrupted write") from None
            planned, asides, notice = self._plan(img, ax, lab, rev, base_meta, split=split,
                                                 sample_id=sample_id, replace=replace)
            records = self._commit(planned, asides)
        return AddResult(tuple(records), notice)

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
            chosen = "val" if _val_draw(identity) < VAL_FRACTION else "train"
            if chosen == "train" and "val" not in source_split.values():
                chosen = "val"
                notices.append(f"the folder now has {n_sources} source images and none in validation: samples of "
                               "this source image go to 'val'")
        spatial = lab.shape
        region = _source_region(spatial, base_meta["crop"], base_meta["slice_range"])
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
            stem = _slug(base_meta["source"])
            pat = re.compile(rf"^{re.escape(stem)}_(\d+)(?:-val)?$", re.IGNORECASE)
            nums = [int(m.group(1)) for sid in existing if (m := pat.match(sid))]
            main_id = f"{stem}_{max(nums, default=0) + 1:04d}"
        else:
            main_id = sample_id
        ids = [main_id, f"{main_id}-val"] if holdout else [main_id]
        if len(ids[-1]) > 120:
            _check_sample_id(ids[-1])
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
                raise SampleExistsError(f"sample {sid!r} already exists in {self.path}; pass replace=True to replace "
                                        "it, or leave sample_id=None to add a new sample")
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
        created = _now()
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
                    n = _clear_overlap(rv, reg, m["reviewed_region"], HOLDOUT_GAP)
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
            "source_region": region, "reviewed_region": _reviewed_region(rv, region),
            "reviewed_fraction": float(rv.mean()), **counts, "holdout": holdout, "split_guard": guard,
            "task": self.info.task, "created": created, "segloop_version": __version__,
            "write_id": uuid.uuid4().hex, "files": {}, "extra": base["extra"],
        }
        return meta

    def _write_tmp(self, p: _Planned) -> Path:
        tmp = self.samples_dir / f"{_TMP_PREFIX}{uuid.uuid4().hex}"
        os.mkdir(tmp)
        spatial_axes = p.meta["axes"].rstrip("C")
        for name, arr, axes in ((IMAGE_FILE, p.image, p.meta["axes"]), (LABELS_FILE, p.labels, spatial_axes),
                                (REVIEWED_FILE, p.reviewed, spatial_axes)):
            _write_tif(tmp / name, arr, axes)
            p.meta["files"][name] = _sha256_file(tmp / name)
        _write_bytes_synced(tmp / META_FILE, _json_bytes(p.meta))     # last: a folder with meta.json is complete
        _fsync_dir(tmp)
        return tmp

    def _commit(self, planned: list[_Planned], to_aside: list[str]) -> list[SampleRecord]:
        samples = self.samples_dir
        tmps: list[Path] = []
        journal: Path | None = None
        what = f"write sample {planned[0].sample_id!r}"
        try:
            for p in planned:
                tmps.append(self._write_tmp(p))
            if len(planned) > 1 or to_aside:
                token = uuid.uuid4().hex
                asides = {sid: f".old-{token}-{sid}" for sid in to_aside}
                content = {"puts": [{"id": p.sample_id, "write_id": p.meta["write_id"]} for p in planned],
                           "asides": asides, "created": _now()}
                journal = samples / f".txn-{token}.json"
                part = samples / f"{_TMP_PREFIX}{token}.txn"
                _write_bytes_synced(part, _json_bytes(content))
                os.rename(part, journal)
                _fsync_dir(samples)
                for sid, aside in asides.items():
                    os.rename(samples / sid, samples / aside)
            for p, tmp in zip(planned, tmps):
                os.rename(tmp, samples / p.sample_id)
            _fsync_dir(samples)
        except BaseException as e:
            with contextlib.suppress(OSError):
                _recover(samples)                 # rolls back this journal and removes the temp folders
            for tmp in tmps:
                _rmtree(tmp)
            if isinstance(e, OSError):
                raise _export_error(e, self.path, what) from None
            raise
        if journal is not None:                   # done: old folders and the journal are garbage now
            with contextlib.suppress(OSError):
                for sid in to_aside:
                    _rmtree(samples / asides[sid])
                journal.unlink()
                _fsync_dir(samples)
        return [SampleRecord(p.sample_id, samples / p.sample_id, p.meta) for p in planned]


# --------------------------------------------------------------------------- validation


def _tif_header(source: bytes | Path) -> tuple[tuple[int, ...], str]:
    import tifffile

    with tifffile.TiffFile(io.BytesIO(source) if isinstance(source, bytes) else source) as tf:
        s = tf.series[0]
        return tuple(s.shape), str(s.dtype)


def _validate_sample(sid: str, path: Path, info: FolderInfo | None, check_hashes: bool,
                     view: dict[str, Path]) -> tuple[list[str], dict | None, list[str]]:
    """Problems with one sample folder, its meta (None if unreadable) and notes."""
    probs: list[str] = []
    notes: list[str] = []
    if not _ID_RE.match(sid):
        probs.append("the folder name is not a valid sample id (ASCII letters, digits, '.', '_', '-'); rename or "
                     "remove it")
    missing = [n for n in SAMPLE_FILES if not (path / n).is_file()]
    if missing:
        probs.append(f"missing {', '.join(missing)}; re-export the sample or remove its folder")
    extra_files = sorted(set(os.listdir(path)) - set(SAMPLE_FILES))
    if extra_files:
        notes.append(f"{sid}: unexpected file(s) {', '.join(extra_files)} (ignored)")
    meta = None
    if META_FILE not in missing:
        try:
            meta = _read_json(path / META_FILE)
            if not isinstance(meta, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as e:
            probs.append(f"{META_FILE} cannot be read ({e}); re-export the sample")
            meta = None
    if meta is not None:
        lacking = [k for k in _META_REQUIRED if k not in meta]
        if lacking:
            probs.append(f"{META_FILE} lacks {', '.join(lacking)}; re-export the sample")
        if meta.get("schema") != SAMPLE_SCHEMA:
            probs.append(f"{META_FILE}: schema is {meta.get('schema')!r}, expected {SAMPLE_SCHEMA!r}")
        sv = meta.get("schema_version")
        if isinstance(sv, int) and sv > SAMPLE_SCHEMA_VERSION:
            probs.append(f"{META_FILE} was written by a newer segloop (schema_version {sv}); upgrade napari-segloop")
            return probs, None, notes
        if sv != SAMPLE_SCHEMA_VERSION:
            probs.append(f"{META_FILE}: schema_version {sv!r} is not valid")
        if meta.get("sample_id") not in (None, sid):
            probs.append(f"{META_FILE} names sample {meta.get('sample_id')!r}, but the folder is {sid!r}")
        if meta.get("split") not in SPLITS:
            probs.append(f"split {meta.get('split')!r} is not one of {', '.join(SPLITS)}")
        files = meta.get("files") if isinstance(meta.get("files"), dict) else {}
        dtypes = meta.get("dtypes") if isinstance(meta.get("dtypes"), dict) else {}
        axes = meta.get("axes") if isinstance(meta.get("axes"), str) else ""
        shapes: dict[str, tuple] = {}
        arrays: dict[str, np.ndarray] = {}
        for name, key in ((IMAGE_FILE, "image"), (LABELS_FILE, "labels"), (REVIEWED_FILE, "reviewed")):
            if name in missing:
                continue
            try:
                data: bytes | Path = (path / name).read_bytes() if check_hashes else path / name
                if check_hashes:
                    got = hashlib.sha256(data).hexdigest()
                    if got != files.get(name):
                        probs.append(f"{name} has sha256 {got[:12]}..., {META_FILE} records "
                                     f"{str(files.get(name))[:12]}...: changed or truncated after export; re-export "
                                     "the sample or remove it")
                        continue
                shape, dtype = _tif_header(data)
                if key != "image":
                    arrays[key] = _read_tif(data)
            except Exception as e:  # tifffile raises many types for a damaged file
                probs.append(f"{name} cannot be read ({type(e).__name__}: {e}); re-export the sample")
                continue
            shapes[key] = shape
            if dtypes.get(key) != dtype:
                probs.append(f"{name} has dtype {dtype}, {META_FILE} records {dtypes.get(key)!r}")
            if key == "image" and list(shape) != list(meta.get("shape") or []):
                probs.append(f"{name} has shape {shape}, {META_FILE} records {meta.get('shape')}")
        if "image" in shapes:
            img_shape = shapes["image"]
            spatial = img_shape[:-1] if axes.endswith("C") else img_shape
            if axes.replace("C", "") not in ("YX", "ZYX") or len(axes) != len(img_shape):
                probs.append(f"axes {axes!r} do not fit the image shape {img_shape}")
            for key in ("labels", "reviewed"):
                if key in shapes and shapes[key] != spatial:
                    probs.append(f"{key}.tif has shape {shapes[key]}, the image's spatial shape is {spatial}")
        if "labels" in arrays:
            lab = arrays["labels"]
            if str(lab.dtype) not in _LABEL_DTYPES:
                probs.append(f"labels.tif has dtype {lab.dtype}; labels must be uint8, uint16 or uint32")
            elif info is not None and info.task == "semantic" and lab.size and int(lab.max()) >= len(info.classes):
                probs.append(f"labels.tif holds class {int(lab.max())}, but the folder has {len(info.classes)} "
                             "classes")
        if "reviewed" in arrays:
            rev = arrays["reviewed"]
            if rev.dtype != np.uint8:
                probs.append(f"reviewed.tif has dtype {rev.dtype}; it must be uint8")
            elif rev.size and int(rev.max()) > 1:
                probs.append("reviewed.tif holds values other than 0 and 1")
        hold = meta.get("holdout")
        if isinstance(hold, dict):
            partner = hold.get("partner")
            if partner not in view:
                probs.append(f"its held-out partner sample {partner!r} is missing; re-export the sample")
            else:
                pm = _read_meta(view[partner])
                ph = pm.get("holdout") if isinstance(pm.get("holdout"), dict) else {}
                if ph.get("partner") != sid or ph.get("pair") != hold.get("pair"):
                    probs.append(f"its held-out partner {partner!r} belongs to another export; re-export the sample")
    return probs, meta, notes


def validate_folder(path: str | os.PathLike, *, check_hashes: bool = True) -> ValidationReport:
    """Check a training folder; never raises for a broken folder, reports it.

    Checks the schema of ``segloop-training.json``; for every sample: all four files, the
    ``meta.json`` schema, the sha256 of each tif (``check_hashes``), shapes (labels == reviewed ==
    the image's spatial shape), dtypes (labels uint8/16/32, reviewed uint8 holding 0/1), semantic
    labels below the number of classes, the split, and held-out pairs.  Leftovers of interrupted
    writes are notes, not problems.

    Returns
    -------
    ValidationReport
        Each problem names its sample (``sample_id`` None for folder-level problems).
    """
    folder = Path(path)
    problems: list[Problem] = []
    notes: list[str] = []
    counts = dict.fromkeys(SPLITS, 0)

    def report(n: int = 0) -> ValidationReport:
        return ValidationReport(folder, n, counts, tuple(problems), tuple(notes))

    if not folder.exists():
        problems.append(Problem(None, f"{folder}: no such folder"))
        return report()
    if not folder.is_dir():
        problems.append(Problem(None, f"{folder} is a file, not a training folder"))
        return report()
    info: FolderInfo | None = None
    try:
        info = TrainingFolder.open(folder).info
    except FolderVersionError as e:
        problems.append(Problem(None, str(e)))
        return report()
    except TrainingFolderError as e:
        problems.append(Problem(None, str(e)))
    except OSError as e:
        problems.append(Problem(None, f"{folder / INFO_FILE} cannot be read ({e})"))
    samples = folder / SAMPLES_DIR
    if not samples.is_dir():
        if samples.exists():
            problems.append(Problem(None, f"{samples} is not a folder"))
        else:
            notes.append("no samples yet")
        return report()
    try:
        scan = _scan(samples)
        stray = sorted(n for n in os.listdir(samples) if not n.startswith(".") and not (samples / n).is_dir())
    except OSError as e:
        problems.append(Problem(None, f"{samples} cannot be listed ({e})"))
        return report()
    if scan.debris:
        notes.append(f"{len(scan.debris)} leftover(s) of interrupted writes ({', '.join(p.name for p in scan.debris)}); "
                     "they are not samples and are removed by the next export or TrainingFolder.cleanup()")
    if stray:
        notes.append(f"files in {SAMPLES_DIR}/ that are not sample folders (ignored): {', '.join(stray)}")
    for sid, p in scan.view.items():
        try:
            probs, meta, sample_notes = _validate_sample(sid, p, info, check_hashes, scan.view)
        except OSError as e:
            probs, meta, sample_notes = [f"cannot be read ({e})"], None, []
        problems.extend(Problem(sid, m) for m in probs)
        notes.extend(sample_notes)
        if meta is not None and meta.get("split") in counts:
            counts[meta["split"]] += 1
    if scan.view and counts["val"] == 0:
        notes.append("no samples in 'val': nothing to measure a fine-tuned model on")
    return report(len(scan.view))
