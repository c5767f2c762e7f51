"""Contours radiologists already have: folders of DICOM series with RTSTRUCT or DICOM-SEG files.

Each (image series, structure file) pair becomes one 3D semantic sample (the CT in HU, class ids
per voxel, spacing and geometry in ``meta.json``); samples are split by patient (PatientID), so
one patient's scans never end up on both sides.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from segloop.core._runtime import sha256_file
from segloop.core.formats.importers.common import (
    already_there,
    check_cancel,
    check_fraction,
    check_limit,
    existing_samples,
    hash_split,
    open_folder,
    unique_ids,
)
from segloop.core.formats.importers.report import ImportReport, ProgressCallback
from segloop.errors import ImportLayoutError, InvalidImageError, InvalidLabelsError

__all__ = ["import_dicom_contours"]


def _scan(root: Path):
    """(structure files [(path, kind, header)], image series {uid: [paths]}) under ``root``."""
    from segloop.core.formats.io.dicom import PARSE_ERRORS, import_pydicom

    pydicom = import_pydicom()
    from pydicom.errors import InvalidDicomError

    structures, series = [], {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            p = Path(dirpath) / name
            try:
                ds = pydicom.dcmread(p, stop_before_pixels=True)
            except (InvalidDicomError, *PARSE_ERRORS):
                continue
            modality = str(ds.get("Modality", "") or "").upper()
            if modality in ("RTSTRUCT", "SEG"):
                structures.append((p, modality, ds))
            elif "Rows" in ds and ds.get("SeriesInstanceUID"):
                series.setdefault(str(ds.SeriesInstanceUID), []).append(p)
    return structures, series


def _referenced(ds) -> list[str]:
    out = [str(s.SeriesInstanceUID) for s in (ds.get("ReferencedSeriesSequence") or []) if s.get("SeriesInstanceUID")]
    for rf in ds.get("ReferencedFrameOfReferenceSequence") or []:
        for st in rf.get("RTReferencedStudySequence") or []:
            out += [str(s.SeriesInstanceUID) for s in (st.get("RTReferencedSeriesSequence") or [])
                    if s.get("SeriesInstanceUID")]
    return list(dict.fromkeys(out))


def _structure_names(ds, kind: str) -> list[str]:
    if kind == "RTSTRUCT":
        return [str(r.get("ROIName", "") or "") for r in (ds.get("StructureSetROISequence") or [])]
    return [str(s.get("SegmentLabel", "") or "") for s in (ds.get("SegmentSequence") or [])]


def _class_map(names_per_pair: list[list[str]], rois, classes, notices: list[str]) -> dict[str, str]:
    """ROI name (casefolded) -> class name."""
    if classes is not None:
        if not isinstance(classes, Mapping) or not classes:
            raise ImportLayoutError("classes must map ROI names to class names, e.g. {\"GTV-1\": \"tumour\"}")
        return {str(k).casefold(): str(v) for k, v in classes.items()}
    if rois is not None:
        rois = [rois] if isinstance(rois, str) else list(rois)
        if not rois:
            raise ImportLayoutError("rois is empty; name the ROIs to import, e.g. [\"GTV-1\"]")
        return {str(r).casefold(): str(r) for r in rois}
    first = names_per_pair[0]
    common = [n for n in first if all(n.casefold() in {m.casefold() for m in other} for other in names_per_pair)]
    left = sorted({n for names in names_per_pair for n in names if n not in common})
    if left:
        notices.append(f"{len(left)} structure name(s) not in every file left out: {', '.join(left[:8])}"
                       + (" ..." if len(left) > 8 else "") + " (pass rois= or classes= to choose)")
    if not common:
        raise ImportLayoutError("no structure name is in every file; pass rois= (names to import) or classes= "
                                "(name -> class, e.g. {\"GTV-1\": \"tumour\"})")
    return {n.casefold(): n for n in common}


def import_dicom_contours(path: str | os.PathLike, folder, *, rois: Sequence[str] | None = None,
                          classes: Mapping[str, str] | None = None, val_fraction: float = 0.2,
                          limit: int | None = None, replace: bool = False,
                          progress: ProgressCallback | None = None, cancel=None) -> ImportReport:
    """Import DICOM series with their RTSTRUCT / DICOM-SEG contours as 3D semantic samples.

    ``path`` is searched (with its subfolders) for structure files and the image series they
    reference (by SeriesInstanceUID).  Each pair is one sample: the series (CT in HU) as the image,
    the structures painted as class ids (where they overlap, the smaller structure wins, as in
    :func:`segloop.core.formats.io.rtstruct.read_rtstruct`), every voxel reviewed, the voxel
    spacing and the geometry (affine, series UID) in ``meta.json``.

    Parameters
    ----------
    path : path-like
        A folder of patients (e.g. NSCLC-Radiomics: ``LUNG1-001/{image,mask_rtstruct}/``).
    folder : path-like or TrainingFolder
        The training folder (created if needed).
    rois : sequence of str, optional
        Structure names to import (case-insensitive); classes are ``background`` + these.
    classes : dict of str to str, optional
        Structure name -> class name, e.g. ``{"GTV-1": "tumour", "Lung-Left": "lung", "Lung-Right":
        "lung"}``; classes are ``background`` + the distinct values in order.  Overrides ``rois``.
        Default (neither given): the structure names found in every file.
    val_fraction : float
        Share of patients (by a hash of PatientID) that go to ``val``.
    limit : int, optional
        Import only the first ``limit`` pairs.
    replace, progress, cancel
        As :func:`segloop.core.formats.importers.import_source`.

    Returns
    -------
    ImportReport

    Raises
    ------
    ImportLayoutError
        No structure file, no pair whose series is present, a bad ``classes`` / ``rois``.
    VolumeReadError, ImageReadError, InvalidLabelsError
        A series or structure that cannot be read (the message names the file).
    """
    from segloop.core.formats.io.dicom_seg import read_dicom_seg
    from segloop.core.formats.io.rtstruct import read_rtstruct
    from segloop.core.formats.io.volume import read_volume

    root = Path(path)
    if not root.is_dir():
        raise ImportLayoutError(f"{root}: not a folder; give the folder holding the DICOM series and their "
                                "RTSTRUCT / DICOM-SEG files")
    val_fraction = check_fraction(val_fraction)
    limit = check_limit(limit)
    structures, series = _scan(root)
    if not structures:
        raise ImportLayoutError(f"{root}: no RTSTRUCT or DICOM-SEG file found (looked at {sum(map(len, series.values()))} "
                                "image file(s)); put the structure files beside their series")
    notices: list[str] = []
    pairs = []
    for p, kind, ds in structures:
        hit = [u for u in _referenced(ds) if u in series]
        if not hit:
            notices.append(f"{p.relative_to(root)}: its series ({', '.join(_referenced(ds)) or 'none named'}) is not "
                           "under the folder: skipped")
            continue
        patient = str(ds.get("PatientID", "") or "") or p.relative_to(root).parts[0]
        pairs.append((p, kind, ds, hit[0], patient))
    if not pairs:
        raise ImportLayoutError(f"{root}: none of the {len(structures)} structure file(s) has its image series in the "
                                "folder; copy the series next to them")
    mapping = _class_map([_structure_names(ds, k) for _, k, ds, _, _ in pairs], rois, classes, notices)
    class_names = ["background", *dict.fromkeys(mapping.values())]
    class_id = {c: i for i, c in enumerate(class_names)}
    if limit is not None and limit < len(pairs):
        notices.append(f"--limit {limit}: the first {limit} of {len(pairs)} pairs")
        pairs = pairs[:limit]
    splits = hash_split(sorted({pt for *_, pt in pairs}), val_fraction)
    notices.append(f"{sum(v == 'val' for v in splits.values())} of {len(splits)} patient(s) go to val (by a hash of "
                   f"PatientID, val_fraction {val_fraction})")
    tf = open_folder(folder, class_names, "semantic", "CT")
    report = ImportReport("dicom-contours", tf.path, classes=tuple(tf.info.classes), task=tf.info.task,
                          source=f"folder {root.resolve()}", notices=notices)
    ids = unique_ids([f"{pt}-{p.stem}" if len(pairs) > len({x[4] for x in pairs}) else pt
                      for p, _, _, _, pt in pairs], [str(p) for p, *_ in pairs])
    existing = existing_samples(tf)
    for i, ((p, kind, ds, uid, patient), sid) in enumerate(zip(pairs, ids)):
        check_cancel(cancel, report)
        sha = sha256_file(p)
        if already_there(existing, sid, sha, None, replace):
            report.skipped.append(sid)
            report.splits[sid] = existing[sid].split
            continue
        wanted = [n for n in _structure_names(ds, kind) if n.casefold() in mapping]
        missing = sorted(set(mapping) - {n.casefold() for n in wanted})
        if missing:
            notices.append(f"{p.relative_to(root)}: lacks {', '.join(missing)}: skipped (its voxels would be "
                           "taught as background)")
            continue
        volume, info = read_volume(series[uid], series_uid=uid, lazy=False)
        if kind == "RTSTRUCT":
            labels, names, rep = read_rtstruct(p, (volume, info), rois=wanted)
        else:
            labels, names, rep = read_dicom_seg(p, (volume, info), overlap="smaller_on_top")
        lut = np.zeros(int(max(names)) + 1, np.uint8)
        for lid, name in names.items():
            lut[lid] = class_id.get(mapping.get(name.casefold(), ""), 0)
        semantic = lut[labels]
        notices.extend(f"{p.relative_to(root)}: {w}" for w in rep.warnings)
        meta = info.to_meta()
        geometry = {"orientation": "LPS", "axes": "ZYX", "affine": meta["affine"], "series_uid": info.series_uid,
                    "modality": info.modality, "units": info.units, "source_format": "dicom"}
        extra = {"importer": "dicom-contours", "patient": patient, "structure_file": p.relative_to(root).as_posix(),
                 "structure_kind": kind, "series_uid": uid, "structures": {str(k): v for k, v in names.items()},
                 "licence": None}
        try:
            res = tf.add_sample(np.asarray(volume), semantic, None, axes="ZYX", source=str(p.resolve()),
                                source_sha256=sha, spacing=tuple(float(s) for s in info.spacing), split=splits[patient],
                                sample_id=sid, replace=replace, extra={"import": extra, "geometry": geometry})
        except (InvalidImageError, InvalidLabelsError) as e:
            raise type(e)(f"{p}: {e}") from None
        for rec in res.records:
            report.written.append(rec.sample_id)
            report.splits[rec.sample_id] = rec.split
        if progress is not None:
            progress(i + 1, len(pairs))
    return report
