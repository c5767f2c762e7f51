"""Correction tracking for napari Labels layers.

A :class:`Tracker` follows one Labels layer.  It holds the model's prediction
(compressed, when the layer came from Segment) and the reviewed boxes, and
grows them from the layer's own ``paint`` event, which napari emits for every
committed edit: brush strokes, fill, polygons, and our proofreading actions
(applied with ``data_setitem``).  The boxes are mirrored into
``layer.metadata["segloop"]["reviewed"]`` so they are saved with the layer and
exported with each sample.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

import numpy as np

from segloop.core.corrections import (
    CorrectionSummary,
    PredictionSnapshot,
    ReviewedRegions,
    summarize_corrections,
)

EDIT_MARGIN = 8
"""Pixels around each edit that count as looked at."""

OVERLAY_MAX_SIDE = 1024

_TRACKERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def atom_box(atom, shape) -> tuple[tuple[int, int], ...] | None:
    """Bounding box of one napari history atom (mask-paint atom or (indices, old, new) tuple)."""
    key = getattr(atom, "slice_key", None)
    if key is not None:
        return tuple((s.indices(n)[0], s.indices(n)[1]) for s, n in zip(key, shape))
    indices = atom[0]
    if not len(indices) or np.size(indices[0]) == 0:
        return None
    return tuple((int(np.min(ix)), int(np.max(ix)) + 1) for ix in indices)


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
        for atom in event.value or ():
            box = atom_box(atom, layer.data.shape)
            if box is not None:
                self.reviewed.add(box, margin=EDIT_MARGIN)
        self.edits += 1
        self._sync()

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

    def mark_slice(self, index: tuple[int, ...]) -> None:
        """Mark a whole plane reviewed: ``index`` fixes the leading (non-displayed) axes."""
        shape = self.reviewed.shape
        box = tuple((i, i + 1) for i in index) + tuple((0, n) for n in shape[len(index):])
        self.mark(box)

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
    def coarse_mask(self) -> tuple[np.ndarray, int]:
        """The reviewed mask downsampled in-plane so no side exceeds OVERLAY_MAX_SIDE (any pixel reviewed)."""
        shape = self.reviewed.shape
        f = max(1, -(-max(shape[-2:]) // OVERLAY_MAX_SIDE))
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
    """Start tracking a layer that Segment just produced (its data is the prediction)."""
    tr = _TRACKERS[layer] = Tracker(layer, snapshot=snapshot)
    return tr
