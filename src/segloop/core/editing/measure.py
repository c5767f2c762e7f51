"""Per-label measurements of a label volume: voxels, volume, largest axial diameter, intensity.

:func:`measure_labels` returns one row (a plain dict) per label present, in
physical units from the voxel spacing: volume in millilitres, the largest
in-plane (axial) diameter in millimetres, and - given the image, e.g. a CT in
Hounsfield units - the mean, standard deviation, minimum and maximum inside
the label.  :func:`write_csv` saves the rows for a spreadsheet.

:func:`measure_volume` is what ``segloop measure`` and the napari CT tools call:
it takes the volume's geometry and lets
:func:`segloop.core.formats.io.geometry.axial_axis` decide which array axis is
axial, so both give the same numbers for the same labels whatever order the
axes are stored in.

Bounding boxes of all labels come from one ``scipy.ndimage.find_objects``
pass; everything else reads only each label's box (a lazy dask image is read
box by box).  A 512 x 512 x 300 volume with a few labels takes well under
two seconds.

No Qt, no napari.
"""

from __future__ import annotations

import csv
import math
import operator
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi
from scipy.spatial import ConvexHull, QhullError

from segloop.core.editing.proofread import check_labels, find_bbox
from segloop.core.formats.io.geometry import axial_axis
from segloop.errors import ExportError, InvalidImageError, InvalidLabelsError

__all__ = ["COLUMNS", "label_ids", "measure_labels", "measure_volume", "max_feret_diameter", "write_csv"]

COLUMNS = ("label", "name", "lesion", "voxels", "volume_ml", "max_diameter_mm", "diameter_slice",
           "hu_mean", "hu_std", "hu_min", "hu_max", "notes")
"""Keys of each row, in CSV column order."""

_FIND_OBJECTS_MAX_LABEL = 1 << 22
"""Up to this largest id, one ``ndi.find_objects`` pass finds every box; above, ids are found first."""


