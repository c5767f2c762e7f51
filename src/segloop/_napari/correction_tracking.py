"""Correction tracking for napari Labels layers.

A :class:`Tracker` follows one Labels layer.  It holds the model's prediction
(compressed, when the layer came from Segment) and the reviewed boxes, and
grows them from the layer's own ``paint`` event, which napari emits for every
committed edit: brush strokes, fill, polygons, and our proofreading actions
(applied with ``data_setitem``) -- except machine-made fills applied inside
:meth:`Tracker.unreviewed` (slice interpolation).  The boxes are mirrored into
``layer.metadata["segloop"]["reviewed"]`` so they are saved with the layer and
exported with each sample.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np

from segloop.core.editing.corrections import (
    CorrectionSummary,
    PredictionSnapshot,
    ReviewedRegions,
    summarize_corrections,
)

EDIT_MARGIN = 8
"""Pixels around each edit that count as looked at."""

OVERLAY_MAX_SIDE = 1024

_TRACKERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


ATOM_TILE = 128
"""Pixels changed by one edit are grouped per tile of this size: removing two specks in opposite
corners marks two small boxes, not the whole image between them."""


def atom_boxes(atom, shape) -> list[tuple[tuple[int, int], ...]]:
    """Boxes around what one napari history atom changed (mask-paint atom or (indices, old, new) tuple)."""
    key = getattr(atom, "slice_key", None)
    if key is not None:                 # brush dab, fill, polygon: napari's own bounding box
        return [tuple((s.indices(n)[0], s.indices(n)[1]) for s, n in zip(key, shape))]
    indices = [np.asarray(ix, np.int64).ravel() for ix in atom[0]]
    if not indices or indices[0].size == 0:
        return []
    tiles = np.stack([ix // ATOM_TILE for ix in indices])
    _, group = np.unique(tiles, axis=1, return_inverse=True)
    group = group.ravel()
    n = int(group.max()) + 1
    boxes = []
    lo = [np.full(n, np.iinfo(np.int64).max) for _ in indices]
    hi = [np.full(n, -1, np.int64) for _ in indices]
    for ax, ix in enumerate(indices):
        np.minimum.at(lo[ax], group, ix)
        np.maximum.at(hi[ax], group, ix)
    for g in range(n):
        boxes.append(tuple((int(lo[ax][g]), int(hi[ax][g]) + 1) for ax in range(len(indices))))
    return boxes


class Tracker:
    """Prediction snapshot + reviewed regions of one Labels layer."""

    def __init__(self, layer, *, snapshot: PredictionSnapshot | None = None):
        self._layer = weakref.ref(layer)
        self.snapshot = snapshot
        meta = layer.metadata.setdefault("segloop", {})
        saved = (meta.get("reviewed") or {}).get("boxes", ())
        self.reviewed = ReviewedRegions.from_list(layer.data.shape, saved)
        base = layer.metadata.get("segloop_reviewed_base")     # a sample's reviewed mask, read back
        self.base = np.asarray(base, np.uint8) if base is not None and np.shape(base) == layer.data.shape else None
        self.edits = 0
        self._unreviewed = 0
        self.listeners: list[Callable[[], None]] = []
        self.overlay = None
        layer.events.paint.connect(self._on_paint)
        self._sync()

    @property
    def layer(self):
        return self._layer()

    # -- growing the reviewed region ---------------------------------------------
    def _on_paint(self, event) -> None:
        layer = self.layer
        if layer is None:
            return
        if not self._unreviewed:
            for atom in event.value or ():
                for box in atom_boxes(atom, layer.data.shape):
                    self.reviewed.add(box, margin=EDIT_MARGIN)
        self.edits += 1
        self._sync()

    @contextmanager
    def unreviewed(self) -> Iterator[None]:
        """Edits committed inside this block change the labels without marking anything reviewed.

        For machine-made fills (slice interpolation): a person has not looked at those voxels yet.
        """
        self._unreviewed += 1
        try:
            yield
        finally:
            self._unreviewed -= 1

    def mark(self, box) -> None:
        """Mark a box (``((start, stop), ...)`` or slices, data coordinates) as reviewed."""
        self.reviewed.add(box)
        self._sync()

    @property
    def has_review(self) -> bool:
        return bool(self.reviewed.boxes) or (self.base is not None and bool(self.base.any()))

    def reviewed_mask(self, crop=None) -> np.ndarray:
        """uint8 reviewed mask of ``crop``: marked boxes, plus the mask a sample was read back with."""
        mask = self.reviewed.mask(crop)
        if self.base is not None:
            mask |= self.base[tuple(crop) if crop is not None else ...]
        return mask

    def reviewed_percent(self) -> float:
        """Reviewed share of the layer in %, from a grid of 64-px cells (cheap enough for every edit)."""
        if self.base is not None:                # a sample read back: small, count exactly
            return 100.0 * float(self.reviewed_mask().mean())
        shape = self.reviewed.shape
        cells = [max(1, -(-n // 64)) for n in shape]
        grid = np.zeros(cells, bool)
        for box in self.reviewed.boxes:
            grid[tuple(slice(a * c // n, -(-b * c // n)) for (a, b), c, n in zip(box, cells, shape))] = True
        return 100.0 * float(grid.mean())

    def reviewed_bbox(self):
        """Bounding box (slices) of everything reviewed, or None."""
        boxes = list(self.reviewed.boxes)
        if self.base is not None and self.base.any():
            idx = np.nonzero(self.base)
            boxes.append(tuple((int(i.min()), int(i.max()) + 1) for i in idx))
        if not boxes:
            return None
        arr = np.array(boxes)
        return tuple(slice(int(a), int(b)) for a, b in zip(arr[:, :, 0].min(0), arr[:, :, 1].max(0)))

    def mark_many(self, boxes) -> None:
        for box in boxes:
            self.reviewed.add(box)
        self._sync()

    def _sync(self) -> None:
        layer = self.layer
        if layer is None:
            return
        meta = layer.metadata.setdefault("segloop", {})
        meta["reviewed"] = {"boxes": self.reviewed.to_list(), "edits": self.edits}
        if self.overlay is not None:
            self._refresh_overlay()
        for cb in list(self.listeners):
            cb()

    # -- what changed ------------------------------------------------------------
    def summary(self, crop=None, *, task: str = "instance") -> CorrectionSummary | None:
        """Compare the layer with the prediction in ``crop``; None when there is no prediction."""
        layer = self.layer
        if layer is None or self.snapshot is None or self.snapshot.shape != tuple(layer.data.shape):
            return None
        crop = crop or tuple(slice(None) for _ in layer.data.shape)
        return summarize_corrections(self.snapshot.read(crop), np.asarray(layer.data[tuple(crop)]), task=task)

    # -- overlay ---------------------------------------------------------------------
    def coarse_mask(self, max_bytes: int = 32 * 2**20) -> tuple[np.ndarray, int]:
        """The reviewed mask downsampled in-plane (any pixel reviewed), at most ``max_bytes`` in all."""
        shape = self.reviewed.shape
        planes = int(np.prod(shape[:-2])) if len(shape) > 2 else 1
        side = min(OVERLAY_MAX_SIDE, max(16, int((max_bytes / planes) ** 0.5)))
        f = max(1, -(-max(shape[-2:]) // side))
        lead = shape[:-2]
        out = np.zeros(lead + tuple(-(-n // f) for n in shape[-2:]), np.uint8)
        for box in self.reviewed.boxes:
            sl = tuple(slice(a, b) for a, b in box[:-2]) + tuple(slice(a // f, -(-b // f)) for a, b in box[-2:])
            out[sl] = 1
        return out, f

    def show_overlay(self, viewer, visible: bool = True) -> None:
        layer = self.layer
        if layer is None:
            return
        if not visible:
            if self.overlay is not None and self.overlay in viewer.layers:
                viewer.layers.remove(self.overlay)
            self.overlay = None
            return
        if self.overlay is None or self.overlay not in viewer.layers:
            mask, f = self.coarse_mask()
            scale = np.array(layer.scale, float)
            translate = np.array(layer.translate, float)
            scale[-2:] *= f
            translate[-2:] += (f - 1) / 2 * np.array(layer.scale[-2:], float)
            self.overlay = viewer.add_image(mask, name=f"{layer.name} · reviewed", colormap="green",
                                            contrast_limits=(0, 1), opacity=0.3, blending="additive",
                                            scale=scale, translate=translate,
                                            metadata={"segloop_overlay_of": layer.name})
            viewer.layers.selection.active = layer      # keep clicks and keys going to the labels
        else:
            self._refresh_overlay()

    def _refresh_overlay(self) -> None:
        mask, _ = self.coarse_mask()
        if self.overlay.data.shape == mask.shape:
            self.overlay.data = mask


def tracker_for(layer, *, create: bool = True) -> Tracker | None:
    """The layer's tracker (made on first use for layers drawn from scratch or opened from disk)."""
    tr = _TRACKERS.get(layer)
    if tr is None and create:
        tr = _TRACKERS[layer] = Tracker(layer)
    return tr


def track(layer, *, snapshot: PredictionSnapshot | None) -> Tracker:
    """Start tracking a layer that Segment just produced (its data is the prediction).

    A widget may already have made the layer's tracker when the layer was inserted: the
    snapshot is given to that one, so its listeners keep working.
    """
    tr = _TRACKERS.get(layer)
    if tr is None:
        tr = _TRACKERS[layer] = Tracker(layer, snapshot=snapshot)
    else:
        tr.snapshot = snapshot
        tr._sync()
    return tr
