"""Label volumes from files: NIfTI, plain NRRD and 3D Slicer segmentations (``.seg.nrrd``).

:func:`read_label_volume` returns integer labels in the same LPS display order as
:func:`~segloop.core.formats.io.volume.read_volume`, the segment names the file gives, and the
labels' :class:`~segloop.core.formats.io.geometry.VolumeInfo`.  Given the image's ``VolumeInfo``
it puts the labels on the image's grid, voxel for voxel, or says why it cannot: labels are never
interpolated, so only grids that differ by whole voxels (a cropped segmentation) or by the order
and direction of their axes are accepted.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np

from segloop.core.formats.io.geometry import (
    OBLIQUE_DEGREES,
    VolumeInfo,
    lps_reorientation,
    obliquity_deg,
    spacing_of,
)
from segloop.core.formats.io.nrrd_volume import nrrd_geometry, read_nrrd_array, read_nrrd_header
from segloop.core.formats.io.volume import read_volume
from segloop.errors import ImageReadError, InvalidLabelsError, VolumeReadError

__all__ = ["read_label_volume", "align_labels"]

_GRID_TOLERANCE = 0.05       # voxels: how far a corner may land from a voxel of the image's grid


def read_label_volume(path: str | os.PathLike, reference_info: VolumeInfo | None = None, *,
                      progress=None, cancel=None):
    """Read a label volume (NIfTI, NRRD or Slicer ``.seg.nrrd``), optionally onto an image's grid.

    Parameters
    ----------
    path : path-like
        ``.nii`` / ``.nii.gz``, ``.nrrd`` / ``.nhdr`` (label ids as voxel values) or ``.seg.nrrd``.
        A ``.seg.nrrd`` is recognised by its ``Segment{N}_*`` keys: each segment has a name,
        a ``LabelValue`` in a ``Layer`` (a 4D file holds one layer per 3D volume) and an
        ``Extent``; ``Segmentation_ReferenceImageExtentOffset`` places a cropped file inside its
        reference image.
    reference_info : VolumeInfo, optional
        The image's geometry (from ``read_volume``).  The labels are then returned on its grid
        (``labels.shape == reference_info.shape``): a grid offset by whole voxels (a cropped
        file) or with its axes in another order/direction is moved into place without
        interpolation; labelled voxels outside the image are dropped with a warning.
    progress, cancel
        As for ``read_volume``.

    Returns
    -------
    labels : (Z, Y, X) ndarray of uint8, uint16 or uint32
        0 = background.  Segmentation label ids are the files' ``LabelValue`` s when they are
        unique, else ``1..n`` in segment order.
    names : dict of int to str
        ``{label id: segment name}`` for the segments the file names (empty for NIfTI / plain NRRD).
    info : VolumeInfo
        The labels' geometry: ``reference_info``'s when given, else the file's.  ``info.warnings``
        says what was changed (overlapping segments flattened, voxels dropped ...);
        ``info.extra["segments"]`` lists a ``.seg.nrrd``'s segments as read.

    Raises
    ------
    ImageReadError
        The file is missing, truncated or malformed.
    VolumeReadError
        Not 3D (a vector / multi-volume file that is not a segmentation), or the label grid does
        not match the image's (other spacing, rotation, or a fraction of a voxel off).
    InvalidLabelsError
        Negative, non-integer or non-finite values.
    """
    path = Path(path)
    if not path.exists():
        raise ImageReadError(f"{path}: no such file")
    name = path.name.lower()
    names: dict[int, str] = {}
    if name.endswith((".nrrd", ".nhdr")):
        header, offset = read_nrrd_header(path)
        if _segment_count(header) or int(header["dimension"]) == 4:
            labels, names, info = _read_seg_nrrd(path, header, offset, progress=progress, cancel=cancel)
        else:
            volume, info = read_volume(path, lazy=False, progress=progress, cancel=cancel)
            labels = _as_labels(volume, path)
    elif name.endswith((".nii", ".nii.gz")):
        volume, info = read_volume(path, lazy=False, progress=progress, cancel=cancel)
        labels = _as_labels(volume, path)
    else:
        raise VolumeReadError(f"{path}: not a label volume format segloop reads ({path.suffix or 'no suffix'}); "
                              "use NIfTI (.nii, .nii.gz), NRRD (.nrrd, .nhdr) or a 3D Slicer .seg.nrrd")
    info = dataclasses.replace(info, modality="", units="", window=None, extra=dict(info.extra))
    info.extra.pop("likely_ct", None)
    if reference_info is not None:
        file_info = info
        labels, info = align_labels(labels, info, reference_info)
        _check_extent_offset(file_info, reference_info, info)
    return labels, names, info


def _check_extent_offset(file_info: VolumeInfo, reference: VolumeInfo, info: VolumeInfo) -> None:
    """Warn when a seg.nrrd's ``ReferenceImageExtentOffset`` disagrees with where its geometry puts it.

    Slicer writes the cropped file's ``space origin`` at its first voxel, so the geometry alone places
    it (that is what was used); the offset is the same place in the reference file's voxel indices.
    """
    stated = file_info.extra.get("reference_extent_offset")
    if stated is None or reference.source_affine is None or reference.format not in ("nifti", "nrrd"):
        return
    lab_display0 = np.linalg.inv(file_info.to_source.index_matrix(file_info.shape)) @ [0.0, 0.0, 0.0, 1.0]
    ref_display = np.linalg.inv(reference.affine) @ file_info.affine @ lab_display0
    ref_source = reference.to_source.index_matrix(reference.shape) @ ref_display
    found = [int(v) for v in np.round(ref_source[:3])]
    if found != list(stated):
        info.warnings.append(f"Segmentation_ReferenceImageExtentOffset says the file starts at voxel {list(stated)} "
                             f"of the image, its geometry at {found}; the geometry was used (as 3D Slicer does)")


def _as_labels(values, path: Path) -> np.ndarray:
    """Checked integer labels in the smallest unsigned dtype that holds them."""
    arr = np.asarray(values)
    if arr.dtype.kind not in "biuf":
        raise InvalidLabelsError(f"{path}: voxels of type {arr.dtype} are not label ids; a label volume holds "
                                 "integers >= 0")
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all():
            raise InvalidLabelsError(f"{path}: the label volume holds NaN or infinite values; label ids are "
                                     "integers >= 0 - is this an image rather than labels?")
        if not np.array_equal(arr, np.round(arr)):
            raise InvalidLabelsError(f"{path}: the label volume holds non-integer values (type {arr.dtype}); "
                                     "label ids are integers >= 0 - is this an image or a probability map "
                                     "rather than labels?")
    lo = arr.min() if arr.size else 0
    hi = arr.max() if arr.size else 0
    if lo < 0:
        raise InvalidLabelsError(f"{path}: the label volume holds negative values (down to {lo}); label ids are "
                                 "integers >= 0 (0 = background) - is this an image rather than labels?")
    if hi > np.iinfo(np.uint32).max:
        raise InvalidLabelsError(f"{path}: label id {hi} is too large; relabel sequentially "
                                 "(skimage.segmentation.relabel_sequential)")
    return np.ascontiguousarray(arr, dtype=_label_dtype(int(hi)))


def _label_dtype(maxval: int) -> np.dtype:
    return np.dtype(np.uint8 if maxval <= 255 else np.uint16 if maxval <= 65535 else np.uint32)


# ---------------------------------------------------------------------------------------------
# Slicer .seg.nrrd

def _segment_count(header: dict) -> int:
    n = 0
    while f"Segment{n}_ID" in header or f"Segment{n}_Name" in header or f"Segment{n}_LabelValue" in header:
        n += 1
    return n


def _ints(text, n: int, what: str, path: Path) -> list[int]:
    try:
        values = [int(float(v)) for v in str(text).split()]
    except ValueError:
        values = []
    if len(values) != n:
        raise ImageReadError(f"{path}: the segmentation's {what} '{text}' is not {n} integers; the file is "
                             "malformed")
    return values


def _segments(header: dict, n_layers: int, sizes: tuple[int, int, int], path: Path) -> list[dict]:
    out = []
    full = [0, sizes[0] - 1, 0, sizes[1] - 1, 0, sizes[2] - 1]
    for n in range(_segment_count(header)):
        key = f"Segment{n}_"
        layer = _ints(header.get(key + "Layer", n if n_layers > 1 else 0), 1, f"segment {n} layer", path)[0]
        value = _ints(header.get(key + "LabelValue", 1), 1, f"segment {n} label value", path)[0]
        extent = (_ints(header[key + "Extent"], 6, f"segment {n} extent", path)
                  if key + "Extent" in header else list(full))
        if not 0 <= layer < n_layers:
            raise ImageReadError(f"{path}: segment {n} is in layer {layer} but the file has {n_layers} layer(s); "
                                 "the file is malformed")
        if value <= 0:
            raise InvalidLabelsError(f"{path}: segment {n} has label value {value}; segment label values are "
                                     "integers >= 1")
        seg_name = str(header.get(key + "Name", header.get(key + "ID", f"Segment_{n}"))).strip()
        out.append({"index": n, "id": str(header.get(key + "ID", "")), "name": seg_name, "layer": layer,
                    "label_value": value, "extent": extent})
    return out


def _box(extent: list[int], sizes) -> tuple[slice, ...] | None:
    """The segment's extent clipped to the file, or None when empty."""
    sl = []
    for a in range(3):
        lo, hi = max(extent[2 * a], 0), min(extent[2 * a + 1], sizes[a] - 1)
        if hi < lo:
            return None
        sl.append(slice(lo, hi + 1))
    return tuple(sl)


