"""Training folder v1: the names, constants and records of the format (no file access).

``segloop-training.json`` is a :class:`FolderInfo`; a listed sample is a :class:`SampleRecord`,
its arrays a :class:`LoadedSample`; :func:`~segloop.core.formats.trainfolder.validate_folder`
returns a :class:`ValidationReport` of :class:`Problem` s.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from segloop._version import __version__
from segloop.errors import FolderVersionError, TrainingFolderError

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "INFO_FILE",
    "INDEX_FILE",
    "ACTIVE_STATE_FILE",
    "SAMPLES_DIR",
    "LOCK_FILE",
    "SAMPLE_SCHEMA",
    "SAMPLE_SCHEMA_VERSION",
    "IMAGE_FILE",
    "LABELS_FILE",
    "REVIEWED_FILE",
    "META_FILE",
    "SAMPLE_FILES",
    "SPLITS",
    "TASKS",
    "VAL_FRACTION",
    "MIN_SOURCES",
    "HOLDOUT_FRACTION",
    "HOLDOUT_GAP",
    "HOLDOUT_MIN",
    "SAMPLE_ID_RE",
    "FolderInfo",
    "SampleRecord",
    "LoadedSample",
    "AddResult",
    "Problem",
    "ValidationReport",
    "now_iso",
]

FORMAT = "segloop-training"
FORMAT_VERSION = 1
INFO_FILE = "segloop-training.json"
#: The sample index (:mod:`segloop.core.formats.trainfolder.index`): which samples the folder holds.
INDEX_FILE = "segloop-samples.json"
#: The active-learning state (:class:`segloop.core.learning.state.ActiveLearningState`) kept beside the
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

#: What a sample id (and so a sample folder's name) may be made of.
SAMPLE_ID_RE = re.compile(r"^[A-Za-z0-9._-]+$")


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


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
    indexed : bool
        The folder keeps a sample index (``segloop-samples.json``), recorded as
        ``"sample_index": "segloop-samples.json"`` in the file.  False for folders written by
        segloop versions that kept none, until their first write (or ``segloop validate --fix``)
        builds it; an indexed folder whose index file is gone is reported by validate.
    """

    classes: tuple[str, ...]
    task: str
    modality: str = "other"
    created_by: str = f"segloop {__version__}"
    created: str = field(default_factory=now_iso)
    format_version: int = FORMAT_VERSION
    indexed: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "classes", tuple(self.classes))
        _check_info(self, source="training folder")

    def to_dict(self) -> dict[str, Any]:
        d = {"format": FORMAT, "format_version": self.format_version, "classes": list(self.classes),
             "task": self.task, "modality": self.modality, "created_by": self.created_by,
             "created": self.created}
        if self.indexed:
            d["sample_index"] = INDEX_FILE
        return d

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
                     ("format_version", fv), ("indexed", d.get("sample_index") == INDEX_FILE)):
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
