"""What a person changed in a predicted label image, and where they looked.

Two pieces of state travel with a Labels layer produced by Segment:

* :class:`PredictionSnapshot` - the labels as the model predicted them, kept
  zlib-compressed in chunks (label images compress 20-100x), so comparing the
  corrected labels with the prediction never needs a second full-size array;
* :class:`ReviewedRegions` - the boxes a person edited or marked as looked at.
  The reviewed mask of any crop is rasterized from the boxes on demand; the
  boxes are small enough to live in layer metadata and in exported samples.

:func:`summarize_corrections` compares predicted and corrected labels of one
region: objects added, deleted, merged, split, modified, and pixels changed.
No Qt, no napari.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from segloop.errors import InvalidLabelsError

__all__ = [
    "CorrectionSummary",
    "PredictionSnapshot",
    "ReviewedRegions",
    "summarize_corrections",
    "box_from_slices",
    "slices_from_box",
]

Box = tuple[tuple[int, int], ...]
"""An axis-aligned box, ``((start, stop), ...)`` per axis, stops exclusive."""


def box_from_slices(slices: Sequence[slice], shape: Sequence[int]) -> Box:
    """``((start, stop), ...)`` of ``slices`` (basic, step 1) clipped to ``shape``."""
    out = []
    for s, n in zip(slices, shape, strict=True):
        start, stop, _ = s.indices(n)
        out.append((int(start), int(max(start, stop))))
    return tuple(out)


def slices_from_box(box: Box) -> tuple[slice, ...]:
    return tuple(slice(a, b) for a, b in box)


class ReviewedRegions:
    """Where a person has looked at or corrected the labels, as a list of boxes.

    Parameters
    ----------
    shape : tuple of int
        Spatial shape of the label image (``(H, W)`` or ``(Z, H, W)``).
    boxes : sequence of Box, optional
    """

    MAX_BOXES = 4096
    """Beyond this many boxes, overlapping and touching boxes are merged (each merge only grows the area)."""

    def __init__(self, shape: Sequence[int], boxes: Sequence[Box] = ()):
        self.shape = tuple(int(s) for s in shape)
        self._boxes: list[Box] = []
        for b in boxes:
            self.add(b)

    @property
    def boxes(self) -> tuple[Box, ...]:
        return tuple(self._boxes)

    def __len__(self) -> int:
        return len(self._boxes)

    def add(self, box: Box | Sequence[slice], *, margin: int = 0) -> Box | None:
        """Mark a box as reviewed; returns it clipped to the image, or None if empty.

        ``margin`` grows the box by that many pixels on each side (edits mark
        the object's surroundings as looked at too).
        """
        if box and isinstance(box[0], slice):
            box = box_from_slices(box, self.shape)
        if len(box) != len(self.shape):
            raise ValueError(f"box {box} has {len(box)} axes; the labels have {len(self.shape)}")
        clipped = tuple((max(0, int(a) - margin), min(n, int(b) + margin)) for (a, b), n in zip(box, self.shape))
        if any(a >= b for a, b in clipped):
            return None
        if any(_contains(old, clipped) for old in self._boxes):
            return clipped
        self._boxes = [old for old in self._boxes if not _contains(clipped, old)]
        self._boxes.append(clipped)
        if len(self._boxes) > self.MAX_BOXES:
            self._boxes = _coalesce(self._boxes)
        return clipped

    def mask(self, crop: Sequence[slice] | None = None) -> np.ndarray:
        """uint8 mask (1 = reviewed) of ``crop`` (default: the whole image)."""
        crop_box = box_from_slices(crop, self.shape) if crop is not None else tuple((0, n) for n in self.shape)
        out = np.zeros(tuple(b - a for a, b in crop_box), np.uint8)
        for box in self._boxes:
            inter = tuple((max(a, ca), min(b, cb)) for (a, b), (ca, cb) in zip(box, crop_box))
            if all(a < b for a, b in inter):
                out[tuple(slice(a - ca, b - ca) for (a, b), (ca, _) in zip(inter, crop_box))] = 1
        return out

    def bbox(self) -> Box | None:
        """The bounding box of everything reviewed, or None."""
        if not self._boxes:
            return None
        arr = np.array(self._boxes)
        return tuple((int(a), int(b)) for a, b in zip(arr[:, :, 0].min(0), arr[:, :, 1].max(0)))

    def fraction(self) -> float:
        """Reviewed fraction of the image (exact: computed plane by plane for stacks)."""
        total = int(np.prod(self.shape))
        if not self._boxes or total == 0:
            return 0.0
        if len(self._boxes) == 1:
            return float(np.prod([b - a for a, b in self._boxes[0]])) / total
        covered = 0
        step = max(1, (1 << 24) // max(1, int(np.prod(self.shape[1:]))))
        for start in range(0, self.shape[0], step):
            sl = (slice(start, min(self.shape[0], start + step)),)
            covered += int(self.mask(sl + tuple(slice(None) for _ in self.shape[1:])).sum(dtype=np.int64))
        return covered / total

    def to_list(self) -> list[list[list[int]]]:
        return [[list(ax) for ax in b] for b in self._boxes]

    @classmethod
    def from_list(cls, shape: Sequence[int], boxes) -> ReviewedRegions:
        return cls(shape, [tuple((int(a), int(b)) for a, b in box) for box in boxes or ()])


def _contains(outer: Box, inner: Box) -> bool:
    return all(oa <= ia and ib <= ob for (oa, ob), (ia, ib) in zip(outer, inner))


def _touch(a: Box, b: Box) -> bool:
    return all(a0 <= b1 and b0 <= a1 for (a0, a1), (b0, b1) in zip(a, b))


def _coalesce(boxes: list[Box]) -> list[Box]:
    boxes = list(boxes)
    merged = True
    while merged:
        merged = False
        out: list[Box] = []
        for b in boxes:
            for i, o in enumerate(out):
                if _touch(o, b):
                    out[i] = tuple((min(x0, y0), max(x1, y1)) for (x0, x1), (y0, y1) in zip(o, b))
                    merged = True
                    break
            else:
                out.append(b)
        boxes = out
    return boxes


class PredictionSnapshot:
    """The predicted labels, zlib-compressed in chunks along axis 0.

    Parameters
    ----------
    labels : (H, W) or (Z, H, W) integer array-like
        Read chunk by chunk (a memmap or dask array is fine).
    chunk_bytes : int
        Uncompressed size of one chunk.
    """

    def __init__(self, labels, *, chunk_bytes: int = 8 * 2**20, level: int = 1):
        self.shape = tuple(int(s) for s in labels.shape)
        self.dtype = np.dtype(labels.dtype)
        if self.dtype.kind not in "ui":
            raise InvalidLabelsError(f"labels must be integers, got {self.dtype}")
        row_bytes = max(1, int(np.prod(self.shape[1:])) * self.dtype.itemsize)
        self.rows = max(1, chunk_bytes // row_bytes)
        self._chunks = [zlib.compress(np.ascontiguousarray(labels[i:i + self.rows]).tobytes(), level)
                        for i in range(0, self.shape[0], self.rows)]

    @property
    def nbytes_compressed(self) -> int:
        return sum(len(c) for c in self._chunks)

    def _chunk(self, i: int) -> np.ndarray:
        n = min(self.rows, self.shape[0] - i * self.rows)
        return np.frombuffer(zlib.decompress(self._chunks[i]), self.dtype).reshape((n,) + self.shape[1:])

    def write(self, start: int, rows: np.ndarray) -> None:
        """Replace rows ``start : start + len(rows)`` along axis 0 (e.g. a slice predicted later, live).

        Only the chunks those rows fall in are recompressed.
        """
        rows = np.asarray(rows, dtype=self.dtype)
        if rows.shape[1:] != self.shape[1:] or not 0 <= start <= self.shape[0] - rows.shape[0]:
            raise InvalidLabelsError(f"rows of shape {rows.shape} at {start} do not fit a snapshot of shape "
                                     f"{self.shape}")
        stop = start + rows.shape[0]
        for i in range(start // self.rows, -(-stop // self.rows)):
            lo, hi = max(start, i * self.rows), min(stop, (i + 1) * self.rows)
            chunk = self._chunk(i).copy()
            chunk[lo - i * self.rows:hi - i * self.rows] = rows[lo - start:hi - start]
            self._chunks[i] = zlib.compress(chunk.tobytes(), 1)

    def read(self, crop: Sequence[slice] | None = None) -> np.ndarray:
        """The predicted labels of ``crop`` (default: everything), as a new array."""
        box = box_from_slices(crop, self.shape) if crop is not None else tuple((0, n) for n in self.shape)
        (a0, b0), rest = box[0], slices_from_box(box[1:])
        out = np.empty(tuple(b - a for a, b in box), self.dtype)
        for i in range(a0 // self.rows, -(-b0 // self.rows)):
            lo, hi = max(a0, i * self.rows), min(b0, (i + 1) * self.rows)
            if lo < hi:
                out[lo - a0:hi - a0] = self._chunk(i)[(slice(lo - i * self.rows, hi - i * self.rows),) + rest]
        return out


def _areas(labels: np.ndarray) -> dict[int, int]:
    """Pixel count of each non-zero id (bincount when ids are small, else unique)."""
    if labels.size == 0:
        return {}
    top = int(labels.max())
    if top <= 1 << 24:
        counts = np.bincount(labels.ravel(), minlength=1)
        ids = np.nonzero(counts)[0]
        return {int(i): int(counts[i]) for i in ids if i}
    ids, counts = np.unique(labels, return_counts=True)
    return {int(i): int(n) for i, n in zip(ids, counts) if i}


def _ids_in(labels: np.ndarray, where: np.ndarray) -> list[int]:
    return [int(i) for i in np.unique(labels[where]) if i]


def _member(labels: np.ndarray, ids: list[int]) -> np.ndarray:
    """labels in ids, through a lookup table when ids are small."""
    if not ids:
        return np.zeros(labels.shape, bool)
    top = max(ids)
    if top <= 1 << 24 and int(labels.max()) <= 1 << 24:
        lut = np.zeros(max(top, int(labels.max())) + 1, bool)
        lut[ids] = True
        return lut[labels]
    return np.isin(labels, ids)


@dataclass(frozen=True)
class CorrectionSummary:
    """How corrected labels differ from the prediction, in one region.

    An object counts as *deleted* when less than half of it is still covered
    by corrected objects, *added* when less than half of it was covered by
    predicted objects; a corrected object holding at least half of each of
    two or more predicted objects is a *merge*, a predicted object holding at
    least half of each of two or more corrected objects was *split*;
    *modified* objects kept their identity (each holds half of the other)
    but changed pixels.  For semantic labels only ``pixels_changed`` and
    ``class_pixels_changed`` are filled.
    """

    pixels_changed: int
    objects_predicted: int = 0
    objects_now: int = 0
    added: int = 0
    deleted: int = 0
    merged: int = 0
    split: int = 0
    modified: int = 0
    class_pixels_changed: dict | None = None
    schema_version: int = 1

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        if self.class_pixels_changed is not None:
            return f"{self.pixels_changed:,} pixels changed"
        return (f"{self.added} added, {self.deleted} deleted, {self.merged} merged, {self.split} split, "
                f"{self.modified} reshaped; {self.pixels_changed:,} pixels changed")


def summarize_corrections(predicted: np.ndarray, corrected: np.ndarray, *, task: str = "instance"
                          ) -> CorrectionSummary:
    """Compare predicted and corrected labels of the same region.

    Parameters
    ----------
    predicted, corrected : (..., H, W) integer ndarray, same shape
    task : {"instance", "semantic"}
    """
    predicted, corrected = np.asarray(predicted), np.asarray(corrected)
    if predicted.shape != corrected.shape:
        raise InvalidLabelsError(f"predicted {predicted.shape} and corrected {corrected.shape} labels differ in shape")
    changed = predicted != corrected
    n_changed = int(changed.sum(dtype=np.int64))
    if task == "semantic":
        per_class: dict[str, int] = {}
        if n_changed:
            ids, counts = np.unique(corrected[changed], return_counts=True)
            per_class = {str(int(i)): int(c) for i, c in zip(ids, counts)}
        return CorrectionSummary(pixels_changed=n_changed, class_pixels_changed=per_class)

    # Only objects with a changed pixel can be added, deleted, merged, split or reshaped: the
    # overlap table is built over their pixels alone (fast on whole-slide label images).
    p_area_of = _areas(predicted)
    c_area_of = _areas(corrected)
    inv_p = _ids_in(predicted, changed)
    inv_c = _ids_in(corrected, changed)
    both = (predicted != 0) & (corrected != 0) & (_member(predicted, inv_p) | _member(corrected, inv_c))
    pairs = np.stack([predicted[both].astype(np.int64), corrected[both].astype(np.int64)])
    if pairs.size:
        (pp, cc), overlap = np.unique(pairs, axis=1, return_counts=True)
    else:
        pp = cc = overlap = np.zeros(0, np.int64)
    frac_p = overlap / np.array([p_area_of[int(p)] for p in pp], float) if pp.size else np.zeros(0)
    frac_c = overlap / np.array([c_area_of[int(c)] for c in cc], float) if cc.size else np.zeros(0)

    kept_p: dict[int, int] = {}
    kept_c: dict[int, int] = {}
    for p, c, o in zip(pp.tolist(), cc.tolist(), overlap.tolist()):
        kept_p[p] = kept_p.get(p, 0) + o
        kept_c[c] = kept_c.get(c, 0) + o
    deleted = sum(1 for p in inv_p if kept_p.get(p, 0) < 0.5 * p_area_of[p])
    added = sum(1 for c in inv_c if kept_c.get(c, 0) < 0.5 * c_area_of[c])
    parts_in_c: dict[int, int] = {}
    for c in cc[frac_p >= 0.5].tolist():
        parts_in_c[c] = parts_in_c.get(c, 0) + 1
    pieces_of_p: dict[int, int] = {}
    for p in pp[frac_c >= 0.5].tolist():
        pieces_of_p[p] = pieces_of_p.get(p, 0) + 1
    merged = sum(1 for n in parts_in_c.values() if n >= 2)
    split = sum(1 for n in pieces_of_p.values() if n >= 2)
    same = (frac_p >= 0.5) & (frac_c >= 0.5)
    modified = int(sum(1 for p, c, o in zip(pp[same], cc[same], overlap[same])
                       if not (o == p_area_of[int(p)] == c_area_of[int(c)])
                       and parts_in_c.get(int(c), 0) < 2 and pieces_of_p.get(int(p), 0) < 2))
    return CorrectionSummary(pixels_changed=n_changed, objects_predicted=len(p_area_of),
                             objects_now=len(c_area_of), added=added, deleted=deleted, merged=merged,
                             split=split, modified=modified)
