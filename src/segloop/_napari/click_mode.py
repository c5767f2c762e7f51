"""Click to segment: the Proofread widget's section for interactive (click) models.

With **click mode** on, a click on the image (the selected layer in pan/zoom mode) is a
*positive* click on the object, a **Shift**-click a *negative* one (not the object).  The clicks
are shown in a Points layer ``clicks`` (green positive, red negative) and sent, off the main
thread, to the chosen interactive model (:func:`segloop.core.inference.interactive.load_interactive`);
its candidate mask is drawn as a translucent overlay ``click candidate`` - nothing is written
to the labels yet.  A newer click supersedes an older one: a result that arrives after the
prompt changed is dropped.  "Segment box" uses the last rectangle of the selected Shapes layer.

**Enter** (or "Accept") writes the candidate as a NEW label, on background pixels only unless
"overwrite other objects" is ticked, as ONE step on the layer's undo stack (Ctrl+Z undoes it);
marks the object's box reviewed; and records the prompt in
``layer.metadata["segloop"]["prompted"]``, which the Export widget copies into the sample's
``meta.json`` (``extra.prompted``) for the objects inside the exported crop.  **Escape** clears
the clicks and the candidate.

On a stack or volume, a 2D model works on the current plane (clicks carry the plane); all
clicks of one object must be on one plane, in the 2D view.  A multiscale (whole-slide) image
is read at its finest level; the model reads only a window around the clicks.
"""

from __future__ import annotations

import datetime as _dt
import functools
from dataclasses import dataclass
from typing import Any

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, Label, PushButton
from napari.layers import Image, Labels, Shapes
from napari.utils.notifications import show_error, show_info

from segloop._napari._regions import spatial_shape
from segloop._napari.correction_tracking import tracker_for
from segloop._napari.model_pick import interactive_models
from segloop.core.editing import proofread as pr
from segloop.errors import InvalidImageError, InvalidPromptError, SegloopError

__all__ = ["CANDIDATE_LAYER", "CLICKS_LAYER", "ClickSection", "LOAD_PACKAGE", "prompted_in_crop"]

LOAD_PACKAGE = "Load package…"
CLICKS_LAYER = "clicks"
CANDIDATE_LAYER = "click candidate"
POSITIVE = (0.15, 0.95, 0.2, 1.0)
NEGATIVE = (1.0, 0.15, 0.15, 1.0)
HINT = "click: object · Shift-click: not object · Enter: accept · Esc: clear"


@dataclass(frozen=True)
class _Request:
    """One prompt for the worker, gathered on the main thread."""

    generation: int
    model: str
    image: Any
    positive: tuple
    negative: tuple
    box: tuple | None
    z: int | None
    previous: Any                               # the last CropMask, or None
    channel_axis: int | None
    pixel_size: float | None


