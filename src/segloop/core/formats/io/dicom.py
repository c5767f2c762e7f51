"""DICOM series: find the series in a folder and read one as a volume.

Why this module is long: reading a DICOM series is one job with many checks that belong
together (header parsing, series grouping, slice geometry, pixel decoding, lazy reads); the
writer (DICOM-SEG) is in :mod:`segloop.core.formats.io.dicom_seg`.

A CT or MR series is a folder of single-frame files, one per slice.  :func:`read_dicom`
orders the slices by their position along the slice normal (never by file name or
InstanceNumber), checks that they form a regular grid -- no missing or duplicated slice, no
gantry tilt, one orientation, one image size -- applies the modality rescale (CT -> HU) and
returns the voxels in the common ``(Z, Y, X)`` LPS orientation of :mod:`segloop.core.formats.io.geometry`
with a :class:`~segloop.core.formats.io.geometry.VolumeInfo` describing the geometry.

Large series (over :data:`LAZY_BYTES` of output) come back as a dask array that decodes one
slice when it is looked at.

Needs pydicom (the ``dicom`` extra).  Compressed JPEG / JPEG-LS / JPEG 2000 pixel data needs a
decoder: ``pip install "napari-segloop[dicom-codecs]"`` (see :data:`CODECS_PACKAGES`).
"""

from __future__ import annotations

import itertools
import os
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from segloop.core._runtime import is_cancelled
from segloop.core.formats.io.geometry import Reorientation, VolumeInfo
from segloop.errors import (
    Cancelled,
    DecoderUnavailableError,
    ImageReadError,
    VolumeReadError,
)

__all__ = [
    "list_series",
    "read_dicom",
    "import_pydicom",
    "LAZY_BYTES",
    "CODECS_PACKAGES",
    "PARSE_ERRORS",
]

#: Output size (bytes) above which ``lazy="auto"`` returns a dask array read slice by slice.
LAZY_BYTES = 1 << 30
#: Positions closer than this (mm) along the slice normal are the same slice.
POSITION_TOL_MM = 0.01
#: Relative tolerance on the distance between neighbouring slices (missing / uneven slices).
SPACING_RTOL = 0.01
#: Largest difference of direction cosines still counted as the same ImageOrientationPatient.
ORIENTATION_TOL = 1e-3
#: Direction cosines within this of a patient axis count as aligned (not oblique).
AXIS_TOL = 1e-3
#: Decoders for JPEG, JPEG-LS, JPEG 2000 and HTJ2K pixel data (the ``dicom-codecs`` extra).
CODECS_PACKAGES = ("pylibjpeg", "pylibjpeg-libjpeg", "pylibjpeg-openjpeg")
_CODECS_HINT = 'pip install "napari-segloop[dicom-codecs]"'

# Objects that share a study with the images but are not images to read as a volume.
_NON_IMAGE_MODALITIES = {"SEG", "RTSTRUCT", "RTPLAN", "RTRECORD", "SR", "PR", "KO", "REG", "DOC"}
# pydicom raises many exception types on malformed files; these are the ones a bad file causes.
PARSE_ERRORS = (OSError, EOFError, ValueError, TypeError, KeyError, IndexError, AttributeError,
                 struct.error, NotImplementedError, RuntimeError, OverflowError)


def import_pydicom():
    try:
        import pydicom
    except ImportError:  # pragma: no cover - the dicom extra is part of the test setup
        raise ImportError('reading DICOM needs pydicom: pip install "napari-segloop[dicom]"') from None
    return pydicom


# --------------------------------------------------------------------------------------------
# scanning


@dataclass(frozen=True)
class _Slice:
    """What the header scan keeps of one image file (no pixels)."""

    path: Path
    forced: bool                      # read without the DICM preamble (force=True)
    series_uid: str
    sop_uid: str
    modality: str
    description: str
    rows: int
    cols: int
    frames: int
    samples: int
    iop: tuple[float, ...] | None
    ipp: tuple[float, float, float] | None
    pixel_spacing: tuple[float, float] | None
    spacing_between: float | None
    thickness: float | None
    slope: float
    intercept: float
    bits_stored: int
    signed: bool
    transfer_syntax: str
    instance_number: int | None
    window: tuple[float, float] | None
    rescale_type: str
    photometric: str
    study_uid: str
    frame_of_reference_uid: str
    series_number: int | None
    body_part: str = ""               # BodyPartExamined, as written (e.g. "CHEST")


