"""Training folder v1: the sample index, ``segloop-samples.json``.

The index is the folder's own record of which samples it holds, so that a sample folder
deleted (or copied in) by hand is noticed: :func:`~segloop.core.formats.trainfolder.validate_folder`
compares it with ``samples/`` both ways.  Without it the list of samples is whatever is on
disk, and a deleted sample is simply not there.

::

    {"format": "segloop-sample-index", "format_version": 1, "updated": "<UTC ISO time>",
     "samples": {"<sample_id>": {"split": "train", "meta_sha256": "<sha256 of meta.json>",
                                 "write_id": "<meta.json write_id>"}, ...}}

``meta_sha256`` chains the whole sample: ``meta.json`` holds the sha256 of the three tifs.

Crash safety (see :mod:`.storage` for the whole protocol): every add writes a journal
``samples/.txn-<uuid>.json`` naming the folders it puts in and moves aside, renames them,
and only then replaces the index (temporary file, fsync, rename).  So after a crash the
index is either already up to date or a *committed* journal (all its new folders in place)
says what it lacks; :func:`.storage.apply_journal` rolls the index forward from the journal,
and readers (:func:`.storage.index_view`) do the same in memory.  An uncommitted journal is rolled back
and the index was never touched.  A sample folder that neither the index nor a committed
journal names was not written by this protocol: it is *unexpected*.

Folders written by segloop versions that kept no index have neither the file nor the
``"sample_index"`` key in ``segloop-training.json``; they are read as before (the samples on
disk are the list), and the first write - or ``segloop validate --fix`` - builds the index
from what is on disk (:func:`entries_from_disk`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from segloop._version import __version__
from segloop.core._runtime import atomic_write_bytes, sha256_bytes
from segloop.core.formats.trainfolder.schema import INDEX_FILE, META_FILE, now_iso
from segloop.errors import FolderVersionError, TrainingFolderError

__all__ = [
    "INDEX_FORMAT",
    "INDEX_VERSION",
    "IndexEntry",
    "entry_for",
    "entries_from_disk",
    "index_bytes",
    "parse_index",
    "read_index_bytes",
    "write_index",
]

INDEX_FORMAT = "segloop-sample-index"
INDEX_VERSION = 1


@dataclass(frozen=True)
class IndexEntry:
    """What the index records of one sample.

    Attributes
    ----------
    split : str or None
        ``meta["split"]`` when the sample was written (None: ``meta.json`` was unreadable when
        a folder was adopted by :func:`entries_from_disk`).
    meta_sha256 : str or None
        sha256 of the ``meta.json`` bytes (None: there was no ``meta.json``).
    write_id : str or None
        ``meta["write_id"]``, the token the journal matches folders by.
    """

    split: str | None
    meta_sha256: str | None
    write_id: str | None = None

    def to_dict(self) -> dict:
        return {"split": self.split, "meta_sha256": self.meta_sha256, "write_id": self.write_id}


def entry_for(sample_dir: Path) -> IndexEntry:
    """The entry for the sample folder ``sample_dir`` as it is on disk now (never raises for a bad sample)."""
    try:
        raw = (sample_dir / META_FILE).read_bytes()
    except OSError:
        return IndexEntry(None, None, None)
    try:
        meta = json.loads(raw.decode("utf-8"))
    except ValueError:
        meta = None
    if not isinstance(meta, dict):
        return IndexEntry(None, sha256_bytes(raw), None)
    split = meta.get("split")
    write_id = meta.get("write_id")
    return IndexEntry(split if isinstance(split, str) else None, sha256_bytes(raw),
                      write_id if isinstance(write_id, str) else None)


def entries_from_disk(view: Mapping[str, Path]) -> dict[str, IndexEntry]:
    """An index of every sample folder in ``view`` (id -> folder, as :func:`.storage.scan_samples` lists
    them): what a folder without an index, or ``segloop validate --fix``, takes as the truth."""
    return {sid: entry_for(path) for sid, path in sorted(view.items())}


def index_bytes(entries: Mapping[str, IndexEntry]) -> bytes:
    """The file content for ``entries`` (sorted by id)."""
    doc = {"format": INDEX_FORMAT, "format_version": INDEX_VERSION, "updated": now_iso(),
           "written_by": f"segloop {__version__}",
           "samples": {sid: entries[sid].to_dict() for sid in sorted(entries)}}
    return (json.dumps(doc, indent=1, allow_nan=False) + "\n").encode("ascii")


def write_index(folder: Path, entries: Mapping[str, IndexEntry]) -> None:
    """Replace ``folder/segloop-samples.json`` atomically and durably (call with the folder lock held).

    Raises
    ------
    OSError
        The file could not be written; the old index is unchanged.
    """
    atomic_write_bytes(folder / INDEX_FILE, index_bytes(entries))


def read_index_bytes(folder: Path) -> bytes | None:
    """The raw index file, or None when the folder has none.

    Raises
    ------
    TrainingFolderError
        The file exists but cannot be read.
    """
    try:
        return (folder / INDEX_FILE).read_bytes()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise TrainingFolderError(f"{folder / INDEX_FILE} cannot be read ({e.strerror or e}); check its "
                                  "permissions, or run `segloop validate --fix` to rebuild it") from None


def parse_index(raw: bytes, *, source: str | os.PathLike = INDEX_FILE) -> dict[str, IndexEntry]:
    """Parse the index file's bytes.

    Raises
    ------
    FolderVersionError
        A newer ``format_version`` (upgrade segloop; never rebuilt or overwritten).
    TrainingFolderError
        Not valid JSON, another format or malformed entries; the message says to rebuild it
        with ``segloop validate --fix``.
    """
    fix = "run `segloop validate --fix` to rebuild it from the samples on disk"
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise TrainingFolderError(f"{source} cannot be read ({e}); the file may be truncated: {fix}") from None
    if not isinstance(doc, dict) or doc.get("format") != INDEX_FORMAT:
        raise TrainingFolderError(f"{source} is not a segloop sample index (format "
                                  f"{doc.get('format') if isinstance(doc, dict) else None!r}); {fix}")
    fv = doc.get("format_version")
    if isinstance(fv, int) and not isinstance(fv, bool) and fv > INDEX_VERSION:
        raise FolderVersionError(f"{source}: format_version {fv} was written by a newer segloop (this one reads "
                                  f"version {INDEX_VERSION}); upgrade napari-segloop to use this folder")
    samples = doc.get("samples")
    if fv != INDEX_VERSION or not isinstance(samples, dict):
        raise TrainingFolderError(f"{source}: format_version {fv!r} or 'samples' is not valid; {fix}")
    out = {}
    for sid, e in samples.items():
        if not isinstance(e, dict):
            raise TrainingFolderError(f"{source}: the entry of sample {sid!r} is not a JSON object; {fix}")
        vals = [e.get(k) for k in ("split", "meta_sha256", "write_id")]
        if not all(v is None or isinstance(v, str) for v in vals):
            raise TrainingFolderError(f"{source}: the entry of sample {sid!r} is malformed; {fix}")
        out[str(sid)] = IndexEntry(*vals)
    return out
