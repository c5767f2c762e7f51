"""Proofreading edits on label arrays: merge, split, delete, fill holes, relabel, paint.

Every editing function **returns** a :class:`LabelEdit` - the exact voxels that
change and their new values - instead of writing into the array.  The napari
widget applies it with ``layer.data_setitem(edit.indices, edit.values)``, which
puts the edit on napari's own undo stack next to brush strokes; from a notebook,
call ``edit.apply(labels)``.  ``edit.inverse(labels)`` (taken before applying)
undoes it.

Label arrays are integer ndarrays (or ``np.memmap``) of any ``ndim >= 2``: a 2D
image ``(H, W)``, a stack or volume ``(Z, H, W)``.  Work on one object touches
only that object's bounding box; the only whole-array work is a chunked scan
along axis 0 (:func:`find_bbox`, :func:`next_free_label`), which never
allocates a full-size temporary.  A 20000 x 20000 uint32 array is fine.

No Qt, no napari.

Why this module is long: the edits (about 500 lines) share one set of chunked
scans and id checks (about 450 lines of private helpers that keep memory flat
on 20000^2 arrays).  They are one job, "pure edits of a label array"; splitting
the helpers into another module would make them public API for no user.
"""

from __future__ import annotations

import operator
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from segloop.errors import InvalidImageError, InvalidLabelsError

__all__ = [
    "LabelEdit",
    "check_labels",
    "find_bbox",
    "label_at",
    "next_free_label",
    "merge_labels",
    "delete_labels",
    "split_label",
    "split_label_by_line",
    "fill_holes",
    "remove_small_objects",
    "relabel_sequential",
    "paint",
    "paint_new_label",
]

CHUNK_ELEMENTS = 1 << 20
"""Default number of elements read per step of a chunked scan (4 MiB of uint32: cache-friendly,
measured fastest of 2**16..2**22 with benchmarks-style 8192^2 labels)."""

_LUT_MAX_LABEL = 1 << 24
"""Above this largest id, lookup tables and bincount give way to sort-based paths."""

_FEW_IDS = 8
"""Up to this many ids, matching compares id by id; beyond it, ``np.isin``."""

Region = tuple[slice, ...]


# --------------------------------------------------------------------------- the edit


@dataclass(frozen=True, eq=False)
class LabelEdit:
    """The voxels an edit changes and their new values.

    Parameters
    ----------
    indices : tuple of (K,) intp ndarray
        One index array per axis of the label array the edit was computed on.
    values : (K,) ndarray
        New values, same dtype as the labels.

    Notes
    -----
    Edits built by this module contain only voxels whose value changes, each
    voxel once.  Apply with ``labels[edit.indices] = edit.values``
    (:meth:`apply`) or, in napari, ``layer.data_setitem(edit.indices,
    edit.values)``.
    """

    indices: tuple[np.ndarray, ...]
    values: np.ndarray

    def __post_init__(self):
        indices = tuple(np.asarray(ix, dtype=np.intp).reshape(-1) for ix in self.indices)
        values = np.asarray(self.values).reshape(-1)
        if not indices:
            raise InvalidLabelsError("a LabelEdit needs one index array per axis; got none")
        if any(ix.shape != values.shape for ix in indices):
            raise InvalidLabelsError(
                f"LabelEdit index arrays ({[ix.size for ix in indices]} entries) and values "
                f"({values.size}) must have the same length"
            )
        object.__setattr__(self, "indices", indices)
        object.__setattr__(self, "values", values)

    @property
    def ndim(self) -> int:
        return len(self.indices)

    @property
    def n_changed(self) -> int:
        """Number of voxels the edit writes."""
        return int(self.values.size)

    @property
    def bbox(self) -> tuple[slice, ...] | None:
        """Bounding box of the changed voxels (stops exclusive), or None for an empty edit."""
        if self.values.size == 0:
            return None
        return tuple(slice(int(ix.min()), int(ix.max()) + 1) for ix in self.indices)

    def apply(self, labels: np.ndarray) -> None:
        """Write the edit into ``labels`` in place (``labels[indices] = values``)."""
        if labels.ndim != self.ndim:
            raise InvalidLabelsError(
                f"this edit is for {self.ndim}D labels, not {labels.ndim}D; "
                "use edit.lift(...) to apply an edit of one slice to a stack"
            )
        if self.values.size:
            labels[self.indices] = self.values

    def inverse(self, labels: np.ndarray) -> LabelEdit:
        """The edit that restores the current values of ``labels``; call it BEFORE :meth:`apply`."""
        if labels.ndim != self.ndim:
            raise InvalidLabelsError(f"this edit is for {self.ndim}D labels, not {labels.ndim}D")
        old = np.asarray(labels[self.indices]) if self.values.size else self.values[:0].copy()
        return LabelEdit(self.indices, old.astype(self.values.dtype, copy=False))

    def lift(self, leading: Sequence[int]) -> LabelEdit:
        """The same edit with constant leading indices prepended.

        An edit computed on ``stack[z]`` (a view of a ``(Z, H, W)`` stack)
        becomes an edit of the stack with ``edit.lift((z,))``.
        """
        lead = tuple(operator.index(v) for v in leading)
        if any(v < 0 for v in lead):
            raise InvalidLabelsError(f"lift() needs non-negative leading indices, got {lead}")
        n = self.values.size
        extra = tuple(np.full(n, v, dtype=np.intp) for v in lead)
        return LabelEdit(extra + self.indices, self.values)

    @staticmethod
    def empty(ndim: int, dtype) -> LabelEdit:
        """An edit that changes nothing."""
        return LabelEdit(
            tuple(np.empty(0, np.intp) for _ in range(ndim)), np.empty(0, dtype=np.dtype(dtype))
        )

    def __repr__(self) -> str:
        return f"LabelEdit(n_changed={self.n_changed}, bbox={self.bbox}, dtype={self.values.dtype})"


