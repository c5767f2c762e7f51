"""Training folder v1 on disk: the writers' lock, the journal, listing with recovery, file I/O.

Crash safety
------------
Every sample is written into ``samples/.tmp-<uuid>/`` (each file fsynced, ``meta.json``
last, then the directory) and renamed to ``samples/<sample_id>`` in one step, so a sample
folder is either complete or absent.  Writers hold ``.segloop.lock`` for the whole add.

Every add then writes a journal ``samples/.txn-<uuid>.json`` listing what goes in (id and
``write_id``) and what is moved aside (``samples/.old-<uuid>-<sample_id>``: a replace, or
the held-out block of a replaced sample), renames the folders, and last replaces the
sample index ``segloop-samples.json`` (:mod:`.index`; temporary file, fsync, rename).  The
change takes effect when the last new folder is renamed in (the journal is *committed*);
until then readers see the old state (:func:`scan_samples` applies the journal when
listing).  :func:`recover_samples` (run by every writer before it writes) rolls an
interrupted change back, or finishes a committed one: it records it in the index
(:func:`apply_journal`) and drops the folders moved aside.  Readers apply a committed
journal to the index the same way (:func:`index_view`), so a crash between the renames and
the index never shows a sample as missing from the index.  Nothing starting with ``.`` in
``samples/`` is ever listed as a sample.

These are directory protocols (folders renamed as a whole, a journal naming them), so the
files inside a temporary sample folder are written in place and fsynced, and
:func:`segloop.core._runtime.fsync_dir` makes each rename durable.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from filelock import FileLock, Timeout

from segloop.core._runtime import fsync_dir
from segloop.core.formats.trainfolder.index import (
    IndexEntry,
    entry_for,
    parse_index,
    read_index_bytes,
    write_index,
)
from segloop.core.formats.trainfolder.schema import (
    INDEX_FILE,
    INFO_FILE,
    LOCK_FILE,
    META_FILE,
    FolderInfo,
)
from segloop.errors import ExportError, FolderLockedError, TrainingFolderError

__all__ = [
    "TMP_PREFIX",
    "SampleScan",
    "apply_journal",
    "export_error",
    "folder_lock",
    "index_view",
    "json_bytes",
    "open_info",
    "read_json",
    "read_meta",
    "read_tif",
    "recover_samples",
    "rmtree",
    "scan_samples",
    "write_bytes_synced",
    "write_tif",
]

#: Temporary sample folders (and the journal while it is written) start with this.
TMP_PREFIX = ".tmp-"
_OLD_RE = re.compile(r"^\.old-([0-9a-f]{32})-(.+)$")
_TXN_RE = re.compile(r"^\.txn-[0-9a-f]{32}\.json$")


# --------------------------------------------------------------------------- small file helpers


def write_bytes_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, allow_nan=False) + "\n").encode("ascii")


def read_json(path: Path) -> Any:
    return json.loads(path.read_bytes().decode("utf-8"))


def rmtree(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()


def export_error(e: OSError, folder: Path, what: str, *,
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
def folder_lock(folder: Path, timeout: float | None) -> Iterator[None]:
    """Hold ``folder/.segloop.lock`` (an OS file lock, released if the process dies)."""
    lock = FileLock(str(folder / LOCK_FILE), timeout=-1 if timeout is None else float(timeout))
    try:
        lock.acquire()
    except Timeout:
        raise FolderLockedError(
            f"{folder} is being written by another segloop writer (another napari window, script or "
            f"process) for more than {timeout} s; wait for it to finish, then export again") from None
    except OSError as e:
        raise export_error(e, folder, "lock the training folder (create " + LOCK_FILE + ")") from None
    try:
        yield
    finally:
        lock.release()


def open_info(path: str | os.PathLike) -> tuple[Path, FolderInfo]:
    """The training folder at ``path`` (or its ``segloop-training.json``) and its parsed info.

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
        raw = read_json(info_path)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise TrainingFolderError(f"{info_path} cannot be read ({e}); the file may be truncated, restore it "
                                  "from a backup") from None
    return path, FolderInfo.from_dict(raw, source=str(info_path))


def write_tif(path: Path, arr: np.ndarray, axes: str) -> None:
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


def read_tif(data: bytes | Path) -> np.ndarray:
    import tifffile

    return tifffile.imread(io.BytesIO(data) if isinstance(data, bytes) else data)


# --------------------------------------------------------------------------- listing with journal recovery


@dataclass
class SampleScan:
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
        meta = read_json(folder / META_FILE)
    except (OSError, ValueError):
        return None
    return meta.get("write_id") if isinstance(meta, dict) else None


def _journal_committed(samples: Path, journal: dict) -> bool:
    return all(_write_id(samples / p["id"]) == p["write_id"] for p in journal.get("puts", []))