class ClickSection(Container):
    """The "click to segment" section of :class:`~segloop._napari.proofread_widget.ProofreadWidget`.

    Parameters
    ----------
    owner : ProofreadWidget
        Gives the viewer and the Labels layer (``owner.layer.value``); it calls :meth:`bind`
        when its layer changes and :meth:`refresh` when layers are added or removed.
    """

    def __init__(self, owner):
        super().__init__(labels=True)
        self.owner = owner
        self.viewer = owner.viewer
        self.positive: list[tuple[float, ...]] = []   # labels data coordinates, all axes
        self.negative: list[tuple[float, ...]] = []
        self.box: tuple[float, float, float, float] | None = None
        self.plane: tuple[int, ...] | None = None     # leading indices of the clicks' plane
        self.candidate = None                          # CropMask of the newest drawn prompt
        self.drawn: list[int] = []                     # generations drawn (newest last)
        self.dropped = 0                               # results that came back after a newer prompt
        self._info: dict = {}                          # the candidate's model (name, version, sha256)
        self._generation = 0
        self._worker = None
        self._pending: _Request | None = None
        self._accept_when_ready = False
        self._models: dict[tuple, Any] = {}           # loaded models by (package path, mtime)
        self._layer: Labels | None = None
        self._keys: list = []                          # (keymap owner, key, what was bound before)
        self._closed = False

        self.title = Label(value="<b>Click to segment</b>")
        self.model = ComboBox(label="click model", choices=lambda _w=None: [*interactive_models(), LOAD_PACKAGE],
                              tooltip="interactive (click) models: bundled, registered or on $SEGLOOP_MODEL_PATH")
        self.package = FileEdit(label="package", mode="d")
        self.image = ComboBox(label="image", choices=self._image_choices, nullable=True,
                              tooltip="the image the model reads (its finest level for a whole slide)")
        self.toggle = CheckBox(text="click mode (Shift-click: not object)", value=False)
        self.replace = CheckBox(text="overwrite other objects", value=False,
                                tooltip="off: the new object takes only background pixels")
        self.box_button = PushButton(text="Segment box")
        self.accept_button = PushButton(text="Accept [Enter]")
        self.clear_button = PushButton(text="Clear [Esc]")
        self.status = Label(value="")
        self.status.native.setWordWrap(True)
        buttons = Container(layout="horizontal", labels=False,
                            widgets=[self.box_button, self.accept_button, self.clear_button])
        self.extend([self.title, self.model, self.package, self.image, self.toggle, self.replace, buttons,
                     self.status])
        self._show_package()
        self.model.changed.connect(self._show_package)
        self.toggle.changed.connect(self._on_toggle)
        self.box_button.changed.connect(lambda *_: self.segment_box())
        self.accept_button.changed.connect(lambda *_: self.accept())
        self.clear_button.changed.connect(lambda *_: self.clear_prompt())
        self.viewer.mouse_drag_callbacks.append(self._on_mouse)

    # -- choices and binding ------------------------------------------------------
    def _image_choices(self, _w=None):
        return [(layer.name, layer) for layer in self.viewer.layers
                if isinstance(layer, Image) and not layer.metadata.get("segloop_overlay_of")]

    def _show_package(self, *_):
        self.package.visible = self.model.value == LOAD_PACKAGE

    def refresh(self) -> None:
        """Update the image list (layers added or removed); pick the labels' own image if none is chosen."""
        self.image.reset_choices()
        if self.image.value is None:
            self.image.value = self._default_image()

    def _default_image(self):
        layer = self._layer
        images = [im for im in self.image.choices if im is not None]
        if layer is None or not images:
            return images[-1] if images else None
        src = (layer.metadata.get("segloop") or {}).get("source_layer")
        named = [im for im in images if im.name == src]
        fits = [im for im in images if spatial_shape(im) == spatial_shape(layer)]
        return (named or fits or images)[-1]

    def bind(self, layer: Labels | None) -> None:
        """Follow another Labels layer: the prompt is cleared, the keys move with click mode."""
        if layer is self._layer:
            return
        self.clear_prompt()
        self._unbind_keys()
        self._layer = layer
        if layer is not None:
            src = (layer.metadata.get("segloop") or {}).get("source_layer")
            im = self.image.value
            if im is None or (src and im.name != src) or spatial_shape(im) != spatial_shape(layer):
                self.image.value = self._default_image()
        if self.active:
            self._bind_keys()

    def detach(self) -> None:
        """Stop listening to the viewer (the widget is going away)."""
        self._closed = True
        self._unbind_keys()
        if self._on_mouse in self.viewer.mouse_drag_callbacks:
            self.viewer.mouse_drag_callbacks.remove(self._on_mouse)

    @property
    def active(self) -> bool:
        """Whether click mode is on."""
        return bool(self.toggle.value)

    @property
    def busy(self) -> bool:
        """Whether a prompt is being segmented or waits to be."""
        return self._worker is not None or self._pending is not None

    def _on_toggle(self, on: bool):
        if on:
            self._bind_keys()
            if self._layer is not None:
                self._layer.mode = "pan_zoom"
            self.status.value = HINT
        else:
            self._unbind_keys()
            self.clear_prompt()
            self._remove_layers()
            self.status.value = ""

    def _bind_keys(self):
        self._unbind_keys()
        for owner in (self._layer, self.viewer):
            if owner is None:
                continue
            for key, fn in (("Enter", self.accept), ("Escape", self.clear_prompt)):
                before = owner.bind_key(key, _press(fn), overwrite=True)
                self._keys.append((owner, key, before))

    def _unbind_keys(self):
        for owner, key, before in reversed(self._keys):
            owner.bind_key(key, before, overwrite=True)
        self._keys.clear()

    # -- reporting -------------------------------------------------------------------
    def _run(self, what: str, fn, default=0):
        try:
            return fn()
        except _UserError as e:
            self.status.value = str(e)
            show_info(f"segloop: {e}")
        except SegloopError as e:
            self.status.value = f"{what}: {e}"
            show_error(f"segloop: {what}: {e}")
        return default

    # -- prompting -------------------------------------------------------------------
    def _on_mouse(self, viewer, event):
        """Viewer drag callback: a click (press and release without moving) while click mode is on."""
        if not self.active or event.button != 1:
            return
        active = viewer.layers.selection.active
        if getattr(active, "mode", "pan_zoom") != "pan_zoom":
            return
        start = np.asarray(event.position)
        negative = "Shift" in event.modifiers
        yield
        while event.type == "mouse_move":
            if np.linalg.norm(np.asarray(event.position) - start) > 0:   # a drag pans: not a click
                return
            yield
        self._run("click", lambda: self._click_world(event.position, positive=not negative), default=False)

    def _click_world(self, position, *, positive: bool) -> bool:
        self._check_view()
        layer = self._labels_layer()
        return self._add(tuple(float(c) for c in layer.world_to_data(position)), positive)

    def add_click(self, coord, *, positive: bool = True) -> bool:
        """Add a click at ``coord`` (data coordinates of the Labels layer, all axes) and segment.

        Returns False, with a notification and nothing changed, when the click cannot be used:
        click mode needs the 2D view, a click outside the image, on another plane than the
        clicks so far, no interactive model chosen, an image of another shape than the labels.
        """
        return self._run("click", lambda: self._add(tuple(float(c) for c in coord), positive), default=False)

    def _add(self, coord: tuple[float, ...], positive: bool) -> bool:
        self._check_view()
        layer = self._labels_layer()
        if len(coord) != layer.ndim:
            raise InvalidPromptError(f"a click on {layer.name!r} needs {layer.ndim} coordinates, got {coord}")
        plane = self._plane_of(coord, layer)
        pos = [*self.positive, coord] if positive else list(self.positive)
        neg = list(self.negative) if positive else [*self.negative, coord]
        req = self._request(pos, neg, self.box, plane)
        self.positive, self.negative, self.plane = pos, neg, plane
        self._draw_clicks()
        self._submit(req)
        return True

    def segment_box(self, shapes: Shapes | None = None) -> bool:
        """Segment inside the last rectangle of ``shapes`` (default: the selected Shapes layer)."""
        return self._run("segment box", lambda: self._box(shapes), default=False)

    def _box(self, shapes) -> bool:
        self._check_view()
        layer = self._labels_layer()
        shapes = shapes or self._shapes_layer()
        if shapes is None or len(shapes.data) == 0:
            raise _UserError("draw a rectangle in a Shapes layer and select it, then press 'Segment box'")
        verts = np.asarray(shapes.data[-1], float)
        point = np.asarray(self.viewer.dims.point, float)
        world = []
        for v in verts:                           # a 2D rectangle over a stack lies on the current plane
            w = point.copy()
            w[-shapes.ndim:] = shapes.data_to_world(v)
            world.append(layer.world_to_data(w))
        pts = np.asarray(world, float)
        lo, hi = pts.min(0), pts.max(0)
        box = (float(lo[-2]), float(lo[-1]), float(hi[-2]), float(hi[-1]))
        plane = self._plane_of(tuple(pts.mean(0)), layer)
        req = self._request(self.positive, self.negative, box, plane)
        self.box, self.plane = box, plane
        self.viewer.layers.selection.active = layer     # Enter goes to the labels, not to the Shapes layer
        self._submit(req)
        return True

    def _shapes_layer(self):
        active = self.viewer.layers.selection.active
        if isinstance(active, Shapes):
            return active
        shapes = [s for s in self.viewer.layers if isinstance(s, Shapes) and len(s.data)]
        chosen = [s for s in shapes if s in self.viewer.layers.selection]
        return (chosen or [s for s in shapes if s.name != "reviewed rectangles"] or [None])[-1]

    def _check_view(self):
        if self.viewer.dims.ndisplay == 3:
            raise _UserError("click to segment needs the 2D view: switch the viewer to 2D (Ctrl+Y), then click")

    def _labels_layer(self) -> Labels:
        layer = self._layer
        if layer is None or layer not in self.viewer.layers:
            raise _UserError("no Labels layer: run Segment or add a Labels layer first")
        return layer

    def _plane_of(self, coord, layer) -> tuple[int, ...]:
        shape = spatial_shape(layer)
        lead = len(shape) - 2
        if lead > 0:
            shown = tuple(self.viewer.dims.displayed)[-2:]
            if shown != (self.viewer.dims.ndim - 2, self.viewer.dims.ndim - 1):
                raise _UserError("click to segment needs the default axis order (planes of the last two axes)")
        plane = tuple(int(round(c)) for c in coord[:lead])
        for i, (p, n) in enumerate(zip(plane, shape)):
            if not 0 <= p < n:
                raise InvalidPromptError(f"the click is on plane {p} of axis {i}, outside the stack (0..{n - 1})")
        if self.plane is not None and plane != self.plane and (self.positive or self.negative or self.box):
            raise InvalidPromptError(
                f"this click is on plane {_plane_text(plane)} but the object's clicks are on plane "
                f"{_plane_text(self.plane)}: a 2D model segments one plane at a time; accept (Enter) or "
                "clear (Esc) the clicks first")
        return plane

    def _model_key(self) -> str:
        value = self.model.value
        if value == LOAD_PACKAGE or value is None:
            path = str(self.package.value or "")
            if path in ("", "."):
                raise _UserError("no interactive model chosen: pick a click model, or 'Load package…' and "
                                 "its folder (segloop register PACKAGE makes one appear in the list)")
            return path
        return str(value)

    def _request(self, positive, negative, box, plane) -> _Request:
        """Check the prompt against the image (raises) and gather what the worker needs."""
        from segloop.core.inference.interactive import check_prompt

        layer = self._labels_layer()
        key = self._model_key()
        img_layer = self.image.value
        if img_layer is None or img_layer not in self.viewer.layers:
            raise _UserError("no image layer to segment: open the image the labels belong to")
        lab_shape = spatial_shape(layer)
        img_shape = spatial_shape(img_layer)
        if img_shape != lab_shape:
            raise InvalidImageError(f"image {img_layer.name!r} has spatial shape {img_shape} but labels "
                                    f"{layer.name!r} have {lab_shape}; pick the image the labels belong to")
        data = img_layer.data[0] if img_layer.multiscale else img_layer.data    # finest level
        nd = len(lab_shape)
        if nd == 2:
            image, z, cut = data, None, 0
        else:                                         # (Z, Y, X): clicks carry z; more leading axes are indexed
            image, z, cut = (data[plane[:-1]] if nd > 3 else data), plane[-1], nd - 3
        pos = tuple(tuple(p[cut:]) for p in positive)
        neg = tuple(tuple(p[cut:]) for p in negative)
        spatial = tuple(image.shape[:-1] if img_layer.rgb else image.shape)
        check_prompt(spatial, pos, neg, box, z=z)        # InvalidPromptError: nothing is changed
        previous = self.candidate          # the last answer (a window-sized CropMask, also on whole slides)
        px = None
        if nd == 2:
            from segloop._napari.pixel_size import layer_pixel_size

            yx = layer_pixel_size(img_layer)
            px = float(yx[0]) if yx else None
        self._generation += 1
        return _Request(self._generation, key, image, pos, neg, box, z, previous,
                        -1 if img_layer.rgb else None, px)

    # -- running -----------------------------------------------------------------------
    def _submit(self, req: _Request) -> None:
        self._pending = req                       # the newest prompt replaces one still waiting
        self.status.value = "segmenting…"
        if self._worker is None:
            self._start_next()

    def _start_next(self) -> None:
        from napari.qt.threading import create_worker

        req, self._pending = self._pending, None
        if req is None or self._closed:
            return
        self._worker = create_worker(self._segment, req, _start_thread=False,
                                     _connect={"returned": self._on_returned,
                                               "errored": functools.partial(self._on_errored, req.generation),
                                               "finished": self._on_finished})
        self._worker.start()

    def _segment(self, req: _Request):
        """Worker thread: load the model (once) and segment the prompt's window."""
        from segloop.core.formats.registry import model_path
        from segloop.core.inference.engines import thread_budget
        from segloop.core.inference.interactive import load_interactive

        path = model_path(req.model)                  # ModelNotFoundError names the known models
        key = (str(path.resolve()), path.stat().st_mtime_ns)   # a package replaced on disk is loaded again
        model = self._models.get(key)
        if model is None:
            model = self._models[key] = load_interactive(path)
        with thread_budget(reserve=1):                # the viewer stays responsive
            crop = model.segment_crop(req.image, req.positive, req.negative, req.box, req.previous, z=req.z,
                                      channel_axis=req.channel_axis, pixel_size=req.pixel_size)
        spec = model.spec
        return req.generation, crop, {"name": spec.name, "version": spec.version, "sha256": spec.sha256}

    def _on_returned(self, result) -> None:
        generation, crop, info = result
        if generation != self._generation or self._closed:
            self.dropped += 1                         # the prompt changed since: a newer result follows
            return
        self.candidate, self._info = crop, info
        self.drawn.append(generation)
        self._draw_candidate()
        n = int(crop.mask.sum())
        if n == 0:
            self.status.value = (f"no object found ({crop.milliseconds:.0f} ms): add a positive click on the "
                                 "object or draw a box around it")
        else:
            layer = self._layer
            overlap = 0
            if layer is not None and isinstance(layer.data, np.ndarray):
                overlap = int((crop.mask & (self._region(layer, crop) != 0)).sum())
            note = (f"; {overlap:,} px on other objects are {'replaced' if self.replace.value else 'kept'}"
                    if overlap else "")
            self.status.value = (f"candidate: {n:,} px · {_clicks(crop.n_clicks)} · {crop.milliseconds:.0f} ms per "
                                 f"click{note} — Enter accepts, Esc clears")
        if self._accept_when_ready:
            self._accept_when_ready = False
            self.accept()

    def _on_errored(self, generation: int, exc: BaseException) -> None:
        if generation != self._generation or self._closed:
            return
        self._accept_when_ready = False
        msg = str(exc) if isinstance(exc, SegloopError) else f"{type(exc).__name__}: {exc}"
        self.status.value = f"click to segment failed: {msg}"
        show_error(f"segloop: click to segment failed — {msg}. The labels were not changed.")

    def _on_finished(self) -> None:
        self._worker = None
        self._start_next()

    # -- showing -----------------------------------------------------------------------
    def _keep_active(self, fn):
        """Run ``fn`` (which adds a layer) without taking the selection away from the layer clicked on."""
        before = self.viewer.layers.selection.active
        out = fn()
        if before is not None and before in self.viewer.layers:
            self.viewer.layers.selection.active = before
        return out

    def _draw_clicks(self) -> None:
        layer = self._layer
        if layer is None:
            return
        pts = np.asarray(self.positive + self.negative, float).reshape(-1, layer.ndim)
        colors = np.array([POSITIVE] * len(self.positive) + [NEGATIVE] * len(self.negative), float).reshape(-1, 4)
        existing = self.viewer.layers[CLICKS_LAYER] if CLICKS_LAYER in self.viewer.layers else None
        if existing is not None and existing.ndim == layer.ndim:
            existing.data = pts
            if len(pts):
                existing.face_color = colors
            existing.scale, existing.translate = layer.scale, layer.translate
            return
        if existing is not None:
            self.viewer.layers.remove(existing)
        side = max(spatial_shape(layer)[-2:])
        self._keep_active(lambda: self.viewer.add_points(
            pts, name=CLICKS_LAYER, ndim=layer.ndim, face_color=colors if len(pts) else "green",
            border_color="white", border_width=0.15, size=max(6.0, 0.015 * side), canvas_size_limits=(9, 22),
            scale=layer.scale, translate=layer.translate, metadata={"segloop_overlay_of": layer.name}))

    def _draw_candidate(self) -> None:
        layer, crop = self._layer, self.candidate
        if layer is None or crop is None:
            return
        from skimage.segmentation import find_boundaries

        lead = self.plane or ()
        edge = find_boundaries(np.pad(crop.mask, 1), mode="inner")[1:-1, 1:-1]     # the window's edge too
        shown = crop.mask.astype(np.uint8) + edge                                     # 1 inside, 2 outline
        data = shown.reshape((1,) * len(lead) + crop.mask.shape)
        scale = np.asarray(layer.scale, float)
        translate = np.asarray(layer.translate, float) + np.asarray([*lead, *crop.offset[-2:]], float) * scale
        existing = self.viewer.layers[CANDIDATE_LAYER] if CANDIDATE_LAYER in self.viewer.layers else None
        if existing is not None and existing.ndim == layer.ndim:
            existing.data = data
            existing.scale, existing.translate = scale, translate
            existing.visible = True
            return
        if existing is not None:
            self.viewer.layers.remove(existing)
        self._keep_active(lambda: self.viewer.add_image(
            data, name=CANDIDATE_LAYER, colormap=_candidate_colormap(), blending="translucent", contrast_limits=(0, 2),
            interpolation2d="nearest", scale=scale, translate=translate, metadata={"segloop_overlay_of": layer.name}))
        layers = self.viewer.layers
        if CLICKS_LAYER in layers:                        # the clicks stay on top, their colours unmixed
            layers.move(layers.index(CANDIDATE_LAYER), layers.index(CLICKS_LAYER))

    def _remove_layers(self) -> None:
        for name in (CLICKS_LAYER, CANDIDATE_LAYER):
            if name in self.viewer.layers:
                self.viewer.layers.remove(name)

    def clear_prompt(self) -> None:
        """Forget the clicks, the box and the candidate (Escape); a result still on its way is dropped."""
        self._generation += 1
        self._pending = None
        self._accept_when_ready = False
        self.positive, self.negative, self.box, self.plane = [], [], None, None
        self.candidate, self._info = None, {}
        if CLICKS_LAYER in self.viewer.layers:
            self.viewer.layers[CLICKS_LAYER].data = np.zeros((0, self.viewer.layers[CLICKS_LAYER].ndim))
        if CANDIDATE_LAYER in self.viewer.layers:
            self.viewer.layers[CANDIDATE_LAYER].visible = False
        if self.active:
            self.status.value = HINT

    # -- accepting ---------------------------------------------------------------------
    def _region(self, layer, crop) -> np.ndarray:
        (r0, c0), (h, w) = crop.offset[-2:], crop.mask.shape
        return layer.data[(*(self.plane or ()), slice(r0, r0 + h), slice(c0, c0 + w))]

    def accept(self) -> int:
        """Write the candidate as a new label, as one undo step (Enter); returns its id, or 0.

        Only background pixels are taken unless "overwrite other objects" is ticked.  Pressed
        while the newest prompt is still being segmented, it accepts that result when it comes.
        """
        return self._run("accept", self._accept)

    def _accept(self) -> int:
        layer = self._labels_layer()
        if self.busy and (self.candidate is None or self.drawn[-1] != self._generation):
            self._accept_when_ready = True
            self.status.value = "segmenting… the candidate is accepted when it is ready"
            return 0
        crop = self.candidate
        if crop is None:
            raise _UserError("nothing to accept: turn on click mode and click on an object (or segment a box)")
        data = layer.data
        if not isinstance(data, np.ndarray):
            raise _UserError(f"{layer.name!r} is not an in-memory array; accepting needs a NumPy-backed Labels layer")
        region = self._region(layer, crop)
        if region.shape != crop.mask.shape:
            raise InvalidImageError(f"labels {layer.name!r} changed shape since the click; clear (Esc) and click again")
        replace = bool(self.replace.value)
        write = crop.mask & ((region == 0) | replace)
        if not write.any():
            raise _UserError("nothing to add: the candidate lies on other objects (tick 'overwrite other objects' "
                             "to replace them)")
        new = pr.next_free_label(data)
        if new > np.iinfo(data.dtype).max:
            raise _UserError(f"no free label id left in {data.dtype}; convert the layer to a wider type "
                             "(e.g. layer.data = layer.data.astype('uint32'))")
        lead = self.plane or ()
        (r0, c0) = crop.offset[-2:]
        rows, cols = np.nonzero(write)
        idx = (*(np.full(rows.size, i, np.intp) for i in lead), rows + r0, cols + c0)
        overwritten = int((region[write] != 0).sum())
        layer.data_setitem(idx, np.full(rows.size, new, data.dtype))   # one step on napari's undo stack
        rr, cc = np.nonzero(crop.mask)
        bbox = [*([i, i + 1] for i in lead), [int(rr.min()) + r0, int(rr.max()) + r0 + 1],
                [int(cc.min()) + c0, int(cc.max()) + c0 + 1]]
        tracker_for(layer).mark(tuple(bbox))
        entry = {"label": int(new), "clicks": int(crop.n_clicks), "positive": len(self.positive),
                 "negative": len(self.negative), "box": None if self.box is None else [float(v) for v in self.box],
                 "plane": list(lead) or None, "bbox": bbox, "pixels": int(rows.size), "overwritten": overwritten,
                 "model": dict(self._info), "milliseconds": round(float(crop.milliseconds), 1),
                 "accepted": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
        meta = layer.metadata.setdefault("segloop", {})
        # an id taken again after Ctrl+Z: its old entry described an object that no longer exists
        meta["prompted"] = [e for e in meta.get("prompted") or [] if e.get("label") != new] + [entry]
        n_clicks = crop.n_clicks
        self.clear_prompt()
        self.status.value = (f"added label {new}: {rows.size:,} px from {_clicks(n_clicks)}"
                             f"{f', {overwritten:,} px replaced' if overwritten else ''} (Ctrl+Z undoes)")
        return int(new)


def prompted_in_crop(metadata: dict, crop: tuple[slice, ...], labels: np.ndarray) -> list[dict]:
    """The prompted objects of a Labels layer that an exported crop contains.

    Parameters
    ----------
    metadata : dict
        The layer's metadata (entries in ``metadata["segloop"]["prompted"]``, see :class:`ClickSection`).
    crop : tuple of slice
        The exported region, one slice per spatial axis, in layer data coordinates.
    labels : ndarray
        ``layer.data[crop]``.

    Returns
    -------
    list of dict
        The entries (``bbox`` in the layer's / source's coordinates, like the sample's ``crop``)
        whose label is still present inside the crop: an object undone or deleted since is left out.
    """
    out = []
    for entry in (metadata.get("segloop") or {}).get("prompted") or []:
        try:
            box = [(max(int(a), s.start or 0), min(int(b), s.stop)) for (a, b), s in zip(entry["bbox"], crop, strict=True)]
            label = int(entry["label"])
        except (KeyError, TypeError, ValueError):
            continue
        if any(b <= a for a, b in box):
            continue
        local = tuple(slice(a - (s.start or 0), b - (s.start or 0)) for (a, b), s in zip(box, crop))
        if np.any(labels[local] == label):
            out.append(dict(entry))
    return out


def _candidate_colormap():
    """Transparent background, a see-through yellow inside, an opaque yellow outline (values 0, 1, 2)."""
    from napari.utils.colormaps import Colormap

    return Colormap(colors=[[1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.3], [1.0, 0.9, 0.0, 1.0]],
                    controls=[0.0, 0.5, 1.0], name="segloop click candidate")


def _press(fn):
    """A key binding that calls ``fn()`` (napari passes the layer or viewer; the result is not a release handler)."""
    def press(*_):
        fn()
    return press


def _clicks(n: int) -> str:
    return f"{n} click" if n == 1 else f"{n} clicks"


def _plane_text(plane: tuple[int, ...]) -> str:
    return ", ".join(str(p) for p in plane) if len(plane) != 1 else f"z={plane[0]}"


class _UserError(Exception):
    """A missing step the person can take (shown as info, not as an error)."""
