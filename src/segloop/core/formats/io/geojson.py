"""Objects of a label image as QuPath-readable GeoJSON and as a per-object CSV.

:func:`label_features` turns a 2D instance label array (a whole image or one block of a
slide) into GeoJSON ``Feature`` dicts in the shape QuPath's *File > Import objects* reads;
:func:`write_geojson` writes them as a ``FeatureCollection`` feature by feature (a million
objects never become one string), all or nothing; :func:`read_geojson` reads one back and
checks its structure.  :func:`object_table` gives the same objects as rows and
:func:`write_object_csv` saves them for a spreadsheet.  Both views come from one pass over
:func:`skimage.measure.regionprops` (:func:`_objects`), so the numbers agree.

Coordinates follow QuPath (and GeoJSON) for images: ``x`` to the right, ``y`` down, in
full-resolution pixels, pixel ``(row, col)`` covering ``[col, col + 1] x [row, row + 1]``;
so a centroid of one pixel at ``(0, 0)`` is ``(0.5, 0.5)``.  ``offset = (y0, x0)`` (the
block's position in the slide) is added to every coordinate, centroids included.

Polygons trace each object's outer boundary along pixel edges: marching squares
(:func:`skimage.measure.find_contours` at level 0.5 on the object's hole-filled,
zero-padded box mask) with 8-connected foreground, so the ring runs through the middle of
each boundary pixel edge and cuts convex corners diagonally (the polygon's area is the pixel
count minus about half a pixel).  Collinear vertices are removed, which loses nothing.
Holes are ignored (filled).  An id made of several separate (8-connected) parts becomes a
``MultiPolygon`` with one polygon per part, largest first, so no pixel is dropped; one part
gives a ``Polygon``.  Exterior rings are counter-clockwise in ``(x, y)`` (RFC 7946).

No Qt, no napari.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
import os
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi
from skimage.color import rgb2hed
from skimage.measure import find_contours, regionprops

from segloop.core._runtime import atomic_output
from segloop.core.formats.pixel_size import check_pixel_size
from segloop.errors import ImageReadError, InvalidImageError, InvalidLabelsError, WriteError

__all__ = [
    "CSV_COLUMNS",
    "MEASUREMENT_NAMES",
    "OBJECT_TYPES",
    "label_features",
    "object_table",
    "read_geojson",
    "write_geojson",
    "write_object_csv",
]

CSV_COLUMNS = ("id", "centroid_x_px", "centroid_y_px", "centroid_x_um", "centroid_y_um",
               "area_px", "area_um2", "perimeter_px", "perimeter_um")
"""Columns every row of :func:`object_table` has, in CSV order; intensity columns follow
(``mean_R``, ``mean_G``, ``mean_B``, ``mean_hematoxylin_od``, ``mean_eosin_od`` for RGB,
``mean_grey`` for a grey image).  µm columns are empty without a pixel size."""

MEASUREMENT_NAMES = {
    "area_px": "Area px^2", "area_um2": "Area µm^2",
    "perimeter_px": "Perimeter px", "perimeter_um": "Perimeter µm",
    "centroid_x_px": "Centroid X px", "centroid_y_px": "Centroid Y px",
    "centroid_x_um": "Centroid X µm", "centroid_y_um": "Centroid Y µm",
    "mean_R": "Mean R", "mean_G": "Mean G", "mean_B": "Mean B", "mean_grey": "Mean grey",
    "mean_hematoxylin_od": "Hematoxylin OD mean", "mean_eosin_od": "Eosin OD mean",
}
"""Row key -> name of the measurement in a feature's ``properties.measurements`` (QuPath style)."""

OBJECT_TYPES = ("detection", "annotation", "cell", "tile")
"""``objectType`` values QuPath reads."""

DEFAULT_COLOR = (255, 0, 0)
"""Colour ``[r, g, b]`` of the classification when none is given."""

_GEOMETRY_TYPES = ("Point", "MultiPoint", "LineString", "MultiLineString", "Polygon", "MultiPolygon")
_ID_NAMESPACE = uuid.UUID("5e6c0f0e-6a43-4f3b-9d55-3b0f4c1a2d7e")


# ----------------------------------------------------------------------------- public API