def _read_seg_nrrd(path: Path, header: dict, offset: int, *, progress=None, cancel=None):
    geo = nrrd_geometry(header, path)
    sizes = [int(s) for s in np.asarray(header["sizes"]).ravel()]
    if len(geo.spatial_axes) != 3 or len(geo.other_axes) > 1:
        raise VolumeReadError(f"{path}: a segmentation of sizes {sizes} is not 3D labels (with at most one layer "
                              "axis); segloop reads 3D label volumes")
    data = np.asarray(read_nrrd_array(path, header, offset, lazy=False, progress=progress, cancel=cancel))
    layer_axis = geo.other_axes[0] if geo.other_axes else None
    layers = np.moveaxis(data, layer_axis, 0) if layer_axis is not None else data[None]
    layers = _as_labels(layers, path)
    spatial_sizes = tuple(int(s) for s in layers.shape[1:])
    segments = _segments(header, layers.shape[0], spatial_sizes, path)
    warns = list(geo.warnings)
    if not segments:
        if layers.shape[0] > 1:
            raise VolumeReadError(f"{path}: a 4D NRRD of sizes {sizes} without segment keys: a multi-volume image, "
                                  "not labels; segloop reads 3D label volumes")
        source, names = layers[0], {}
    else:
        source, names = _flatten(layers, segments, warns, path)
    to_source = lps_reorientation(geo.affine)
    display_shape = tuple(source.shape[a] for a in np.argsort(to_source.axes))
    affine = geo.affine @ to_source.index_matrix(display_shape)
    labels = np.ascontiguousarray(to_source.to_display(source))
    offset_text = header.get("Segmentation_ReferenceImageExtentOffset")
    ref_offset = _ints(offset_text, 3, "reference image extent offset", path) if offset_text is not None else [0, 0, 0]
    info = VolumeInfo(
        path=path, format="nrrd", shape=tuple(int(s) for s in labels.shape), spacing=spacing_of(affine),
        affine=affine, source_affine=geo.affine, to_source=to_source, warnings=warns,
        oblique=obliquity_deg(geo.affine) > OBLIQUE_DEGREES, extra={"nrrd": {"space": str(header.get("space", "")), "sizes": sizes,
                                       "kinds": [str(k) for k in header.get("kinds", [])]},
                              "segmentation": True, "segments": segments,
                              "reference_extent_offset": ref_offset})
    return labels, names, info


