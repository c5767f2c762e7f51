"""Export dock widget: corrected labels -> a sample in a training folder v1.

The crop (current view, reviewed bounding box, whole image, current slice,
slice range, 3D crop) is copied on the main thread, so later edits of the
layer cannot tear the sample (objects made by click to segment inside it are listed
in meta.json's extra.prompted); hashing, the correction summary and the atomic
write run in a worker.  Any failure (read-only, missing or full target) is a
notification and leaves the layers untouched: the export only reads them.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    Label,
    LineEdit,
    ProgressBar,
    PushButton,
    SpinBox,
)
from napari.layers import Image, Labels
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info, show_warning

from segloop._napari import settings
from segloop._napari._regions import OffView, plane_index, spatial_shape, view_box
from segloop._napari.click_mode import prompted_in_crop
from segloop._napari.correction_tracking import tracker_for
from segloop.core._runtime import sha256_file
from segloop.core.editing.corrections import box_from_slices, summarize_corrections
from segloop.core.formats.trainfolder.classes import classes_from_model
from segloop.errors import SegloopError

__all__ = ["ExportWidget", "WHAT"]

WHAT = ("reviewed bounding box", "current view", "whole image", "current slice", "slice range", "3D crop")
SPLITS = ("auto", "train", "val", "test")
MODALITIES = ("fluorescence", "brightfield", "histology", "ct", "mr", "other")


class ExportWidget(Container):
    """Export an image + corrected Labels layer into a training folder (see the module docstring)."""

    def __init__(self, napari_viewer):
        super().__init__(labels=True)
        self.viewer = napari_viewer
        self._worker = None
        self.last: dict | None = None
        self.image = ComboBox(label="image", choices=self._choices(Image), nullable=True)
        self.labels = ComboBox(label="labels", choices=self._choices(Labels), nullable=True)
        self.folder = FileEdit(label="training folder", mode="d")
        self.what = ComboBox(label="export", choices=WHAT, value=WHAT[0])
        self.z_from = SpinBox(label="slices from", value=0, min=0, max=10**6)
        self.z_to = SpinBox(label="to (inclusive)", value=0, min=0, max=10**6)
        self.classes = LineEdit(label="classes", value="background, object")
        self.task = ComboBox(label="task", choices=("instance", "semantic"), value="instance")
        self.modality = ComboBox(label="modality", choices=MODALITIES, value="other")
        self.split = ComboBox(label="split", choices=SPLITS, value="auto")
        self.replace = CheckBox(text="replace the sample these labels were opened from", value=False,
                                visible=False)
        self.export_button = PushButton(text="Export")
        self.progress = ProgressBar(label="", value=0, min=0, max=0, visible=False)
        self.counts = Label(label="folder", value="")
        self.status = Label(label="", value="")
        for label in (self.counts, self.status):
            label.native.setWordWrap(True)
        self.extend([self.image, self.labels, self.folder, self.what, self.z_from, self.z_to, self.classes,
                     self.task, self.modality, self.split, self.replace, self.export_button, self.progress, self.counts,
                     self.status])
        self.export_button.changed.connect(lambda *_: self.export())
        self.labels.changed.connect(self._defaults_from_provenance)
        self.folder.changed.connect(lambda *_: self._show_counts())
        self.what.changed.connect(self._show_range)
        layers = self.viewer.layers
        layers.events.inserted.connect(self._refresh)
        layers.events.removed.connect(self._refresh)
        self.native.destroyed.connect(self._on_destroyed)
        self._recall()
        self._refresh()
        self._show_range()

    # -- choices and defaults ------------------------------------------------------
    def _choices(self, kind):
        return lambda _w=None: [(layer.name, layer) for layer in self.viewer.layers if isinstance(layer, kind)]

    def _refresh(self, *_):
        for combo in (self.image, self.labels):
            combo.reset_choices()
        labels = [c for c in self.labels.choices if c is not None]
        if self.labels.value is None and labels:
            self.labels.value = labels[-1]
        if self.image.value is None and any(c is not None for c in self.image.choices):
            self.image.value = self._default_image()
        self._defaults_from_provenance()

    def _default_image(self):
        """The image the labels were segmented from, else the last image that segloop did not make."""
        layer = self.labels.value
        src = ((layer.metadata.get("segloop") or {}).get("source_layer")) if layer is not None else None
        choices = [im for im in self.image.choices if im is not None]
        images = [im for im in choices if not im.metadata.get("segloop_overlay_of") and "segloop" not in im.metadata]
        named = [im for im in choices if src and im.name == src]
        return (named or images or choices)[-1]

    def _opened_sample(self) -> dict | None:
        layer = self.labels.value
        ref = ((layer.metadata.get("segloop") or {}).get("sample") or {}) if layer is not None else {}
        return ref if ref.get("folder") and ref.get("sample_id") else None

    def _defaults_from_provenance(self, *_):
        layer = self.labels.value
        src = ((layer.metadata.get("segloop") or {}).get("source_layer")) if layer is not None else None
        if src and src in self.viewer.layers and isinstance(self.viewer.layers[src], Image):
            self.image.value = self.viewer.layers[src]
        ref = self._opened_sample()
        self.replace.visible = ref is not None
        if ref is None:
            self.replace.value = False
        else:
            self.replace.text = f"replace sample {ref['sample_id']} (opened from its folder)"
        layer = self.labels.value
        prov = (layer.metadata.get("segloop") or {}) if layer is not None else {}
        model = prov.get("model") or {}
        derived = classes_from_model(model, (prov.get("parameters") or {}).get("postprocess"))
        if derived and self.classes.enabled:            # not for an existing folder: it keeps its own
            self.classes.value = ", ".join(derived[0])
            self.task.value = derived[1]
        if model.get("modality") in MODALITIES:
            self.modality.value = model["modality"]
        img = self.image.value
        if layer is not None and img is not None and getattr(img, "rgb", False) and not model.get("modality"):
            self.modality.value = "histology"
        n = spatial_shape(layer)[0] if layer is not None and layer.ndim >= 3 else 0
        for w in (self.z_from, self.z_to):
            w.max = max(0, n - 1)

    def _show_range(self, *_):
        ranged = self.what.value in ("slice range", "3D crop")
        self.z_from.visible = self.z_to.visible = ranged

    def _recall(self):
        folder = settings.training_folder()
        if folder:
            self.folder.value = folder
        self._show_counts()

    def _remember(self):
        settings.remember_training_folder(self.folder.value)

    def _on_destroyed(self, *_):
        layers = self.viewer.layers
        for event in (layers.events.inserted, layers.events.removed):
            try:
                event.disconnect(self._refresh)
            except (TypeError, ValueError, RuntimeError):
                pass

    # -- what to export ------------------------------------------------------------
    def crop(self, labels: Labels) -> tuple[slice, ...]:
        """Spatial slices of the labels to export for the current choice."""
        shape = spatial_shape(labels)
        what = self.what.value
        full = tuple(slice(0, n) for n in shape)
        lead = len(shape) - 2
        if what == "whole image":
            return full
        if what == "reviewed bounding box":
            tr = tracker_for(labels)
            bbox = tr.reviewed_bbox()
            if bbox is None:
                if tr.snapshot is None:
                    return full
                raise _UserError("nothing is reviewed yet: edit labels, or use Proofread's 'Mark view "
                                 "reviewed', then export")
            return bbox
        if what == "current view":
            idx = tuple(slice(i, i + 1) for i in plane_index(labels, self.viewer))
            return idx + view_box(labels)
        if what == "current slice":
            idx = tuple(slice(i, i + 1) for i in plane_index(labels, self.viewer))
            return idx + full[lead:]
        if lead < 1:
            raise _UserError(f"'{what}' needs a stack or volume; {labels.name!r} is 2D")
        z0, z1 = sorted((int(self.z_from.value), int(self.z_to.value)))
        z = (slice(z0, min(z1 + 1, shape[0])),)
        rest = tuple(slice(0, n) for n in shape[1:lead])
        return z + rest + (view_box(labels) if what == "3D crop" else full[lead:])

    def _gather(self) -> dict:
        """Copy everything the worker needs (main thread: layers are only read here)."""
        img_layer, lab_layer = self.image.value, self.labels.value
        if img_layer is None or lab_layer is None:
            raise _UserError("choose an image layer and a Labels layer to export")
        if not self.replace.value and (not str(self.folder.value) or str(self.folder.value) in (".", "")):
            raise _UserError("choose a training folder (a new, empty folder is made into one)")
        img = img_layer.data[0] if img_layer.multiscale else img_layer.data
        rgb = bool(getattr(img_layer, "rgb", False))
        lab_shape = spatial_shape(lab_layer)
        img_shape = tuple(img.shape[:-1] if rgb else img.shape)
        if img_shape != lab_shape:
            raise SegloopError(f"image {img_layer.name!r} has spatial shape {img_shape} but labels "
                               f"{lab_layer.name!r} have {lab_shape}; pick the matching pair")
        ref = self._opened_sample() if self.replace.value else None
        try:
            crop = tuple(slice(0, n) for n in lab_shape) if ref else self.crop(lab_layer)
        except OffView as e:
            raise _UserError(str(e)) from None
        if any(s.stop - s.start < 1 for s in crop):
            raise _UserError("the region to export is empty")
        squeeze = tuple(i for i, s in enumerate(crop[:-2]) if s.stop - s.start == 1)
        image = np.array(img[crop], copy=True)              # level 0 (read here if dask/zarr); a copy
        labels = np.array(lab_layer.data[crop], copy=True)
        tr = tracker_for(lab_layer)
        if tr.has_review:
            reviewed = tr.reviewed_mask(crop)
        elif tr.snapshot is None:
            reviewed = np.ones(labels.shape, np.uint8)       # drawn from scratch / opened: all a person's work
        else:
            raise _UserError("nothing is reviewed in this region yet: edit labels or mark the view reviewed "
                             "(Proofread) first — unreviewed pixels teach the model nothing")
        predicted = tr.snapshot.read(crop) if tr.snapshot is not None and tr.snapshot.shape == lab_shape else None
        prompted = prompted_in_crop(lab_layer.metadata, crop, labels)     # objects confirmed by clicks
        if squeeze:
            image, labels, reviewed = (np.squeeze(a, axis=squeeze) for a in (image, labels, reviewed))
            predicted = None if predicted is None else np.squeeze(predicted, axis=squeeze)
        n_sp = labels.ndim
        axes = "ZYX"[-n_sp:] if n_sp <= 3 else "T" * (n_sp - 3) + "ZYX"
        src = (img_layer.metadata.get("segloop_source") or {}).get("source") or getattr(img_layer.source, "path", None)
        prov = lab_layer.metadata.get("segloop") or {}
        scale = tuple(float(s) for s in img_layer.scale[-len(img_shape):])
        kept = [i for i in range(len(crop)) if i not in squeeze]
        box = [list(b) for b in box_from_slices(crop, lab_shape)]
        job_source = {"source": str(src) if src else img_layer.name, "source_path": str(src) if src else None,
                      "source_sha256": None, "crop": [box[i] for i in kept],
                      # a single slice of a stack: the slice it came from
                      "slice_range": box[squeeze[0]] if squeeze else None}
        sample_meta = img_layer.metadata.get("segloop_sample") or {}
        if ref and sample_meta.get("sample_id") == ref["sample_id"]:
            # replacing: keep the sample's own source identity and place in the source image
            job_source = {"source": sample_meta.get("source") or job_source["source"], "source_path": None,
                          "source_sha256": sample_meta.get("source_sha256"),
                          "crop": sample_meta.get("crop"), "slice_range": sample_meta.get("slice_range")}
        return {
            **job_source,
            "image": image, "labels": labels, "reviewed": reviewed, "predicted": predicted,
            "axes": axes + ("C" if rgb else ""),
            "spacing": [scale[i] for i in kept],
            "model": {k: prov["model"][k] for k in ("name", "version", "sha256") if k in prov.get("model", {})}
            or None,
            # classes and task for a new folder; an existing one (fields locked, or the folder the
            # labels were opened from) keeps its own
            "classes": ([c.strip() for c in self.classes.value.split(",") if c.strip()]
                        if self.classes.enabled and not ref else None),
            "task": self.task.value if self.task.enabled and not ref else None, "modality": self.modality.value,
            "split": None if self.split.value == "auto" else self.split.value,
            "folder": Path(ref["folder"]) if ref else Path(self.folder.value),
            "sample_id": ref["sample_id"] if ref else None, "replace": bool(ref),
            "labels_layer": lab_layer.name, "image_layer": img_layer.name,
            "geometry": _geometry(img_layer, crop, kept), "prompted": prompted,
        }

    # -- running -------------------------------------------------------------------
    def export(self):
        """Start exporting; returns the worker (None if nothing was started)."""
        if self._worker is not None:
            show_info("segloop: an export is already running")
            return None
        try:
            job = self._gather()
        except _UserError as e:
            self.status.value = str(e)
            show_info(f"segloop: {e}")
            return None
        except SegloopError as e:
            self.status.value = f"error: {e}"
            show_error(f"segloop: {e}")
            return None
        self.export_button.enabled = False
        self.progress.visible = True
        self.status.value = "exporting…"
        self._remember()
        # errors go to _on_errored (a notification), never re-raised into the event loop
        worker = create_worker(_write_sample, job, _start_thread=False,
                               _connect={"returned": self._on_returned, "errored": self._on_errored,
                                         "finished": self._on_finished})
        self._worker = worker
        worker.start()
        return worker

    def _on_returned(self, out):
        result, folder = out
        self.last = {"ids": [r.sample_id for r in result.records], "folder": str(folder.path)}
        ids = ", ".join(self.last["ids"])
        self.status.value = f"exported {ids}"
        if result.notice:
            show_warning(f"segloop: {result.notice}")
            self.status.value += f" — {result.notice}"
        else:
            show_info(f"segloop: exported {ids} to {folder.path}")
        self._show_counts()

    def _on_errored(self, exc):
        msg = str(exc) if isinstance(exc, SegloopError) else f"{type(exc).__name__}: {exc}"
        self.status.value = f"export failed: {msg}"
        show_error(f"segloop: export failed — {msg}. The layers were not changed.")

    def _on_finished(self):
        self._worker = None
        self.export_button.enabled = True
        self.progress.visible = False

    def _show_counts(self):
        from segloop.core.formats.trainfolder import TrainingFolder

        try:
            folder = TrainingFolder.open(self.folder.value)
            counts = folder.split_counts()
        except (SegloopError, OSError):
            self.counts.value = ""
            self._lock_classes(None)
            return
        self._lock_classes(folder.info)
        text = " · ".join(f"{k} {v}" for k, v in sorted(counts.items()))
        if self.last:
            text += f"; last: {', '.join(self.last['ids'])}"
        self.counts.value = text


    def _lock_classes(self, info):
        """An existing folder keeps its classes and task: show them, read-only; a new one takes the fields'."""
        locked = info is not None
        if locked:
            self.classes.value = ", ".join(info.classes)
            self.task.value = info.task
        tip = "an existing training folder keeps its classes and task" if locked else ""
        for w in (self.classes, self.task):
            w.enabled = not locked
            w.native.setToolTip(tip)


