"""Proofread dock widget: merge, split, delete, fill, clean and paint labels, undoably.

Every action computes a :class:`segloop.core.editing.proofread.LabelEdit` (only the
voxels that change, found inside the affected objects' bounding box) and
applies it with ``Labels.data_setitem``, so it lands on the layer's own undo
stack next to brush strokes: napari's Ctrl+Z / Ctrl+Shift+Z undo and redo it.

Selecting: with the layer in pan/zoom mode, click labels to select them (each
click is kept, so two clicks inside one object are two split seeds); a click
on background clears the selection.  Keys on the layer: M merge (instead of
napari's "new label", which N now does), S split, Delete delete, N new label.

Click to segment (:mod:`segloop._napari.click_mode`, the last section): with an interactive
model and click mode on, a click (Shift: not the object) or a box makes a candidate object;
Enter accepts it as a new label in one undo step, Escape clears.
"""

from __future__ import annotations

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, Label, PushButton, SpinBox
from napari.layers import Labels, Shapes
from napari.utils.notifications import show_error, show_info

from segloop._napari._regions import OffView, plane_index, region, view_box
from segloop._napari.click_mode import ClickSection
from segloop._napari.correction_tracking import tracker_for
from segloop.core.editing import proofread as pr
from segloop.errors import SegloopError

__all__ = ["ProofreadWidget"]

SCOPES = ("current slice", "whole stack / volume")
RECT_LAYER = "reviewed rectangles"
SUMMARY_MAX_PIXELS = 2**22
"""The live change summary is computed when the reviewed bounding box is at most this big (else at export)."""