def label_features(labels, *, offset: Sequence[float] = (0, 0), pixel_size=None, image=None,
                   classification: str | None = "Nucleus", color: Sequence[int] | None = None,
                   object_type: str = "detection", keep: Callable | None = None) -> list[dict]:
    """One QuPath-compatible GeoJSON ``Feature`` per object of a label image.

    Parameters
    ----------
    labels : (M, N) array-like of int
        Instance labels, 0 = background: numpy, or anything ``np.asarray`` reads (a zarr or
        dask block).  Not modified.
    offset : (2,) sequence of float, optional
        ``(y0, x0)``: where ``labels[0, 0]`` lies in the full-resolution slide, in pixels;
        added to every coordinate.
    pixel_size : float or (2,) sequence of float, optional
        ``(y, x)`` µm per pixel (one number for square pixels).  Adds the µm measurements.
    image : (M, N[, 1 | 3]) array-like, optional
        Grey or RGB pixels on the same grid (numpy, zarr, dask: read one object's box at a
        time).  Adds the mean per channel and, for RGB, the mean hematoxylin and eosin optical
        density (:func:`skimage.color.rgb2hed`; uint8/uint16 or float in [0, 1]).
    classification : str or None, optional
        Class name written as ``properties.classification.name``; ``None`` leaves the
        objects unclassified.
    color : (3,) sequence of int, optional
        ``[r, g, b]`` (0-255) of the class; default :data:`DEFAULT_COLOR`.
    object_type : {"detection", "annotation", "cell", "tile"}, optional
        QuPath's ``objectType``.  Detections are cheap in QuPath; use them for many nuclei.
    keep : callable, optional
        ``keep(region) -> bool`` with the :class:`skimage.measure.RegionProperties` of one
        object in *block* coordinates (``offset`` not added; ``region.label``,
        ``region.centroid``, ``region.bbox`` ...); objects for which it returns false are left
        out, e.g. those whose centroid lies outside the block's core.

    Returns
    -------
    list of dict
        Ascending label id.  Each ``{"type": "Feature", "id", "geometry", "properties"}``
        where ``id`` is a UUID string fixed by ``(offset, label id)`` (the same run gives the
        same ids), ``geometry`` a ``Polygon`` (or ``MultiPolygon`` for an id in several parts,
        see the module notes) in slide pixels, and ``properties`` holds ``objectType``,
        ``classification`` (``{"name", "color"}``), ``measurements`` (names in
        :data:`MEASUREMENT_NAMES`; µm ones only with ``pixel_size``) and ``segloop_id`` (the
        label id).

    Raises
    ------
    InvalidLabelsError
        ``labels`` not 2D, not integer or with negative ids.
    InvalidImageError
        ``image`` not on the same grid, or not grey / RGB.
    InvalidPixelSizeError
        ``pixel_size`` not one or two positive finite numbers.
    """
    if object_type not in OBJECT_TYPES:
        raise ValueError(f"object_type must be one of {', '.join(OBJECT_TYPES)}; got {object_type!r}")
    klass = None if classification is None else {"name": str(classification), "color": _color(color)}
    y0, x0 = _offset(offset)
    features = []
    for label, polygons, row in _objects(labels, offset=offset, pixel_size=pixel_size, image=image, keep=keep):
        if len(polygons) == 1:
            geometry = {"type": "Polygon", "coordinates": [polygons[0].tolist()]}
        else:
            geometry = {"type": "MultiPolygon", "coordinates": [[p.tolist()] for p in polygons]}
        properties = {"objectType": object_type}
        if klass is not None:
            properties["classification"] = dict(klass)
        properties["measurements"] = {MEASUREMENT_NAMES[k]: v for k, v in row.items()
                                      if k != "id" and v is not None}
        properties["segloop_id"] = label
        features.append({"type": "Feature",
                         "id": str(uuid.uuid5(_ID_NAMESPACE, f"{y0!r}:{x0!r}:{label}")),
                         "geometry": geometry, "properties": properties})
    return features


def object_table(labels, *, offset: Sequence[float] = (0, 0), pixel_size=None, image=None,
                 keep: Callable | None = None) -> list[dict]:
    """One row per object: the measurements of :func:`label_features` as a flat dict.

    Parameters are those of :func:`label_features`.

    Returns
    -------
    list of dict
        Ascending ``id`` (the label id); keys :data:`CSV_COLUMNS` then, with ``image``,
        ``mean_R``, ``mean_G``, ``mean_B``, ``mean_hematoxylin_od``, ``mean_eosin_od``
        (RGB) or ``mean_grey``.  Centroids in slide pixels (``offset`` added, QuPath's
        convention: pixel centres at ``+ 0.5``) and µm; area in px and µm²; perimeter is the
        length of the written polygon(s) (outer boundary, holes ignored) in px and µm.  µm
        values are ``None`` without ``pixel_size``.
    """
    return [row for _, _, row in _objects(labels, offset=offset, pixel_size=pixel_size, image=image, keep=keep)]