def _sha256_file(path: Path, chunk: int = 1 << 22) -> str | None:
    try:
        return sha256_file(path, chunk=chunk)
    except OSError:
        return None


def _geometry(img_layer, crop: tuple[slice, ...], kept: list[int]) -> dict | None:
    """Orientation of the exported crop when the image came from a volume reader (DICOM, NIfTI ...).

    ``affine`` maps the sample's own voxel indices (the crop's axes that were kept) to RAS mm,
    so a sample from a slice range or a 3D crop can be put back in patient space.
    """
    info = img_layer.metadata.get("segloop_volume")
    if info is None or len(crop) != 3:
        return None
    aff = np.asarray(info.affine, float).copy()
    start = np.array([s.start or 0 for s in crop], float)
    aff[:3, 3] = aff[:3, :3] @ start + aff[:3, 3]          # origin moves to the crop's first voxel
    cols = [*kept, 3]
    aff = aff[:, cols] if len(kept) < 3 else aff
    meta = info.to_meta()
    return {"orientation": meta.get("orientation", "LPS"), "axes": "".join("ZYX"[i] for i in kept),
            "affine": aff.round(6).tolist(), "source_spacing": meta["spacing"],
            "source_shape": meta["shape"], "source_format": meta["format"],
            "modality": meta.get("modality", ""), "units": meta.get("units", ""),
            "series_uid": meta.get("series_uid", "")}


