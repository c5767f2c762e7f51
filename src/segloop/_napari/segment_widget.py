"""The Segment dock widget: run a model package on an image layer.

Thin by design: it gathers parameters, loads the model and runs
``Model.predict`` in a napari thread worker, reports progress through a Qt
signal, and touches layers only on the main thread.  Every result is a *new*
Labels layer, so nothing a person edited is ever overwritten.
"""

from __future__ import annotations

import threading
import time
import weakref
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    Label,
    LineEdit,
    ProgressBar,
    PushButton,
    SpinBox,
)
from napari.layers import Image
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import QObject, Signal

from segloop._napari import model_pick, settings, slide_run, slide_scope
from segloop._napari.channels import ExtraChannels
from segloop._napari.correction_tracking import track
from segloop._napari.model_pick import automatic_labels_note, default_model
from segloop._napari.pixel_size import layer_pixel_size, pixel_size_notice, pixel_size_status
from segloop.core.editing.corrections import PredictionSnapshot
from segloop.core.formats.pixel_size import format_pixel_size, parse_pixel_size
from segloop.core.inference.engines import thread_budget
from segloop.core.inference.stain import STAIN_NORMS, STAINS, stain_normalization
from segloop.errors import Cancelled, InvalidPixelSizeError, SegloopError

__all__ = ["SegmentWidget", "SegmentRequest", "ScopeCrop", "crop_for_scope", "result_layer_name"]

LOAD_PACKAGE = "Load package…"
SCOPES = ("whole image", "current slice", "slice range", "current view", "shapes region")
LIVE_DEBOUNCE_MS = 120


def _warm_imports() -> None:
    import torch  # noqa: F401

    import segloop.core.inference.engines  # noqa: F401
    import segloop.core.inference.model  # noqa: F401


class _Relay(QObject):
    """Carries progress from the worker thread to the main thread (queued signal)."""

    progressed = Signal(int, int)


@dataclass(frozen=True)
class SegmentRequest:
    """Everything one run needs, captured on the main thread."""

    model: str
    device: str
    engine: str
    tile: int
    overlap: float
    stain: str
    uncertainty: bool
    scope: str
    z_from: int = 0
    z_to: int = 0
    stain_norm: str = "model"
    pixel_size: tuple[float, float] | None = None
    spacing: tuple[float, float, float] | None = None      # a volume's voxel spacing (mm), from its file


def result_layer_name(image_name: str, model_name: str, version: str) -> str:
    return f"{image_name} · {model_name} v{version}"


def base_data(layer: Image):
    """Level 0 of a multiscale layer, the data otherwise."""
    return layer.data[0] if layer.multiscale else layer.data


@dataclass
class ScopeCrop:
    """What to segment and where the result goes.

    ``data`` is given to ``Model.predict`` with ``z_range``; the labels it returns go to
    ``full_labels[where]``.  For stacks the whole (Z, Y, X[, C]) volume (cropped in Y/X for
    "current view") is passed with a ``z_range``, so 2.5D and 3D models see the neighbouring
    slices of the ones they label.
    """

    data: object
    where: tuple
    z_range: tuple[int, int] | None = None


