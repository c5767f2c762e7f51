"""CT tools dock widget: window presets, slice interpolation, measurements, export for other tools.

* **Window** - CT window presets (lung, mediastinum, ... from
  :data:`segloop.core.formats.normalization.CT_PRESETS`) or a custom level / width set the
  image layer's contrast limits to ``level +- width / 2``.  When the layer's
  limits match a preset (also after dragging napari's own slider), it is shown.
* **Interpolate** - fills the slices between drawn slices
  (:func:`segloop.core.editing.interpolate.interpolate_slices`) as ONE undo step
  (Ctrl+Z undoes all of it).  Filled slices are not marked reviewed: a person
  has not looked at them yet.
* **Measure** - a table of volume (mL), largest axial diameter (mm) and HU
  mean +- std per label, refreshed on demand and shortly after the labels
  change (big volumes are measured in a worker); "Save CSV..." writes it.
* **Export for other tools** - NIfTI, 3D Slicer ``.seg.nrrd`` and, for DICOM images,
  DICOM RTSTRUCT and (with highdicom) DICOM-SEG, with the geometry the image was read with.

Spacing comes from the layers' ``scale`` (``(dz, dy, dx)`` mm); geometry for
export from ``metadata["segloop_volume"]`` (a
:class:`~segloop.core.formats.io.geometry.VolumeInfo`) of the labels or the image layer.
Measurements go through :func:`segloop.core.editing.measure.measure_volume` with that
geometry, as ``segloop measure`` does, so the axial axis is decided in one place
(:func:`~segloop.core.formats.io.geometry.axial_axis`; axis 0 when the geometry is unknown)
and both give the same numbers for the same labels.
Failures are notifications; they never change the labels.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FloatSpinBox,
    Label,
    PushButton,
    SpinBox,
    Table,
)
from napari.layers import Image, Labels
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QStyledItemDelegate

from segloop._napari.correction_tracking import tracker_for
from segloop.core.formats.io.geometry import axial_axis
from segloop.core.formats.normalization import CT_PRESETS
from segloop.errors import SegloopError

__all__ = ["CTToolsWidget", "PRESETS", "FORMATS"]

CUSTOM = "custom"
PRESETS = (*CT_PRESETS, CUSTOM)
NIFTI, NRRD, DICOM_SEG = "NIfTI (.nii.gz)", "3D Slicer (.seg.nrrd)", "DICOM-SEG (.dcm)"
RTSTRUCT = "DICOM RTSTRUCT (.dcm)"
FORMATS = (NIFTI, NRRD, DICOM_SEG, RTSTRUCT)
SUFFIXES = {NIFTI: ".nii.gz", NRRD: ".seg.nrrd", DICOM_SEG: ".dcm", RTSTRUCT: ".dcm"}
FILTERS = {NIFTI: "NIfTI (*.nii.gz *.nii)", NRRD: "3D Slicer segmentation (*.seg.nrrd)",
           DICOM_SEG: "DICOM-SEG (*.dcm)", RTSTRUCT: "DICOM RT Structure Set (*.dcm)"}

TABLE_COLUMNS = ("label", "name", "voxels", "mL", "max Ø (mm)", "HU mean ± sd")
"""Table headers; the CSV has every column of :data:`segloop.core.editing.measure.COLUMNS`."""
TABLE_MAX_WIDTH = 560
"""The table widens the dock to fit its columns up to this many pixels."""
MEASURE_SYNC_VOXELS = 1 << 24
"""Label volumes up to this many voxels are measured on the spot; bigger ones in a worker."""
MEASURE_DELAY_MS = 600
"""The table is refreshed this long after the last change of the labels (a brush stroke, an undo)."""
PRESET_TOLERANCE_HU = 0.5


class CTToolsWidget(Container):
    """Window presets, slice interpolation, measurements and export for CT (see the module docstring)."""

    def __init__(self, napari_viewer):
        super().__init__(labels=False)
        self.viewer = napari_viewer
        self.rows: list[dict] = []
        self._updating = False
        self._bound_image: Image | None = None
        self._bound_labels: Labels | None = None
        self._history_sig = None
        self._worker = None
        self._pending = False
        self._closed = False

        # -- window
        self.image_layer = ComboBox(label="image", choices=self._choices(Image), nullable=True)
        self.preset = ComboBox(label="window", choices=PRESETS, value="soft tissue")
        self.level = FloatSpinBox(label="level (HU)", value=40.0, min=-3000.0, max=5000.0, step=10.0)
        self.window_width = FloatSpinBox(label="width (HU)", value=400.0, min=1.0, max=10000.0, step=10.0)
        window = Container(labels=True, widgets=[self.image_layer, self.preset, self.level, self.window_width])

        # -- interpolate
        self.labels_layer = ComboBox(label="labels", choices=self._choices(Labels), nullable=True)
        self.label_id = SpinBox(label="label (0 = all)", value=0, min=0, max=2**31 - 1)
        self.interpolate_button = PushButton(text="Interpolate between slices")
        self.interp_status = Label(value="draw a label on two or more slices, then interpolate the ones between")
        interp = Container(labels=True, widgets=[self.labels_layer, self.label_id])

        # -- measure
        self.table = Table(value={"data": [], "index": [], "columns": list(TABLE_COLUMNS)})
        self.table.read_only = True
        self.table.native.setItemDelegate(QStyledItemDelegate(self.table.native))   # text as formatted here
        self.table.native.verticalHeader().setVisible(False)
        self.table.native.horizontalHeader().setStretchLastSection(True)
        self.table.native.setMinimumHeight(120)
        self.table.native.setMaximumHeight(260)
        self.lesions = CheckBox(text="each lesion separately (connected parts of a label)", value=False)
        self.measure_button = PushButton(text="Refresh")
        self.csv_button = PushButton(text="Save CSV…")
        self.measure_status = Label(value="")
        measure_buttons = Container(layout="horizontal", labels=False,
                                    widgets=[self.measure_button, self.csv_button])

        # -- export
        self.export_format = ComboBox(label="format", choices=self._format_choices)
        self.export_button = PushButton(text="Save…")
        self.export_status = Label(value="")
        export = Container(labels=True, widgets=[self.export_format])

        for w in (self.interp_status, self.measure_status, self.export_status):
            w.native.setWordWrap(True)
        self.extend([_header("Window"), window,
                     _header("Interpolate"), interp, self.interpolate_button, self.interp_status,
                     _header("Measure"), self.lesions, self.table, measure_buttons, self.measure_status,
                     _header("Export for other tools"), export, self.export_button, self.export_status])

        self._timer = QTimer(self.native)
        self._timer.setSingleShot(True)
        self._timer.setInterval(MEASURE_DELAY_MS)
        self._timer.timeout.connect(self._auto_refresh)

        self.image_layer.changed.connect(self._bind_image)
        self.preset.changed.connect(self._on_preset)
        self.level.changed.connect(self._on_spin)
        self.window_width.changed.connect(self._on_spin)
        self.labels_layer.changed.connect(self._bind_labels)
        self.interpolate_button.changed.connect(lambda *_: self.interpolate())
        self.measure_button.changed.connect(lambda *_: self.refresh())
        self.lesions.changed.connect(lambda *_: self.refresh())
        self.csv_button.changed.connect(lambda *_: self.save_csv())
        self.export_button.changed.connect(lambda *_: self.export())

        layers = self.viewer.layers
        layers.events.inserted.connect(self._refresh_layers)
        layers.events.removed.connect(self._refresh_layers)
        self.native.destroyed.connect(self._on_destroyed)
        self._refresh_layers()

    # -- layer bookkeeping -------------------------------------------------------------
    def _choices(self, kind):
        return lambda _w=None: [(layer.name, layer) for layer in self.viewer.layers if isinstance(layer, kind)]

    def _refresh_layers(self, *_):
        if self._closed:
            return
        self.image_layer.reset_choices()
        self.labels_layer.reset_choices()
        if self.image_layer.value is None:
            images = [im for im in self.image_layer.choices if im is not None and not getattr(im, "rgb", False)
                      and not im.metadata.get("segloop_overlay_of") and "segloop" not in im.metadata]
            if images:
                self.image_layer.value = images[0]
        if self.labels_layer.value is None and self.labels_layer.choices:
            self.labels_layer.value = self.labels_layer.choices[-1]
        self._bind_image()
        self._bind_labels()

    def _bind_image(self, *_):
        layer = self.image_layer.value
        if layer is self._bound_image:
            return
        if self._bound_image is not None:
            _disconnect(self._bound_image.events.contrast_limits, self._show_window)
        self._bound_image = layer
        if layer is not None:
            layer.events.contrast_limits.connect(self._show_window)
            self._show_window()
        self._refresh_formats()

    def _bind_labels(self, *_):
        layer = self.labels_layer.value
        if layer is self._bound_labels:
            return
        old = self._bound_labels
        if old is not None:
            for ev in (old.events.paint, old.events.data):
                _disconnect(ev, self._schedule)
            _disconnect(old.events.set_data, self._on_set_data)
        self._bound_labels = layer
        self.rows = []
        self._show_rows([])
        if layer is not None:
            layer.events.paint.connect(self._schedule)
            layer.events.data.connect(self._schedule)
            layer.events.set_data.connect(self._on_set_data)
            self._history_sig = _history_signature(layer)
            self._schedule()
        self._refresh_formats()

    def _on_destroyed(self, *_):
        self._closed = True
        try:
            self._timer.stop()
        except RuntimeError:            # Qt already deleted it (application shutting down)
            pass
        layers = self.viewer.layers
        _disconnect(layers.events.inserted, self._refresh_layers)
        _disconnect(layers.events.removed, self._refresh_layers)
        if self._bound_image is not None:
            _disconnect(self._bound_image.events.contrast_limits, self._show_window)
        if self._bound_labels is not None:
            for ev in (self._bound_labels.events.paint, self._bound_labels.events.data):
                _disconnect(ev, self._schedule)
            _disconnect(self._bound_labels.events.set_data, self._on_set_data)

    # -- window ------------------------------------------------------------------------
    def _show_window(self, *_):
        """Show the image layer's current limits as level / width, and the preset they match."""
        layer = self.image_layer.value
        if layer is None or self._updating:
            return
        lo, hi = (float(v) for v in layer.contrast_limits)
        level, width = (lo + hi) / 2, hi - lo
        self._updating = True
        try:
            self.level.value = min(max(level, self.level.min), self.level.max)
            self.window_width.value = min(max(width, self.window_width.min), self.window_width.max)
            self.preset.value = matching_preset(level, width) or CUSTOM
        finally:
            self._updating = False

    def _on_preset(self, name):
        if self._updating:
            return
        if name != CUSTOM:
            level, width = CT_PRESETS[name]
            self._updating = True
            try:
                self.level.value, self.window_width.value = level, width
            finally:
                self._updating = False
        self.apply_window()

    def _on_spin(self, *_):
        if self._updating:
            return
        match = matching_preset(self.level.value, self.window_width.value) or CUSTOM
        if match != self.preset.value:
            self._updating = True
            try:
                self.preset.value = match
            finally:
                self._updating = False
        self.apply_window()

    def apply_window(self) -> tuple[float, float] | None:
        """Set the image layer's contrast limits to ``level +- width / 2``; returns them (None: no image)."""
        layer = self.image_layer.value
        if layer is None:
            return None
        level, width = float(self.level.value), float(self.window_width.value)
        limits = (level - width / 2, level + width / 2)
        self._updating = True
        try:
            layer.contrast_limits = limits
        finally:
            self._updating = False
        return limits

    # -- interpolate ---------------------------------------------------------------------
    def _slice_axis(self, layer) -> int:
        """The data axis the person scrolls through: the non-displayed one of a 2D view (else 0)."""
        dims = self.viewer.dims
        if dims.ndisplay != 2:
            return 0
        offset = dims.ndim - layer.ndim
        hidden = [a - offset for a in dims.not_displayed if a - offset >= 0]
        return hidden[-1] if len(hidden) == 1 else 0

    def interpolate(self):
        """Interpolate the chosen label(s) between slices as one undo step; returns the result (or None)."""
        from segloop.core.editing.interpolate import interpolate_slices

        layer = self.labels_layer.value
        if layer is None:
            show_info("segloop: add or pick a Labels layer first")
            return None
        data = layer.data
        if not isinstance(data, np.ndarray) or data.ndim < 3:
            msg = (f"{layer.name!r} is not an in-memory 3D label volume" if not isinstance(data, np.ndarray)
                   else f"{layer.name!r} is 2D: interpolation fills slices of a stack or volume")
            self.interp_status.value = msg
            show_error(f"segloop: {msg}")
            return None
        label = int(self.label_id.value) or None
        try:
            result = interpolate_slices(data, axis=self._slice_axis(layer), label=label,
                                        spacing=tuple(layer.scale[-data.ndim:]))
        except SegloopError as e:
            self.interp_status.value = f"interpolation: {e}"
            show_error(f"segloop: interpolation: {e}")
            return None
        if result.n_changed == 0:
            which = f"label {label}" if label else "any label"
            self.interp_status.value = (f"nothing to interpolate: {which} needs two drawn slices with empty "
                                        "slices between them")
            return result
        with tracker_for(layer).unreviewed():            # machine-filled: nobody has looked at it yet
            layer.data_setitem(result.edit.indices, result.edit.values)    # one undo step
        self.interp_status.value = f"{result.describe()} (not reviewed until you look; Ctrl+Z undoes)"
        return result

    # -- measure -------------------------------------------------------------------------
    def _on_set_data(self, *_):
        """napari refreshes (set_data) after undo / redo without a paint event: compare the history."""
        layer = self._bound_labels
        sig = _history_signature(layer) if layer is not None else None
        if sig is not None and sig != self._history_sig:
            self._history_sig = sig
            self._schedule()

    def _schedule(self, *_):
        if not self._closed:
            self._timer.start()

    def _auto_refresh(self):
        if not self._closed and self._bound_labels is not None:
            self.refresh()

    def spacing(self) -> tuple[float, float, float]:
        """``(dz, dy, dx)`` in mm: the labels layer's scale (the image's if the labels have none)."""
        layer = self.labels_layer.value
        sp = tuple(float(s) for s in layer.scale[-3:])
        image = self._hu_image(layer)
        if image is not None and all(s == 1.0 for s in sp):
            sp = tuple(float(s) for s in image.scale[-3:])
        return sp

    def _hu_image(self, labels_layer):
        """The Window image if it has the labels' shape (single channel), else None."""
        image = self.image_layer.value
        if image is None or getattr(image, "rgb", False):
            return None
        data = image.data[0] if image.multiscale else image.data
        return image if tuple(data.shape) == tuple(labels_layer.data.shape) else None

    def _measure_job(self) -> dict | None:
        layer = self.labels_layer.value
        if layer is None:
            self.measure_status.value = "pick a Labels layer"
            return None
        if layer.data.ndim != 3:
            self.measure_status.value = f"{layer.name!r} is not a 3D volume; measurements need (Z, Y, X) labels"
            return None
        image = self._hu_image(layer)
        return {"labels": layer.data, "spacing": self.spacing(), "names": class_names(layer),
                "geometry": self.volume_info(),
                "image": None if image is None else (image.data[0] if image.multiscale else image.data),
                "image_name": None if image is None else image.name}

    def refresh(self) -> list[dict] | None:
        """Measure the labels now (small volumes: returns the rows) or in a worker (returns None)."""
        from segloop.core.editing.measure import measure_volume

        self._timer.stop()
        if self._worker is not None:
            self._pending = True
            return None
        job = self._measure_job()
        if job is None:
            return None
        labels = job["labels"]
        kwargs = {"geometry": job["geometry"], "spacing": job["spacing"], "image": job["image"],
                  "names": job["names"], "lesions": bool(self.lesions.value)}
        if labels.size <= MEASURE_SYNC_VOXELS:
            try:
                rows = measure_volume(np.asarray(labels), **kwargs)
            except SegloopError as e:
                self._on_measure_error(e)
                return None
            self._on_measured(rows, job)
            return rows
        from napari.qt.threading import create_worker

        self.measure_status.value = "measuring…"
        snapshot = np.array(labels, copy=True)        # later edits cannot tear the measurement
        self._worker = create_worker(measure_volume, snapshot, **kwargs,
                                     _connect={"returned": lambda rows: self._on_measured(rows, job),
                                               "errored": self._on_measure_error,
                                               "finished": self._on_measure_finished})
        return None

    def _on_measured(self, rows: list[dict], job: dict):
        if self._closed:
            return
        self.rows = rows
        self._show_rows(rows)
        dz, dy, dx = job["spacing"]
        parts = [f"{len(rows)} label{'s' if len(rows) != 1 else ''}", f"voxel {dz:g} × {dy:g} × {dx:g} mm"]
        if (dz, dy, dx) == (1.0, 1.0, 1.0):
            parts.append("spacing unknown: 1 mm assumed")
        parts.append(f"HU from {job['image_name']!r}" if job["image_name"] else "no image of the same shape: no HU")
        axis = axial_axis(job["geometry"])
        if axis != 0:
            parts.append(f"axial slices along data axis {axis} (from the volume's orientation)")
        notes = [f"label {r['label']}: {r['notes']}" for r in rows if r.get("notes")]
        self.measure_status.value = "; ".join(parts + notes)

    def _on_measure_error(self, exc):
        if self._closed:
            return
        self.measure_status.value = f"measure: {exc}"
        show_error(f"segloop: measure: {exc}")

    def _on_measure_finished(self):
        self._worker = None
        if self._pending and not self._closed:
            self._pending = False
            self._schedule()

    def _show_rows(self, rows: list[dict]):
        from qtpy.QtCore import Qt

        data = [[f"{r['label']}.{r['lesion']}" if r.get("lesion") else str(r["label"]), r["name"], f"{r['voxels']:,}", f"{r['volume_ml']:.2f}",
                 f"{r['max_diameter_mm']:.1f}",
                 "" if math.isnan(r["hu_mean"]) else f"{r['hu_mean']:.1f} ± {r['hu_std']:.1f}"] for r in rows]
        self.table.value = {"data": data, "index": list(range(len(data))), "columns": list(TABLE_COLUMNS)}
        table = self.table.native
        table.verticalHeader().setVisible(False)
        right = Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter
        for i, r in enumerate(rows):
            for col in (0, 2, 3, 4, 5):
                item = table.item(i, col)
                if item is not None:
                    item.setTextAlignment(right)
            if table.item(i, 4) is not None:
                table.item(i, 4).setToolTip(f"largest axial diameter, on slice {r['diameter_slice']} of the "
                                            "axial axis")
            if r.get("notes") and table.item(i, 5) is not None:
                table.item(i, 5).setToolTip(r["notes"])
        table.resizeColumnsToContents()
        # let the dock grow to show every column (up to a point) instead of scrolling sideways
        needed = sum(table.columnWidth(c) for c in range(table.columnCount())) + 2 * table.frameWidth() + 2
        table.setMinimumWidth(min(needed, TABLE_MAX_WIDTH))

    def save_csv(self, path: str | Path | None = None) -> Path | None:
        """Write the measurements (refreshed first if there are none) to ``path`` (asks when None)."""
        from segloop.core.editing.measure import write_csv

        rows = self.rows or self.refresh() or []
        if not rows:
            show_info("segloop: nothing to save: no labels measured")
            return None
        if path is None:
            path = _ask_path(self.native, "Save measurements", "measurements.csv", "CSV (*.csv)")
            if path is None:
                return None
        path = Path(path)
        if path.suffix.lower() != ".csv":
            path = path.with_name(path.name + ".csv")
        try:
            out = write_csv(rows, path)
        except SegloopError as e:
            self.measure_status.value = f"save CSV: {e}"
            show_error(f"segloop: save CSV: {e}")
            return None
        self.measure_status.value = f"saved {len(rows)} rows to {out}"
        return out

    # -- export --------------------------------------------------------------------------
    def volume_info(self):
        """The ``VolumeInfo`` of the labels (or of the image they were drawn on), or None."""
        layer = self.labels_layer.value
        if layer is None:
            return None
        for src in (layer, self._hu_image(layer)):
            info = None if src is None else src.metadata.get("segloop_volume")
            if info is not None and tuple(getattr(info, "shape", ())) == tuple(layer.data.shape):
                return info
        return None

    def _format_choices(self, _w=None):
        formats = [NIFTI, NRRD]
        info = self.volume_info() if hasattr(self, "labels_layer") else None
        if info is not None and getattr(info, "format", "") == "dicom":
            formats += [DICOM_SEG, RTSTRUCT] if _has_highdicom() else [RTSTRUCT]
        return formats

    def _refresh_formats(self):
        if hasattr(self, "export_format"):
            current = self.export_format.value
            self.export_format.reset_choices()
            if current in self.export_format.choices:
                self.export_format.value = current

    def export(self, path: str | Path | None = None, fmt: str | None = None) -> Path | None:
        """Write the labels for another tool in format ``fmt`` (default: the chosen one) to ``path``."""
        layer = self.labels_layer.value
        fmt = fmt or self.export_format.value
        if layer is None:
            show_info("segloop: pick a Labels layer to export")
            return None
        if fmt not in FORMATS:
            show_error(f"segloop: unknown export format {fmt!r}; pick one of {', '.join(FORMATS)}")
            return None
        data = np.asarray(layer.data)
        if data.ndim != 3:
            self._export_failed(f"{layer.name!r} is not a 3D volume; these formats hold (Z, Y, X) labels")
            return None
        info = self.volume_info()
        if fmt in (DICOM_SEG, RTSTRUCT) and (info is None or getattr(info, "format", "") != "dicom"):
            self._export_failed(f"{fmt.split(' (')[0]} needs the DICOM series the labels were drawn on; open the "
                                "image from its DICOM folder")
            return None
        if path is None:
            path = _ask_path(self.native, f"Export {fmt}", f"{layer.name}{SUFFIXES[fmt]}", FILTERS[fmt])
            if path is None:
                return None
        path = _with_suffix(Path(path), fmt)
        warn = None
        if info is None:
            info = geometry_from_layer(layer)
            warn = (f"the geometry of {layer.name!r} is unknown (not opened from DICOM or NIfTI): {path.name} is "
                    f"written with the layer scale {tuple(round(s, 4) for s in info.spacing)} mm only, no "
                    "orientation or position; it may not line up with the scan in other tools")
        ids = _label_ids(data)
        names = segment_names(layer, ids)
        colors = {i: tuple(int(round(255 * float(c))) for c in np.asarray(layer.get_color(i))[:3]) for i in ids}
        try:
            out = _write(fmt, path, data, info, names, colors)
        except ImportError as e:
            self._export_failed(f"{fmt} export is not available in this install ({e})")
            return None
        except (SegloopError, OSError, ValueError) as e:
            self._export_failed(f"{type(e).__name__}: {e}")
            return None
        out = Path(out) if out is not None else path
        if warn:
            show_warning(f"segloop: {warn}")
        self.export_status.value = f"saved {len(ids)} label{'s' if len(ids) != 1 else ''} to {out}" + (
            " (geometry unknown: layer scale only)" if warn else "")
        return out

    def _export_failed(self, msg: str):
        self.export_status.value = f"export: {msg}"
        show_error(f"segloop: export: {msg}")