def _write_sample(job: dict):
    """Worker: open or create the folder, summarize the corrections, write the sample atomically."""
    from segloop.core.formats.trainfolder import open_for_export

    t0 = time.perf_counter()
    folder = open_for_export(job["folder"], classes=job["classes"], task=job["task"], modality=job["modality"])
    corrections = None
    if job["predicted"] is not None:
        corrections = summarize_corrections(job["predicted"], job["labels"], task=folder.info.task).to_dict()
    src_sha = job["source_sha256"] or (_sha256_file(Path(job["source_path"])) if job["source_path"] else None)
    result = folder.add_sample(
        job["image"], job["labels"], job["reviewed"], axes=job["axes"], source=job["source"],
        source_sha256=src_sha, crop=job["crop"], slice_range=job["slice_range"], spacing=job["spacing"], model=job["model"],
        corrections=corrections, split=job["split"], sample_id=job["sample_id"], replace=job["replace"],
        extra={"napari": {"image_layer": job["image_layer"], "labels_layer": job["labels_layer"]},
               "export_seconds": round(time.perf_counter() - t0, 3),
               **({"geometry": job["geometry"]} if job.get("geometry") else {}),
               **({"prompted": job["prompted"]} if job.get("prompted") else {})})
    return result, folder


class _UserError(Exception):
    """A step the person still has to take (info, not an error)."""