def write_geojson(path: str | os.PathLike, features: Iterable[Mapping]) -> Path:
    """Write ``features`` as a GeoJSON ``FeatureCollection``, all or nothing.

    Features are serialised one at a time into a temporary file beside ``path``, which is
    renamed over ``path`` only when every feature was written, so memory does not grow with
    the number of features and a reader never sees half a file.

    Parameters
    ----------
    path : str or os.PathLike
        Destination, e.g. ``objects.geojson``.
    features : iterable of dict
        GeoJSON ``Feature`` dicts (:func:`label_features`); a generator is fine.

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    WriteError
        The file cannot be written (read-only or missing folder, ``path`` is a folder, full
        disk) or a feature is not JSON (NaN, a numpy array ...).  Nothing is left behind.
    """
    path = Path(path)
    index = -1
    try:
        with atomic_output(path) as tmp, open(tmp, "x", encoding="utf-8") as f:
            f.write('{"type": "FeatureCollection", "features": [')
            for index, feature in enumerate(features):
                if not isinstance(feature, Mapping) or feature.get("type") != "Feature":
                    raise WriteError(f"{path}: item {index} is not a GeoJSON Feature (a dict with "
                                     "type 'Feature'); pass the output of label_features")
                f.write(",\n" if index else "\n")
                f.write(json.dumps(feature, ensure_ascii=False, allow_nan=False, separators=(",", ":")))
            f.write("\n]}\n")
    except WriteError:
        raise
    except (TypeError, ValueError) as e:
        raise WriteError(f"{path}: feature {index} cannot be written as JSON ({e}); use plain "
                         "numbers, strings, lists and dicts, no NaN; nothing was written") from e
    except OSError as e:
        raise WriteError(f"cannot write {path}: {e.strerror or e}; choose a writable file path "
                         "(not a folder); nothing was written") from e
    return path


def read_geojson(path: str | os.PathLike) -> list[dict]:
    """Read a GeoJSON file and check its structure; return its features.

    Accepts a ``FeatureCollection``, a single ``Feature``, or a bare list of features (as
    older QuPath versions wrote).  Every feature must be a ``Feature`` with ``geometry`` of a
    GeoJSON type (polygon rings closed, with at least four finite positions) and
    ``properties`` a dict or ``null``.

    Returns
    -------
    list of dict

    Raises
    ------
    ImageReadError
        The file is missing, not UTF-8 JSON, or not GeoJSON features; the message names the
        file and the first bad feature.
    """
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise ImageReadError(f"{path}: no such GeoJSON file; check the path") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ImageReadError(f"{path}: not a readable GeoJSON (JSON) file ({e}); export it again") from None
    if isinstance(data, list):
        features = data
    elif isinstance(data, dict) and data.get("type") == "FeatureCollection":
        features = data.get("features")
        if not isinstance(features, list):
            raise ImageReadError(f"{path}: a FeatureCollection needs a 'features' list; the file is malformed")
    elif isinstance(data, dict) and data.get("type") == "Feature":
        features = [data]
    else:
        raise ImageReadError(f"{path}: not GeoJSON objects (expected a FeatureCollection or Feature); "
                             "export the objects as GeoJSON")
    for i, feature in enumerate(features):
        problem = _feature_problem(feature)
        if problem:
            raise ImageReadError(f"{path}: feature {i}: {problem}; the file is malformed, export it again")
    return features


