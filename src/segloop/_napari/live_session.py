"""Live mode of the Segment widget: the slice a person stops on is segmented, debounced; a newer slice
supersedes an older request; each slice runs once into one ``… (live)`` Labels layer, so nothing a
person corrected there is overwritten."""

from __future__ import annotations

import threading
import time

import numpy as np
from napari.layers import Image
from napari.utils.notifications import show_error, show_warning
from qtpy.QtCore import QTimer

from segloop._napari import model_pick
from segloop._napari.correction_tracking import track
from segloop._napari.segment_widget import (
    LIVE_DEBOUNCE_MS,
    SegmentRequest,
    SegmentWidget,
    base_data,
    result_layer_name,
)
from segloop.core.editing.corrections import PredictionSnapshot
from segloop.core.inference.engines import thread_budget
from segloop.core.inference.stain import stain_normalization
from segloop.errors import Cancelled, SegloopError

__all__ = ["LiveSession"]


class LiveSession:
    """Segments the visible slice of one stack as the person scrolls.

    One "(live)" Labels layer collects the slices; each slice is predicted once (the layer is
    the cache), so what a person corrects there is never overwritten.  Slice changes are
    debounced; a request for a new slice cancels the one in flight; one worker at a time.
    The prediction snapshot is updated slice by slice, so corrections are still measured
    against what the model predicted.
    """

    def __init__(self, widget: SegmentWidget, layer: Image, req: SegmentRequest):

        self.w, self.image, self.req = widget, layer, req
        self._modality_checked = False
        self.viewer = widget.viewer
        self.done: set[int] = set()
        self.layer = None
        self.snapshot: PredictionSnapshot | None = None
        self.worker = None
        self.cancel_event: threading.Event | None = None
        self.pending: int | None = None
        self.inflight: int | None = None
        self.timer = QTimer()
        self.timer.setSingleShot(True)
        self.timer.setInterval(LIVE_DEBOUNCE_MS)
        self.timer.timeout.connect(self._fire)
        self.stopped = False
        self.latencies: list[float] = []

    def start(self):
        self.viewer.dims.events.current_step.connect(self._on_step)
        self.viewer.layers.events.removed.connect(self._on_removed)
        self.w.status.value = "live: loading model…"
        self._on_step()

    def stop(self):
        self.stopped = True
        self.timer.stop()
        if self.cancel_event is not None:
            self.cancel_event.set()
        for event, cb in ((self.viewer.dims.events.current_step, self._on_step),
                          (self.viewer.layers.events.removed, self._on_removed)):
            try:
                event.disconnect(cb)
            except (TypeError, ValueError, RuntimeError):
                pass

    def current_z(self) -> int:
        n = base_data(self.image).shape[0]
        return int(np.clip(self.viewer.dims.current_step[0], 0, n - 1))

    def _on_removed(self, event=None):
        if self.image not in self.viewer.layers:
            self.w.live.value = False                  # stops this session
        elif self.layer is not None and self.layer not in self.viewer.layers:
            self.layer, self.snapshot = None, None     # the person deleted it: start a fresh one
            self.done.clear()

    def _on_step(self, event=None):
        if not self.stopped:
            self.timer.start()                         # restart: only the slice they stop on

    def _fire(self):
        if self.stopped:
            return
        z = self.current_z()
        if z in self.done:
            self.w.status.value = f"live: slice {z} (done)"
            return
        if self.worker is not None:
            self.pending = z
            if self.inflight != z and self.cancel_event is not None:
                self.cancel_event.set()               # the slice they left is no longer wanted
            return
        self._run(z)

    def _run(self, z: int):
        from napari.qt.threading import create_worker

        self.inflight, self.pending = z, None
        self.cancel_event = threading.Event()
        self.w.status.value = f"live: segmenting slice {z}…"
        try:
            data = self.w.channels.stack_whole(base_data(self.image), self.image)     # all the model's sequences
        except SegloopError as e:
            self.inflight = None
            self.w.status.value = f"live: {e}"
            show_error(f"segloop: {e}")
            return
        t0 = time.perf_counter()
        self.worker = create_worker(self._predict, data, z, self.cancel_event,
                                    _connect={"returned": lambda r, t0=t0: self._on_returned(r, t0),
                                              "errored": self._on_errored, "finished": self._on_finished})

    def _predict(self, data, z: int, cancel: threading.Event):
        model = self.w._load_model(self.req)
        if not self._modality_checked:                   # once per session
            model_pick.check_layer_fits(model.spec, data, self.image.metadata, self.image.name)
            self._modality_checked = True
        rgb = bool(self.image.rgb)
        normalization = stain_normalization(model, rgb=rgb, stain=self.req.stain, stain_norm=self.req.stain_norm)
        predict_slice = getattr(model, "predict_slice", None)
        with thread_budget(reserve=1):        # scrolling stays smooth while the slice is segmented
            if predict_slice is not None and normalization is None:
                result = predict_slice(data, z, pixel_size=self.req.pixel_size, spacing=self.req.spacing,
                                       cancel=cancel)
            else:
                result = model.predict(data, z_range=(z, z + 1), normalization=normalization,
                                       channel_axis=-1 if rgb else "auto", pixel_size=self.req.pixel_size,
                                       spacing=self.req.spacing, cancel=cancel)
        labels = np.asarray(result.labels)
        return model, z, labels.reshape(labels.shape[-2:]), result.provenance

    def _ensure_layer(self, model, dtype, prov):
        from napari.layers import Labels

        if self.layer is not None and self.layer in self.viewer.layers:
            return
        info = SegmentWidget._layer_info(self.image)
        shape = info["full_shape"]
        spec = model.spec
        name = result_layer_name(info["name"], spec.name, spec.version) + " (live)"
        dtype = np.uint16 if spec.task == "instance" else np.dtype(dtype)
        data = np.zeros(shape, dtype)
        meta = {"segloop": {**prov, "scope": "live", "source_layer": info["name"]}, **info["metadata"]}
        n = len(shape)
        self.layer = Labels(data, name=name, metadata=meta, scale=info["scale"][-n:],
                            translate=info["translate"][-n:])
        self.snapshot = PredictionSnapshot(data)
        self.viewer.layers.append(self.layer)
        track(self.layer, snapshot=self.snapshot)
        self.done.clear()

    def _on_returned(self, payload, t0: float):
        model, z, labels, prov = payload
        if self.stopped or self.w._closed or self.image not in self.viewer.layers:
            return
        self._ensure_layer(model, labels.dtype, prov)
        if z in self.done:
            return
        if model.spec.task == "instance":         # ids unique across slices, as in a whole-stack run
            offset = int(self.layer.data.max())
            labels = np.where(labels > 0, labels.astype(np.int64) + offset, 0)
        if labels.size and int(labels.max()) > np.iinfo(self.layer.data.dtype).max:
            show_warning(f"segloop: slice {z} would need label ids above {self.layer.data.dtype}'s range; "
                         "it was left empty (segment the whole stack instead)")
            return
        self.layer.data[z] = labels
        self.snapshot.write(z, self.layer.data[z][None])
        self.layer.refresh()
        self.done.add(z)
        ms = (time.perf_counter() - t0) * 1e3
        self.latencies.append(ms)
        self.w.status.value = f"live: slice {z} in {ms:.0f} ms ({len(self.done)} slices done)"

    def _on_errored(self, exc: BaseException):
        if self.stopped or self.w._closed:
            return
        if isinstance(exc, Cancelled):
            return                                      # superseded by a newer slice
        self.w.status.value = f"live: {exc}"
        show_error(f"segloop: live segmentation stopped: {exc}")
        self.pending = None
        self.w.live.value = False

    def _on_finished(self):
        self.worker, self.inflight = None, None
        if self.stopped or self.w._closed:
            return
        if self.pending is not None and self.pending not in self.done:
            self._run(self.pending)
        elif self.current_z() not in self.done:
            self._fire()
