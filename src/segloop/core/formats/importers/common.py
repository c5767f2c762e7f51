"""Helpers every importer shares: ids, splits, argument checks and writing samples.

Samples go through :class:`segloop.core.formats.trainfolder.TrainingFolder` (atomic, every
pixel reviewed unless the source says otherwise); an id that is already there from the same
source file is skipped, one from another source is an error.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

from segloop.core._runtime import is_cancelled, sha256_file
from segloop.core.formats.importers.report import ImportReport
from segloop.errors import (
    Cancelled,
    ImportLayoutError,
    InvalidImageError,
    InvalidLabelsError,
    SampleExistsError,
)

__all__ = [
    "add_sample",
    "already_there",
    "check_cancel",
    "check_fraction",
    "check_limit",
    "existing_samples",
    "hash_split",
    "note_changed_labels",
    "open_folder",
    "sample_id",
    "unique_ids",
]


def check_cancel(cancel, report: ImportReport) -> None:
    if is_cancelled(cancel):
        raise Cancelled(f"import cancelled after {len(report.written)} new sample(s); they are complete and stay "
                        f"in {report.folder}. Run the import again to add the rest (existing samples are skipped)")


def sample_id(*parts: str) -> str:
    """A valid sample id from free text: ASCII letters, digits, '.', '_' and '-', lower case."""
    text = "-".join(p for p in parts if p)
    s = re.sub(r"[^A-Za-z0-9._-]+", "-", text.encode("ascii", "ignore").decode("ascii"))
    s = re.sub(r"-{2,}", "-", s).strip(".-_").lower()
    if len(s) > 100:
        s = s[:90].rstrip(".-_") + "-" + hashlib.sha1(text.encode()).hexdigest()[:8]
    return s or "sample-" + hashlib.sha1(text.encode()).hexdigest()[:8]


def unique_ids(names: list[str], keys: list[str] | None = None) -> list[str]:
    """One id per name, deterministic; names that map to the same id get a short hash of their
    (unique) key, e.g. the relative path."""
    keys = names if keys is None else keys
    ids = [sample_id(n) for n in names]
    seen: dict[str, int] = {}
    for i in ids:
        seen[i.casefold()] = seen.get(i.casefold(), 0) + 1
    return [i if seen[i.casefold()] == 1 else f"{i}-{hashlib.sha1(k.encode()).hexdigest()[:6]}"
            for i, k in zip(ids, keys)]


def _val_draw(key: str) -> float:
    return int(hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:8], 16) / 2**32


def hash_split(keys: list[str], val_fraction: float) -> dict[str, str]:
    """``train`` / ``val`` per source key, deterministic and stable as keys are added: a key goes to
    ``val`` when its hash falls below ``val_fraction``; with two or more keys and none drawn, the
    lowest draw goes to ``val``."""
    out = {k: ("val" if _val_draw(k) < val_fraction else "train") for k in keys}
    if val_fraction > 0 and len(keys) >= 2 and "val" not in out.values():
        out[min(keys, key=_val_draw)] = "val"
    return out


def check_fraction(val_fraction: float) -> float:
    try:
        v = float(val_fraction)
    except (TypeError, ValueError):
        raise ImportLayoutError(f"val_fraction (--val-fraction) must be a number between 0 and 0.9, "
                                f"got {val_fraction!r}") from None
    if not 0.0 <= v <= 0.9:
        raise ImportLayoutError(f"val_fraction (--val-fraction) must be between 0 and 0.9, got {v}")
    return v


def check_limit(limit: int | None) -> int | None:
    if limit is None:
        return None
    if int(limit) < 1:
        raise ImportLayoutError(f"limit (--limit) must be 1 or more (source images to import), got {limit}")
    return int(limit)


def open_folder(folder, src_classes, task, modality):
    from segloop.core.formats.trainfolder import TrainingFolder

    if isinstance(folder, TrainingFolder):
        tf = folder
        if tuple(tf.info.classes) != tuple(src_classes) or tf.info.task != task:
            raise ImportLayoutError(
                f"{tf.path} holds {tf.info.task} labels with classes {list(tf.info.classes)}; this import writes "
                f"{task} labels with classes {list(src_classes)}: choose another folder")
        return tf
    return TrainingFolder.create(folder, classes=tuple(src_classes), task=task, modality=modality, exist_ok=True)


def existing_samples(tf) -> dict[str, Any]:
    return {r.sample_id: r for r in tf.samples()}


def already_there(existing: dict, sid: str, source_sha256: str | None, extra_key: tuple | None,
                   replace: bool) -> bool:
    """True when ``sid`` exists from the same source (skip it); raise if it exists from another."""
    rec = existing.get(sid)
    if rec is None or replace:
        return False
    m = rec.meta or {}
    same = source_sha256 is None or m.get("source_sha256") == source_sha256
    if same and extra_key is not None:
        k, v = extra_key
        same = ((m.get("extra") or {}).get("import") or {}).get(k) == v
    if not same:
        raise SampleExistsError(
            f"sample {sid!r} in {rec.path.parent.parent} comes from another source file ({m.get('source')}); "
            "import into another folder, or pass replace=True (--replace) to replace it")
    return True


def dataset_copy(name: str, registry: dict, from_path):
    """``(dataset, root)`` of a named dataset imported from a local copy; ImportSourceError (saying how
    to get a copy) when the name is unknown, no copy is given or it is not a folder."""
    from pathlib import Path

    from segloop.errors import ImportSourceError

    if name not in registry:
        raise ImportSourceError(f"unknown dataset {name!r}; known: {', '.join(registry)}")
    ds = registry[name]
    if from_path is None:
        raise ImportSourceError(f"segloop import {name} reads a local copy: --from PATH (get it with: "
                                f"{ds.how_to_get})")
    root = Path(from_path)
    if not root.is_dir():
        raise ImportSourceError(f"{root}: no such folder. Get a copy with: {ds.how_to_get}")
    return ds, root


def samples_already_there(folder, ids: list[str], shas: list[str], replace: bool) -> tuple[dict, list[bool]]:
    """``(existing, there)``: the samples of ``folder`` when it is already a training folder (none
    when ``replace``), and for each of ``ids`` whether it is there from the same source file
    (:class:`SampleExistsError` when from another)."""
    from pathlib import Path

    from segloop.core.formats.trainfolder.schema import INFO_FILE

    existing: dict = {}
    if not replace and (Path(str(getattr(folder, "path", folder))) / INFO_FILE).is_file():
        from segloop.core.formats.trainfolder import TrainingFolder

        existing = existing_samples(folder if hasattr(folder, "samples") else TrainingFolder.open(folder))
    there = [sid in existing and already_there(existing, sid, sha, None, False) for sid, sha in zip(ids, shas)]
    return existing, there


def note_skipped(report: ImportReport, ids: list[str], there: list[bool], existing: dict) -> None:
    """Record the samples an import left as they were (already there) in ``report``."""
    for sid, t in zip(ids, there):
        if t:
            report.skipped.append(sid)
            report.splits[sid] = existing[sid].split


def note_changed_labels(report: ImportReport, rec, key: str, path: Path, sid: str) -> None:
    """A skipped sample whose label file changed since it was imported: named, never silently kept."""
    before = (((rec.meta or {}).get("extra") or {}).get("import") or {}).get(key)
    if before is not None and before != sha256_file(path):
        report.changed.append(sid)


def add_sample(tf, report: ImportReport, image, labels, *, axes: str, sid: str, split: str, source: str,
         source_sha256: str, extra: dict, replace: bool, spacing=None, crop=None, reviewed=None,
         what: str = "") -> None:
    try:
        res = tf.add_sample(image, labels, reviewed, axes=axes, source=source, source_sha256=source_sha256,
                            spacing=spacing, crop=crop, split=split, sample_id=sid, replace=replace,
                            extra={"import": extra})
    except (InvalidImageError, InvalidLabelsError) as e:
        raise type(e)(f"{what or source}: {e}") from None
    for rec in res.records:
        report.written.append(rec.sample_id)
        report.splits[rec.sample_id] = rec.split