def measure_labels(labels: np.ndarray, *, spacing: Sequence[float] = (1.0, 1.0, 1.0), image=None,
                   names: Mapping[int, str] | Sequence[str] | None = None, axis: int = 0,
                   lesions: bool = False) -> list[dict]:
    """Measure every label of a volume (or every lesion of every label).

    Parameters
    ----------
    labels : (Z, Y, X) ndarray of int
        Label volume, 0 = background.  Not modified.
    spacing : (3,) sequence of float, optional
        Voxel size ``(dz, dy, dx)`` in millimetres (a napari layer's ``scale``).
    image : (Z, Y, X) array-like, optional
        Intensities (e.g. CT in HU) of the same shape: numpy, memmap or dask
        (read one label's bounding box at a time).  Statistics are
        accumulated in float64; NaN voxels are left out (and counted in
        ``notes``).
    names : mapping of int to str, or sequence of str, optional
        Names per label id: a dict, or a list indexed by id (``classes`` of a
        model package, index 0 = background).  Missing names are ``""``.
    axis : int, optional
        The slice axis for the axial diameter (0 for a ``(Z, Y, X)`` volume).
    lesions : bool, optional
        Measure each 3D connected part of a label (26-connectivity) as its own
        row -- e.g. each tumour of a semantic "tumour" class -- numbered
        ``lesion`` 1, 2, ... from the largest.  Default: one row per label
        (``lesion`` 0).

    Returns
    -------
    list of dict
        One row per label present, ascending id, with the keys of
        :data:`COLUMNS`:

        ``label`` (int), ``name`` (str), ``lesion`` (int, 0 = the whole label),
        ``voxels`` (int),
        ``volume_ml`` (voxels * dz * dy * dx / 1000),
        ``max_diameter_mm`` - the largest Feret (caliper) diameter of the
        label's section on any slice along ``axis``, between voxel centres,
        with the in-plane spacing (see :func:`max_feret_diameter`),
        ``diameter_slice`` - the slice index where it occurs (the first such),
        ``hu_mean``, ``hu_std`` (population, ddof=0), ``hu_min``, ``hu_max``
        - NaN without ``image`` - and ``notes`` (``""`` or what to know, such
        as NaN voxels that were ignored).  No labels: an empty list.

    Raises
    ------
    InvalidLabelsError
        If ``labels`` is not a 3D integer array with non-negative values, or
        ``spacing`` / ``axis`` do not fit it.
    InvalidImageError
        If ``image`` does not have the shape of ``labels`` or is not numeric.
    """
    check_labels(labels)
    if labels.ndim != 3:
        raise InvalidLabelsError(
            f"measure_labels needs a (Z, Y, X) label volume, got shape {tuple(labels.shape)}; "
            "for one slice pass labels[None]"
        )
    sp = _spacing(spacing)
    try:
        axis = operator.index(axis)
    except TypeError:
        raise InvalidLabelsError(f"axis must be a whole number, got {axis!r}") from None
    if not -3 <= axis < 3:
        raise InvalidLabelsError(f"axis {axis} does not exist in a 3D volume")
    axis %= 3
    if image is not None:
        _check_image(image, labels.shape)
    voxel_ml = sp[0] * sp[1] * sp[2] / 1000.0
    in_plane = tuple(s for a, s in enumerate(sp) if a != axis)

    rows = []
    for lab, box in _boxes(labels):
        whole = np.asarray(labels[box]) == lab
        parts = [(0, box, whole)]
        if lesions:
            comp, n = ndi.label(whole, structure=np.ones((3, 3, 3), bool))
            sizes = np.bincount(comp.ravel())[1:]
            order = np.argsort(-sizes, kind="stable") + 1
            sub = ndi.find_objects(comp)
            parts = []
            for k, c in enumerate(order, 1):
                b = sub[c - 1]
                parts.append((k, tuple(slice(o.start + s.start, o.start + s.stop) for o, s in zip(box, b)),
                              comp[b] == c))
        for lesion, where_box, mask in parts:
            voxels = int(np.count_nonzero(mask))
            if voxels == 0:
                continue
            diameter, where = _largest_section_diameter(mask, axis, in_plane)
            row = {"label": lab, "name": _name(names, lab), "lesion": lesion, "voxels": voxels,
                   "volume_ml": voxels * voxel_ml, "max_diameter_mm": diameter,
                   "diameter_slice": where + where_box[axis].start,
                   "hu_mean": math.nan, "hu_std": math.nan, "hu_min": math.nan, "hu_max": math.nan,
                   "notes": ""}
            if image is not None:
                row.update(_intensity(np.asarray(image[where_box]), mask))
            rows.append(row)
    return rows


def measure_volume(labels: np.ndarray, geometry=None, *, spacing: Sequence[float] | None = None, image=None,
                   names: Mapping[int, str] | Sequence[str] | None = None, lesions: bool = False) -> list[dict]:
    """Measure a label volume with its geometry: :func:`measure_labels` along the axial axis.

    The slice axis of the diameters is :func:`~segloop.core.formats.io.geometry.axial_axis`
    of ``geometry`` (the axis closest to head-foot), never simply the first stored axis; so a
    volume stored with its axes in another order (an MRC stored like a NIfTI, for one) gives
    the numbers of the same volume reoriented to ``(Z, Y, X)``.  ``diameter_slice`` counts
    along that axis of ``labels``.

    Parameters
    ----------
    labels : (3-D) ndarray of int
        As :func:`measure_labels`, in any axis order ``geometry`` describes.
    geometry : VolumeInfo or (4, 4) array-like, optional
        The labels' geometry (a reader's :class:`~segloop.core.formats.io.geometry.VolumeInfo`,
        or an affine from array indices to RAS mm).  None: axis 0 is axial (the readers'
        convention) and the spacing is ``spacing`` or 1 mm.
    spacing : 3 floats, optional
        Voxel size per array axis in mm; default ``geometry.spacing`` (or the affine's column
        lengths).  The napari widget passes its layer's scale.
    image, names, lesions
        As :func:`measure_labels`.

    Returns
    -------
    list of dict
        The rows of :func:`measure_labels`.

    Raises
    ------
    InvalidLabelsError, InvalidImageError
        As :func:`measure_labels`.
    VolumeReadError
        ``geometry`` has a malformed affine.
    """
    axis = axial_axis(geometry)                      # checks the affine first
    if spacing is None:
        spacing = getattr(geometry, "spacing", None)
        if spacing is None and geometry is not None:
            spacing = tuple(float(v) for v in np.linalg.norm(np.asarray(geometry, float)[:3, :3], axis=0))
    return measure_labels(labels, spacing=(1.0, 1.0, 1.0) if spacing is None else spacing, image=image,
                          names=names, axis=axis, lesions=lesions)