def write_object_csv(path: str | os.PathLike, rows: Iterable[Mapping]) -> Path:
    """Write object rows (:func:`object_table`) as CSV, all or nothing.

    Columns: :data:`CSV_COLUMNS`, then the other keys of the first row in their order.
    ``None`` is written as an empty cell.  Rows may come from a generator.

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    WriteError
        The file cannot be written, or a row has a key the first row lacks.  Nothing is
        left behind.
    """
    path = Path(path)
    it = iter(rows)
    first = next(it, None)
    columns = list(CSV_COLUMNS) + ([k for k in first if k not in CSV_COLUMNS] if first is not None else [])
    try:
        with atomic_output(path) as tmp, open(tmp, "x", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=columns, extrasaction="raise")
            writer.writeheader()
            if first is not None:
                for row in itertools.chain([first], it):
                    writer.writerow({k: "" if v is None else v for k, v in row.items()})
    except ValueError as e:
        raise WriteError(f"{path}: a row does not fit the columns {columns} ({e}); give rows with "
                         "the same keys (object_table); nothing was written") from e
    except OSError as e:
        raise WriteError(f"cannot write {path}: {e.strerror or e}; choose a writable file path "
                         "(not a folder); nothing was written") from e
    return path


# ----------------------------------------------------------------------------- shared per-object pass


def _objects(labels, *, offset, pixel_size, image, keep) -> Iterator[tuple[int, list[np.ndarray], dict]]:
    """``(label id, polygons, row)`` per kept object, ascending id: the one regionprops pass.

    ``polygons`` are closed ``(K, 2)`` float rings ``[x, y]`` in slide pixels, largest first.
    """
    lab = _check_labels(labels)
    y0, x0 = _offset(offset)
    sy, sx = check_pixel_size(pixel_size, source="pixel_size") if pixel_size is not None else (None, None)
    channels = _check_image(image, lab.shape)
    for region in regionprops(lab):
        if keep is not None and not keep(region):
            continue
        top, left = region.bbox[0], region.bbox[1]
        polygons = [ring + (x0 + left, y0 + top) for ring in _outer_rings(region.image)]
        cy, cx = region.centroid
        cx, cy = float(cx) + 0.5 + x0, float(cy) + 0.5 + y0
        perimeter = sum(_ring_length(r) for r in polygons)
        area = int(region.area)
        row = {
            "id": int(region.label),
            "centroid_x_px": cx, "centroid_y_px": cy,
            "centroid_x_um": None if sx is None else cx * sx,
            "centroid_y_um": None if sy is None else cy * sy,
            "area_px": area,
            "area_um2": None if sx is None else area * sx * sy,
            "perimeter_px": perimeter,
            "perimeter_um": None if sx is None else sum(_ring_length(r, (sx, sy)) for r in polygons),
        }
        if channels:
            row.update(_intensities(image, region, channels))
        yield int(region.label), polygons, row


def _outer_rings(mask: np.ndarray) -> list[np.ndarray]:
    """Closed ``[x, y]`` rings (box pixel-corner coordinates) around each 8-connected part of ``mask``."""
    filled = np.pad(ndi.binary_fill_holes(mask), 1)
    rings = []
    for contour in find_contours(filled.astype(np.uint8), 0.5, fully_connected="high"):
        # (row, col) in padded pixel-centre coordinates -> (x, y) with pixel corners on integers
        ring = contour[:, ::-1] - 0.5
        ring = _drop_collinear(ring)
        area = _signed_area(ring)
        if area < 0:
            ring = ring[::-1]
        if len(ring) >= 4 and area != 0:
            rings.append((abs(area), ring))
    rings.sort(key=lambda t: -t[0])
    return [r for _, r in rings]


def _drop_collinear(ring: np.ndarray) -> np.ndarray:
    """``ring`` (closed) without vertices on a straight line between their neighbours; exact
    because marching-squares vertices of a binary mask lie on multiples of 0.5."""
    pts = ring[:-1] if len(ring) > 1 and np.array_equal(ring[0], ring[-1]) else ring
    before, after = pts - np.roll(pts, 1, axis=0), np.roll(pts, -1, axis=0) - pts
    turn = before[:, 0] * after[:, 1] - before[:, 1] * after[:, 0]
    pts = pts[turn != 0]
    return np.concatenate([pts, pts[:1]])


def _signed_area(ring: np.ndarray) -> float:
    x, y = ring[:, 0], ring[:, 1]
    return 0.5 * float(np.dot(x[:-1], y[1:]) - np.dot(x[1:], y[:-1]))


def _ring_length(ring: np.ndarray, scale=(1.0, 1.0)) -> float:
    return float(np.hypot(np.diff(ring[:, 0]) * scale[0], np.diff(ring[:, 1]) * scale[1]).sum())


