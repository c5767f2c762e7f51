"""Training folder v1: :func:`validate_folder` checks a folder and names each bad sample."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np

from segloop.core._runtime import sha256_bytes
from segloop.core.formats.trainfolder.index import (
    IndexEntry,
    entry_for,
    parse_index,
    read_index_bytes,
)
from segloop.core.formats.trainfolder.schema import (
    IMAGE_FILE,
    INDEX_FILE,
    INFO_FILE,
    LABELS_FILE,
    META_FILE,
    REVIEWED_FILE,
    SAMPLE_FILES,
    SAMPLE_ID_RE,
    SAMPLE_SCHEMA,
    SAMPLE_SCHEMA_VERSION,
    SAMPLES_DIR,
    SPLITS,
    FolderInfo,
    Problem,
    ValidationReport,
)
from segloop.core.formats.trainfolder.storage import (
    SampleScan,
    index_view,
    open_info,
    read_json,
    read_meta,
    read_tif,
    scan_samples,
)
from segloop.errors import FolderVersionError, TrainingFolderError

__all__ = ["validate_folder"]

_LABEL_DTYPES = ("uint8", "uint16", "uint32")
_FIX = "`segloop validate --fix`"
_STABLE_TRIES = 5
"""Reads of index + samples/ until the index is the same before and after the listing (a writer at work)."""
_META_REQUIRED = ("schema", "schema_version", "sample_id", "axes", "shape", "dtypes", "split", "files",
                  "created")


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
    if not SAMPLE_ID_RE.match(sid):
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
            meta = read_json(path / META_FILE)
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
                    got = sha256_bytes(data)
                    if got != files.get(name):
                        probs.append(f"{name} has sha256 {got[:12]}..., {META_FILE} records "
                                     f"{str(files.get(name))[:12]}...: changed or truncated after export; re-export "
                                     "the sample or remove it")
                        continue
                shape, dtype = _tif_header(data)
                if key != "image":
                    arrays[key] = read_tif(data)
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
                pm = read_meta(view[partner])
                ph = pm.get("holdout") if isinstance(pm.get("holdout"), dict) else {}
                if ph.get("partner") != sid or ph.get("pair") != hold.get("pair"):
                    probs.append(f"its held-out partner {partner!r} belongs to another export; re-export the sample")
    return probs, meta, notes


def _scan_with_index(folder: Path, samples: Path) -> tuple[SampleScan, bytes | None, bool]:
    """List ``samples/`` between two reads of the index, until both reads agree (no write committed
    meanwhile).  Returns the scan, the index bytes (None: no index) and whether they agreed."""
    before = read_index_bytes(folder)
    for _ in range(_STABLE_TRIES):
        scan = scan_samples(samples)
        after = read_index_bytes(folder)
        if after == before:
            return scan, after, True
        before = after
    return scan, after, False


def _index_problems(scan: SampleScan, samples: Path, entries: dict[str, IndexEntry]) -> list[Problem]:
    """The index against the disk, both ways: missing folders, unexpected folders, changed meta.json."""
    out = []
    for sid, path in scan.view.items():
        want = entries.get(sid)
        if want is None:
            out.append(Problem(sid, f"its folder is not in the sample index ({INDEX_FILE}): it was copied in or "
                                    "made by hand, or by a segloop older than the index; run "
                                    f"{_FIX} to add it if it belongs here, else remove the folder"))
            continue
        got = entry_for(path)
        if got.meta_sha256 is None or (got.split is None and got.meta_sha256 != want.meta_sha256):
            continue                                       # meta.json missing / unreadable: reported already
        if got.split != want.split:
            out.append(Problem(sid, f"split is {got.split!r} in {META_FILE} but {want.split!r} in the sample index: "
                                    f"{META_FILE} was edited after export; re-export the sample, or run {_FIX} to "
                                    "accept the edit"))
        elif got.meta_sha256 != want.meta_sha256:
            out.append(Problem(sid, f"{META_FILE} has sha256 {got.meta_sha256[:12]}..., the sample index records "
                                    f"{str(want.meta_sha256)[:12]}...: it was changed after export; re-export the "
                                    f"sample, or run {_FIX} to accept the change"))
    for sid in sorted(set(entries) - set(scan.view)):
        out.append(Problem(sid, f"listed in the sample index ({INDEX_FILE}, split {entries[sid].split!r}) but its "
                                f"folder {SAMPLES_DIR}/{sid} is missing (deleted by hand?); restore it from a "
                                f"backup, or run {_FIX} to drop it from the index"))
    return out


def validate_folder(path: str | os.PathLike, *, check_hashes: bool = True) -> ValidationReport:
    """Check a training folder; never raises for a broken folder, reports it.

    Checks the schema of ``segloop-training.json``; for every sample: all four files, the
    ``meta.json`` schema, the sha256 of each tif (``check_hashes``), shapes (labels == reviewed ==
    the image's spatial shape), dtypes (labels uint8/16/32, reviewed uint8 holding 0/1), semantic
    labels below the number of classes, the split, and held-out pairs.  Leftovers of interrupted
    writes are notes, not problems.

    The sample index (``segloop-samples.json``, :mod:`.index`) is compared with ``samples/``
    both ways, each finding a problem named by its sample: a sample in the index whose folder
    is missing, a sample folder the index does not list (unexpected), and a sample whose
    ``meta.json`` (its split, or anything else) differs from what the index recorded.  A write
    interrupted between its renames and the index is not a problem: its journal is applied
    as recovery would.  A folder from before indexes (no index, and ``segloop-training.json``
    does not mention one) gets a note; an index that the folder should have but lacks, or
    that cannot be read, is a folder-level problem.  ``segloop validate --fix``
    (:meth:`TrainingFolder.rebuild_index`) makes the index match the disk.

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
        info = open_info(folder)[1]
    except FolderVersionError as e:
        problems.append(Problem(None, str(e)))
        return report()
    except TrainingFolderError as e:
        problems.append(Problem(None, str(e)))
    except OSError as e:
        problems.append(Problem(None, f"{folder / INFO_FILE} cannot be read ({e})"))
    samples = folder / SAMPLES_DIR
    if samples.exists() and not samples.is_dir():
        problems.append(Problem(None, f"{samples} is not a folder"))
        return report()
    try:
        scan, index_raw, stable = _scan_with_index(folder, samples)     # no samples/: an empty scan
        stray = sorted(n for n in os.listdir(samples) if not n.startswith(".")
                       and not (samples / n).is_dir()) if samples.is_dir() else []
    except TrainingFolderError as e:                    # the index exists but cannot be read
        problems.append(Problem(None, str(e)))
        return report()
    except OSError as e:
        problems.append(Problem(None, f"{samples} cannot be listed ({e})"))
        return report()
    entries: dict[str, IndexEntry] | None = None
    if index_raw is not None:
        try:
            entries = index_view(parse_index(index_raw, source=folder / INDEX_FILE), samples, scan.journals)
        except TrainingFolderError as e:
            problems.append(Problem(None, str(e)))
    elif info is not None and info.indexed:
        problems.append(Problem(None, f"the sample index {INDEX_FILE} is missing (segloop-training.json says the "
                                      "folder keeps one), so samples deleted by hand cannot be noticed; run "
                                      f"{_FIX} to rebuild it from the samples on disk"))
    elif info is not None:
        notes.append(f"no sample index ({INDEX_FILE}): the folder was made by {info.created_by or 'a segloop'} "
                     "before segloop kept one, so a sample folder deleted by hand cannot be noticed; run "
                     f"{_FIX} (or export a sample) to write it")
    if index_raw is not None and not stable:
        notes.append("the folder was being written while it was checked, so the index was not compared with the "
                     "samples; run validate again")
    index_problems = [] if entries is None or not stable else _index_problems(scan, samples, entries)
    if scan.debris:
        notes.append(f"{len(scan.debris)} leftover(s) of interrupted writes ({', '.join(p.name for p in scan.debris)}); "
                     "they are not samples; the next export, `segloop validate --fix` or TrainingFolder.cleanup() "
                     "removes them (and records a finished write in the index)")
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
    problems.extend(index_problems)
    if not scan.view and not problems:
        notes.append("no samples yet")
    if scan.view and counts["val"] == 0:
        notes.append("no samples in 'val': nothing to measure a fine-tuned model on")
    return report(len(scan.view))