def label_ids(labels: np.ndarray) -> list[int]:
    """The ids (> 0) present in ``labels``, ascending (one ``find_objects`` pass for moderate ids)."""
    check_labels(labels)
    return [lab for lab, _ in _boxes(labels)]


def max_feret_diameter(mask: np.ndarray, spacing: Sequence[float] = (1.0, 1.0)) -> float:
    """Largest caliper (Feret) diameter of a 2D mask, between pixel centres, in physical units.

    The convex hull of the outline pixels' centres (scaled by ``spacing``, so
    anisotropic pixels are measured correctly) is searched for its farthest
    pair.  Centre to centre: a rectangle of ``h x w`` pixels measures
    ``hypot((h - 1) * dy, (w - 1) * dx)`` and a digital disc of radius ``r``
    pixels ``2 r``; a single pixel measures 0.

    Parameters
    ----------
    mask : (M, N) ndarray of bool
    spacing : (2,) sequence of float
        Pixel size ``(dy, dx)``; the result is in the same unit.

    Returns
    -------
    float
        0.0 for an empty mask or a single pixel.
    """
    mask = np.asarray(mask, bool)
    if mask.ndim != 2:
        raise InvalidLabelsError(f"max_feret_diameter needs a 2D mask, got shape {mask.shape}")
    if not mask.any():
        return 0.0
    edge = mask & ~ndi.binary_erosion(mask, border_value=0)     # only the outline can be extreme
    py, px = np.nonzero(edge)
    pts = np.stack((py * float(spacing[0]), px * float(spacing[1])), axis=1)
    if len(pts) > 8:
        try:
            pts = pts[ConvexHull(pts).vertices]
        except QhullError:              # all on one line: the extremes are the first and last (sorted)
            pts = np.unique(pts, axis=0)[[0, -1]]
    d2 = ((pts[:, None, :] - pts[None, :, :]) ** 2).sum(-1)
    return float(np.sqrt(d2.max()))


def write_csv(rows: Sequence[Mapping], path: str | os.PathLike) -> Path:
    """Write measurement rows to a CSV file (columns :data:`COLUMNS`, then any extra keys).

    Floats are written with full precision; NaN as an empty cell.

    Raises
    ------
    ExportError
        If the file cannot be written (missing folder, no permission, disk full).
    """
    path = Path(path)
    extra = [k for r in rows for k in r if k not in COLUMNS]
    fields = list(COLUMNS) + list(dict.fromkeys(extra))
    try:
        with open(path, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=fields)
            writer.writeheader()
            for r in rows:
                writer.writerow({k: _cell(r.get(k, "")) for k in fields})
    except OSError as e:
        raise ExportError(f"could not write the measurements to {path}: {e.strerror or e}; "
                          "pick a folder you can write to") from e
    return path


# --------------------------------------------------------------------------- helpers


def _cell(v):
    if isinstance(v, float) and math.isnan(v):
        return ""
    return v