# --------------------------------------------------------------------------- helpers


def matching_preset(level: float, width: float) -> str | None:
    """The name of the CT preset with this level and width (within half a HU), or None."""
    for name, (lv, wd) in CT_PRESETS.items():
        if abs(lv - level) <= PRESET_TOLERANCE_HU and abs(wd - width) <= PRESET_TOLERANCE_HU:
            return name
    return None


def class_names(layer) -> list[str] | None:
    """Names by label id from the predicting model's classes (semantic labels only), or None."""
    model = (layer.metadata.get("segloop") or {}).get("model") or {}
    classes = model.get("classes")
    if not classes or model.get("task", "semantic") != "semantic":
        return None
    return [str(c) for c in classes]


def segment_names(layer, ids) -> dict[int, str]:
    """A name for every id: the class name where known, else ``"label <id>"``."""
    classes = class_names(layer) or []
    return {i: classes[i] if 0 < i < len(classes) else f"label {i}" for i in ids}


def geometry_from_layer(layer):
    """A ``VolumeInfo`` from the layer's scale and translate alone (LPS voxel axes, as the readers give)."""
    from segloop.core.formats.io.geometry import VolumeInfo, lps_affine

    spacing = tuple(float(s) for s in layer.scale[-3:])
    tz, ty, tx = (float(t) for t in layer.translate[-3:])
    # the readers' convention: z to Superior, y to Posterior (-A), x to Left (-R); origin in RAS mm
    affine = lps_affine(spacing, (-tx, -ty, tz))
    return VolumeInfo(path=Path(layer.name), format="", shape=tuple(layer.data.shape[-3:]),
                      spacing=spacing, affine=affine,
                      warnings=["geometry unknown: written from the napari layer scale only"])


