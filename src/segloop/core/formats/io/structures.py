"""What the readers of existing contours (RTSTRUCT, DICOM-SEG) share.

Radiologists arrive with structures drawn in a planning system or a viewer: an RT Structure
Set (:mod:`segloop.core.formats.io.rtstruct`) or a DICOM Segmentation
(:mod:`segloop.core.formats.io.dicom_seg`).  Both refer to an image series by its
SeriesInstanceUID; this module finds that series (on disk, near the structure file), reads it as
the reference grid, paints overlapping structures so the smaller stays visible, and describes
the result in a :class:`StructureReport`.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from segloop.core.formats.io.dicom import PARSE_ERRORS, import_pydicom
from segloop.core.formats.io.geometry import VolumeInfo
from segloop.errors import ImageReadError, VolumeReadError

__all__ = [
    "StructureReport",
    "structure_kind",
    "find_referenced_series",
    "reference_volume",
    "paint_smaller_last",
    "MAX_SEARCH_FILES",
]

#: Files whose headers :func:`find_referenced_series` reads at most before giving up.
MAX_SEARCH_FILES = 5000

RTSTRUCT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.481.3"
SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"


@dataclass
class StructureReport:
    """What a structure reader found.

    Attributes
    ----------
    path : Path
        The RTSTRUCT / DICOM-SEG file.
    kind : {"RTSTRUCT", "SEG"}
    info : VolumeInfo
        The grid the labels are on (the reference series', or one built from the SEG's planes).
    referenced_series : list of str
        SeriesInstanceUIDs the file says it was drawn on.
    structures : list of dict
        One per label id written: ``{"label", "number", "name", "color", "voxels", "ml"}`` (RTSTRUCT:
        also ``"contours"`` and ``"slices"``); ``number`` is the ROINumber / SegmentNumber.
    colors : dict of int to (r, g, b)
        Display colour (0-255) per label id, where the file gives one.
    overlaps : list of dict
        ``{"labels": (a, b), "names": (a, b), "voxels": n, "shown": name}`` for each pair of
        structures sharing voxels; the smaller one is painted last, so it is the one shown.
    warnings : list of str
        Things a person should know (structures skipped, references missing ...).
    """

    path: Path
    kind: str
    info: VolumeInfo
    referenced_series: list[str] = field(default_factory=list)
    structures: list[dict] = field(default_factory=list)
    colors: dict[int, tuple[int, int, int]] = field(default_factory=dict)
    overlaps: list[dict] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """Lines for people: one per structure with its volume in mL, then overlaps and warnings."""
        lines = [f"{self.kind} {self.path.name}: {len(self.structures)} structure(s) on series "
                 f"{self.info.series_uid or '(own grid)'}"]
        lines += [f"  {s['label']}: {s['name']} - {s['ml']:.1f} mL ({s['voxels']} voxels)" for s in self.structures]
        lines += [f"  overlap: {o['names'][0]} / {o['names'][1]} share {o['voxels']} voxels; {o['shown']} shown"
                  for o in self.overlaps]
        lines += [f"  warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def _header(path: Path, tags: Sequence[str] | None = None):
    """A DICOM header (no pixels) or None when the file is not DICOM."""
    pydicom = import_pydicom()
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(path, stop_before_pixels=True, specific_tags=list(tags) if tags else None)
    except InvalidDicomError:
        return None
    except PARSE_ERRORS:
        return None


def structure_kind(path: str | os.PathLike) -> str | None:
    """``"RTSTRUCT"`` or ``"SEG"`` when ``path`` is an RT Structure Set / DICOM Segmentation file, else None.

    Reads only the header's Modality and SOPClassUID (cheap enough for a napari reader check).
    """
    p = Path(path)
    if not p.is_file():
        return None
    ds = _header(p, ["Modality", "SOPClassUID"])
    if ds is None:
        return None
    modality = str(ds.get("Modality", "") or "").upper()
    sop = str(ds.get("SOPClassUID", "") or "")
    if modality == "RTSTRUCT" or sop == RTSTRUCT_SOP_CLASS:
        return "RTSTRUCT"
    if modality == "SEG" or sop == SEG_SOP_CLASS:
        return "SEG"
    return None


def find_referenced_series(path: str | os.PathLike, series_uid: str, *, max_depth: int = 2,
                           max_files: int = MAX_SEARCH_FILES) -> list[Path]:
    """The files of series ``series_uid`` near a structure file.

    Looks in the structure file's folder, then in the subfolders of its parent (down to
    ``max_depth`` levels below the parent: ``patient/{image,mask}/`` and
    ``patient/study/series/`` layouts), breadth first, reading no more than ``max_files`` headers.

    Parameters
    ----------
    path : path-like
        The RTSTRUCT / DICOM-SEG file (or a folder to start from).
    series_uid : str
        The SeriesInstanceUID to find.

    Returns
    -------
    list of Path
        The files of that series, sorted.

    Raises
    ------
    VolumeReadError
        No file of the series was found (the message names the UID and where it looked).
    """
    start = Path(path)
    own = start if start.is_dir() else start.parent
    roots = [(own, 0)]
    if own.parent != own:
        roots.append((own.parent, 0))
    seen_dirs: set[Path] = set()
    found: list[Path] = []
    n_read = 0
    queue = deque(roots)
    while queue and n_read < max_files:
        folder, depth = queue.popleft()
        key = folder.resolve()
        if key in seen_dirs:
            continue
        seen_dirs.add(key)
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            continue
        for e in entries:
            if e.name.startswith("."):
                continue
            if e.is_dir():
                if depth < max_depth:
                    queue.append((Path(e.path), depth + 1))
                continue
            if not e.is_file() or n_read >= max_files:
                continue
            n_read += 1
            ds = _header(Path(e.path), ["SeriesInstanceUID"])
            if ds is not None and str(ds.get("SeriesInstanceUID", "")) == series_uid:
                found.append(Path(e.path))
        if found and folder == own:
            break                         # the series sits beside the structure file
    if not found:
        more = f" (stopped after {max_files} files)" if n_read >= max_files else ""
        raise VolumeReadError(
            f"{start}: the image series it was drawn on (SeriesInstanceUID {series_uid}) is not in {own} or the "
            f"folders beside it{more}; copy that series next to the file, or pass it as the reference")
    return sorted(found)


def reference_volume(reference, wanted: Sequence[str], *, series_uid: str | None = None,
                     what: str = "the file"):
    """Read (or take) the reference grid: ``(volume, info)``.

    ``reference`` is a DICOM folder, file or list of files (read with
    :func:`segloop.core.formats.io.volume.read_volume`), an already-read ``(volume, VolumeInfo)``
    pair, or a :class:`VolumeInfo`.  When it is a folder and ``series_uid`` is None, the series in
    ``wanted`` (the structure file's referenced series) is read if the folder holds it.
    """
    if isinstance(reference, VolumeInfo):
        return None, reference
    if isinstance(reference, tuple) and len(reference) == 2 and isinstance(reference[1], VolumeInfo):
        return reference
    from segloop.core.formats.io.dicom import list_series
    from segloop.core.formats.io.volume import read_volume

    if series_uid is None and wanted:
        try:
            present = {d["uid"] for d in list_series(reference)}
        except VolumeReadError:
            present = set()
        hit = [u for u in wanted if u in present]
        if hit:
            series_uid = hit[0]
        elif present:
            raise VolumeReadError(
                f"{what} was drawn on series {', '.join(wanted)}, which is not among the {len(present)} series in "
                f"{reference} ({', '.join(sorted(present)[:3])}); give the folder of the series it was drawn on")
    return read_volume(reference, series_uid=series_uid, lazy="auto")


def paint_smaller_last(masks: Sequence[tuple[tuple[slice, ...], np.ndarray]], shape: Sequence[int],
                       names: Sequence[str]) -> tuple[np.ndarray, list[dict], list[int]]:
    """Paint boolean masks as labels ``1..N``, the largest first so smaller ones stay visible.

    Parameters
    ----------
    masks : sequence of (box, mask)
        ``mask`` is the bool array of structure ``i + 1`` inside ``box`` (a tuple of slices of ``shape``).
    shape : (Z, Y, X)
    names : sequence of str
        One per mask (for the overlap records).

    Returns
    -------
    labels : (Z, Y, X) uint16 ndarray
    overlaps : list of dict
        See :class:`StructureReport`.
    voxels : list of int
        Voxels of each mask (before painting).
    """
    labels = np.zeros(tuple(shape), np.uint16)
    voxels = [int(m.sum()) for _, m in masks]
    order = sorted(range(len(masks)), key=lambda i: (-voxels[i], i))
    for i in order:
        box, m = masks[i]
        labels[box][m] = i + 1
    overlaps = []
    for a in range(len(masks)):
        for b in range(a + 1, len(masks)):
            box = tuple(slice(max(p.start, q.start), min(p.stop, q.stop)) for p, q in zip(masks[a][0], masks[b][0]))
            if any(s.stop <= s.start for s in box):
                continue
            ma = masks[a][1][tuple(slice(s.start - p.start, s.stop - p.start) for s, p in zip(box, masks[a][0]))]
            mb = masks[b][1][tuple(slice(s.start - p.start, s.stop - p.start) for s, p in zip(box, masks[b][0]))]
            n = int(np.count_nonzero(ma & mb))
            if n:
                shown = a if (voxels[a], -a) < (voxels[b], -b) else b
                overlaps.append({"labels": (a + 1, b + 1), "names": (names[a], names[b]), "voxels": n,
                                 "shown": names[shown]})
    return labels, overlaps, voxels


def check_readable(path: Path, kind: str):
    """The full dataset of a structure file, with typed errors for missing / truncated / other files."""
    pydicom = import_pydicom()
    from pydicom.errors import InvalidDicomError

    if not path.is_file():
        raise ImageReadError(f"{path}: no such file")
    try:
        ds = pydicom.dcmread(path)
    except InvalidDicomError:
        raise ImageReadError(f"{path}: not a DICOM file; give the {kind} file (.dcm)") from None
    except PARSE_ERRORS as e:
        raise ImageReadError(f"{path}: cannot read the DICOM file ({type(e).__name__}: {e}); it may be truncated - "
                             "copy it again from the source") from None
    return ds