def _spacing(spacing) -> tuple[float, float, float]:
    try:
        sp = tuple(float(s) for s in spacing)
    except (TypeError, ValueError):
        raise InvalidLabelsError(f"spacing must be three numbers (dz, dy, dx) in mm, got {spacing!r}") from None
    if len(sp) != 3:
        raise InvalidLabelsError(f"spacing must be three numbers (dz, dy, dx) in mm, got {spacing!r}")
    if not all(math.isfinite(s) and s > 0 for s in sp):
        raise InvalidLabelsError(f"spacing must be positive and finite, got {spacing!r}")
    return sp   # type: ignore[return-value]


def _check_image(image, shape) -> None:
    ishape = tuple(getattr(image, "shape", ()))
    dtype = getattr(image, "dtype", None)
    if ishape != tuple(shape):
        raise InvalidImageError(
            f"the image has shape {ishape} but the labels {tuple(shape)}; measure the image the labels "
            "were drawn on (an RGB or multi-channel image cannot give HU statistics)"
        )
    if dtype is None or np.dtype(dtype).kind not in "uif":
        raise InvalidImageError(f"the image must be numeric (intensities such as HU), got dtype {dtype}")


def _name(names, lab: int) -> str:
    if names is None:
        return ""
    if isinstance(names, Mapping):
        v = names.get(lab, names.get(str(lab), ""))
        return "" if v is None else str(v)
    return str(names[lab]) if 0 <= lab < len(names) else ""


def _boxes(labels) -> list[tuple[int, tuple[slice, ...]]]:
    arr = np.asarray(labels)
    top = int(arr.max()) if arr.size else 0
    if top == 0:
        return []
    if top <= _FIND_OBJECTS_MAX_LABEL:
        return [(i + 1, box) for i, box in enumerate(ndi.find_objects(arr)) if box is not None]
    return [(int(i), find_bbox(arr, [int(i)])) for i in np.unique(arr) if i != 0]


def _largest_section_diameter(mask: np.ndarray, axis: int, in_plane) -> tuple[float, int]:
    """(diameter, slice index within the box) of the widest section along ``axis``."""
    sections = np.moveaxis(mask, axis, 0)
    # an upper bound per slice (the diagonal of its bounding box) lets most slices be skipped
    rows_any = sections.any(axis=2)            # (S, Y)
    cols_any = sections.any(axis=1)            # (S, X)
    bounds = []
    for s in range(sections.shape[0]):
        ry, rx = np.flatnonzero(rows_any[s]), np.flatnonzero(cols_any[s])
        if ry.size == 0:
            continue
        h = (ry[-1] - ry[0]) * in_plane[0]          # centre to centre: the bbox diagonal bounds the diameter
        w = (rx[-1] - rx[0]) * in_plane[1]
        bounds.append((math.hypot(h, w), s, (slice(ry[0], ry[-1] + 1), slice(rx[0], rx[-1] + 1))))
    bounds.sort(key=lambda b: (-b[0], b[1]))
    best, where = 0.0, bounds[0][1]
    for bound, s, box in bounds:
        if bound < best:
            break
        d = max_feret_diameter(sections[s][box], in_plane)
        if d > best + 1e-9 or (abs(d - best) <= 1e-9 and s < where):
            best, where = d, s
    return best, where


def _intensity(values_box: np.ndarray, mask: np.ndarray) -> dict:
    vals = values_box[mask].astype(np.float64)
    out = {}
    nan = np.isnan(vals) if vals.dtype.kind == "f" else None
    n_nan = int(nan.sum()) if nan is not None else 0
    if n_nan:
        vals = vals[~nan]
        out["notes"] = f"{n_nan} NaN voxel{'s' if n_nan != 1 else ''} left out of the intensity statistics"
    if vals.size == 0:
        return {**out, "hu_mean": math.nan, "hu_std": math.nan, "hu_min": math.nan, "hu_max": math.nan}
    mean = float(vals.mean())
    return {**out, "hu_mean": mean, "hu_std": float(np.sqrt(np.mean((vals - mean) ** 2))),
            "hu_min": float(vals.min()), "hu_max": float(vals.max())}