def _floats(ds, keyword: str, n: int) -> tuple[float, ...] | None:
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    try:
        values = [float(v) for v in (value if isinstance(value, Sequence) and not isinstance(value, str)
                                     else [value])]
    except (TypeError, ValueError):
        return None
    return tuple(values[:n]) if len(values) >= n else None


def _float(ds, keyword: str, default: float | None) -> float | None:
    v = _floats(ds, keyword, 1)
    return v[0] if v else default


def _int(ds, keyword: str, default: int | None) -> int | None:
    try:
        value = ds.get(keyword)
        return default if value is None or value == "" else int(value)
    except (TypeError, ValueError):
        return default


def _looks_like_raw_dicom(path: Path) -> bool:
    """A file without the 128-byte preamble + "DICM" that starts with a group 0002/0008 tag."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        return False
    return len(head) == 4 and head[:2] in (b"\x02\x00", b"\x08\x00", b"\x00\x02", b"\x00\x08")


def _read_header(path: Path, broken: list[str]) -> _Slice | None:
    """Header of one file, or None when it is not a DICOM image (skipped silently)."""
    pydicom = import_pydicom()
    from pydicom.errors import InvalidDicomError

    forced = False
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=False)
    except InvalidDicomError:
        if not _looks_like_raw_dicom(path):
            return None
        forced = True
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        except PARSE_ERRORS:
            return None
    except PARSE_ERRORS as e:
        broken.append(f"{path.name} ({e})")
        return None
    try:
        return _slice_from_header(path, ds, forced)
    except PARSE_ERRORS as e:
        if forced:
            return None
        broken.append(f"{path.name} ({e})")
        return None


def _transfer_syntax(ds) -> str:
    """The file's transfer syntax; for a file without file meta, the encoding pydicom found."""
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    meta = getattr(ds, "file_meta", None)
    ts = str(meta.get("TransferSyntaxUID", "") or "") if meta is not None else ""
    if ts:
        return ts
    implicit, little = ds.original_encoding
    if implicit is None:
        return ""
    if implicit:
        return str(ImplicitVRLittleEndian)
    return str(ExplicitVRLittleEndian if little else ExplicitVRBigEndian)


def _slice_from_header(path: Path, ds, forced: bool) -> _Slice | None:
    if "Rows" not in ds or "Columns" not in ds or "SeriesInstanceUID" not in ds:
        return None  # DICOMDIR, structured report, RT plan ... or garbage read with force=True
    modality = str(ds.get("Modality", "") or "")
    if modality.upper() in _NON_IMAGE_MODALITIES:
        return None
    center, width = _floats(ds, "WindowCenter", 1), _floats(ds, "WindowWidth", 1)
    ts = _transfer_syntax(ds)
    return _Slice(
        path=path, forced=forced,
        series_uid=str(ds.SeriesInstanceUID), sop_uid=str(ds.get("SOPInstanceUID", "")),
        modality=modality, description=str(ds.get("SeriesDescription", "") or ""),
        rows=int(ds.Rows), cols=int(ds.Columns),
        frames=_int(ds, "NumberOfFrames", 1) or 1, samples=_int(ds, "SamplesPerPixel", 1) or 1,
        iop=_floats(ds, "ImageOrientationPatient", 6),
        ipp=_floats(ds, "ImagePositionPatient", 3),  # type: ignore[arg-type]
        pixel_spacing=_floats(ds, "PixelSpacing", 2) or _floats(ds, "ImagerPixelSpacing", 2),  # type: ignore[arg-type]
        spacing_between=_float(ds, "SpacingBetweenSlices", None),
        thickness=_float(ds, "SliceThickness", None),
        slope=_float(ds, "RescaleSlope", 1.0) or 1.0,  # a slope of 0 is a broken header: ignore it
        intercept=_float(ds, "RescaleIntercept", 0.0) or 0.0,
        bits_stored=_int(ds, "BitsStored", None) or _int(ds, "BitsAllocated", 16) or 16,
        signed=bool(_int(ds, "PixelRepresentation", 0)),
        transfer_syntax=ts,
        instance_number=_int(ds, "InstanceNumber", None),
        window=(center[0], width[0]) if center and width else None,
        rescale_type=str(ds.get("RescaleType", "") or ""),
        photometric=str(ds.get("PhotometricInterpretation", "") or ""),
        study_uid=str(ds.get("StudyInstanceUID", "") or ""),
        frame_of_reference_uid=str(ds.get("FrameOfReferenceUID", "") or ""),
        series_number=_int(ds, "SeriesNumber", None),
        body_part=str(ds.get("BodyPartExamined", "") or "").strip(),
    )