def crop_for_scope(layer: Image, scope: str, current_step: tuple[int, ...],
                   z_range: tuple[int, int] | None = None) -> ScopeCrop:
    """The part of the layer's level-0 data to segment for ``scope``, and where it sits.

    Parameters
    ----------
    layer : napari Image layer
    scope : one of ``SCOPES``
    current_step : the viewer's ``dims.current_step``
    z_range : (first, last) slice, inclusive, for "slice range"
    """
    data = base_data(layer)
    n_spatial = data.ndim - (1 if layer.rgb else 0)
    lead = n_spatial - 2
    if scope == "whole image" or (scope in ("current slice", "slice range") and lead == 0):
        return ScopeCrop(data, tuple(slice(None) for _ in range(n_spatial)))
    step = [int(np.clip(current_step[i], 0, data.shape[i] - 1)) for i in range(lead)] if lead else []
    outer = tuple(step[:-1])                     # time (etc.) axes before Z are fixed
    vol = data[outer] if outer else data         # (Z, Y, X[, C]) or (Y, X[, C])
    ys = xs = slice(None)
    if scope == "current view":
        corners = np.asarray(layer.corner_pixels)[:, lead:lead + 2]
        plane = vol.shape[-3:-1] if layer.rgb else vol.shape[-2:]
        y0, x0 = np.clip(corners[0], 0, None).astype(int)
        y1, x1 = (np.minimum(corners[1] + 1, plane)).astype(int)
        if y1 - y0 >= 1 and x1 - x0 >= 1:
            ys, xs = slice(y0, y1), slice(x0, x1)
    if lead == 0:                                # current view of a 2D image
        return ScopeCrop(vol[ys, xs], (ys, xs))
    if scope == "slice range" and z_range is not None:
        z0, z1 = sorted(int(v) for v in z_range)
        z0, z1 = max(0, z0), min(vol.shape[0] - 1, z1)
    else:
        z0 = z1 = step[-1]
    crop = vol[:, ys, xs] if (ys, xs) != (slice(None), slice(None)) else vol
    return ScopeCrop(crop, outer + (slice(z0, z1 + 1), ys, xs), (z0, z1 + 1))