# --------------------------------------------------------------------------- checks


def check_kind(labels) -> None:
    """Cheap checks: an integer array with ndim >= 2 (no scan of the values)."""
    dtype = getattr(labels, "dtype", None)
    ndim = getattr(labels, "ndim", None)
    if dtype is None or ndim is None:
        raise InvalidLabelsError(
            f"labels must be an integer numpy array, got {type(labels).__name__}; "
            "pass np.asarray(labels)"
        )
    if dtype.kind not in "ui":
        raise InvalidLabelsError(
            f"labels must have an integer dtype, got {dtype}; label images hold object ids "
            "(0 = background): convert with labels.astype(np.uint32) if the values are whole numbers"
        )
    if ndim < 2:
        raise InvalidLabelsError(
            f"labels must be at least 2D (H, W) or (Z, H, W), got shape {tuple(labels.shape)}"
        )


def _negative_error(value) -> InvalidLabelsError:
    return InvalidLabelsError(
        f"labels contain the negative value {value}; label ids must be >= 0 (0 = background). "
        "Relabel the objects, e.g. with skimage.measure.label(labels != 0)"
    )


def check_labels(labels: np.ndarray, *, chunk: int = CHUNK_ELEMENTS) -> None:
    """Raise :class:`~segloop.errors.InvalidLabelsError` if ``labels`` is not a label array.

    Parameters
    ----------
    labels : (M, N[, ...]) ndarray of int
        Must have an unsigned or signed integer dtype (not bool, float,
        complex or object), ``ndim >= 2`` and, if signed, no negative value
        (checked chunk by chunk, no full-size temporary).
    chunk : int, optional
        About how many elements are read per step.
    """
    check_kind(labels)
    if labels.dtype.kind == "i":
        for _, block in _chunks(labels, chunk):
            if block.size and (low := block.min()) < 0:
                raise _negative_error(low)


def _wider(dtype: np.dtype) -> str:
    nxt = {1: 16, 2: 32, 4: 64}.get(dtype.itemsize)
    if nxt is None:
        return "relabel_sequential(labels) to free unused ids"
    prefix = "uint" if dtype.kind == "u" else "int"
    return f"a wider dtype, e.g. labels.astype(np.{prefix}{nxt})"


def as_label_id(value, dtype: np.dtype, *, what: str = "label id", allow_zero: bool = False) -> int:
    """A label id as a Python int that fits ``dtype``; typed errors otherwise."""
    try:
        v = operator.index(value)
    except TypeError:
        raise InvalidLabelsError(
            f"{what} must be a whole number, got {value!r} ({type(value).__name__})"
        ) from None
    if v < 0 or (v == 0 and not allow_zero):
        raise InvalidLabelsError(
            f"{what} must be {'>= 0' if allow_zero else '> 0 (0 is background)'}, got {v}"
        )
    top = int(np.iinfo(dtype).max)
    if v > top:
        raise InvalidLabelsError(
            f"{what} {v} does not fit in {dtype} labels (largest possible id {top}); "
            f"convert the labels layer to {_wider(dtype)} first"
        )
    return v


def _as_ids(ids, dtype: np.dtype, *, what: str = "ids") -> list[int]:
    """Distinct label ids in first-seen order (an int or a sequence of ints)."""
    seq = [ids] if np.ndim(ids) == 0 else list(np.asarray(ids).reshape(-1).tolist())
    out: list[int] = []
    for v in seq:
        try:
            iv = operator.index(v)
        except TypeError:
            raise InvalidLabelsError(f"{what} must be whole numbers, got {v!r}") from None
        if iv == 0:
            raise InvalidLabelsError(
                f"{what} contain 0, the background; pass only object ids (> 0)"
            )
        if iv < 0:
            raise InvalidLabelsError(f"{what} must be > 0, got {iv}")
        if iv not in out:
            out.append(iv)
    if not out:
        raise InvalidLabelsError(f"{what} is empty; pass at least one label id")
    return out


def _missing_error(missing: Sequence[int], where: str = "the labels") -> InvalidLabelsError:
    names = ", ".join(str(m) for m in sorted(missing))
    s = "s" if len(missing) > 1 else ""
    return InvalidLabelsError(
        f"label{s} {names} not found in {where}; pick ids that are present "
        "(the layer's selected label may be stale)"
    )


def _round_coords(points, ndim: int, *, what: str) -> np.ndarray:
    """(K, ndim) int64 of rounded coordinates (pixel centres at integers: round half up)."""
    try:
        arr = np.asarray(points, dtype=np.float64)
    except (TypeError, ValueError):
        raise InvalidLabelsError(f"{what} must be numeric coordinates, got {points!r}") from None
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] != ndim:
        raise InvalidLabelsError(
            f"{what} must have shape (K, {ndim}) for {ndim}D labels, got shape {arr.shape}"
        )
    if not np.all(np.isfinite(arr)):
        raise InvalidLabelsError(f"{what} contain NaN or infinite coordinates: {arr.tolist()}")
    return np.floor(arr + 0.5).astype(np.int64)


