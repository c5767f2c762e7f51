"""DICOM-SEG: write a label volume drawn on a DICOM series as a DICOM Segmentation object, and
read one (ours or another tool's) back as labels.

The object references the source slices, so PACS viewers, 3D Slicer and OHIF show it on the
series.  Needs highdicom (the ``dicom-seg`` extra).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from segloop.core._runtime import atomic_output
from segloop.core.formats.io.dicom import PARSE_ERRORS, import_pydicom
from segloop.core.formats.io.geometry import VolumeInfo, lps_reorientation, spacing_of
from segloop.core.formats.io.structures import (
    SEG_SOP_CLASS,
    StructureReport,
    check_readable,
    paint_smaller_last,
    reference_volume,
)
from segloop.errors import ExportError, ImageReadError, InvalidLabelsError, VolumeReadError

__all__ = ["write_dicom_seg", "read_dicom_seg"]

_SEG_HINT = 'pip install "napari-segloop[dicom-seg]"'


def write_dicom_seg(path, labels: np.ndarray, info: VolumeInfo, *,
                    segment_names: dict[int, str] | None = None,
                    colors: dict[int, tuple[int, int, int]] | None = None) -> Path:
    """Write a label volume drawn on a DICOM series as a DICOM Segmentation (binary) object.

    Each label id becomes one segment (numbered 1..N in id order; the id is kept as the
    segment's TrackingID).  Frames reference the source slices (SOPInstanceUID, position), so
    PACS viewers, 3D Slicer and OHIF show it on the series.  Empty slices are not stored.

    Parameters
    ----------
    path : path
        The ``.dcm`` file to write (replaced atomically if it exists).
    labels : (Z, Y, X) integer ndarray
        Labels in the display orientation of ``volume`` (``info.shape``); 0 is background.
    info : VolumeInfo
        What :func:`read_dicom` returned for the series; its ``extra["files"]`` are re-read
        for the references.
    segment_names : dict of int to str, optional
        Name per label id; default ``"label <id>"``.
    colors : dict of int to (r, g, b), optional
        Display colour (0-255) per label id.

    Returns
    -------
    Path
        The file written.

    Raises
    ------
    ImportError
        highdicom is not installed (``pip install "napari-segloop[dicom-seg]"``).
    InvalidLabelsError
        Labels of the wrong shape, float or negative values, or nothing labelled.
    ExportError
        ``info`` is not from a DICOM series, the source files changed since they were read,
        or the file could not be written.
    """
    try:
        import highdicom as hd
    except ImportError:
        raise ImportError(f"writing DICOM-SEG needs highdicom: {_SEG_HINT}") from None
    pydicom = import_pydicom()
    from pydicom.sr.codedict import codes

    from segloop._version import __version__

    files = info.extra.get("files") if info.format == "dicom" else None
    if not files:
        raise ExportError(f"{info.path}: DICOM-SEG needs the DICOM series the labels were drawn on; "
                          f"this volume was read from a {info.format or 'non-DICOM'} file -- "
                          "export it as NIfTI or TIFF instead")
    labels = np.asarray(labels)
    if labels.dtype == bool:
        labels = labels.astype(np.uint8)
    if labels.dtype.kind not in "iu":
        raise InvalidLabelsError(f"labels must be integers (dtype {labels.dtype} given); "
                                 "round or threshold them first")
    if tuple(labels.shape) != tuple(info.shape):
        raise InvalidLabelsError(f"labels have shape {labels.shape}, the series {tuple(info.shape)}; "
                                 "draw the labels on the volume read with this info")
    source = np.ascontiguousarray(info.to_source.from_display(labels))
    if source.min() < 0:
        raise InvalidLabelsError("labels contain negative values; label ids must be >= 0")
    ids = np.unique(source)
    ids = ids[ids > 0]
    if ids.size == 0:
        raise InvalidLabelsError("the labels are empty (all 0): nothing to write as DICOM-SEG")
    if source.shape[0] != len(files):
        raise ExportError(f"info lists {len(files)} source files but the labels have "
                          f"{source.shape[0]} slices in source order; read the series again")

    datasets = []
    uids = info.extra.get("sop_instance_uids") or []
    for k, f in enumerate(files):
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True, force=True)
        except PARSE_ERRORS as e:
            raise ExportError(f"{f}: cannot re-read the source slice ({e}); the series must still "
                              "be where it was read from") from None
        if uids and str(ds.get("SOPInstanceUID", "")) != uids[k]:
            raise ExportError(f"{f}: the file changed since the series was read (another "
                              "SOPInstanceUID); read the series again")
        datasets.append(ds)

    segment_numbers = np.zeros(int(ids.max()) + 1, np.uint16)
    segment_numbers[ids] = np.arange(1, ids.size + 1)
    pixel_array = segment_numbers[source]
    names = segment_names or {}
    colours = colors or {}
    algorithm = hd.AlgorithmIdentificationSequence(
        name="napari-segloop", version=__version__, family=codes.DCM.ArtificialIntelligence)
    descriptions = []
    for number, label_id in enumerate(ids.tolist(), start=1):
        kw = {}
        if label_id in colours:
            kw["display_color"] = hd.color.CIELabColor.from_rgb(*[int(c) for c in colours[label_id]])
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=str(names.get(label_id, f"label {label_id}"))[:64],
            segmented_property_category=codes.SCT.Tissue,
            segmented_property_type=codes.SCT.Tissue,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.SEMIAUTOMATIC,
            algorithm_identification=algorithm,
            tracking_uid=hd.UID(),
            tracking_id=f"segloop label {label_id}",
            **kw))
    series_number = int(info.extra.get("series_number") or 0) + 1000
    seg = hd.seg.Segmentation(
        source_images=datasets, pixel_array=pixel_array,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(), series_number=series_number,
        sop_instance_uid=hd.UID(), instance_number=1,
        manufacturer="napari-segloop", manufacturer_model_name="napari-segloop",
        software_versions=__version__, device_serial_number="none",
        content_label="SEGLOOP", content_description="segloop segmentation",
        series_description=f"segloop labels {info.description}".strip()[:64],
    )
    dest = Path(path)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        with atomic_output(dest, durable=False) as tmp:
            seg.save_as(tmp)
    except OSError as e:
        raise ExportError(f"{dest}: cannot write the DICOM-SEG file ({e})") from None
    return dest


# --------------------------------------------------------------------------------------------- reading

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
#: Frames whose position is farther than this (voxels) from a voxel of the reference grid are an error.
GRID_TOLERANCE = 0.1
_HD_ERRORS = (ValueError, TypeError, KeyError, IndexError, AttributeError, RuntimeError, NotImplementedError)


def _load_seg(path: Path):
    try:
        import highdicom as hd
    except ImportError:
        raise ImportError(f"reading DICOM-SEG needs highdicom: {_SEG_HINT}") from None
    ds = check_readable(path, "DICOM-SEG")
    modality = str(ds.get("Modality", "") or "").upper()
    if modality != "SEG" and str(ds.get("SOPClassUID", "")) != SEG_SOP_CLASS:
        raise ImageReadError(f"{path}: not a DICOM Segmentation (Modality {modality or 'missing'}); give the SEG "
                             "file (for an RTSTRUCT use read_rtstruct, for an image series read_volume)")
    kind = str(ds.get("SegmentationType", "") or "").upper()
    if kind not in ("BINARY", "FRACTIONAL"):
        raise ImageReadError(f"{path}: SegmentationType {kind or 'missing'} is not read (BINARY and FRACTIONAL "
                             "are); export the segmentation as BINARY")
    try:
        seg = hd.seg.Segmentation.from_dataset(ds, copy=False)
    except _HD_ERRORS as e:
        raise ImageReadError(f"{path}: not a valid DICOM-SEG ({type(e).__name__}: {e}); export it again") from None
    return seg


def _seg_info(seg, path: Path, series: list[str]) -> VolumeInfo:
    """A grid from the SEG's own plane positions (display LPS order, like the volume readers)."""
    try:
        geo = seg.get_volume_geometry()
    except _HD_ERRORS as e:
        geo, why = None, f" ({e})"
    else:
        why = ""
    if geo is None:
        raise VolumeReadError(f"{path}: the SEG's frames do not form a regular grid{why}; give the image series it "
                              "was drawn on as the reference")
    source_affine = _LPS_TO_RAS @ np.asarray(geo.affine, float)
    reo = lps_reorientation(source_affine)
    shape = [0, 0, 0]
    for j, n in enumerate(geo.spatial_shape):
        shape[reo.axes[j]] = int(n)
    affine = source_affine @ reo.index_matrix(shape)
    return VolumeInfo(path=path, format="dicom-seg", shape=tuple(shape), spacing=spacing_of(affine),  # type: ignore[arg-type]
                      affine=affine, source_affine=source_affine, to_source=reo, modality="SEG",
                      series_uid=series[0] if series else "", description=str(seg.get("SeriesDescription", "") or ""),
                      extra={"frame_of_reference_uid": str(seg.get("FrameOfReferenceUID", "") or ""),
                             "referenced_series": series})


def _embed(arr: np.ndarray, lps_affine: np.ndarray, info: VolumeInfo, what: str):
    """``(box, mask)`` of a (slice, row, col) array placed on ``info``'s display grid by geometry."""
    m = np.linalg.inv(np.asarray(info.affine, float)) @ _LPS_TO_RAS @ np.asarray(lps_affine, float)
    rot, perm = m[:3, :3], np.rint(m[:3, :3])
    if (np.abs(rot - perm).max() > 1e-3 or not (np.abs(perm).sum(axis=0) == 1).all()
            or not (np.abs(perm).sum(axis=1) == 1).all()):
        raise InvalidLabelsError(f"{what}: its frames are not on the reference's voxel grid (other spacing or "
                                 "orientation); resample it onto the series")
    t = m[:3, 3]
    if np.abs(t - np.rint(t)).max() > GRID_TOLERANCE:
        raise InvalidLabelsError(f"{what}: its frames lie between the reference's voxels; it was drawn on a series "
                                 "with another grid - give that series")
    to = [int(np.argmax(np.abs(perm[:, j]))) for j in range(3)]      # display axis of each array axis
    a = arr
    start = [0, 0, 0]
    for j in range(3):
        sign = perm[to[j], j]
        first = int(np.rint(t[to[j]]))
        if sign < 0:
            a = np.flip(a, axis=j)
            first -= arr.shape[j] - 1
        start[to[j]] = first
    a = np.transpose(a, np.argsort(to))
    lo = [max(0, s) for s in start]
    hi = [min(n, s + k) for s, k, n in zip(start, a.shape, info.shape)]
    inside = tuple(slice(lo_ - s, h - s) for lo_, h, s in zip(lo, hi, start))
    if any(h <= b for b, h in zip(lo, hi)) or np.count_nonzero(a[inside]) != np.count_nonzero(a):
        raise InvalidLabelsError(f"{what}: it reaches outside the reference volume; it was drawn on a larger field "
                                 "of view - give that series")
    return tuple(slice(b, h) for b, h in zip(lo, hi)), a[inside]


def _crop(full: np.ndarray):
    nz = np.nonzero(full)
    if not nz[0].size:
        return None
    box = tuple(slice(int(v.min()), int(v.max()) + 1) for v in nz)
    return box, full[box]


def read_dicom_seg(path, reference=None, *, series_uid: str | None = None, overlap: str = "error"
                   ) -> tuple[np.ndarray, dict[int, str], StructureReport]:
    """Read a DICOM Segmentation (BINARY or FRACTIONAL) as a label volume.

    Frames are put on the reference series' slices by their source SOPInstanceUID, or, for a
    SEG that records none, by their plane position.  Without a reference the grid is built from
    the SEG's own plane positions (covering the frames it stores).

    Parameters
    ----------
    path : path-like
        The SEG file.
    reference : path-like, sequence of path-likes, (volume, VolumeInfo) or VolumeInfo, optional
        The series it was drawn on (a folder holding several series: the referenced one is read).
    series_uid : str, optional
        Which series of a ``reference`` folder to read (default: the referenced one).
    overlap : {"error", "smaller_on_top"}
        Segments sharing voxels: an error (default), or painted largest first so the smaller
        stays visible (the shared voxels are listed in ``report.overlaps``).

    Returns
    -------
    labels : (Z, Y, X) uint16 ndarray
        On the reference's display grid (or ``report.info``'s).  Segments written by
        :func:`write_dicom_seg` get their original label ids back (TrackingID); others get
        ``1..N`` in segment order.  FRACTIONAL segments are thresholded at 0.5.
    names : dict of int to str
        SegmentLabel per label id.
    report : StructureReport
        ``info`` is the grid; per-segment voxels and mL, colours (from CIELab), warnings.

    Raises
    ------
    ImportError
        highdicom is not installed.
    ImageReadError
        Not a SEG, a truncated file, or an unknown SegmentationType (e.g. LABELMAP).
    VolumeReadError
        The SEG was drawn on another series (SeriesInstanceUID, source images or
        FrameOfReferenceUID differ from the reference), or no regular grid can be built.
    InvalidLabelsError
        Segments overlap (``overlap="error"``), frames off the reference grid or outside it,
        every segment empty.
    """
    if overlap not in ("error", "smaller_on_top"):
        raise ValueError(f"overlap must be 'error' or 'smaller_on_top', not {overlap!r}")
    path = Path(path)
    seg = _load_seg(path)
    series = [str(s.SeriesInstanceUID) for s in (seg.get("ReferencedSeriesSequence") or [])
              if s.get("SeriesInstanceUID")]
    warnings: list[str] = []
    sources = {str(t[2]) for t in seg.get_source_image_uids()}
    if reference is None:
        info = _seg_info(seg, path, series)
    else:
        _, info = reference_volume(reference, series, series_uid=series_uid, what=str(path))
        if series and info.series_uid not in series:
            raise VolumeReadError(f"{path}: drawn on series {', '.join(series)}, but the reference is series "
                                  f"{info.series_uid or '(not DICOM)'}; give the folder of series {series[0]}")
        ref_for = str(info.extra.get("frame_of_reference_uid") or "")
        seg_for = str(seg.get("FrameOfReferenceUID", "") or "")
        if ref_for and seg_for and ref_for != seg_for:
            raise VolumeReadError(f"{path}: the SEG is in frame of reference {seg_for}, the reference series in "
                                  f"{ref_for}; give the series it was drawn on")
        uids = list(info.extra.get("sop_instance_uids") or [])
        if sources and uids and not sources <= set(uids):
            missing = sorted(sources - set(uids))
            raise VolumeReadError(f"{path}: {len(missing)} source image(s) are not slices of the reference series "
                                  f"{info.series_uid} (e.g. SOPInstanceUID {missing[0]}); give the complete series")
    by_uid = (reference is not None and bool(sources) and bool(info.extra.get("sop_instance_uids"))
              and _frames_have_sources(seg))
    fractional = str(seg.SegmentationType).upper() == "FRACTIONAL"

    masks, kept = [], []
    for number in seg.segment_numbers:
        try:
            if by_uid:
                px = seg.get_pixels_by_source_instance(info.extra["sop_instance_uids"], segment_numbers=[number],
                                                       assert_missing_frames_are_empty=True)[..., 0]
                got = _crop(info.to_source.to_display(px >= 0.5 if fractional else px > 0))
            else:
                vol = seg.get_volume(segment_numbers=[number])
                arr = np.asarray(vol.array)[..., 0] if vol.array.ndim == 4 else np.asarray(vol.array)
                m = arr >= 0.5 if fractional else arr > 0
                got = _crop(m)
                if got is not None:
                    box, sub = got
                    aff = np.asarray(vol.affine, float).copy()
                    aff[:3, 3] += aff[:3, :3] @ np.array([b.start for b in box], float)
                    got = _embed(sub, aff, info, f"{path} segment {number}")
        except _HD_ERRORS as e:
            raise ImageReadError(f"{path}: segment {number} cannot be read ({type(e).__name__}: {e}); the file "
                                 "may be broken - export it again") from None
        desc = seg.get_segment_description(number)
        name = str(desc.segment_label)
        if got is None or not got[1].any():
            warnings.append(f"segment {number} ({name}) is empty: skipped")
            continue
        color = None
        lab = desc.get("RecommendedDisplayCIELabValue")
        if lab is not None:
            try:
                color = tuple(int(v) for v in hd_color(lab).to_rgb())
            except _HD_ERRORS:
                color = None
        masks.append(got)
        kept.append({"number": int(number), "name": name, "color": color,
                     "tracking_id": str(desc.get("TrackingID", "") or "")})
    if not masks:
        raise InvalidLabelsError(f"{path}: every segment is empty; nothing to read")
    labels, overlaps, voxels = paint_smaller_last(masks, info.shape, [k["name"] for k in kept])
    if overlaps and overlap == "error":
        o = overlaps[0]
        raise InvalidLabelsError(f"{path}: segments {o['names'][0]!r} and {o['names'][1]!r} overlap ({o['voxels']} "
                                 "voxels); pass overlap='smaller_on_top' to paint the smaller one over the larger")
    ids = _original_ids(kept)
    if ids is not None:
        lut = np.zeros(len(kept) + 1, np.uint32)
        lut[1:] = ids
        labels = lut[labels]
        labels = labels.astype(np.uint16) if max(ids) <= np.iinfo(np.uint16).max else labels
    else:
        ids = list(range(1, len(kept) + 1))
    remap = dict(zip(range(1, len(kept) + 1), ids))
    for o in overlaps:
        o["labels"] = tuple(remap[v] for v in o["labels"])
    ml = info.voxel_volume_ml
    structures = [{"label": i, "number": k["number"], "name": k["name"], "color": k["color"], "voxels": v,
                   "ml": v * ml} for i, k, v in zip(ids, kept, voxels)]
    report = StructureReport(path=path, kind="SEG", info=info, referenced_series=series, structures=structures,
                             colors={i: k["color"] for i, k in zip(ids, kept) if k["color"]}, overlaps=overlaps,
                             warnings=warnings)
    return labels, {i: k["name"] for i, k in zip(ids, kept)}, report


def _frames_have_sources(seg) -> bool:
    """Every frame names the source image it was derived from (else frames are placed by position)."""
    frames = seg.get("PerFrameFunctionalGroupsSequence") or []
    return bool(frames) and all(
        any(d.get("SourceImageSequence") for d in (f.get("DerivationImageSequence") or [])) for f in frames)


def hd_color(value):
    """A DICOM RecommendedDisplayCIELabValue as a highdicom colour."""
    import highdicom as hd

    return hd.color.CIELabColor.from_dicom_value([int(v) for v in value])


def _original_ids(kept: list[dict]) -> list[int] | None:
    """The label ids :func:`write_dicom_seg` kept in TrackingID (``"segloop label <id>"``), when all have one."""
    ids = []
    for k in kept:
        tid = k["tracking_id"]
        if not tid.startswith("segloop label "):
            return None
        try:
            ids.append(int(tid.rsplit(" ", 1)[1]))
        except ValueError:
            return None
    return ids if len(set(ids)) == len(ids) and min(ids) > 0 else None