def _flatten(layers: np.ndarray, segments: list[dict], warns: list[str], path: Path):
    """One label image from the segments' layers: smaller segments painted over larger ones."""
    values = [s["label_value"] for s in segments]
    keep_values = len(set(values)) == len(values)
    ids = values if keep_values else list(range(1, len(segments) + 1))
    for s, i in zip(segments, ids):
        s["label"] = int(i)
    names = {int(s["label"]): s["name"] for s in segments}
    sizes = layers.shape[1:]
    if layers.shape[0] == 1 and keep_values:                    # one layer, ids as stored: the common case
        lab = layers[0]
        stray = np.setdiff1d(np.unique(lab), [0, *values])
        if stray.size:
            lab = np.where(np.isin(lab, stray), 0, lab).astype(lab.dtype)
            warns.append(f"voxel values {stray.tolist()[:10]} belong to no segment of the file and were set to 0")
        return lab, names
    out = np.zeros(sizes, _label_dtype(max(ids)))
    boxes, counts = [], []
    for s in segments:
        box = _box(s["extent"], sizes)
        mask = None if box is None else layers[(s["layer"],) + box] == s["label_value"]
        boxes.append((box, mask))
        counts.append(0 if mask is None else int(mask.sum()))
    overlap, covered = 0, []
    for n in sorted(range(len(segments)), key=lambda n: (-counts[n], n)):   # largest first, smallest on top
        box, mask = boxes[n]
        if box is None or counts[n] == 0:
            continue
        region = out[box]
        hit = mask & (region != 0)
        if hit.any():
            overlap += int(hit.sum())
            covered.append(segments[n]["name"])
        region[mask] = segments[n]["label"]
    if overlap:
        warns.append(f"{overlap} voxels belong to more than one segment (a multi-layer .seg.nrrd); each shows the "
                     f"smallest segment covering it (on top: {', '.join(covered[:5])}) - the rest of each "
                     "overlapped segment is kept")
    if not keep_values:
        warns.append("segment label values repeat across layers, so the segments were numbered 1.."
                     f"{len(segments)} in file order")
    return out, names