def _intensities(image, region, channels: tuple[str, ...]) -> dict:
    box = np.asarray(image[region.slice])
    values = box[region.image]
    if len(channels) == 1:
        return {"mean_grey": float(values.astype(np.float64).mean())}
    means = values.reshape(-1, 3).astype(np.float64).mean(axis=0)
    out = {f"mean_{c}": float(m) for c, m in zip(channels, means)}
    hed = rgb2hed(box)[region.image]
    out["mean_hematoxylin_od"] = float(hed[:, 0].mean())
    out["mean_eosin_od"] = float(hed[:, 1].mean())
    return out


# ----------------------------------------------------------------------------- checks


def _check_labels(labels) -> np.ndarray:
    try:
        lab = np.asarray(labels)
    except Exception as e:      # anything array-like may fail in its own way
        raise InvalidLabelsError(f"labels cannot be read as an array ({e}); pass a 2D integer array") from e
    if lab.ndim != 2:
        raise InvalidLabelsError(f"labels must be 2D (rows, columns); got shape {lab.shape}; "
                                 "export one plane or block at a time")
    if lab.dtype.kind not in "iu":
        raise InvalidLabelsError(f"labels must be integers (instance ids, 0 = background); got dtype "
                                 f"{lab.dtype}; label a mask first, e.g. skimage.measure.label(mask)")
    if lab.dtype.kind == "i" and lab.size and lab.min() < 0:
        raise InvalidLabelsError(f"labels has negative ids (min {lab.min()}); ids must be >= 0, 0 = background")
    return lab


def _check_image(image, shape) -> tuple[str, ...]:
    if image is None:
        return ()
    ishape = tuple(getattr(image, "shape", ()))
    if ishape[:2] != tuple(shape) or len(ishape) not in (2, 3):
        raise InvalidImageError(f"image of shape {ishape} is not on the labels' grid {tuple(shape)}; "
                                "give (rows, columns) or (rows, columns, channels) of the same block")
    if len(ishape) == 2 or ishape[2] == 1:
        return ("grey",)
    if ishape[2] == 3:
        return ("R", "G", "B")
    raise InvalidImageError(f"image has {ishape[2]} channels; give grey (1) or RGB (3) - "
                            "drop an alpha channel with image[..., :3]")


def _offset(offset) -> tuple[float, float]:
    try:
        y0, x0 = (float(v) for v in offset)
    except (TypeError, ValueError):
        raise ValueError(f"offset must be (y0, x0) in pixels; got {offset!r}") from None
    if not (math.isfinite(y0) and math.isfinite(x0)):
        raise ValueError(f"offset must be finite; got {offset!r}")
    return (int(y0) if y0.is_integer() else y0, int(x0) if x0.is_integer() else x0)


def _color(color) -> list[int]:
    rgb = DEFAULT_COLOR if color is None else tuple(color)
    if len(rgb) != 3 or not all(isinstance(c, (int, np.integer)) and 0 <= c <= 255 for c in rgb):
        raise ValueError(f"color must be three integers 0-255 (r, g, b); got {color!r}")
    return [int(c) for c in rgb]


def _feature_problem(feature) -> str | None:
    if not isinstance(feature, dict) or feature.get("type") != "Feature":
        return "not a GeoJSON Feature (a dict with type 'Feature')"
    props = feature.get("properties", None)
    if props is not None and not isinstance(props, dict):
        return "'properties' must be an object or null"
    geometry = feature.get("geometry")
    if not isinstance(geometry, dict):
        return "no 'geometry' object"
    kind, coords = geometry.get("type"), geometry.get("coordinates")
    if kind not in _GEOMETRY_TYPES:
        return f"unknown geometry type {kind!r}"
    if not isinstance(coords, list):
        return f"{kind} without a 'coordinates' list"
    polygons = [coords] if kind == "Polygon" else coords if kind == "MultiPolygon" else []
    for polygon in polygons:
        if not isinstance(polygon, list) or not polygon:
            return "a polygon must be a non-empty list of rings"
        for ring in polygon:
            problem = _ring_problem(ring)
            if problem:
                return problem
    return None


def _ring_problem(ring) -> str | None:
    if not isinstance(ring, list) or len(ring) < 4:
        return "a polygon ring needs at least 4 positions"
    for p in ring:
        if (not isinstance(p, list) or len(p) < 2
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                           for v in p)):
            return f"position {p!r} is not [x, y] numbers"
    if ring[0] != ring[-1]:
        return "a polygon ring is not closed (first position != last)"
    return None