class SegmentWidget(Container):
    """Segment the selected image layer with a model package.

    The result appears as a new Labels layer named ``<image> · <model> v<version>``
    with the image's scale and translate, and provenance in ``metadata["segloop"]``.
    """

    _instances: weakref.WeakSet = weakref.WeakSet()

    @classmethod
    def instances(cls) -> list[SegmentWidget]:
        """Segment widgets alive in this process (the Fine-tune widget offers them new models)."""
        return list(cls._instances)

    def add_model_choice(self, name: str, *, select: bool = True) -> None:
        """Offer a newly registered model (e.g. a fine-tuned version) and optionally select it.

        A model selected this way stays selected when the image changes (while it fits: CT or
        not), until another model or a modality is chosen.
        """
        self.model.reset_choices()                         # the list comes from list_models()
        for key in [k for k in self._models if k[0] == name]:
            del self._models[key]                          # the name may now point to another package
        if select:
            self._pinned = name                            # the person's new model: new images keep it
            self._set_model(name)

    def __init__(self, napari_viewer):
        super().__init__(labels=True)
        SegmentWidget._instances.add(self)
        self.viewer = napari_viewer
        self._models: dict[tuple, object] = {}
        self._worker = None
        self._cancel: threading.Event | None = None
        self._started = 0.0
        self._closed = False
        self._inserting = False
        self._pick = None                                  # what _suggest_model picked last (ModelPick)
        self._pinned: str | None = None                    # a model chosen on purpose; new images keep it
        self._picking = False                              # the widget itself is setting the model
        self._spec = None                                  # the chosen model's spec (JSON only)
        self._relay = _Relay()
        self._relay.progressed.connect(self._on_progress)

        self.image = ComboBox(label="image", choices=self._image_choices, nullable=True)
        names = model_pick.automatic_models()            # click (interactive) models are Proofread's
        # a callable, so napari's reset_choices (on every layer change) keeps newly registered models
        self.model = ComboBox(label="model", choices=lambda _w=None: [*model_pick.automatic_models(), LOAD_PACKAGE],
                              value=default_model(names, ct=False) or LOAD_PACKAGE)
        self.modality = ComboBox(label="modality", choices=model_pick.MODALITY_CHOICES, value="auto",
                                 tooltip="picks the model: auto guesses H&E, IHC, fluorescence or CT from the image")
        self.picked = Label(value="")                      # which model was picked, and why
        self.picked.native.setWordWrap(True)
        self.package = FileEdit(label="package", mode="d", visible=not names)
        self.device = ComboBox(label="device", choices=["auto", "cpu", "cuda", "mps"], value="auto")
        self.engine = ComboBox(label="engine", choices=["torch", "onnx", "onnx-int8", "auto"], value="torch")
        self.tile = SpinBox(label="tile", min=32, max=4096, step=32, value=256)
        self.overlap = FloatSpinBox(label="overlap", min=0.0, max=0.9, step=0.05, value=0.25)
        self.scope = ComboBox(label="scope", choices=list(SCOPES), value="whole image")
        self.z_from = SpinBox(label="slices from", min=0, max=10**6, value=0, visible=False)
        self.z_to = SpinBox(label="to (inclusive)", min=0, max=10**6, value=0, visible=False)
        self.live = CheckBox(text="live: segment each slice as you scroll", value=False,
                             tooltip="Stacks only. The visible slice is segmented when you stop scrolling; "
                                     "each slice once, into one '… (live)' Labels layer you can correct.")
        self.stain = ComboBox(label="stain", choices=list(STAINS), value="auto",
                              tooltip="auto: hematoxylin deconvolution for RGB images and 1-channel models")
        self.stain_norm = ComboBox(label="stain norm", choices=list(STAIN_NORMS), value="model",
                                   tooltip="RGB tissue: map the stains to a reference appearance first, fitted on "
                                           "the whole image (Macenko or Reinhard); model: as the package "
                                           "declares; none: off")
        self.uncertainty = CheckBox(text="add uncertainty layer", value=False)
        self.pixel_size = LineEdit(label="Pixel size (µm)", value="",
                                   tooltip="µm per pixel of the image (one number, or y,x); empty = unknown. Taken "
                                           "from the layer's scale or metadata. A model that records its pixel "
                                           "size gets the image rescaled to it; labels come back on the image's grid")
        self.run_button = PushButton(text="Segment")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(label="progress", min=0, max=1, value=0, visible=False)
        # Showing or hiding the bar must not re-lay out the dock: a new layout resizes the canvas,
        # and redrawing a large image there stalls napari for a few hundred ms.
        policy = self.progress.native.sizePolicy()
        policy.setRetainSizeWhenHidden(True)
        self.progress.native.setSizePolicy(policy)
        self.status = Label(value="")
        self.status.native.setWordWrap(True)
        self.extend([self.image, self.modality, self.model, self.picked, self.package, self.device, self.engine,
                     self.tile, self.overlap, self.scope, self.z_from, self.z_to, self.live, self.stain,
                     self.stain_norm, self.uncertainty, self.run_button, self.cancel_button,
                     self.progress, self.status])

        self.insert(self.index(self.scope), self.pixel_size)        # after tile and overlap
        self.channels = ExtraChannels(self.viewer)                   # more sequences, for multi-sequence models
        self.insert(self.index(self.model) + 1, self.channels.container)
        self.slide_controls = slide_scope.SlideControls(self)        # results folder, block, tissue: slides only
        self._progress_unit = "tiles"
        self.model.changed.connect(self._on_model_changed)
        self.model.changed.connect(self._on_model_chosen)
        self.model.changed.connect(self._show_pick)
        self.image.changed.connect(self._suggest_model)
        self.modality.changed.connect(self._on_modality_changed)
        self.image.changed.connect(self._prefill_pixel_size)
        self.image.changed.connect(lambda _e=None: self._spec and self.channels.update(self._spec, self.image.value))
        self.package.changed.connect(self._on_model_changed)
        self.run_button.changed.connect(self.run)
        self.cancel_button.changed.connect(self.cancel)
        self.scope.changed.connect(self._on_scope_changed)
        self.live.changed.connect(self._on_live_toggled)
        self._live = None                        # a live_session.LiveSession while live mode is on
        self.viewer.layers.events.inserted.connect(self._refresh_images)
        self.viewer.layers.events.removed.connect(self._refresh_images)
        self.native.destroyed.connect(self._on_destroyed)
        self._refresh_images()
        self._restore_choice()
        # Import the inference stack now, in the background, so the first click
        # does not stall napari on imports (they hold the interpreter lock).
        threading.Thread(target=_warm_imports, daemon=True, name="segloop-warm-imports").start()
        self._on_model_changed()

    # -- remembered choice ------------------------------------------------------
    def _restore_choice(self):
        saved = settings.load("segment-widget")
        if saved.get("package") and Path(saved["package"]).is_dir():
            self.model.value = LOAD_PACKAGE
            self.package.value = saved["package"]
        elif saved.get("model") in self.model.choices:
            self._set_model(saved["model"])                # last session's choice, until an image picks
        for name in ("device", "engine"):
            if saved.get(name) in getattr(self, name).choices:
                getattr(self, name).value = saved[name]

    def _remember_choice(self, req: SegmentRequest):
        by_hand = self._pick is None or self.model.value != self._pick.name     # a pick is made again, not restored
        data = {"model": self.model.value if by_hand else None, "device": req.device, "engine": req.engine,
                "package": req.model if self.model.value == LOAD_PACKAGE else None}
        settings.save("segment-widget", data)   # a read-only home must not stop segmentation

    # -- choices ------------------------------------------------------------
    def _image_choices(self, _widget=None):
        return [(layer.name, layer) for layer in self.viewer.layers if isinstance(layer, Image)]

    def _refresh_images(self, event=None):
        self.image.reset_choices()
        if self.image.value is None and self.image.choices:
            self.image.value = self.image.choices[-1]

    def _on_model_chosen(self, _event=None):
        """Another model chosen in the list ends the pin of "Use this model"."""
        if not self._picking and self.model.value != self._pinned:
            self._pinned = None

    def _on_modality_changed(self, _event=None):
        self._pinned = None                                # asking for a modality asks for its model
        self._suggest_model()

    def _set_model(self, name: str) -> None:
        self._picking = True
        try:
            self.model.value = name
        finally:
            self._picking = False

    def _suggest_model(self, _event=None):
        """Select the model :func:`model_pick.model_for_layer` gives for the image and say so under it.

        Runs when the image or the modality changes: a model chosen by hand (or a package loaded)
        stays until then; one selected by "Use this model" (:meth:`add_model_choice`) stays
        across images while it fits them.
        """
        layer = self.image.value
        self._pick = None
        if layer is not None and self.model.value != LOAD_PACKAGE:
            names = [c for c in self.model.choices if c != LOAD_PACKAGE]
            self._pick, name = model_pick.model_for_layer(layer, self.modality.value, names,
                                                          current=self.model.value, pinned=self._pinned)
            if self._pick is not None and name == self._pick.name and self._pick.stain and self.stain.value == "none":
                self.stain.value = "auto"                  # auto takes the picked model's stain route
            self._set_model(name)
        self._show_pick()

    def _show_pick(self, _event=None):
        pick, name = self._pick, self.model.value
        self.picked.value = ("" if pick is None else model_pick.picked_text(pick) if name == pick.name
                             else model_pick.hand_choice_text("your package" if name == LOAD_PACKAGE else name, pick))

    def _model_id(self) -> str | None:
        if self.model.value == LOAD_PACKAGE:
            p = self.package.value
            return str(p) if p and str(p) not in ("", ".") else None
        return self.model.value

    def _on_model_changed(self, _event=None):
        """Show the package picker when needed; take tile defaults from the package."""
        self.package.visible = self.model.value == LOAD_PACKAGE
        mid = self._model_id()
        if not mid:
            return
        try:
            from segloop.core.formats.package import read_spec
            from segloop.core.formats.registry import discover_models

            spec = read_spec(discover_models().get(mid, Path(mid)))      # JSON only: no weights on the UI thread
        except (SegloopError, OSError) as e:
            self.status.value = f"cannot read model: {e}"
            return
        self.tile.value = int(spec.tile.get("size", 256))
        self.overlap.value = float(spec.tile.get("overlap", 0.25))
        self.status.value = (f"{spec.name} v{spec.version}: {spec.description or spec.task}"
                             + automatic_labels_note(spec))
        self._spec = spec
        self.channels.update(spec, self.image.value)

    # -- running --------------------------------------------------------------
    def request(self) -> SegmentRequest:
        return SegmentRequest(model=self._model_id() or "", device=self.device.value, engine=self.engine.value,
                              tile=int(self.tile.value), overlap=float(self.overlap.value),
                              stain=self.stain.value, stain_norm=self.stain_norm.value,
                              uncertainty=bool(self.uncertainty.value),
                              scope=self.scope.value, z_from=int(self.z_from.value), z_to=int(self.z_to.value),
                              **self._resolution())

    def _resolution(self) -> dict:
        """A volume read with its geometry (DICOM, NIfTI, NRRD) runs at its voxel spacing, which the
        model resamples to its own (``spacing``); other images use the 'Pixel size (µm)' field."""
        layer = self.image.value
        info = (getattr(layer, "metadata", None) or {}).get("segloop_volume") if layer is not None else None
        spacing = getattr(info, "spacing", None)
        if spacing is not None and getattr(layer, "ndim", 0) == 3:
            return {"pixel_size": None, "spacing": tuple(float(s) for s in spacing)}
        return {"pixel_size": self._pixel_size_value(), "spacing": None}

    def _pixel_size_value(self) -> tuple[float, float] | None:
        """The 'Pixel size (µm)' field: None when empty (unknown); InvalidPixelSizeError for junk."""
        text = str(self.pixel_size.value).strip()
        return parse_pixel_size(text, source="Pixel size (µm)") if text else None

    def _prefill_pixel_size(self, _event=None):
        """Fill 'Pixel size (µm)' from the selected layer: its scale, else its metadata; else leave it empty."""
        layer = self.image.value
        px = layer_pixel_size(layer) if layer is not None else None
        self.pixel_size.value = format_pixel_size(px) if px is not None else ""

    @property
    def running(self) -> bool:
        """A run is going: segmenting, or its result layers still being inserted."""
        return self._worker is not None or self._inserting

    def run(self, _event=None):
        """Start segmenting the selected image (ignored while a run is going)."""
        if self.running:
            show_info("segloop: a segmentation is already running; cancel it first")
            return
        layer = self.image.value
        if layer is None or layer not in self.viewer.layers:
            show_error("segloop: no image layer selected. Open an image (File > Open) and pick it under 'image'")
            return
        try:
            req = self.request()
        except InvalidPixelSizeError as e:
            self.status.value = f"error: {e}"
            show_error(f"segloop: {e}")
            return
        if not req.model:
            show_error("segloop: choose a model, or a package folder under 'package'")
            return
        self._remember_choice(req)
        self._progress_unit = "blocks" if slide_run.is_slide_layer(layer) else "tiles"
        if slide_run.is_slide_layer(layer):              # never read whole: block by block, in µm
            slide_run.start(self, layer, req)
            return
        if req.scope == "shapes region":
            show_error("segloop: 'shapes region' segments part of a whole slide; for this image use 'current view'")
            return
        crop = crop_for_scope(layer, req.scope, tuple(self.viewer.dims.current_step), (req.z_from, req.z_to))
        try:
            data, where = self.channels.stack(crop.data, crop.where, layer), crop.where
        except SegloopError as e:
            self.status.value = f"error: {e}"
            show_error(f"segloop: {e}")
            return
        info = self._layer_info(layer)
        info.update(where=where, z_range=crop.z_range)
        self._cancel = threading.Event()
        self._started = time.perf_counter()
        self.progress.visible = True
        self.progress.max, self.progress.value = 1, 0
        self.run_button.enabled = False
        self.cancel_button.enabled = True
        self.status.value = "loading model…"

        from napari.qt.threading import create_worker

        self._worker = create_worker(self._segment, data, req, info, self._cancel,
                                     _connect={"returned": lambda res: self._on_returned(res, info, req),
                                               "errored": self._on_errored,
                                               "finished": self._on_finished})

    @staticmethod
    def _layer_info(layer: Image) -> dict:
        """What the worker needs to know about the image layer (read on the main thread)."""
        full_shape = base_data(layer).shape[: base_data(layer).ndim - (1 if layer.rgb else 0)]
        meta = {k: layer.metadata[k] for k in ("segloop_volume",) if k in layer.metadata}
        return {"layer": layer, "full_shape": full_shape, "rgb": bool(layer.rgb), "name": layer.name,
                "scale": tuple(layer.scale), "translate": tuple(layer.translate), "metadata": meta}

    def _load_model(self, req: SegmentRequest):
        import segloop

        key = (req.model, req.device, req.engine)
        if key not in self._models:
            self._models[key] = segloop.load_model(req.model, device=req.device, engine=req.engine)
        return self._models[key]

    def _segment(self, data, req: SegmentRequest, info: dict, cancel: threading.Event):
        """Runs in the worker thread: never touches the viewer or its layers.

        Builds the result layers as napari model objects here (constructing a
        16 Mpx Labels layer takes several hundred ms), so the main thread only
        has to insert them.
        """
        from napari.layers import Image as ImageLayer
        from napari.layers import Labels

        rgb = info["rgb"]
        model = self._load_model(req)
        model_pick.check_layer_fits(model.spec, data, info["metadata"], info["name"])
        normalization = stain_normalization(model, rgb=rgb, stain=req.stain, stain_norm=req.stain_norm)
        extra = {"z_range": info["z_range"]} if info.get("z_range") else {}
        with thread_budget(reserve=1):        # napari's event loop keeps a core
            result = model.predict(data, tile=req.tile, overlap=req.overlap, normalization=normalization,
                                   channel_axis=-1 if rgb else "auto", uncertainty=req.uncertainty,
                                   pixel_size=req.pixel_size, spacing=req.spacing,
                                   progress=self._relay.progressed.emit, cancel=cancel,
                                   **extra)
        where = info["where"]
        partial = bool(where) and any(s != slice(None) for s in where)

        def placed(arr, dtype):
            if not partial:
                return arr
            full = np.zeros(info["full_shape"], dtype)
            full[where] = arr
            return full

        spec = model.spec
        prov = {**result.provenance, "scope": req.scope, "source_layer": info["name"],
                "region": [str(s) for s in where]}
        name = result_layer_name(info["name"], spec.name, spec.version)
        n_spatial = len(info["full_shape"])
        geo = {"scale": info["scale"][-n_spatial:], "translate": info["translate"][-n_spatial:]}
        labels = placed(result.labels, result.labels.dtype)
        snapshot = PredictionSnapshot(labels)    # kept compressed: what the person changes is derived from it
        layers = [Labels(labels, name=name, metadata={"segloop": prov, **info["metadata"]}, **geo)]
        if result.uncertainty is not None:
            layers.append(ImageLayer(placed(result.uncertainty, np.float16), name=f"{name} · uncertainty",
                                     colormap="inferno", opacity=0.5, blending="additive", visible=False,
                                     metadata={"segloop": prov}, **geo))
        return model, result, layers, snapshot

    # -- main-thread handlers ---------------------------------------------------
    def _on_progress(self, done: int, total: int):
        if self._closed:
            return
        self.progress.max = max(total, 1)
        self.progress.value = done
        elapsed = time.perf_counter() - self._started
        eta = elapsed / done * (total - done) if done else float("nan")
        self.status.value = f"{done}/{total} {self._progress_unit}" + (f", about {eta:.0f} s left" if done else "")

    def _on_returned(self, payload, info: dict, req: SegmentRequest):
        model, result, layers, snapshot = payload
        if self._closed:
            return
        if info["layer"] not in self.viewer.layers:
            show_warning(f"segloop: the image layer {info['name']!r} was removed during the run; "
                         "the result was discarded")
            return
        secs = time.perf_counter() - self._started
        kind = "objects" if model.spec.task == "instance" else "classes present"
        status = f"{result.n_objects} {kind} in {secs:.1f} s"
        if result.tiles_skipped:
            status += f" ({result.tiles_skipped} background tiles skipped)"
        status += pixel_size_status(model.spec, result.provenance)
        notice = pixel_size_notice(model.spec, result.provenance)
        if notice:
            show_info(f"segloop: {notice}")

        def finish():
            self.viewer.layers.selection.active = layers[0]
            self.status.value = status

        # The result goes in piece by piece, one per event-loop turn: inserting a layer is
        # napari's own fixed cost (layer controls, visuals, first draw), and two layers plus
        # the tracker in one turn would be one long stall instead of a few short ones.
        self._inserting = True
        self._insert_in_turns([lambda: self.viewer.layers.append(layers[0]),
                               lambda: track(layers[0], snapshot=snapshot),
                               *[(lambda la=la: self.viewer.layers.append(la)) for la in layers[1:]],
                               finish])

    def _insert_in_turns(self, steps: list):
        from qtpy.QtCore import QTimer

        try:
            if not self._closed:
                steps.pop(0)()
        except Exception as e:                          # noqa: BLE001 - shown, never a traceback in the console
            steps.clear()
            show_error(f"segloop: the result could not be shown ({type(e).__name__}: {e})")
        if steps and not self._closed:
            QTimer.singleShot(0, lambda: self._insert_in_turns(steps))
            return
        self._inserting = False
        if not self._closed and self._worker is None:
            self._on_finished()

    def _on_errored(self, exc: BaseException):
        if self._closed:
            return
        if isinstance(exc, Cancelled):
            self.status.value = "cancelled; nothing was added"
            show_info("segloop: segmentation cancelled")
        elif isinstance(exc, SegloopError):
            self.status.value = f"error: {exc}"
            show_error(f"segloop: {exc}")
        else:
            self.status.value = f"failed: {type(exc).__name__}: {exc}"
            show_error(f"segloop: segmentation failed ({type(exc).__name__}: {exc})")

    def _on_finished(self):
        self._worker = None
        if self._closed or self._inserting:            # the last insertion step finishes the run
            return
        self.run_button.enabled = True
        self.cancel_button.enabled = False
        self.progress.visible = False

    # -- scope and live mode ------------------------------------------------------------
    def _on_scope_changed(self, _event=None):
        rng = self.scope.value == "slice range"
        self.z_from.visible = self.z_to.visible = rng
        layer = self.image.value
        if rng and layer is not None and self.z_to.value == 0:
            n = base_data(layer).shape[0]
            self.z_to.value = max(0, n - 1)

    def _on_live_toggled(self, _event=None):
        if self._live is not None:
            self._live.stop()
            self._live = None
        if not self.live.value:
            return
        layer = self.image.value
        try:
            req = self.request()
        except InvalidPixelSizeError as e:
            req, problem = None, str(e)
        else:
            problem = None
        if problem:
            pass                                # what is wrong with the 'Pixel size (µm)' field
        elif layer is None or layer not in self.viewer.layers:
            problem = "pick an image layer first"
        elif base_data(layer).ndim - (1 if layer.rgb else 0) != 3:
            problem = "live mode needs a stack (Z, Y, X); this image has " + (
                "no slices" if base_data(layer).ndim - (1 if layer.rgb else 0) < 3 else "more than one stack axis")
        elif not req.model:
            problem = "choose a model first"
        if problem:
            self.status.value = f"live: {problem}"
            show_info(f"segloop: live mode: {problem}")
            self.live.value = False
            return
        from segloop._napari.live_session import LiveSession

        self._live = LiveSession(self, layer, req)
        self._live.start()

    def cancel(self, _event=None):
        """Stop the current run after the batch in progress."""
        if self._cancel is not None:
            self._cancel.set()
            self.status.value = "cancelling…"

    def _on_destroyed(self, *_):
        """The dock was closed (or the viewer): stop the run, forget the viewer's events."""
        self._closed = True
        if self._live is not None:
            self._live.stop()
            self._live = None
        if self._cancel is not None:
            self._cancel.set()
        for event, cb in ((self.viewer.layers.events.inserted, self._refresh_images),
                          (self.viewer.layers.events.removed, self._refresh_images)):
            try:
                event.disconnect(cb)
            except (TypeError, ValueError, RuntimeError):
                pass