def _label_ids(data) -> list[int]:
    from segloop.core.editing.measure import label_ids

    return label_ids(data)


def _write(fmt: str, path: Path, data, info, names: dict, colors: dict):
    if fmt == NIFTI:
        from segloop.core.formats.io.volume import write_nifti_labels

        return write_nifti_labels(path, data, info)
    if fmt == NRRD:
        from segloop.core.formats.io.volume import write_seg_nrrd

        return write_seg_nrrd(path, data, info, names=names, colors=colors)
    if fmt == RTSTRUCT:
        from segloop.core.formats.io.rtstruct import write_rtstruct

        return write_rtstruct(path, data, info, names=names, colors=colors)
    from segloop.core.formats.io.dicom_seg import write_dicom_seg

    return write_dicom_seg(path, data, info, segment_names=names, colors=colors)


def _with_suffix(path: Path, fmt: str) -> Path:
    name = path.name.lower()
    if fmt == NIFTI and (name.endswith(".nii.gz") or name.endswith(".nii")):
        return path
    if name.endswith(SUFFIXES[fmt]):
        return path
    return path.with_name(path.name + SUFFIXES[fmt])


def _has_highdicom() -> bool:
    import importlib.util

    return importlib.util.find_spec("highdicom") is not None


def _ask_path(parent, title: str, default: str, filt: str) -> Path | None:
    from qtpy.QtWidgets import QFileDialog

    path, _ = QFileDialog.getSaveFileName(parent, title, default, filt)
    return Path(path) if path else None


def _history_signature(layer):
    undo, redo = getattr(layer, "_undo_history", None), getattr(layer, "_redo_history", None)
    if undo is None or redo is None:
        return None
    return (len(undo), len(redo), id(undo[-1]) if undo else None)


def _header(text: str) -> Label:
    label = Label(value=f"<b>{text}</b>")
    return label


def _disconnect(event, cb):
    try:
        event.disconnect(cb)
    except (TypeError, ValueError, RuntimeError):
        pass