class ProofreadWidget(Container):
    """Proofreading actions on the selected Labels layer (see the module docstring)."""

    def __init__(self, napari_viewer):
        super().__init__(labels=False)
        self.viewer = napari_viewer
        self.clicks: list[tuple[int, tuple[float, ...]]] = []     # (label id, data coordinate)
        self._bound: Labels | None = None

        self.layer = ComboBox(label="labels", choices=self._labels_choices, nullable=True)
        self.scope = ComboBox(label="edit in", choices=SCOPES, value=SCOPES[0])
        self.selection = Label(value="click labels to select them (pan/zoom mode)")
        self.merge_button = PushButton(text="Merge [M]")
        self.split_button = PushButton(text="Split from clicks [S]")
        self.delete_button = PushButton(text="Delete [Del]")
        self.fill_button = PushButton(text="Fill holes")
        self.min_size = SpinBox(label="smaller than", value=30, min=1, max=10**7)
        self.small_button = PushButton(text="Remove small objects")
        self.new_button = PushButton(text="New label [N]")
        self.clear_button = PushButton(text="Clear selection")
        self.mark_view_button = PushButton(text="Mark view reviewed")
        self.mark_slice_button = PushButton(text="Mark slice reviewed")
        self.mark_rect_button = PushButton(text="Mark rectangles reviewed")
        self.overlay = CheckBox(text="show reviewed overlay", value=False)
        self.status = Label(value="")
        self.review = Label(value="")
        for label in (self.selection, self.status, self.review):
            label.native.setWordWrap(True)          # long messages wrap instead of widening the dock
        edit = Container(layout="horizontal", labels=False,
                         widgets=[self.merge_button, self.split_button, self.delete_button])
        clean = Container(layout="horizontal", labels=False, widgets=[self.fill_button, self.new_button])
        small = Container(layout="horizontal", labels=True, widgets=[self.min_size, self.small_button])
        review = Container(layout="horizontal", labels=False,
                           widgets=[self.mark_view_button, self.mark_slice_button])
        self.click_mode = ClickSection(self)       # click to segment with an interactive model
        self.extend([self.layer, self.scope, self.selection, edit, clean, small, self.clear_button,
                     review, self.mark_rect_button, self.overlay, self.status, self.review, self.click_mode])

        self.merge_button.changed.connect(lambda *_: self.merge())
        self.split_button.changed.connect(lambda *_: self.split())
        self.delete_button.changed.connect(lambda *_: self.delete())
        self.fill_button.changed.connect(lambda *_: self.fill_holes())
        self.small_button.changed.connect(lambda *_: self.remove_small())
        self.new_button.changed.connect(lambda *_: self.new_label())
        self.clear_button.changed.connect(lambda *_: self.clear())
        self.mark_view_button.changed.connect(lambda *_: self.mark_view())
        self.mark_slice_button.changed.connect(lambda *_: self.mark_slice())
        self.mark_rect_button.changed.connect(lambda *_: self.mark_rectangles())
        self.overlay.changed.connect(self._toggle_overlay)
        self.layer.changed.connect(self._bind)

        layers = self.viewer.layers
        layers.events.inserted.connect(self._refresh_layers)
        layers.events.removed.connect(self._refresh_layers)
        layers.selection.events.active.connect(self._follow_active)
        self.native.destroyed.connect(self._on_destroyed)
        self._refresh_layers()
        self._follow_active()

    # -- layer bookkeeping ---------------------------------------------------------
    def _labels_choices(self, _widget=None):
        return [(layer.name, layer) for layer in self.viewer.layers if isinstance(layer, Labels)]

    def _refresh_layers(self, *_):
        self.layer.reset_choices()
        if self.layer.value is None and self.layer.choices:
            self.layer.value = self.layer.choices[-1]
        self._bind()
        self.click_mode.refresh()

    def _follow_active(self, *_):
        active = self.viewer.layers.selection.active
        if isinstance(active, Labels) and active is not self.layer.value:
            self.layer.value = active

    def _bind(self, *_):
        """Attach the click selector and keys to the chosen layer (and detach from the previous one)."""
        layer = self.layer.value
        if layer is self._bound:
            return
        self._unbind()
        self.clicks.clear()
        self._show_selection()
        self.click_mode.bind(layer)
        if layer is None:
            return
        layer.mouse_drag_callbacks.append(self._on_mouse)
        for key, fn in (("m", self.merge), ("s", self.split), ("Delete", self.delete),
                        ("Backspace", self.delete), ("n", self.new_label)):
            layer.bind_key(key, lambda _layer, fn=fn: fn(), overwrite=True)
        tr = tracker_for(layer)
        tr.listeners.append(self._show_review)
        self.scope.visible = layer.data.ndim >= 3
        self._bound = layer
        self._show_review()

    def _unbind(self):
        layer, self._bound = self._bound, None
        if layer is None:
            return
        if self._on_mouse in layer.mouse_drag_callbacks:
            layer.mouse_drag_callbacks.remove(self._on_mouse)
        for key in ("m", "s", "Delete", "Backspace", "n"):
            layer.bind_key(key, None)
        tr = tracker_for(layer, create=False)
        if tr is not None and self._show_review in tr.listeners:
            tr.listeners.remove(self._show_review)

    def _on_destroyed(self, *_):
        self._unbind()
        self.click_mode.detach()
        layers = self.viewer.layers
        for event, cb in ((layers.events.inserted, self._refresh_layers), (layers.events.removed, self._refresh_layers),
                          (layers.selection.events.active, self._follow_active)):
            try:
                event.disconnect(cb)
            except (TypeError, ValueError, RuntimeError):
                pass

    # -- selecting by clicks -------------------------------------------------------
    def _on_mouse(self, layer, event):
        if layer.mode != "pan_zoom" or self.click_mode.active:     # in click mode a click segments
            return
        start = np.asarray(event.position)
        yield
        while event.type == "mouse_move":
            if np.linalg.norm(np.asarray(event.position) - start) > 0:   # a drag pans: not a click
                return
            yield
        value = layer.get_value(event.position, view_direction=event.view_direction,
                                dims_displayed=event.dims_displayed, world=True)
        if isinstance(value, tuple):            # multiscale labels: (level, value)
            value = value[-1]
        coord = tuple(float(c) for c in layer.world_to_data(event.position))
        self.click(int(value or 0), coord)

    def click(self, label: int, coord) -> None:
        """Select ``label`` clicked at data coordinate ``coord`` (0 clears the selection)."""
        if label == 0:
            self.clicks.clear()
        else:
            self.clicks.append((int(label), tuple(float(c) for c in coord)))
        self._show_selection()

    def clear(self) -> None:
        self.clicks.clear()
        self._show_selection()

    @property
    def selected(self) -> list[int]:
        return list(dict.fromkeys(label for label, _ in self.clicks))

    def _show_selection(self):
        ids = self.selected
        if not ids:
            self.selection.value = "click labels to select them (pan/zoom mode)"
        else:
            self.selection.value = f"selected: {', '.join(map(str, ids))} ({len(self.clicks)} clicks)"

    # -- applying edits -------------------------------------------------------------
    def _target(self):
        """(layer, array to edit, leading index) for the scope: a plane view of a stack, or everything."""
        layer = self.layer.value
        if layer is None:
            raise _UserError("no Labels layer: run Segment or add a Labels layer first")
        data = layer.data
        if not isinstance(data, np.ndarray):
            raise _UserError(f"{layer.name!r} is not an in-memory array; proofreading needs a NumPy-backed layer")
        if data.ndim >= 3 and self.scope.value == SCOPES[0]:
            dims = self.viewer.dims
            shown = tuple(dims.displayed)[-2:]
            if dims.ndisplay == 3 or shown != (dims.ndim - 2, dims.ndim - 1):
                raise _UserError("'current slice' needs the 2D view with the default axis order; switch to 2D "
                                 "(or pick 'whole stack / volume' to edit in 3D)")
            lead = plane_index(layer, self.viewer)
            return layer, data[lead], lead
        return layer, data, ()

    def _apply(self, edit: pr.LabelEdit, lead: tuple[int, ...], what: str, looked_at=None) -> int:
        """Apply ``edit`` as one undo step; ``looked_at`` (slices of the edited array) is marked reviewed."""
        layer = self.layer.value
        if lead:
            edit = edit.lift(lead)
        if edit.n_changed == 0:
            self.status.value = f"{what}: nothing changed"
            return 0
        layer.data_setitem(edit.indices, edit.values)        # one step on napari's undo stack
        if looked_at is not None:                            # the whole objects, not only changed pixels
            tracker_for(layer).mark(tuple(slice(i, i + 1) for i in lead) + tuple(looked_at))
        else:
            self._show_review()        # napari emits `paint` before data_setitem writes: summarize after
        self.status.value = f"{what}: {edit.n_changed:,} pixels changed (Ctrl+Z undoes)"
        return edit.n_changed

    def _run(self, what: str, fn) -> int:
        try:
            return fn()
        except (_UserError, OffView) as e:
            self.status.value = str(e)
            show_info(f"segloop: {e}")
        except SegloopError as e:
            self.status.value = f"{what}: {e}"
            show_error(f"segloop: {what}: {e}")
        return 0

    def _seeds(self, lead):
        return [c[len(lead):] if lead else c for _, c in self.clicks]

    def merge(self) -> int:
        def go():
            ids = self.selected
            if len(ids) < 2:
                raise _UserError("merge: click two or more labels first")
            layer, arr, lead = self._target()
            n = self._apply(pr.merge_labels(arr, ids), lead, f"merged {len(ids)} labels",
                            looked_at=pr.find_bbox(arr, ids))
            self.clear()
            return n
        return self._run("merge", go)

    def split(self) -> int:
        def go():
            ids = self.selected
            if len(ids) != 1 or len(self.clicks) < 2:
                raise _UserError("split: click two or more points inside ONE label (one per piece)")
            layer, arr, lead = self._target()
            seeds = self._seeds(lead)
            if len({tuple(np.round(c).astype(int)) for c in seeds}) < len(seeds):
                raise _UserError("split: click different points, one inside each piece")
            n = self._apply(pr.split_label(arr, ids[0], seeds), lead,
                            f"split label {ids[0]} into {len(self.clicks)}", looked_at=pr.find_bbox(arr, ids))
            self.clear()
            return n
        return self._run("split", go)

    def delete(self) -> int:
        def go():
            ids = self.selected
            if not ids:
                raise _UserError("delete: click the labels to delete first")
            layer, arr, lead = self._target()
            n = self._apply(pr.delete_labels(arr, ids), lead, f"deleted {len(ids)} labels")
            self.clear()
            return n
        return self._run("delete", go)

    def fill_holes(self) -> int:
        def go():
            layer, arr, lead = self._target()
            ids = self.selected or None
            reg = None if ids else self._view_region(arr, lead)
            return self._apply(pr.fill_holes(arr, ids, region=reg), lead,
                               "filled holes" + (f" in {ids}" if ids else " in view"))
        return self._run("fill holes", go)

    def remove_small(self) -> int:
        def go():
            layer, arr, lead = self._target()
            return self._apply(pr.remove_small_objects(arr, int(self.min_size.value)), lead,
                               f"removed objects < {self.min_size.value} px")
        return self._run("remove small objects", go)

    def _view_region(self, arr, lead):
        box = view_box(self.layer.value)
        return tuple(slice(None) for _ in range(arr.ndim - 2)) + box

    def new_label(self) -> int:
        def go():
            layer = self.layer.value
            if layer is None:
                raise _UserError("no Labels layer")
            new = pr.next_free_label(layer.data)
            if new > np.iinfo(layer.data.dtype).max:
                raise _UserError(f"no free label id left in {layer.data.dtype}; convert the layer to a wider "
                                 "type (e.g. layer.data = layer.data.astype('uint32'))")
            layer.selected_label = new
            layer.mode = "paint"
            self.status.value = f"painting new label {layer.selected_label}"
            return layer.selected_label
        return self._run("new label", go)

    # -- reviewed regions ------------------------------------------------------------
    def mark_view(self) -> None:
        def go():
            layer = self.layer.value
            if layer is None:
                raise _UserError("no Labels layer")
            tracker_for(layer).mark(region(layer, self.viewer, "view"))
        self._run("mark view reviewed", go)

    def mark_slice(self) -> None:
        layer = self.layer.value
        if layer is not None:
            tracker_for(layer).mark(region(layer, self.viewer, "slice"))

    def mark_rectangles(self) -> int:
        """Mark the rectangles drawn in the "reviewed rectangles" Shapes layer (made on first use)."""
        layer = self.layer.value
        if layer is None:
            return 0
        if RECT_LAYER not in self.viewer.layers:
            shapes = self.viewer.add_shapes(name=RECT_LAYER, edge_color="lime", face_color="transparent",
                                            ndim=layer.ndim)
            shapes.mode = "add_rectangle"
            self.status.value = "draw rectangles, then press 'Mark rectangles reviewed' again"
            return 0
        shapes: Shapes = self.viewer.layers[RECT_LAYER]
        tr = tracker_for(layer)
        shape = tr.reviewed.shape
        boxes = []
        for verts in shapes.data:
            pts = np.array([layer.world_to_data(shapes.data_to_world(v)) for v in verts])
            lo, hi = np.floor(pts.min(0)).astype(int), np.ceil(pts.max(0)).astype(int)
            box = []
            for ax, n_ax in enumerate(shape):
                if hi[ax] - lo[ax] < 1:      # flat axis (the slice the rectangle was drawn on)
                    c = int(np.clip(np.round(lo[ax]), 0, n_ax - 1))
                    box.append((c, c + 1))
                else:
                    box.append((int(max(0, lo[ax])), int(min(n_ax, hi[ax] + 1))))
            boxes.append(tuple(box))
        tr.mark_many(boxes)
        n = len(boxes)
        shapes.data = []
        self.status.value = f"marked {n} rectangles reviewed"
        return n

    def _toggle_overlay(self, on: bool):
        layer = self.layer.value
        if layer is not None:
            tracker_for(layer).show_overlay(self.viewer, bool(on))

    def _show_review(self):
        layer = self.layer.value
        if layer is None:
            return
        tr = tracker_for(layer)
        msg = f"reviewed: {tr.reviewed_percent():.1f}% of {layer.name!r}"
        bbox = tr.reviewed.bbox()
        if bbox is not None and np.prod([b - a for a, b in bbox]) <= SUMMARY_MAX_PIXELS:
            summary = tr.summary(tuple(slice(a, b) for a, b in bbox))
            if summary is not None and summary.pixels_changed:
                msg += f"; changes: {summary.describe()}"
        self.review.value = msg


class _UserError(Exception):
    """A missing step the person can take (shown as info, not as an error)."""