def _candidate_files(path_or_paths) -> tuple[list[Path], Path, Path | None]:
    """(files to scan, the path to report, the single file the user pointed at or None)."""
    if isinstance(path_or_paths, (str, os.PathLike)):
        root = Path(path_or_paths)
        if root.is_dir():
            return _walk(root), root, None
        if root.is_file():
            # one file of a series: read the series it belongs to from its folder
            return sorted(p for p in root.parent.iterdir() if p.is_file()), root, root
        raise ImageReadError(f"{root}: no such file or folder")
    paths = [Path(p) for p in path_or_paths]
    if not paths:
        raise VolumeReadError("no DICOM files given: the list of paths is empty")
    files: list[Path] = []
    for p in paths:
        if p.is_dir():
            files.extend(_walk(p))
        elif p.is_file():
            files.append(p)
        else:
            raise ImageReadError(f"{p}: no such file or folder")
    common = Path(os.path.commonpath([str(p.resolve()) for p in paths]))
    return files, common if common.is_dir() else common.parent, None


def _walk(root: Path) -> list[Path]:
    """Every file under ``root`` (subfolders too), hidden files and folders left out."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        out.extend(Path(dirpath) / f for f in sorted(filenames) if not f.startswith("."))
    return out


def _scan(path_or_paths, progress=None, cancel=None, *, reading: bool = False):
    files, root, single = _candidate_files(path_or_paths)
    broken: list[str] = []
    series: dict[str, list[_Slice]] = {}
    n = len(files)
    # while scanning, guess that every file is a slice to read afterwards
    total = 2 * n if reading else n
    for i, f in enumerate(files):
        if is_cancelled(cancel):
            raise Cancelled("reading the DICOM series was cancelled")
        s = _read_header(f, broken)
        if s is not None:
            series.setdefault(s.series_uid, []).append(s)
        if progress is not None:
            progress(i + 1, total)
    if not series:
        what = f"{n} file(s)" if n else "no files"
        msg = f"{root}: no DICOM images found ({what} looked at)"
        if broken:
            msg += f"; unreadable DICOM files: {', '.join(broken[:3])}"
        raise VolumeReadError(msg + "; point at the folder holding the series' .dcm files")
    return series, root, single, broken, n


def _n_positions(slices: list[_Slice]) -> int:
    return len({tuple(np.round(s.ipp, 2)) if s.ipp else s.sop_uid for s in slices}) if slices else 0


def _summary(uid: str, slices: list[_Slice]) -> dict:
    first = slices[0]
    n = sum(s.frames for s in slices) if any(s.frames > 1 for s in slices) else _n_positions(slices)
    return {"uid": uid, "description": first.description, "modality": first.modality,
            "n_files": len(slices), "n_slices": n, "rows": first.rows, "cols": first.cols}


def _ordered_summaries(series: dict[str, list[_Slice]]) -> list[dict]:
    out = [_summary(uid, sl) for uid, sl in series.items()]
    out.sort(key=lambda d: (-d["n_slices"], -d["n_files"], d["uid"]))
    return out


def list_series(path_or_paths) -> list[dict]:
    """The image series found in a folder, a file's folder or a list of files.

    Parameters
    ----------
    path_or_paths : path or sequence of paths
        A folder (searched with its subfolders), one file (its folder is searched) or a list
        of files / folders.  Files that are not DICOM images are skipped.

    Returns
    -------
    list of dict
        ``{uid, description, modality, n_files, n_slices, rows, cols}`` per SeriesInstanceUID,
        the series with the most slices first.

    Raises
    ------
    VolumeReadError
        No DICOM image was found.
    """
    series, *_ = _scan(path_or_paths)
    return _ordered_summaries(series)


# --------------------------------------------------------------------------------------------
# geometry


@dataclass
class _Geometry:
    slices: list[_Slice]              # source order (sorted along the slice normal)
    lps: np.ndarray                   # 4x4 (slice, row, col, 1) -> LPS mm
    positions: np.ndarray             # mm along the normal, source order
    warnings: list[str]


def _names(slices: Iterable[_Slice], limit: int = 4) -> str:
    names = [s.path.name for s in slices]
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _check_uniform(slices: list[_Slice], uid: str) -> None:
    sizes: dict[tuple[int, int], list[_Slice]] = {}
    for s in slices:
        sizes.setdefault((s.rows, s.cols), []).append(s)
    if len(sizes) > 1:
        parts = "; ".join(f"{r}x{c}: {len(v)} file(s) e.g. {v[0].path.name}" for (r, c), v in sizes.items())
        raise VolumeReadError(
            f"series {uid}: the slices have different image sizes (rows x columns) ({parts}); "
            "they are not one volume -- pass the files of one size as a list")
    if any(s.frames > 1 for s in slices):
        s = next(s for s in slices if s.frames > 1)
        raise VolumeReadError(
            f"{s.path}: multi-frame (enhanced) DICOM with {s.frames} frames is not supported yet; "
            "convert the series to single-frame files (e.g. dcmtk's or dicom3tools' converters) "
            "or to NIfTI (dcm2niix) and open that")
    if any(s.samples != 1 for s in slices):
        s = next(s for s in slices if s.samples != 1)
        raise VolumeReadError(
            f"{s.path}: colour DICOM ({s.samples} samples per pixel, {s.photometric}) is not a "
            "CT/MR volume; open it as an image instead")
    spacings = {tuple(np.round(s.pixel_spacing, 4)) for s in slices if s.pixel_spacing}
    if len(spacings) > 1:
        raise VolumeReadError(
            f"series {uid}: the slices have different PixelSpacing ({sorted(spacings)}); "
            "they are not one volume -- pass the files of one reconstruction as a list")


def _geometry(slices: list[_Slice], uid: str, *, allow_gaps: bool) -> _Geometry:
    warnings: list[str] = []
    first = slices[0]
    if first.pixel_spacing:
        dy, dx = first.pixel_spacing
    else:
        dy = dx = 1.0
        warnings.append("no PixelSpacing in the files: pixels taken as 1 x 1 mm; "
                        "measured sizes and volumes are not in real units")
    if dy <= 0 or dx <= 0:
        raise VolumeReadError(f"{first.path}: PixelSpacing {first.pixel_spacing} is not positive")

    missing = [s for s in slices if s.iop is None or s.ipp is None]
    if missing:
        if len(slices) > 1:
            raise VolumeReadError(
                f"series {uid}: {len(missing)} file(s) lack ImageOrientationPatient / "
                f"ImagePositionPatient ({_names(missing)}), so the slice order and spacing are "
                "unknown; this series cannot be read as a volume")
        warnings.append("no ImageOrientationPatient / ImagePositionPatient: the image is placed "
                        "axially at the origin; patient coordinates are not real")
        iop = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
        ipps = np.zeros((1, 3))
    else:
        iop = first.iop  # type: ignore[assignment]
        groups: list[tuple[tuple[float, ...], list[_Slice]]] = []
        for s in slices:
            for g_iop, members in groups:
                if np.max(np.abs(np.subtract(s.iop, g_iop))) <= ORIENTATION_TOL:
                    members.append(s)
                    break
            else:
                groups.append((s.iop, [s]))  # type: ignore[arg-type]
        if len(groups) > 1:
            parts = "; ".join(f"{[round(v, 3) for v in g]}: {len(m)} file(s) e.g. {m[0].path.name}"
                              for g, m in groups)
            raise VolumeReadError(
                f"series {uid}: the slices have different orientations (ImageOrientationPatient "
                f"{parts}); a localizer or a second plane is mixed into the series -- pass the "
                "files of one orientation as a list")
        ipps = np.array([s.ipp for s in slices], dtype=float)

    row = np.asarray(iop[:3], float)
    col = np.asarray(iop[3:6], float)
    if np.linalg.norm(row) < 1e-6 or np.linalg.norm(col) < 1e-6:
        raise VolumeReadError(f"{first.path}: ImageOrientationPatient {list(iop)} is degenerate")
    row, col = row / np.linalg.norm(row), col / np.linalg.norm(col)
    if abs(float(row @ col)) > 1e-3:
        raise VolumeReadError(
            f"{first.path}: ImageOrientationPatient {list(iop)} has non-perpendicular row and "
            "column directions; the file's geometry is broken")
    normal = np.cross(row, col)

    pos = ipps @ normal
    order = np.argsort(pos, kind="stable")
    slices = [slices[i] for i in order]
    ipps, pos = ipps[order], pos[order]

    # duplicated positions: an identical copy is dropped, different images at one place are an error
    keep = [0]
    for i in range(1, len(slices)):
        j = keep[-1]
        if abs(pos[i] - pos[j]) < POSITION_TOL_MM:
            if slices[i].sop_uid and slices[i].sop_uid == slices[j].sop_uid:
                warnings.append(f"{slices[i].path.name} is a second copy of {slices[j].path.name} "
                                "(same SOPInstanceUID): read once")
                continue
            same = [slices[k] for k in range(len(slices)) if abs(pos[k] - pos[i]) < POSITION_TOL_MM]
            raise VolumeReadError(
                f"series {uid}: {len(same)} different images at the same slice position "
                f"z={pos[i]:.2f} mm: {_names(same)}; the series mixes acquisitions (echoes, phases, "
                "time points or a repeat) -- pass the files of one acquisition as a list")
        keep.append(i)
    slices = [slices[k] for k in keep]
    ipps, pos = ipps[keep], pos[keep]
    n = len(slices)

    if n > 1:
        # gantry tilt: positions drift within the image plane as z increases
        offsets = ipps - ipps[0]
        along = offsets @ normal
        perp = offsets - np.outer(along, normal)
        drift = np.linalg.norm(perp, axis=1)
        if drift.max() > max(POSITION_TOL_MM, 0.1 * min(dy, dx)):
            angle = float(np.degrees(np.arctan2(drift[-1], along[-1])))
            raise VolumeReadError(
                f"series {uid}: the slice positions are not along the slice normal (gantry tilt "
                f"of about {angle:.1f} degrees: the slices shift by {drift[-1]:.1f} mm within the "
                "image plane over the stack); reading it as a straight grid would shear the anatomy. "
                "The series must be resampled first (e.g. dcm2niix corrects gantry tilt); "
                "open the resampled volume instead")

        diffs = np.diff(pos)
        dz = float(np.median(diffs))
        tol = max(SPACING_RTOL * dz, POSITION_TOL_MM)
        problems = []
        for i, d in enumerate(diffs):
            if d > dz + tol:
                k = round(d / dz) - 1
                what = f"{k} slice(s)" if k >= 1 else "slice"
                problems.append(f"{what} missing between z={pos[i]:.2f} and z={pos[i + 1]:.2f} mm "
                                f"({d:.2f} mm apart, the spacing is {dz:.2f} mm)")
            elif d < dz - tol:
                problems.append(f"uneven spacing: z={pos[i]:.2f} and z={pos[i + 1]:.2f} mm are "
                                f"{d:.2f} mm apart, the spacing is {dz:.2f} mm")
        if problems:
            listed = "; ".join(problems[:3]) + (f" (and {len(problems) - 3} more)" if len(problems) > 3 else "")
            if not allow_gaps:
                raise VolumeReadError(
                    f"series {uid}: {listed}. Check that every file of the series was copied; "
                    "pass allow_gaps=True to read it anyway with the median spacing (distances "
                    "across the gap are then wrong)")
            warnings.append(f"{listed}; read with the median spacing {dz:.2f} mm, so distances and "
                            "volumes across the gap are wrong")
    else:
        if first.spacing_between and first.spacing_between > 0:
            dz = first.spacing_between
        elif first.thickness and first.thickness > 0:
            dz = first.thickness
        else:
            dz = 1.0
            warnings.append("single slice without SliceThickness or SpacingBetweenSlices: its "
                            "thickness is taken as 1 mm")

    lps = np.eye(4)
    lps[:3, 0] = normal * dz
    lps[:3, 1] = col * dy
    lps[:3, 2] = row * dx
    lps[:3, 3] = ipps[0]
    return _Geometry(slices, lps, pos, warnings)


def _nearest_lps(directions: np.ndarray) -> tuple[tuple[int, int, int], tuple[int, ...]]:
    """Permutation + flips taking source axes to the nearest LPS display axes.

    ``directions[:, j]`` is the unit LPS direction of source axis ``j``.  Display axis ``d``
    runs along LPS coordinate ``2 - d`` (S, P, L) in the positive direction.  Returns
    ``(axes, flips)`` in :class:`Reorientation`'s convention: ``axes[j]`` is the display axis
    holding source axis ``j``.
    """
    best = max(itertools.permutations(range(3)),
               key=lambda p: sum(abs(directions[2 - p[j], j]) for j in range(3)))
    flips = tuple(sorted(best[j] for j in range(3) if directions[2 - best[j], j] < 0))
    return (best[0], best[1], best[2]), flips


# --------------------------------------------------------------------------------------------
# pixels


def _ts_label(uid: str) -> str:
    from pydicom.uid import UID

    name = UID(uid).name if uid else "unknown"
    return f"'{name}' ({uid})" if name != uid else f"({uid})"


def _decoder_problem(uid: str) -> str | None:
    """Why pixel data in transfer syntax ``uid`` cannot be decoded here, or None when it can."""
    if not uid:
        return None
    from pydicom.pixels import get_decoder
    from pydicom.uid import UID

    uid_ = UID(uid)
    if not uid_.is_compressed:
        return None
    try:
        decoder = get_decoder(uid_)
    except NotImplementedError:
        return "pydicom has no decoder for it"
    if decoder.is_available:
        return None
    missing = "; ".join(decoder.missing_dependencies) if decoder.missing_dependencies else ""
    return "no installed package decodes it" + (f" ({missing})" if missing else "")


def _decoder_error(path: Path, uid: str, why: str) -> DecoderUnavailableError:
    return DecoderUnavailableError(
        f"{path}: pixel data is compressed as {_ts_label(uid)} and {why}; install the DICOM "
        f"decoders with: {_CODECS_HINT} ({', '.join(CODECS_PACKAGES)})")


def _read_stored(s: _Slice) -> np.ndarray:
    """Stored (pre-rescale) pixel values of one slice, ``(rows, cols)``."""
    pydicom = import_pydicom()
    why = _decoder_problem(s.transfer_syntax)
    if why:
        raise _decoder_error(s.path, s.transfer_syntax, why)
    try:
        ds = pydicom.dcmread(s.path, force=s.forced)
    except PARSE_ERRORS as e:
        raise ImageReadError(f"{s.path}: cannot read the DICOM file ({e}); it may be truncated or "
                             "corrupt -- copy it again from the source") from None
    if s.transfer_syntax and "TransferSyntaxUID" not in ds.file_meta:
        ds.file_meta.TransferSyntaxUID = s.transfer_syntax  # no file meta: the encoding found
    if "PixelData" not in ds:
        raise ImageReadError(f"{s.path}: the file has no pixel data (it may be truncated); "
                             "copy it again from the source")
    try:
        arr = ds.pixel_array
    except PARSE_ERRORS as e:
        why = _decoder_problem(s.transfer_syntax)
        if why:
            raise _decoder_error(s.path, s.transfer_syntax, why) from None
        raise ImageReadError(
            f"{s.path}: cannot decode the pixel data ({_ts_label(s.transfer_syntax)}): {e}; the "
            "file may be truncated or corrupt -- copy it again from the source") from None
    if arr.shape != (s.rows, s.cols):
        raise ImageReadError(f"{s.path}: pixel data has shape {arr.shape}, the header says "
                             f"{s.rows} x {s.cols}; the file is corrupt")
    return arr


def _stored_range(s: _Slice) -> tuple[int, int]:
    bits = max(1, min(s.bits_stored, 32))
    return (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if s.signed else (0, (1 << bits) - 1)


def _output_dtype(slices: Sequence[_Slice], lows: Sequence[float], highs: Sequence[float]) -> np.dtype:
    """Smallest of int16 / uint16 / int32 holding every rescaled value, else float32."""
    integral = all(float(s.slope).is_integer() and float(s.intercept).is_integer() for s in slices)
    if not integral:
        return np.dtype(np.float32)
    ends = [v for s, lo, hi in zip(slices, lows, highs) for v in (s.slope * lo + s.intercept,
                                                                  s.slope * hi + s.intercept)]
    lo, hi = min(ends), max(ends)
    for dt in (np.int16, np.uint16, np.int32):
        info = np.iinfo(dt)
        if info.min <= lo and hi <= info.max:
            return np.dtype(dt)
    return np.dtype(np.float32)


def _rescale(stored: np.ndarray, s: _Slice, dtype: np.dtype) -> np.ndarray:
    if s.slope == 1.0 and s.intercept == 0.0:
        return stored.astype(dtype, copy=False)
    if dtype.kind == "f":
        return (stored * np.float64(s.slope) + np.float64(s.intercept)).astype(dtype)
    return (stored.astype(np.int64) * int(s.slope) + int(s.intercept)).astype(dtype)


def _read_slice(s: _Slice, dtype: np.dtype) -> np.ndarray:
    return _rescale(_read_stored(s), s, dtype)


def _read_eager(slices: list[_Slice], progress, cancel, done0: int, total: int) -> np.ndarray:
    rows, cols = slices[0].rows, slices[0].cols
    stored = None
    lows, highs = [], []
    for k, s in enumerate(slices):
        if is_cancelled(cancel):
            raise Cancelled("reading the DICOM series was cancelled")
        a = _read_stored(s)
        if stored is None or not np.can_cast(a.dtype, stored.dtype):
            new = np.empty((len(slices), rows, cols),
                           a.dtype if stored is None else np.result_type(a.dtype, stored.dtype))
            if stored is not None:
                new[:k] = stored[:k]
            stored = new
        stored[k] = a
        lows.append(float(a.min()))
        highs.append(float(a.max()))
        if progress is not None:
            progress(done0 + k + 1, total)
    assert stored is not None
    dtype = _output_dtype(slices, lows, highs)
    if all(s.slope == 1.0 and s.intercept == 0.0 for s in slices) and stored.dtype == dtype:
        return stored
    out = np.empty(stored.shape, dtype)
    for k, s in enumerate(slices):
        out[k] = _rescale(stored[k], s, dtype)
    return out


def _read_lazy(slices: list[_Slice]):
    import dask
    import dask.array as da

    ranges = [_stored_range(s) for s in slices]
    dtype = _output_dtype(slices, [r[0] for r in ranges], [r[1] for r in ranges])
    shape = (slices[0].rows, slices[0].cols)
    _read_slice(slices[0], dtype)  # fail now, not on first display, if the files cannot be decoded
    read = dask.delayed(_read_slice, pure=True)
    return da.stack([da.from_delayed(read(s, dtype), shape=shape, dtype=dtype) for s in slices])


def _output_bytes(slices: list[_Slice]) -> int:
    ranges = [_stored_range(s) for s in slices]
    dtype = _output_dtype(slices, [r[0] for r in ranges], [r[1] for r in ranges])
    return len(slices) * slices[0].rows * slices[0].cols * dtype.itemsize


# --------------------------------------------------------------------------------------------
# the reader


def read_dicom(path_or_paths, *, series_uid: str | None = None, lazy: bool | str = "auto",
               allow_gaps: bool = False, progress: Callable[[int, int], None] | None = None,
               cancel=None) -> tuple[np.ndarray, VolumeInfo]:
    """Read one DICOM series as a ``(Z, Y, X)`` volume in LPS voxel orientation.

    Slices are ordered by ImagePositionPatient projected on the slice normal (the cross
    product of the ImageOrientationPatient row and column directions), not by file name or
    InstanceNumber.  RescaleSlope / RescaleIntercept are applied (CT values are HU).

    Parameters
    ----------
    path_or_paths : path or sequence of paths
        A folder (with its subfolders), one file of the series (its folder is read), or a list
        of files.  Files that are not DICOM images (DICOMDIR, notes, DICOM-SEG ...) are skipped.
    series_uid : str, optional
        SeriesInstanceUID to read when there are several.  Default: the series of the file
        given, else the one with the most slices; the others are listed in
        ``info.other_series`` (see also :func:`list_series`).
    lazy : bool or "auto"
        ``True``: a dask array decoding one slice at a time (chunks of one source slice).
        ``"auto"``: lazy when the output exceeds :data:`LAZY_BYTES` and dask is installed.
    allow_gaps : bool
        Read a series with a missing slice or uneven spacing anyway, with the median spacing
        and a warning (distances across the gap are then wrong).  Default: an error.
    progress : callable(done, total), optional
        Called after each file: first the header scan of every file found, then the pixel
        read of each slice (eager reads only).  ``done`` only grows; ``total`` starts as twice
        the number of files and is corrected once the scan knows how many slices the series
        has (a lazy read ends with ``done == total`` after the scan).
    cancel : threading.Event or callable, optional
        Checked before each file; when set, raises :class:`segloop.errors.Cancelled`.

    Returns
    -------
    volume : (Z, Y, X) ndarray or dask array
        int16 / uint16 / int32 when the rescale is integral (the smallest that holds the
        values; a lazy read decides from BitsStored, an eager one from the values), else
        float32.  Index increases towards Superior (Z), Posterior (Y), Left (X).
    info : VolumeInfo
        ``affine`` maps ``(z, y, x, 1)`` to RAS+ mm; ``source_affine`` does the same for the
        source order ``(slice along the normal, row, column)``; ``to_source`` converts back.
        ``extra["files"]`` and ``extra["sop_instance_uids"]`` are in source order.

    Raises
    ------
    VolumeReadError
        No DICOM image found, unknown ``series_uid``, or a series that is not a regular grid:
        missing / duplicated slice, gantry tilt, mixed orientations or image sizes.
    DecoderUnavailableError
        Compressed pixel data with no installed decoder (the message names the transfer
        syntax and ``pip install "napari-segloop[dicom-codecs]"``).
    ImageReadError
        A missing, truncated or corrupt file; the message names it.
    segloop.errors.Cancelled
        ``cancel`` was set.
    """
    if lazy not in (True, False, "auto"):
        raise ValueError(f"lazy must be True, False or 'auto', not {lazy!r}")
    series, root, single, broken, n_files = _scan(path_or_paths, progress, cancel, reading=True)

    if series_uid is None and single is not None:
        own = next((uid for uid, sl in series.items() if any(s.path == single for s in sl)), None)
        if own is None:
            raise ImageReadError(f"{single}: not a DICOM image file pydicom can read")
        series_uid = own
    summaries = _ordered_summaries(series)
    if series_uid is None:
        series_uid = summaries[0]["uid"]
    elif series_uid not in series:
        listed = "; ".join(f"{d['uid']} ({d['description'] or d['modality']}, {d['n_slices']} slices)"
                           for d in summaries)
        raise VolumeReadError(f"{root}: no series with SeriesInstanceUID {series_uid}; found: {listed}")

    slices = series[series_uid]
    _check_uniform(slices, series_uid)
    geo = _geometry(slices, series_uid, allow_gaps=allow_gaps)
    slices = geo.slices
    warnings = list(geo.warnings)

    others = [{"uid": d["uid"], "description": d["description"], "modality": d["modality"],
               "n_slices": d["n_slices"]} for d in summaries if d["uid"] != series_uid]
    if others:
        listed = "; ".join(f"{d['uid']} ({d['description'] or d['modality'] or 'no description'}, "
                           f"{d['n_slices']} slices)" for d in others)
        warnings.append(f"{len(others)} other series in this folder: {listed}; "
                        "pass series_uid= to read another (on the command line: give a folder holding only the "
                        "files of that series)")
    if broken:
        warnings.append(f"skipped {len(broken)} unreadable DICOM file(s): {', '.join(broken[:3])}")
    if slices[0].photometric == "MONOCHROME1":
        warnings.append("MONOCHROME1 images: higher values are meant to be shown darker")

    for uid in sorted({s.transfer_syntax for s in slices}):
        why = _decoder_problem(uid)
        if why:
            raise _decoder_error(next(s.path for s in slices if s.transfer_syntax == uid), uid, why)

    use_lazy = bool(lazy) if lazy != "auto" else _output_bytes(slices) > LAZY_BYTES
    if use_lazy:
        try:
            import dask.array  # noqa: F401
        except ImportError:
            if lazy is True:
                raise ImportError('lazy=True needs dask: pip install "napari-segloop[napari]"') from None
            use_lazy = False
            warnings.append("dask is not installed: the large series was read into memory at once")
    if use_lazy:
        source = _read_lazy(slices)
        if progress is not None:
            progress(n_files, n_files)
    else:
        source = _read_eager(slices, progress, cancel, n_files, n_files + len(slices))

    # geometry: source order -> nearest LPS voxel orientation (permutation and flips only)
    lps = geo.lps
    spacing_src = np.linalg.norm(lps[:3, :3], axis=0)
    directions = lps[:3, :3] / spacing_src
    axes, flips = _nearest_lps(directions)
    reo = Reorientation(axes=axes, flips=flips)
    lps_to_ras = np.diag([-1.0, -1.0, 1.0, 1.0])
    source_affine = lps_to_ras @ lps
    volume = reo.to_display(source)
    affine = source_affine @ reo.index_matrix(volume.shape)
    spacing = tuple(float(v) for v in np.linalg.norm(affine[:3, :3], axis=0))
    deviation = float(np.degrees(np.arccos(np.clip(np.abs(directions).max(axis=0).min(), -1, 1))))
    oblique = bool(np.abs(directions).max(axis=0).min() < 1.0 - AXIS_TOL)
    if oblique:
        warnings.append(f"oblique acquisition ({deviation:.1f} degrees from the patient axes): shown "
                        "in the nearest standard orientation without resampling; the affine keeps "
                        "the true patient coordinates")

    first = slices[0]
    modality = first.modality.upper()
    units = "HU" if modality == "CT" and first.rescale_type.upper() in ("", "HU") else ""
    info = VolumeInfo(
        path=Path(root), format="dicom", shape=tuple(int(v) for v in volume.shape),  # type: ignore[arg-type]
        spacing=spacing,  # type: ignore[arg-type]
        affine=affine, source_affine=source_affine, to_source=reo,
        modality=modality, units=units, window=first.window, series_uid=series_uid,
        description=first.description, other_series=others, warnings=warnings, oblique=oblique,
        extra={
            "files": [str(s.path) for s in slices],
            "sop_instance_uids": [s.sop_uid for s in slices],
            "slice_positions_mm": [float(p) for p in geo.positions],
            "study_instance_uid": first.study_uid,
            "frame_of_reference_uid": first.frame_of_reference_uid,
            "series_number": first.series_number,
            "body_part": first.body_part,
            "transfer_syntaxes": sorted({s.transfer_syntax for s in slices}),
            "lazy": use_lazy,
        },
    )
    return volume, info