def _region(region, shape: tuple[int, ...]) -> Region:
    """Normalize ``region`` to one basic slice (step 1, int bounds) per axis."""
    if region is None:
        return tuple(slice(0, n) for n in shape)
    region = tuple(region)
    if len(region) != len(shape) or not all(isinstance(s, slice) for s in region):
        raise InvalidLabelsError(
            f"region must be a tuple of {len(shape)} slices (one per axis), got {region!r}"
        )
    out = []
    for s, n in zip(region, shape):
        start, stop, step = s.indices(n)
        if step != 1:
            raise InvalidLabelsError(f"region slices must have step 1, got {s}")
        out.append(slice(start, max(start, stop)))
    return tuple(out)


# --------------------------------------------------------------------------- chunked scans


def _chunks(labels, chunk: int) -> Iterator[tuple[int, np.ndarray]]:
    """``(start, block)`` with ``block = labels[start:stop]`` as ndarray views along axis 0."""
    plane = int(np.prod(labels.shape[1:], dtype=np.int64))
    step = max(1, int(chunk) // max(plane, 1))
    for start in range(0, labels.shape[0], step):
        yield start, np.asarray(labels[start : start + step])


def _check_block(block: np.ndarray) -> None:
    if block.dtype.kind == "i" and block.size and (low := block.min()) < 0:
        raise _negative_error(low)


def _fitting(ids: Sequence[int], dtype: np.dtype) -> np.ndarray:
    """The ids that can occur in ``dtype`` labels, as a ``dtype`` array."""
    top = int(np.iinfo(dtype).max)
    return np.array([i for i in ids if 0 <= i <= top], dtype=dtype)


def _match(block: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Boolean mask of ``block`` voxels whose value is in ``ids`` (a non-empty array)."""
    if ids.size > _FEW_IDS:
        return np.isin(block, ids)
    m = block == ids[0]
    for i in ids[1:]:
        m |= block == i
    return m


@dataclass
class _Scan:
    lo: list[int] | None = None
    hi: list[int] | None = None
    max: int = 0

    def bbox(self) -> tuple[slice, ...] | None:
        if self.lo is None:
            return None
        return tuple(slice(a, b + 1) for a, b in zip(self.lo, self.hi))


def _scan(labels, ids: Sequence[int], *, chunk: int, want_max: bool = False) -> _Scan:
    """One chunked pass: bounding box of the voxels whose value is in ``ids`` (and the largest value)."""
    ids_arr = _fitting(ids, labels.dtype)
    res = _Scan()
    nd = labels.ndim
    for start, block in _chunks(labels, chunk):
        _check_block(block)
        if want_max and block.size:
            res.max = max(res.max, int(block.max()))
        if ids_arr.size == 0 or block.size == 0:
            continue
        m = _match(block, ids_arr)
        rows = np.flatnonzero(m.reshape(m.shape[0], -1).any(axis=1))
        if rows.size == 0:
            continue
        r0, r1 = int(rows[0]), int(rows[-1]) + 1
        sub = m[r0:r1]
        lo = [start + r0]
        hi = [start + r1 - 1]
        for ax in range(1, nd):
            proj = np.flatnonzero(sub.any(axis=tuple(a for a in range(nd) if a != ax)))
            lo.append(int(proj[0]))
            hi.append(int(proj[-1]))
        if res.lo is None:
            res.lo, res.hi = lo, hi
        else:
            res.lo = [min(a, b) for a, b in zip(res.lo, lo)]
            res.hi = [max(a, b) for a, b in zip(res.hi, hi)]
    return res


def _collect(labels, ids: Sequence[int], *, chunk: int, want_found: bool = False,
             also_find: Sequence[int] = (), offset: Sequence[int] | None = None,
             ) -> tuple[tuple[np.ndarray, ...], np.ndarray, set[int]]:
    """Chunked pass: indices (shifted by ``offset``) and values of voxels whose value is in ``ids``.

    The returned set holds the ``ids`` that occur (if ``want_found``) and the
    ``also_find`` ids that occur (looked for only until seen once).
    """
    ids_arr = _fitting(ids, labels.dtype)
    look = _fitting(also_find, labels.dtype).tolist()
    wanted = ids_arr.tolist()
    nd = labels.ndim
    offset = tuple(offset) if offset is not None else (0,) * nd
    parts: list[list[np.ndarray]] = [[] for _ in range(nd)]
    vparts: list[np.ndarray] = []
    found: set[int] = set()
    for start, block in _chunks(labels, chunk):
        _check_block(block)
        for i in look:
            if i not in found and block.size and (block == i).any():
                found.add(i)
        if ids_arr.size == 0 or block.size == 0:
            continue
        m = _match(block, ids_arr)
        rows = np.flatnonzero(m.reshape(m.shape[0], -1).any(axis=1))
        if rows.size == 0:
            continue
        r0, r1 = int(rows[0]), int(rows[-1]) + 1
        nz = np.nonzero(m[r0:r1])
        vals = block[r0:r1][nz]
        for ax in range(nd):
            parts[ax].append(nz[ax] + (offset[ax] + (start + r0 if ax == 0 else 0)))
        vparts.append(vals)
        if want_found and not found.issuperset(wanted):
            for i in wanted:
                if i not in found and (vals == i).any():
                    found.add(i)
    if not vparts:
        return tuple(np.empty(0, np.intp) for _ in range(nd)), np.empty(0, labels.dtype), found
    indices = tuple(np.concatenate(p).astype(np.intp, copy=False) for p in parts)
    return indices, np.concatenate(vparts), found


def _label_counts(labels, *, chunk: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted non-zero ids present in ``labels`` and their voxel counts (chunked bincount)."""
    counts = np.zeros(1, np.int64)
    big: dict[int, int] = {}
    for _, block in _chunks(labels, chunk):
        _check_block(block)
        if block.size == 0:
            continue
        mx = int(block.max())
        if mx <= _LUT_MAX_LABEL:
            c = np.bincount(block.reshape(-1).astype(np.intp, copy=False), minlength=mx + 1)
            if c.size > counts.size:
                c[: counts.size] += counts
                counts = c
            else:
                counts[: c.size] += c
        else:
            u, c = np.unique(block, return_counts=True)
            for i, n in zip(u.tolist(), c.tolist()):
                big[i] = big.get(i, 0) + n
    ids = np.flatnonzero(counts)
    ids = ids[ids != 0]
    cnt = counts[ids]
    if big:
        merged = dict(zip(ids.tolist(), cnt.tolist()))
        for i, n in big.items():
            merged[i] = merged.get(i, 0) + n
        merged.pop(0, None)
        keys = sorted(merged)
        return np.array(keys, dtype=np.uint64), np.array([merged[k] for k in keys], np.int64)
    return ids, cnt


def _all_bboxes(window, *, chunk: int) -> dict[int, tuple[slice, ...]]:
    """Bounding boxes (window coordinates) of every non-zero id in ``window``."""
    mx = 0
    for _, block in _chunks(window, chunk):
        _check_block(block)
        if block.size:
            mx = max(mx, int(block.max()))
    if mx == 0:
        return {}
    if mx <= _LUT_MAX_LABEL:
        objs = ndi.find_objects(np.asarray(window), max_label=mx)
        return {i + 1: sl for i, sl in enumerate(objs) if sl is not None}
    boxes: dict[int, list[list[int]]] = {}
    for start, block in _chunks(window, chunk):
        u, inv = np.unique(block, return_inverse=True)
        objs = ndi.find_objects(inv.reshape(block.shape) + 1)
        for v, sl in zip(u.tolist(), objs):
            if v == 0 or sl is None:
                continue
            lo = [sl[0].start + start] + [s.start for s in sl[1:]]
            hi = [sl[0].stop + start] + [s.stop for s in sl[1:]]
            if v in boxes:
                old = boxes[v]
                boxes[v] = [[min(a, b) for a, b in zip(old[0], lo)],
                            [max(a, b) for a, b in zip(old[1], hi)]]
            else:
                boxes[v] = [lo, hi]
    return {v: tuple(slice(a, b) for a, b in zip(*lh)) for v, lh in boxes.items()}


def _pad(box: Sequence[slice], pad: int, shape: Sequence[int]) -> tuple[slice, ...]:
    return tuple(slice(max(0, s.start - pad), min(n, s.stop + pad)) for s, n in zip(box, shape))


def _edit_in_window(window_slices: Sequence[slice], changed: np.ndarray, values,
                    dtype: np.dtype) -> LabelEdit:
    """Edit of the ``changed`` voxels of a window at ``window_slices`` of the full array."""
    nz = np.nonzero(changed)
    indices = tuple(ix + s.start for ix, s in zip(nz, window_slices))
    return LabelEdit(indices, np.asarray(values).astype(dtype, copy=False))


def _new_ids(new_ids, n: int, current_max: int, dtype: np.dtype, label_id: int) -> list[int]:
    """``n`` ids for new objects: the given ones (validated) or ``max + 1, max + 2, ...``."""
    if new_ids is None:
        start = max(current_max, label_id) + 1
        ids = list(range(start, start + n))
        for i in ids:
            as_label_id(i, dtype, what="new label id")
        return ids
    ids = _as_ids(new_ids, dtype, what="new_ids")
    if len(ids) < n:
        raise InvalidLabelsError(
            f"the split makes {n + 1} objects, so it needs {n} distinct new_ids; got {ids}"
        )
    if label_id in ids:
        raise InvalidLabelsError(f"new_ids must not contain the label being split ({label_id})")
    for i in ids:
        as_label_id(i, dtype, what="new label id")
    return ids[:n]


# --------------------------------------------------------------------------- queries


def find_bbox(labels: np.ndarray, ids, *, chunk: int = CHUNK_ELEMENTS) -> tuple[slice, ...] | None:
    """Exact bounding box of all voxels whose value is in ``ids``.

    Parameters
    ----------
    labels : (M, N[, ...]) ndarray of int
        Label array (``np.memmap`` works: it is read chunk by chunk).
    ids : int or sequence of int
        Label ids to look for.
    chunk : int, optional
        About how many elements are read per step along axis 0 (at least one
        index of axis 0).  The temporaries of a step are a few times this size;
        nothing full-size is allocated.

    Returns
    -------
    tuple of slice or None
        One ``slice(start, stop)`` per axis (stop exclusive), or None if no
        voxel has one of the ids.
    """
    check_kind(labels)
    ids = _as_ids(ids, labels.dtype)
    return _scan(labels, ids, chunk=chunk).bbox()


def label_at(labels: np.ndarray, coord: Sequence[float]) -> int:
    """The label id at ``coord`` (one coordinate per axis; floats are rounded to the nearest voxel)."""
    check_kind(labels)
    p = _round_coords(coord, labels.ndim, what="coord")[0]
    if np.any(p < 0) or np.any(p >= np.asarray(labels.shape)):
        raise InvalidLabelsError(
            f"coordinate {tuple(np.asarray(coord).tolist())} is outside the labels of shape "
            f"{tuple(labels.shape)}"
        )
    return int(labels[tuple(int(v) for v in p)])


def next_free_label(labels: np.ndarray, *, chunk: int = CHUNK_ELEMENTS) -> int:
    """``labels.max() + 1`` (at least 1), computed chunk by chunk.

    The result may not fit the dtype (e.g. 256 for full uint8 labels); the
    editing functions check that before using it.
    """
    check_kind(labels)
    return _scan(labels, [], chunk=chunk, want_max=True).max + 1


# --------------------------------------------------------------------------- edits


def merge_labels(labels: np.ndarray, ids: Sequence[int], *, into: int | None = None,
                 chunk: int = CHUNK_ELEMENTS) -> LabelEdit:
    """Merge objects: every voxel of ``ids`` gets the id ``into``.

    Parameters
    ----------
    labels : (M, N[, ...]) ndarray of int
    ids : sequence of int
        At least two distinct non-zero ids, all present in ``labels``.
    into : int, optional
        Id of the merged object; default the smallest of ``ids``.  It may be
        an id not in ``ids`` (then every listed object changes).
    chunk : int, optional
        Elements read per step of the chunked scan.

    Returns
    -------
    LabelEdit
        The voxels of ``ids`` other than ``into``, set to ``into``.
    """
    check_kind(labels)
    ids = _as_ids(ids, labels.dtype)
    if len(ids) < 2:
        raise InvalidLabelsError(
            f"merging needs at least two different label ids, got {ids}; select the objects to merge"
        )
    into = min(ids) if into is None else as_label_id(into, labels.dtype, what="into")
    change = [i for i in ids if i != into]
    keep = [into] if into in ids else []
    indices, _, found = _collect(labels, change, chunk=chunk, want_found=True, also_find=keep)
    missing = [i for i in ids if i not in found]
    if missing:
        raise _missing_error(missing)
    return LabelEdit(indices, np.full(indices[0].size, into, dtype=labels.dtype))


def delete_labels(labels: np.ndarray, ids, *, chunk: int = CHUNK_ELEMENTS) -> LabelEdit:
    """Delete objects: every voxel of ``ids`` becomes 0.

    Parameters
    ----------
    labels : (M, N[, ...]) ndarray of int
    ids : int or sequence of int
        Non-zero ids present in ``labels``.

    Returns
    -------
    LabelEdit
    """
    check_kind(labels)
    ids = _as_ids(ids, labels.dtype)
    indices, _, found = _collect(labels, ids, chunk=chunk, want_found=True)
    missing = [i for i in ids if i not in found]
    if missing:
        raise _missing_error(missing)
    return LabelEdit(indices, np.zeros(indices[0].size, dtype=labels.dtype))


def _image_window(image, labels_shape: tuple[int, ...], sl: tuple[slice, ...]) -> np.ndarray:
    """float32 window of ``image`` (same spatial shape as labels, optional trailing channels averaged)."""
    shape = tuple(getattr(image, "shape", ()))
    nd = len(labels_shape)
    if shape[:nd] != labels_shape or len(shape) not in (nd, nd + 1):
        raise InvalidImageError(
            f"image of shape {shape} does not match labels of shape {labels_shape}; pass the image "
            f"the labels were drawn on, shape {labels_shape} or {labels_shape + ('C',)}"
        )
    win = np.asarray(image[sl], dtype=np.float32)
    if win.ndim == nd + 1:
        win = win.mean(axis=-1)
    return win


def split_label(labels: np.ndarray, label_id: int, seeds, *, image: np.ndarray | None = None,
                new_ids: Sequence[int] | None = None, chunk: int = CHUNK_ELEMENTS) -> LabelEdit:
    """Split one object by seeded watershed.

    Parameters
    ----------
    labels : (M, N[, ...]) ndarray of int
    label_id : int
        The object to split.
    seeds : (K, labels.ndim) array_like of float, K >= 2
        One point per resulting object, in full-array coordinates (rounded to
        the nearest voxel).  Every seed must lie on ``label_id``.
    image : (M, N[, ...][, C]) ndarray, optional
        Intensity image of the same spatial shape (a trailing channel axis is
        averaged).  If given, the watershed runs on its Sobel gradient
        magnitude, so the cut follows edges; otherwise on the negative
        Euclidean distance transform of the object, so it follows necks.
    new_ids : sequence of int, optional
        Ids of the objects grown from seeds 2..K; default
        ``next_free_label(labels)``, +1, ...  Ids already used elsewhere are
        not checked for (the objects would join).
    chunk : int, optional
        Elements read per step of the chunked bounding-box scan.

    Returns
    -------
    LabelEdit
        The region of the first seed keeps ``label_id`` and is not in the edit;
        voxels the watershed cannot reach from any seed (a separate piece
        without a seed) keep ``label_id`` too.

    Notes
    -----
    Only the object's bounding box (padded by one voxel) is processed.
    """
    from skimage.filters import sobel
    from skimage.segmentation import watershed

    check_kind(labels)
    label_id = as_label_id(label_id, labels.dtype)
    pts = _round_coords(seeds, labels.ndim, what="seeds")
    if len(pts) < 2:
        raise InvalidLabelsError(
            f"splitting needs at least two seeds (one per resulting object), got {len(pts)}"
        )
    shape = tuple(labels.shape)
    for k, p in enumerate(pts):
        where = tuple(int(v) for v in p)
        if np.any(p < 0) or np.any(p >= np.asarray(shape)):
            raise InvalidLabelsError(
                f"seed {k} at {where} is outside the labels of shape {shape}; "
                f"place every seed inside label {label_id}"
            )
        value = int(labels[where])
        if value != label_id:
            raise InvalidLabelsError(
                f"seed {k} at {where} lies on label {value}, not on label {label_id}; "
                f"place every seed inside the object you want to split"
            )
    if len({tuple(p) for p in pts.tolist()}) < len(pts):
        raise InvalidLabelsError(
            f"two seeds fall on the same voxel ({pts.tolist()}); place the seeds apart"
        )
    scan = _scan(labels, [label_id], chunk=chunk, want_max=new_ids is None)
    ids = _new_ids(new_ids, len(pts) - 1, scan.max, labels.dtype, label_id)
    sl = _pad(scan.bbox(), 1, shape)
    window = np.asarray(labels[sl])
    mask = window == label_id
    markers = np.zeros(window.shape, np.int32)
    starts = np.array([s.start for s in sl])
    for k, p in enumerate(pts):
        markers[tuple(p - starts)] = k + 1
    if image is None:
        elevation = -ndi.distance_transform_edt(mask)
    else:
        elevation = sobel(_image_window(image, shape, sl))
    ws = watershed(elevation, markers, mask=mask)
    lut = np.array([label_id, label_id, *ids], dtype=labels.dtype)
    changed = ws >= 2
    return _edit_in_window(sl, changed, lut[ws[changed]], labels.dtype)


def _raster_polyline(vertices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixels of a polyline, 4-connected (diagonal steps get a corner pixel) so it separates 8-connected regions."""
    from skimage.draw import line as draw_line

    rr_parts, cc_parts = [], []
    for (r0, c0), (r1, c1) in zip(vertices[:-1], vertices[1:]):
        rr, cc = draw_line(int(r0), int(c0), int(r1), int(c1))
        diag = (np.diff(rr) != 0) & (np.diff(cc) != 0)
        rr_parts += [rr, rr[:-1][diag]]
        cc_parts += [cc, cc[1:][diag]]
    return np.concatenate(rr_parts), np.concatenate(cc_parts)


def split_label_by_line(labels: np.ndarray, label_id: int, line, *, width: float = 1,
                        new_ids: Sequence[int] | None = None,
                        chunk: int = CHUNK_ELEMENTS) -> LabelEdit:
    """Split one object of a 2D label image along a drawn polyline.

    Parameters
    ----------
    labels : (M, N) ndarray of int
        One 2D image.  For a stack, pass ``stack[z]`` and apply
        ``edit.lift((z,))`` to the stack.
    label_id : int
        The object to cut.
    line : (V, 2) array_like of float, V >= 2
        Polyline vertices ``(row, col)`` in pixel coordinates (rounded).
    width : float, optional
        Thickness of the cut in pixels (default 1: a 4-connected one-pixel line).
    new_ids : sequence of int, optional
        Ids of the pieces other than the largest; default
        ``next_free_label(labels)``, +1, ...
    chunk : int, optional
        Elements read per step of the chunked bounding-box scan.

    Returns
    -------
    LabelEdit
        The largest piece keeps ``label_id``; the other pieces get new ids.
        Pixels under the line go to the nearest piece (Euclidean distance), so
        the object loses no pixel.  Pieces (8-connected) are counted per
        connected part of the object: parts the line does not cut keep
        ``label_id``.

    Raises
    ------
    InvalidLabelsError
        If the line does not cut the object into at least two pieces.
    """
    check_kind(labels)
    if labels.ndim != 2:
        raise InvalidLabelsError(
            f"split_label_by_line works on one 2D image, got shape {tuple(labels.shape)}; "
            "pass labels[z] and apply edit.lift((z,)) to the stack"
        )
    label_id = as_label_id(label_id, labels.dtype)
    verts = _round_coords(line, 2, what="line")
    if len(verts) < 2:
        raise InvalidLabelsError(f"line needs at least two vertices, got {len(verts)}")
    if not np.isfinite(width) or width < 1:
        raise InvalidLabelsError(f"width must be >= 1 pixel, got {width!r}")
    scan = _scan(labels, [label_id], chunk=chunk, want_max=new_ids is None)
    if scan.lo is None:
        raise _missing_error([label_id])
    radius = (float(width) - 1.0) / 2.0
    sl = _pad(scan.bbox(), int(np.ceil(radius)), labels.shape)
    window = np.asarray(labels[sl])
    mask = window == label_id
    rr, cc = _raster_polyline(verts)
    rr = rr - sl[0].start
    cc = cc - sl[1].start
    inside = (rr >= 0) & (rr < window.shape[0]) & (cc >= 0) & (cc < window.shape[1])
    cut = np.zeros(window.shape, bool)
    cut[rr[inside], cc[inside]] = True
    if radius > 0 and cut.any():
        cut = ndi.distance_transform_edt(~cut) <= radius
    eight = np.ones((3, 3), bool)
    parts, n_parts = ndi.label(mask, structure=eight)
    pieces, n = ndi.label(mask & ~cut, structure=eight)
    not_cut = InvalidLabelsError(
        f"the line does not cut label {label_id} into pieces; draw it across the whole object"
    )
    if n < 2:
        raise not_cut
    part_of = np.zeros(n + 1, np.intp)
    part_of[pieces[pieces > 0]] = parts[pieces > 0]
    pieces_per_part = np.bincount(part_of[1:], minlength=n_parts + 1)
    if not np.any(pieces_per_part >= 2):
        raise not_cut
    # pixels under the line go to the nearest piece
    _, (ri, ci) = ndi.distance_transform_edt(pieces == 0, return_indices=True)
    full = np.where(mask, pieces[ri, ci], 0)
    sizes = np.bincount(full.reshape(-1), minlength=n + 1)
    keep = np.ones(n + 1, bool)  # pieces that keep label_id
    for part in np.flatnonzero(pieces_per_part >= 2):
        members = np.flatnonzero(part_of == part)
        members = members[members > 0]
        keep[members] = False
        keep[members[np.argmax(sizes[members])]] = True
    keep[0] = True
    movers = np.flatnonzero(~keep)
    ids = _new_ids(new_ids, movers.size, scan.max, labels.dtype, label_id)
    lut = np.full(n + 1, label_id, dtype=labels.dtype)
    lut[movers] = ids
    changed = mask & ~keep[full]
    return _edit_in_window(sl, changed, lut[full[changed]], labels.dtype)


def fill_holes(labels: np.ndarray, ids=None, *, region: Region | None = None,
               chunk: int = CHUNK_ELEMENTS) -> LabelEdit:
    """Fill background holes enclosed by objects.

    Parameters
    ----------
    labels : (M, N[, ...]) ndarray of int
    ids : int or sequence of int, optional
        Objects whose holes to fill; default every object in ``region``.
    region : tuple of slice, optional
        Limits the work to this box of the full array (default: all of it).
        Only voxels inside it change; a hole that reaches the region's border
        is not filled.
    chunk : int, optional
        Elements read per step of the chunked bounding-box scans.

    Returns
    -------
    LabelEdit
        Background (0) voxels that ``scipy.ndimage.binary_fill_holes`` of an
        object's mask fills (face connectivity) get that object's id.  Voxels
        of other objects inside a hole are left alone.  A hole enclosed by
        nested objects goes to the innermost one.
    """
    check_kind(labels)
    shape = tuple(labels.shape)
    win_sl = _region(region, shape)
    window = labels[win_sl]
    if ids is None:
        boxes = _all_bboxes(window, chunk=chunk)
    else:
        ids = _as_ids(ids, labels.dtype)
        if len(ids) <= _FEW_IDS:
            boxes = {}
            for i in ids:
                bb = _scan(window, [i], chunk=chunk).bbox()
                if bb is not None:
                    boxes[i] = bb
        else:
            everything = _all_bboxes(window, chunk=chunk)
            boxes = {i: everything[i] for i in ids if i in everything}
        missing = [i for i in ids if i not in boxes]
        if missing:
            where = "the labels" if region is None else f"the region {win_sl}"
            raise _missing_error(missing, where)
    # biggest boxes first: a hole inside nested objects ends up with the innermost one
    order = sorted(boxes, key=lambda i: -int(np.prod([s.stop - s.start for s in boxes[i]])))
    flats, vals = [], []
    for i in order:
        bb = boxes[i]
        if any(s.stop - s.start < 3 for s in bb):
            continue  # too thin to enclose anything
        sub = np.asarray(window[bb])
        mask = sub == i
        new = ndi.binary_fill_holes(mask) & (sub == 0)
        if not new.any():
            continue
        nz = np.nonzero(new)
        full = tuple(ix + (b.start + w.start) for ix, b, w in zip(nz, bb, win_sl))
        flats.append(np.ravel_multi_index(full, shape))
        vals.append(np.full(nz[0].size, i, dtype=labels.dtype))
    if not flats:
        return LabelEdit.empty(labels.ndim, labels.dtype)
    flat = np.concatenate(flats)
    val = np.concatenate(vals)
    if len(flats) > 1:  # a voxel filled twice keeps the last (innermost) fill
        uniq, first = np.unique(flat[::-1], return_index=True)
        flat, val = uniq, val[::-1][first]
    return LabelEdit(np.unravel_index(flat, shape), val)


def remove_small_objects(labels: np.ndarray, min_size: int, *, region: Region | None = None,
                         chunk: int = CHUNK_ELEMENTS) -> LabelEdit:
    """Delete objects with fewer than ``min_size`` voxels.

    Parameters
    ----------
    labels : (M, N[, ...]) ndarray of int
    min_size : int
        Objects with a voxel count ``< min_size`` become 0.
    region : tuple of slice, optional
        If given, voxels are counted inside this box only, and only voxels
        inside it change (an object cut by the box is judged by its part in
        the box).  Default: the whole array, counted chunk by chunk.
    chunk : int, optional
        Elements read per step.

    Returns
    -------
    LabelEdit
    """
    check_kind(labels)
    try:
        min_size = operator.index(min_size)
    except TypeError:
        raise InvalidLabelsError(f"min_size must be a whole number of voxels, got {min_size!r}") from None
    if min_size < 0:
        raise InvalidLabelsError(f"min_size must be >= 0 voxels, got {min_size}")
    win_sl = _region(region, tuple(labels.shape))
    window = labels[win_sl]
    ids, counts = _label_counts(window, chunk=chunk)
    small = ids[counts < min_size]
    if small.size == 0:
        return LabelEdit.empty(labels.ndim, labels.dtype)
    indices, _, _ = _collect(window, small.tolist(), chunk=chunk,
                             offset=[s.start for s in win_sl])
    return LabelEdit(indices, np.zeros(indices[0].size, dtype=labels.dtype))


def relabel_sequential(labels: np.ndarray, *, offset: int = 1,
                       chunk: int = CHUNK_ELEMENTS) -> LabelEdit:
    """Renumber objects ``offset, offset + 1, ...`` keeping their order (0 stays 0).

    Same mapping as :func:`skimage.segmentation.relabel_sequential`; the dtype
    is kept.

    Parameters
    ----------
    labels : (M, N[, ...]) ndarray of int
    offset : int, optional
        First id (>= 1).
    chunk : int, optional
        Elements read per step.

    Returns
    -------
    LabelEdit
        Every voxel whose id changes (can be most of the array).
    """
    check_kind(labels)
    offset = as_label_id(offset, labels.dtype, what="offset")
    ids, _ = _label_counts(labels, chunk=chunk)
    if ids.size == 0:
        return LabelEdit.empty(labels.ndim, labels.dtype)
    as_label_id(offset + ids.size - 1, labels.dtype, what="largest new id")
    new = np.arange(offset, offset + ids.size, dtype=np.uint64)
    top = int(ids[-1])
    lut = None
    if top <= _LUT_MAX_LABEL:
        lut = np.zeros(top + 1, dtype=labels.dtype)
        lut[ids.astype(np.intp)] = new.astype(labels.dtype)
    ids_l = ids.astype(labels.dtype)
    new_l = np.concatenate([np.zeros(1, np.uint64), new]).astype(labels.dtype)
    nd = labels.ndim
    parts: list[list[np.ndarray]] = [[] for _ in range(nd)]
    vparts = []
    for start, block in _chunks(labels, chunk):
        if block.size == 0:
            continue
        if lut is not None:
            nb = lut[block]
        else:
            pos = np.searchsorted(ids_l, block) + 1
            nb = np.where(block == 0, 0, new_l[np.minimum(pos, ids_l.size)]).astype(labels.dtype)
        ch = nb != block
        if not ch.any():
            continue
        nz = np.nonzero(ch)
        for ax in range(nd):
            parts[ax].append(nz[ax] + (start if ax == 0 else 0))
        vparts.append(nb[nz])
    if not vparts:
        return LabelEdit.empty(nd, labels.dtype)
    return LabelEdit(tuple(np.concatenate(p) for p in parts), np.concatenate(vparts))


def paint(labels: np.ndarray, mask: np.ndarray, value: int, *,
          offset: Sequence[int] | None = None) -> LabelEdit:
    """Set the voxels of ``mask`` to ``value``.

    Parameters
    ----------
    labels : (M, N[, ...]) ndarray of int
    mask : ndarray of bool, same ndim as labels
        May be smaller than ``labels``; it is placed with its first voxel at
        ``offset``.  Parts falling outside ``labels`` are ignored.
    value : int
        The id to paint (0 erases).
    offset : sequence of int, optional
        Position of ``mask[0, 0, ...]`` in ``labels``; default all zeros.

    Returns
    -------
    LabelEdit
        Mask voxels whose value is not already ``value``.
    """
    check_kind(labels)
    value = as_label_id(value, labels.dtype, what="value", allow_zero=True)
    mask = np.asarray(mask)
    if mask.ndim != labels.ndim:
        raise InvalidLabelsError(
            f"mask must have the same number of axes as labels ({labels.ndim}), got shape {mask.shape}"
        )
    if mask.dtype != bool:
        if mask.dtype.kind not in "uib" or (mask.size and not np.isin(mask, (0, 1)).all()):
            raise InvalidLabelsError(f"mask must be boolean (or 0/1), got dtype {mask.dtype}")
        mask = mask.astype(bool)
    off = [0] * labels.ndim if offset is None else [operator.index(o) for o in offset]
    if len(off) != labels.ndim:
        raise InvalidLabelsError(f"offset must have {labels.ndim} entries, got {offset!r}")
    full, msub = [], []
    for o, m, n in zip(off, mask.shape, labels.shape):
        a, b = max(o, 0), min(o + m, n)
        if b <= a:
            return LabelEdit.empty(labels.ndim, labels.dtype)
        full.append(slice(a, b))
        msub.append(slice(a - o, b - o))
    full_t = tuple(full)
    m = mask[tuple(msub)]
    window = np.asarray(labels[full_t])
    changed = m & (window != value)
    values = np.full(int(np.count_nonzero(changed)), value, dtype=labels.dtype)
    return _edit_in_window(full_t, changed, values, labels.dtype)


def paint_new_label(labels: np.ndarray, mask: np.ndarray, *,
                    offset: Sequence[int] | None = None,
                    chunk: int = CHUNK_ELEMENTS) -> tuple[LabelEdit, int]:
    """Paint ``mask`` with a new id, ``next_free_label(labels)``.

    Returns
    -------
    edit : LabelEdit
    new_id : int
    """
    check_kind(labels)
    new_id = as_label_id(next_free_label(labels, chunk=chunk), labels.dtype, what="new label id")
    return paint(labels, mask, new_id, offset=offset), new_id