def apply_journal(entries: dict[str, IndexEntry], samples: Path, journal: dict) -> dict[str, IndexEntry]:
    """``entries`` (a sample index) once the change a *committed* journal describes is recorded: each
    new folder with its entry read from disk, each folder moved aside and not put back dropped.

    Idempotent (an index that records the change already is returned equal); an uncommitted
    journal changes nothing (it is rolled back, and the index was never written for it).
    """
    out = dict(entries)
    if not _journal_committed(samples, journal):
        return out
    puts = [p["id"] for p in journal.get("puts", [])]
    for sid in journal.get("asides", {}):
        if sid not in puts:
            out.pop(sid, None)
    for sid in puts:
        out[sid] = entry_for(samples / sid)
    return dict(sorted(out.items()))


def index_view(entries: dict[str, IndexEntry], samples: Path,
               journals: list[tuple[Path, dict | None]]) -> dict[str, IndexEntry]:
    """The index as readers should see it: the stored ``entries`` with every committed journal in
    ``journals`` (as :func:`scan_samples` found them) applied."""
    out = dict(entries)
    for _, j in journals:
        if j is not None:
            out = apply_journal(out, samples, j)
    return out


def _roll_index_forward(samples: Path, journal: dict) -> None:
    """Record a committed journal in the folder's index (if it has a readable one of this version)."""
    folder = samples.parent
    try:
        raw = read_index_bytes(folder)
        entries = None if raw is None else parse_index(raw, source=folder / INDEX_FILE)
    except TrainingFolderError:      # unreadable or newer: the writer rebuilds / refuses, validate reports it
        return
    if entries is None:              # no index (an old folder): the writer builds it from the disk
        return
    new = apply_journal(entries, samples, journal)
    if new != entries:
        write_index(folder, new)


def scan_samples(samples: Path) -> SampleScan:
    """List ``samples/`` as a reader should see it: an interrupted multi-folder change counts as
    not made (its old folders are shown from their aside names), a finished one as made."""
    view: dict[str, Path] = {}
    journals: list[tuple[Path, dict | None]] = []
    asides: dict[Path, str] = {}
    tmps: list[Path] = []
    try:
        names = sorted(os.listdir(samples))
    except FileNotFoundError:
        return SampleScan(view, journals, asides, tmps)
    for name in names:
        p = samples / name
        if not name.startswith("."):
            if p.is_dir():
                view[name] = p
        elif _TXN_RE.match(name):
            try:
                j = read_json(p)
                journals.append((p, j if isinstance(j, dict) else None))
            except (OSError, ValueError):
                journals.append((p, None))
        elif m := _OLD_RE.match(name):
            asides[p] = m.group(2)
        elif name.startswith(TMP_PREFIX):
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
    return SampleScan(dict(sorted(view.items())), journals, asides, tmps)


def recover_samples(samples: Path) -> int:
    """Make ``samples/`` match what :func:`scan_samples` shows; call with the lock held.  Returns how many
    leftovers (journals, aside folders, temp folders) were dealt with."""
    scan = scan_samples(samples)
    count = 0
    for jp, j in scan.journals:
        if j is not None:
            if _journal_committed(samples, j):           # finished: record it in the index, drop the old folders
                _roll_index_forward(samples, j)
                for aside in j.get("asides", {}).values():
                    if (samples / aside).exists():
                        rmtree(samples / aside)
                        count += 1
            else:                                         # interrupted: roll back
                for put in j.get("puts", []):
                    dest = samples / put["id"]
                    if _write_id(dest) == put["write_id"]:
                        os.rename(dest, samples / f"{TMP_PREFIX}{uuid.uuid4().hex}")
                for sid, aside in j.get("asides", {}).items():
                    if (samples / aside).exists() and not (samples / sid).exists():
                        os.rename(samples / aside, samples / sid)
                        count += 1
                fsync_dir(samples)
        jp.unlink(missing_ok=True)
        count += 1
        fsync_dir(samples)
    for ap, sid in scan_samples(samples).asides.items():       # asides no journal speaks for
        if not (samples / sid).exists():
            os.rename(ap, samples / sid)
        else:
            rmtree(ap)
        count += 1
    for name in os.listdir(samples):
        if name.startswith(TMP_PREFIX):
            rmtree(samples / name)
            count += 1
    fsync_dir(samples)
    for name in os.listdir(samples.parent):             # an index write cut short (atomic_output's temp name)
        if name.startswith(f".{INDEX_FILE}.") and name.endswith(".tmp"):
            rmtree(samples.parent / name)
            count += 1
    return count


def read_meta(path: Path) -> dict:
    try:
        meta = read_json(path / META_FILE)
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}