# ---------------------------------------------------------------------------------------------
# onto the image's grid

def align_labels(labels: np.ndarray, info: VolumeInfo, reference: VolumeInfo) -> tuple[np.ndarray, VolumeInfo]:
    """Put display-ordered labels on a reference image's display grid, without interpolation.

    The labels' grid may differ from the image's by a whole-voxel offset (a cropped file) and by
    the order / direction of its axes; anything else (another spacing, a rotation, a fraction of
    a voxel) is refused.

    Parameters
    ----------
    labels : (Z, Y, X) integer ndarray
        On ``info``'s grid.
    info, reference : VolumeInfo
        The labels' and the image's geometry.

    Returns
    -------
    labels : ndarray of ``reference.shape``
        Voxels outside the labels' grid are 0; labelled voxels outside the image are dropped (a
        warning says how many).
    info : VolumeInfo
        ``reference``'s geometry with the labels' path, format, warnings and extra.

    Raises
    ------
    VolumeReadError
        The label grid does not match the image.
    """
    lab_aff = np.asarray(info.affine, float)
    ref_aff = np.asarray(reference.affine, float)
    m = np.linalg.inv(ref_aff) @ lab_aff                 # label display index -> image display index
    p = np.round(m)
    shape = np.asarray(labels.shape)
    corners = np.array([[z, y, x, 1.0] for z in (0, shape[0] - 1) for y in (0, shape[1] - 1)
                        for x in (0, shape[2] - 1)]).T
    err = float(np.abs(m @ corners - p @ corners).max())
    perm_ok = (np.abs(p[:3, :3]).sum(axis=0) == 1).all() and (np.abs(p[:3, :3]).sum(axis=1) == 1).all()
    if not perm_ok or err > _GRID_TOLERANCE:
        raise VolumeReadError(
            f"{info.path}: the label grid does not match the image (labels: shape {tuple(labels.shape)}, spacing "
            f"{_mm(info.spacing)} mm, origin {_mm(lab_aff[:3, 3])}; image: shape {tuple(reference.shape)}, spacing "
            f"{_mm(reference.spacing)} mm, origin {_mm(ref_aff[:3, 3])}); labels are not interpolated - "
            "open the image they were drawn on, or resample them onto this image first")
    rot, t = p[:3, :3], p[:3, 3]
    order = [int(np.flatnonzero(rot[r])[0]) for r in range(3)]
    arr = labels.transpose(order)
    start = []
    for r in range(3):
        if rot[r, order[r]] < 0:
            arr = np.flip(arr, axis=r)
            start.append(int(t[r]) - (arr.shape[r] - 1))
        else:
            start.append(int(t[r]))
    warns = list(info.warnings)
    if tuple(start) == (0, 0, 0) and tuple(arr.shape) == tuple(reference.shape):
        out = np.ascontiguousarray(arr)
    else:
        out = np.zeros(tuple(reference.shape), labels.dtype)
        dst, src = [], []
        for r in range(3):
            lo, hi = max(start[r], 0), min(start[r] + arr.shape[r], reference.shape[r])
            if hi <= lo:
                dst = None
                break
            dst.append(slice(lo, hi))
            src.append(slice(lo - start[r], hi - start[r]))
        inside = 0
        if dst is not None:
            out[tuple(dst)] = arr[tuple(src)]
            inside = int(np.count_nonzero(out[tuple(dst)]))
        lost = int(np.count_nonzero(arr)) - inside
        if lost:
            warns.append(f"{lost} labelled voxels lie outside the image and were dropped")
        warns.append(f"the labels were placed in the image at voxel offset (z, y, x) = {tuple(start)}")
    extra = dict(info.extra)
    extra["reference"] = str(reference.path)
    extra["offset_in_reference"] = list(start)
    new = dataclasses.replace(reference, path=info.path, format=info.format, description=info.description,
                              warnings=warns, extra=extra, modality="", units="", window=None, series_uid="",
                              other_series=[])
    return out, new


def _mm(values) -> str:
    return "(" + ", ".join(f"{float(v):.4g}" for v in values) + ")"
