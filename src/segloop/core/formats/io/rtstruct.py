"""DICOM RT Structure Sets: read the contours a planning system drew as labels on their series, and
write labels back as an RTSTRUCT.

Contours are CLOSED_PLANAR polygons in patient LPS millimetres, one per slice and connected
piece.  :func:`read_rtstruct` maps them onto the reference series' display grid (``(Z, Y, X)``,
LPS, see :mod:`segloop.core.formats.io.geometry`) and fills them with
:func:`skimage.draw.polygon` (a voxel belongs to a contour when its centre is inside).  Several
contours of one ROI on one slice combine by even-odd (XOR): a contour inside another is a hole,
the convention of plastimatch, rt-utils and 3D Slicer.  :func:`write_rtstruct` traces labels with
:func:`skimage.measure.find_contours` (marching squares at 0.5, between pixel centres), so
reading what it wrote gives the same voxels back.

Needs pydicom (the ``dicom`` extra) and scikit-image.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from segloop.core._runtime import atomic_output
from segloop.core.formats.io.dicom import PARSE_ERRORS, import_pydicom
from segloop.core.formats.io.geometry import VolumeInfo
from segloop.core.formats.io.structures import (
    RTSTRUCT_SOP_CLASS,
    StructureReport,
    check_readable,
    paint_smaller_last,
    reference_volume,
)
from segloop.errors import ExportError, ImageReadError, InvalidLabelsError, VolumeReadError

__all__ = ["read_rtstruct", "rtstruct_masks", "rtstruct_roi_names", "write_rtstruct", "PLANE_TOLERANCE",
           "BORDER_TOLERANCE"]

#: A contour more than this fraction of the slice spacing off the nearest slice plane is an error
#: (it was drawn on a grid with other slice positions; rounding could put two planes on one slice).
PLANE_TOLERANCE = 0.25
#: Contour points may overshoot the outermost voxel centres by this many voxels (clipped); farther is an error.
BORDER_TOLERANCE = 1.0

_LPS_TO_RAS = np.array([-1.0, -1.0, 1.0])


# --------------------------------------------------------------------------------------------- reading


def _seq(ds, keyword: str) -> list:
    value = ds.get(keyword)
    return list(value) if value is not None else []


def _load(path: Path):
    ds = check_readable(path, "RTSTRUCT")
    modality = str(ds.get("Modality", "") or "").upper()
    if modality != "RTSTRUCT" and str(ds.get("SOPClassUID", "")) != RTSTRUCT_SOP_CLASS:
        raise ImageReadError(f"{path}: not an RT Structure Set (Modality {modality or 'missing'}); give the "
                             "RTSTRUCT file (for a DICOM-SEG use read_dicom_seg, for an image series read_volume)")
    if "StructureSetROISequence" not in ds or "ROIContourSequence" not in ds:
        raise ImageReadError(f"{path}: the RTSTRUCT lacks its StructureSetROISequence / ROIContourSequence (a "
                             "truncated or broken file); export it again from the planning system")
    return ds


def _rois(ds, path: Path) -> list[dict]:
    """ROIs in file order: number, name, frame of reference, colour, contour items."""
    contours = {}
    for item in _seq(ds, "ROIContourSequence"):
        try:
            contours[int(item.ReferencedROINumber)] = item
        except (AttributeError, TypeError, ValueError):
            raise ImageReadError(f"{path}: an ROIContourSequence item has no valid ReferencedROINumber; the file "
                                 "is broken - export it again") from None
    out = []
    for item in _seq(ds, "StructureSetROISequence"):
        try:
            number = int(item.ROINumber)
        except (AttributeError, TypeError, ValueError):
            raise ImageReadError(f"{path}: a StructureSetROISequence item has no valid ROINumber; the file is "
                                 "broken - export it again") from None
        c = contours.get(number)
        color = None
        if c is not None and c.get("ROIDisplayColor") is not None:
            try:
                color = tuple(int(v) for v in c.ROIDisplayColor)[:3]
            except (TypeError, ValueError):
                color = None
        out.append({"number": number, "name": str(item.get("ROIName", "") or f"ROI {number}"),
                    "frame_of_reference": str(item.get("ReferencedFrameOfReferenceUID", "") or ""),
                    "color": color if color and len(color) == 3 else None,
                    "contours": _seq(c, "ContourSequence") if c is not None else []})
    return out


def _references(ds) -> tuple[list[str], set[str], set[str]]:
    """(referenced series UIDs, frames of reference, contour image SOPInstanceUIDs)."""
    series, frames, sops = [], set(), set()
    for rf in _seq(ds, "ReferencedFrameOfReferenceSequence"):
        if rf.get("FrameOfReferenceUID"):
            frames.add(str(rf.FrameOfReferenceUID))
        for st in _seq(rf, "RTReferencedStudySequence"):
            for se in _seq(st, "RTReferencedSeriesSequence"):
                uid = str(se.get("SeriesInstanceUID", "") or "")
                if uid and uid not in series:
                    series.append(uid)
    for rc in _seq(ds, "ROIContourSequence"):
        for c in _seq(rc, "ContourSequence"):
            for im in _seq(c, "ContourImageSequence"):
                if im.get("ReferencedSOPInstanceUID"):
                    sops.add(str(im.ReferencedSOPInstanceUID))
    return series, frames, sops


def _check_reference(path: Path, info: VolumeInfo, series: list[str], frames: set[str], sops: set[str],
                     rois: list[dict], warnings: list[str]) -> None:
    ref_sops = set(info.extra.get("sop_instance_uids") or [])
    ref_for = str(info.extra.get("frame_of_reference_uid") or "")
    if series and info.series_uid not in series:
        if not (sops and ref_sops and sops <= ref_sops):
            raise VolumeReadError(
                f"{path}: drawn on series {', '.join(series)}, but the reference is series "
                f"{info.series_uid or '(not DICOM)'}; give the folder of series {series[0]}")
        warnings.append("the RTSTRUCT names another series, but every contour's image is in the reference: read")
    if sops and ref_sops and not sops <= ref_sops:
        missing = sorted(sops - ref_sops)
        raise VolumeReadError(
            f"{path}: {len(missing)} contour image(s) are not slices of the reference series {info.series_uid} "
            f"(e.g. SOPInstanceUID {missing[0]}); give the series the contours were drawn on, complete")
    roi_frames = {r["frame_of_reference"] for r in rois if r["frame_of_reference"]} | frames
    if ref_for and roi_frames and ref_for not in roi_frames:
        raise VolumeReadError(
            f"{path}: contours are in frame of reference {sorted(roi_frames)[0]}, the reference series in "
            f"{ref_for}: they do not share patient coordinates; give the series the RTSTRUCT was drawn on")
    if not series and not sops and not (ref_for and roi_frames):
        warnings.append("the RTSTRUCT records no referenced series or frame of reference: contours placed by "
                        "patient coordinates only")


def _select(rois: list[dict], wanted: Sequence[str] | None, path: Path) -> list[dict]:
    if wanted is None:
        return rois
    if isinstance(wanted, str):
        wanted = [wanted]
    out = []
    for name in wanted:
        hit = [r for r in rois if r["name"] == name] or [r for r in rois if r["name"].casefold() == str(name).casefold()]
        if not hit:
            raise InvalidLabelsError(f"{path}: no ROI named {name!r}; the RTSTRUCT has "
                                     f"{', '.join(repr(r['name']) for r in rois) or 'no ROIs'}")
        if hit[0] not in out:
            out.append(hit[0])
    return out


def _index_points(contour, inv: np.ndarray, roi: str, path: Path) -> np.ndarray:
    try:
        data = np.asarray([float(v) for v in contour.ContourData], float)
    except (AttributeError, TypeError, ValueError):
        raise ImageReadError(f"{path}: ROI {roi!r} has a contour without valid ContourData; the file is broken - "
                             "export it again") from None
    n = contour.get("NumberOfContourPoints")
    if data.size % 3 or data.size == 0 or (n is not None and int(n) * 3 != data.size) or not np.isfinite(data).all():
        raise ImageReadError(f"{path}: ROI {roi!r} has a contour whose ContourData does not hold "
                             f"NumberOfContourPoints ({n}) finite x, y, z triples; the file is truncated or broken")
    lps = data.reshape(-1, 3)
    ras = lps * _LPS_TO_RAS
    return (np.c_[ras, np.ones(len(ras))] @ inv.T)[:, :3]


def _roi_mask(roi: dict, info: VolumeInfo, inv: np.ndarray, path: Path):
    """(box, bool mask inside box, n contours, n slices) of one ROI on the display grid."""
    from skimage.draw import polygon

    shape = tuple(int(s) for s in info.shape)
    planes: dict[tuple[int, int], np.ndarray] = {}
    n_contours = 0
    for c in roi["contours"]:
        kind = str(c.get("ContourGeometricType", "CLOSED_PLANAR") or "CLOSED_PLANAR").upper()
        if kind == "POINT":
            continue
        if kind != "CLOSED_PLANAR":
            raise InvalidLabelsError(f"{path}: ROI {roi['name']!r} has {kind} contours; only CLOSED_PLANAR contours "
                                     "enclose a region - re-export the structure as closed contours")
        idx = _index_points(c, inv, roi["name"], path)
        spread = idx.max(axis=0) - idx.min(axis=0)
        axis = int(np.argmin(spread))
        k = float(np.median(idx[:, axis]))
        kr = int(round(k))
        if spread[axis] > 2 * PLANE_TOLERANCE:
            raise InvalidLabelsError(
                f"{path}: ROI {roi['name']!r} has a contour that is not parallel to the reference's slices (oblique "
                f"by {spread[axis] * info.spacing[axis]:.1f} mm across it); resample the structure onto the series")
        if np.abs(idx[:, axis] - kr).max() > PLANE_TOLERANCE:
            raise InvalidLabelsError(
                f"{path}: ROI {roi['name']!r} has a contour between two slices of the reference "
                f"({abs(k - kr) * info.spacing[axis]:.2f} mm off the nearest); it was drawn on a series with other "
                "slice positions - give that series")
        inplane = [a for a in range(3) if a != axis]
        lo = np.r_[idx[:, inplane].min(axis=0), k]
        hi = np.r_[idx[:, inplane].max(axis=0), k]
        lim = np.r_[[shape[a] - 1 for a in inplane], shape[axis] - 1]
        over = np.maximum(-lo, hi - lim)
        if (over[:2] > BORDER_TOLERANCE).any() or kr < 0 or kr > shape[axis] - 1:
            raise InvalidLabelsError(
                f"{path}: ROI {roi['name']!r} reaches outside the reference volume (by "
                f"{float(over.max()) * min(info.spacing):.1f} mm or more); the structure was drawn on a larger "
                "field of view - give that series")
        plane_shape = tuple(shape[a] for a in inplane)
        rr, cc = polygon(idx[:, inplane[0]], idx[:, inplane[1]], shape=plane_shape)
        key = (axis, kr)
        if key not in planes:
            planes[key] = np.zeros(plane_shape, bool)
        planes[key][rr, cc] ^= True                 # even-odd: a contour inside another is a hole
        n_contours += 1
    if len({a for a, _ in planes}) > 1:
        raise InvalidLabelsError(f"{path}: ROI {roi['name']!r} has contours in different planes (axial and "
                                 "sagittal ...); resample the structure onto the series")
    if not planes:
        return None, None, 0, 0
    axis = next(iter(planes))[0]
    ks = sorted(k for _, k in planes)
    stack = np.zeros((ks[-1] - ks[0] + 1, *planes[(axis, ks[0])].shape), bool)
    for k in ks:
        stack[k - ks[0]] = planes[(axis, k)]
    mask = np.moveaxis(stack, 0, axis)
    nz = np.nonzero(mask)
    if not nz[0].size:
        return None, None, n_contours, len(planes)
    box = tuple(slice(int(v.min()), int(v.max()) + 1) for v in nz)
    full_box = tuple(slice(ks[0] + b.start, ks[0] + b.stop) if a == axis else b for a, b in enumerate(box))
    return full_box, mask[box], n_contours, len(planes)


def _read(path, reference, rois, series_uid):
    path = Path(path)
    ds = _load(path)
    series, frames, sops = _references(ds)
    all_rois = _rois(ds, path)
    if not all_rois:
        raise InvalidLabelsError(f"{path}: the RTSTRUCT holds no ROIs; nothing to read")
    selected = _select(all_rois, rois, path)
    _, info = reference_volume(reference, series, series_uid=series_uid, what=str(path))
    warnings: list[str] = []
    _check_reference(path, info, series, frames, sops, all_rois, warnings)
    inv = np.linalg.inv(np.asarray(info.affine, float))
    masks, kept = [], []
    for roi in selected:
        box, mask, n_c, n_s = _roi_mask(roi, info, inv, path)
        if mask is None:
            if rois is not None:
                raise InvalidLabelsError(f"{path}: ROI {roi['name']!r} has no contours (or only empty ones); "
                                         "choose ROIs that were drawn")
            warnings.append(f"ROI {roi['name']!r} has no contours: skipped")
            continue
        masks.append((box, mask))
        kept.append({**roi, "n_contours": n_c, "n_slices": n_s})
    if not masks:
        raise InvalidLabelsError(f"{path}: none of the {len(selected)} ROI(s) has contours; nothing to read")
    return path, info, series, masks, kept, warnings


def _report(path, info, series, kept, voxels, overlaps, warnings) -> StructureReport:
    ml = info.voxel_volume_ml
    structures = [{"label": i + 1, "number": r["number"], "name": r["name"], "color": r["color"],
                   "contours": r["n_contours"], "slices": r["n_slices"], "voxels": v, "ml": v * ml}
                  for i, (r, v) in enumerate(zip(kept, voxels))]
    colors = {i + 1: r["color"] for i, r in enumerate(kept) if r["color"]}
    return StructureReport(path=path, kind="RTSTRUCT", info=info, referenced_series=series, structures=structures,
                           colors=colors, overlaps=overlaps, warnings=warnings)


def read_rtstruct(path: str | os.PathLike, reference, *, rois: Sequence[str] | None = None,
                  series_uid: str | None = None) -> tuple[np.ndarray, dict[int, str], StructureReport]:
    """Read an RT Structure Set as a label volume on its image series.

    Parameters
    ----------
    path : path-like
        The RTSTRUCT file.
    reference : path-like, sequence of path-likes, (volume, VolumeInfo) or VolumeInfo
        The series the contours were drawn on: a DICOM folder (when it holds several series the
        one the RTSTRUCT references is read), a file of it or a list of files, or what
        :func:`segloop.core.formats.io.volume.read_volume` returned for it.
    rois : sequence of str, optional
        ROI names to read, in the order of their label ids (case-insensitive when no exact match).
        Default: every ROI, in file order; ROIs without contours are then skipped with a warning.
    series_uid : str, optional
        Which series of a ``reference`` folder to read (default: the referenced one).

    Returns
    -------
    labels : (Z, Y, X) uint16 ndarray
        On the reference's display grid (LPS); ROI ``i`` has label ``i + 1``, 0 is background.
        Where ROIs overlap the smaller one wins (it is painted last), so a GTV inside a lung
        stays visible; ``report.overlaps`` lists the shared voxels.
    names : dict of int to str
        ROI name per label id.
    report : StructureReport
        ``info`` (the grid), per-ROI voxels and mL, ``colors`` (ROIDisplayColor), overlaps, warnings.

    Raises
    ------
    ImageReadError
        Not an RTSTRUCT, or a truncated / broken file.
    VolumeReadError
        The reference is not the series the RTSTRUCT was drawn on (another SeriesInstanceUID,
        contour images missing from it, another FrameOfReferenceUID), or it cannot be read.
    InvalidLabelsError
        Contours outside the volume, between slices, oblique or not closed; an ROI asked for that
        is absent or has no contours; no ROI with contours at all.
    """
    path, info, series, masks, kept, warnings = _read(path, reference, rois, series_uid)
    labels, overlaps, voxels = paint_smaller_last(masks, info.shape, [r["name"] for r in kept])
    names = {i + 1: r["name"] for i, r in enumerate(kept)}
    return labels, names, _report(path, info, series, kept, voxels, overlaps, warnings)


def rtstruct_masks(path: str | os.PathLike, reference, *, rois: Sequence[str] | None = None,
                   series_uid: str | None = None) -> tuple[dict[str, np.ndarray], StructureReport]:
    """Read an RT Structure Set as one boolean mask per ROI (overlaps kept).

    Parameters and errors are those of :func:`read_rtstruct`.

    Returns
    -------
    masks : dict of str to (Z, Y, X) bool ndarray
        ROI name -> mask on the reference's display grid.  Each takes a full volume of memory.
    report : StructureReport
    """
    path, info, series, masks, kept, warnings = _read(path, reference, rois, series_uid)
    out = {}
    for (box, m), r in zip(masks, kept):
        full = np.zeros(tuple(info.shape), bool)
        full[box] = m
        out[r["name"]] = full
    _, overlaps, voxels = paint_smaller_last(masks, info.shape, [r["name"] for r in kept])
    return out, _report(path, info, series, kept, voxels, overlaps, warnings)


def rtstruct_roi_names(path: str | os.PathLike) -> list[str]:
    """The ROI names of an RTSTRUCT, in file order (ROIs without contours included)."""
    path = Path(path)
    return [r["name"] for r in _rois(_load(path), path)]


# --------------------------------------------------------------------------------------------- writing


def _contours_2d(mask: np.ndarray) -> list[np.ndarray]:
    """Closed contours (row, col) of a 2D bool mask at level 0.5, without the repeated last point."""
    from skimage.measure import approximate_polygon, find_contours

    padded = np.pad(mask.astype(np.uint8), 1)
    out = []
    for c in find_contours(padded, 0.5):
        c = approximate_polygon(c, tolerance=0.0) - 1.0
        if len(c) > 1 and np.allclose(c[0], c[-1]):
            c = c[:-1]
        if len(c) >= 3:
            out.append(c)
    return out


def write_rtstruct(path: str | os.PathLike, labels: np.ndarray, info: VolumeInfo, *,
                   names: dict[int, str] | None = None,
                   colors: dict[int, tuple[int, int, int]] | None = None,
                   label: str = "segloop") -> Path:
    """Write a label volume drawn on a DICOM series as an RT Structure Set.

    Each label id becomes one ROI (ROINumber = the id); each connected piece and hole of it on a
    source slice becomes one CLOSED_PLANAR contour (marching squares between pixel centres), with
    a reference to that slice's image.  :func:`read_rtstruct` gives the same voxels back.

    Parameters
    ----------
    path : path-like
        The ``.dcm`` file to write (replaced atomically if it exists).
    labels : (Z, Y, X) integer ndarray
        On the display grid of ``info``; 0 is background.
    info : VolumeInfo
        What :func:`segloop.core.formats.io.dicom.read_dicom` returned for the series (its
        ``extra["files"]`` are re-read for patient, study and frame of reference).
    names : dict of int to str, optional
        ROI name per label id; default ``"label <id>"``.
    colors : dict of int to (r, g, b), optional
        ROIDisplayColor per label id (0-255).
    label : str
        StructureSetLabel.

    Returns
    -------
    Path

    Raises
    ------
    InvalidLabelsError
        Wrong shape, float or negative labels, nothing labelled.
    ExportError
        ``info`` is not from a DICOM series, its files changed or are gone, or the file cannot be written.
    """
    pydicom = import_pydicom()
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence as DSequence
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    from segloop._version import __version__

    files = info.extra.get("files") if info.format == "dicom" else None
    if not files:
        raise ExportError(f"{info.path}: an RTSTRUCT needs the DICOM series the labels were drawn on; this volume "
                          f"was read from a {info.format or 'non-DICOM'} file - export NIfTI or .seg.nrrd instead")
    labels = np.asarray(labels)
    if labels.dtype == bool:
        labels = labels.astype(np.uint8)
    if labels.dtype.kind not in "iu":
        raise InvalidLabelsError(f"labels must be integers (dtype {labels.dtype} given); round or threshold them first")
    if tuple(labels.shape) != tuple(info.shape):
        raise InvalidLabelsError(f"labels have shape {labels.shape}, the series {tuple(info.shape)}; draw the labels "
                                 "on the volume read with this info")
    if labels.size and labels.min() < 0:
        raise InvalidLabelsError("labels contain negative values; label ids must be >= 0")
    ids = [int(v) for v in np.unique(labels) if v > 0]
    if not ids:
        raise InvalidLabelsError("the labels are empty (all 0): nothing to write as an RTSTRUCT")
    source = np.ascontiguousarray(info.to_source.from_display(labels))
    uids = info.extra.get("sop_instance_uids") or []
    if source.shape[0] != len(files) or len(uids) != len(files):
        raise ExportError(f"info lists {len(files)} source files but the labels have {source.shape[0]} slices in "
                          "source order; read the series again")
    try:
        first = pydicom.dcmread(files[0], stop_before_pixels=True)
    except PARSE_ERRORS as e:
        raise ExportError(f"{files[0]}: cannot re-read the source slice ({e}); the series must still be where it "
                          "was read from") from None
    if str(first.get("SOPInstanceUID", "")) != uids[0]:
        raise ExportError(f"{files[0]}: the file changed since the series was read; read the series again")
    sop_class = str(first.get("SOPClassUID", "") or "1.2.840.10008.5.1.4.1.1.2")
    frame_uid = str(info.extra.get("frame_of_reference_uid") or first.get("FrameOfReferenceUID", "") or "")
    src_affine = np.asarray(info.source_affine if info.source_affine is not None else info.affine, float)
    names = names or {}
    colors = colors or {}

    def image_ref(uid):
        r = Dataset()
        r.ReferencedSOPClassUID = sop_class
        r.ReferencedSOPInstanceUID = uid
        return r

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = RTSTRUCT_SOP_CLASS
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    now = datetime.datetime.now()
    ds.SOPClassUID = RTSTRUCT_SOP_CLASS
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "RTSTRUCT"
    for kw in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate",
               "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName", "StudyDescription"):
        setattr(ds, kw, first.get(kw, "") or "")
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = int(info.extra.get("series_number") or 0) + 2000
    ds.SeriesDescription = f"segloop structures {info.description}".strip()[:64]
    ds.InstanceNumber = 1
    ds.Manufacturer = "napari-segloop"
    ds.SoftwareVersions = __version__
    ds.StructureSetLabel = label[:16]
    ds.StructureSetDate = now.strftime("%Y%m%d")
    ds.StructureSetTime = now.strftime("%H%M%S")
    ds.FrameOfReferenceUID = frame_uid
    series_item = Dataset()
    series_item.SeriesInstanceUID = info.series_uid
    series_item.ContourImageSequence = DSequence([image_ref(u) for u in uids])
    study_item = Dataset()
    study_item.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"
    study_item.ReferencedSOPInstanceUID = str(first.get("StudyInstanceUID", "") or "")
    study_item.RTReferencedSeriesSequence = DSequence([series_item])
    frame_item = Dataset()
    frame_item.FrameOfReferenceUID = frame_uid
    frame_item.RTReferencedStudySequence = DSequence([study_item])
    ds.ReferencedFrameOfReferenceSequence = DSequence([frame_item])

    rois, roi_contours, observations = [], [], []
    for label_id in ids:
        roi = Dataset()
        roi.ROINumber = label_id
        roi.ReferencedFrameOfReferenceUID = frame_uid
        roi.ROIName = str(names.get(label_id, f"label {label_id}"))[:64]
        roi.ROIGenerationAlgorithm = "SEMIAUTOMATIC"
        rois.append(roi)
        contours = []
        for k in range(source.shape[0]):
            m = source[k] == label_id
            if not m.any():
                continue
            for rc in _contours_2d(m):
                ijk = np.c_[np.full(len(rc), k, float), rc, np.ones(len(rc))]
                lps = (ijk @ src_affine.T)[:, :3] * _LPS_TO_RAS
                item = Dataset()
                item.ContourImageSequence = DSequence([image_ref(uids[k])])
                item.ContourGeometricType = "CLOSED_PLANAR"
                item.NumberOfContourPoints = len(lps)
                item.ContourData = [f"{v:.4f}"[:16] for v in lps.ravel()]
                contours.append(item)
        rc_item = Dataset()
        rc_item.ROIDisplayColor = [int(c) for c in colors.get(label_id, _default_color(label_id))]
        rc_item.ReferencedROINumber = label_id
        rc_item.ContourSequence = DSequence(contours)
        roi_contours.append(rc_item)
        obs = Dataset()
        obs.ObservationNumber = label_id
        obs.ReferencedROINumber = label_id
        obs.RTROIInterpretedType = ""
        obs.ROIInterpreter = ""
        observations.append(obs)
    ds.StructureSetROISequence = DSequence(rois)
    ds.ROIContourSequence = DSequence(roi_contours)
    ds.RTROIObservationsSequence = DSequence(observations)

    dest = Path(path)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        with atomic_output(dest, durable=False) as tmp:
            ds.save_as(tmp, enforce_file_format=True)
    except OSError as e:
        raise ExportError(f"{dest}: cannot write the RTSTRUCT file ({e})") from None
    return dest


def _default_color(label_id: int) -> tuple[int, int, int]:
    rng = np.random.default_rng(label_id)
    return tuple(int(v) for v in rng.integers(40, 256, 3))
