"""Whole slides in the Segment widget: the current view, a drawn region or the whole slide.

A slide layer (opened by segloop's reader: ``metadata["segloop_slide"]``) is never read whole.
The Segment widget hands it here; the work is
:func:`segloop.core.inference.slide.segment_slide` in a worker thread:

* *current view* / *shapes region*: the region (level-0 pixels) on screen, or the last shape of
  the selected Shapes layer (rectangle, ellipse or polygon: its bounding box is segmented into a
  temporary OME-Zarr, then the objects with at least half their area inside the shape are kept,
  whole); the labels come back as an editable Labels layer placed on the slide (µm scale and
  translate).
* *whole image*: the whole slide into ``<slide>.<model>.segloop.zarr`` next to the slide (or in
  the temp folder when that is not writable), with block progress, Cancel and resume; the
  labels come back as a lazy multiscale Labels layer (an editable one when the result is at most
  :data:`EDITABLE_MAX_PIXELS`).  A finished result is opened, not redone.

Also :func:`read_ome_zarr`, the reader of those OME-Zarr results (NGFF 0.4 image + labels).
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from segloop.errors import InvalidImageError, SegloopError, WriteError

__all__ = ["EDITABLE_MAX_PIXELS", "SlideJob", "is_slide_layer", "read_ome_zarr", "slide_job", "start"]

#: A whole-slide result up to this many pixels comes back as one editable in-memory Labels layer
#: (256 MB of uint32); larger ones as a lazy multiscale layer read from the OME-Zarr.
EDITABLE_MAX_PIXELS = 8192 * 8192


def is_slide_layer(layer) -> bool:
    """An image layer segmented block by block: a slide opened by segloop's reader, or any multiscale layer."""
    from segloop._napari.slide_scope import is_slide_like

    return is_slide_like(layer)


@dataclass(frozen=True)
class SlideJob:
    """What to segment: ``region`` (x, y, w, h) in level-0 pixels, or None for the whole slide."""

    source: str
    region: tuple[int, int, int, int] | None
    out: Path
    keep_out: bool                                # the whole-slide OME-Zarr stays; a region's is temporary
    geometry: dict | None = None                  # the slide layer's scale/translate (slide_scope.layer_geometry)
    slide: object = None                          # a Slide over a multiscale layer that has no slide file
    block: int = 4096                             # block side, run-level px
    outline: tuple | None = None                  # a drawn region's vertices, level-0 px (row, col)


def _level0_shape(layer) -> tuple[int, int]:
    data = layer.data[0] if layer.multiscale else layer.data
    return int(data.shape[0]), int(data.shape[1])


def _view_region(layer) -> tuple[int, int, int, int]:
    """The part of level 0 on screen, from ``corner_pixels`` (in the coordinates of the level drawn)."""
    corners = np.asarray(layer.corner_pixels, dtype=float)[:, :2]
    if layer.multiscale:
        f = np.asarray(layer.downsample_factors[layer.data_level], dtype=float)[:2]
        corners = corners * f
        corners[1] += f - 1
    h, w = _level0_shape(layer)
    y0, x0 = np.clip(np.floor(corners[0]), 0, None).astype(int)
    y1, x1 = np.minimum(np.ceil(corners[1]) + 1, (h, w)).astype(int)
    if y1 - y0 < 1 or x1 - x0 < 1:
        raise InvalidImageError("the slide is not in view: pan or zoom onto it, or choose 'whole image'")
    return int(x0), int(y0), int(x1 - x0), int(y1 - y0)


def _outline_points(data: np.ndarray, shape_type: str) -> np.ndarray:
    """A shape's outline as polygon vertices (same coordinates as ``data``); an ellipse as 64 of
    them, from the four corners of its (possibly rotated) box, as napari stores it."""
    if shape_type in ("line", "path"):
        raise InvalidImageError(f"a {shape_type} encloses no area: draw a rectangle, ellipse or polygon over the "
                                "slide for 'shapes region'")
    if shape_type != "ellipse":
        return data
    centre = data.mean(axis=0)
    u, v = (data[1] - data[0]) / 2, (data[3] - data[0]) / 2
    t = np.linspace(0, 2 * np.pi, 64, endpoint=False)[:, None]
    return centre + np.cos(t) * u + np.sin(t) * v


def _shapes_outline(layer, viewer) -> np.ndarray:
    """The outline (level-0 px, (row, col) vertices) of the last shape in the selected (else the last)
    Shapes layer."""
    from napari.layers import Shapes

    shapes = [la for la in viewer.layers.selection if isinstance(la, Shapes)] or \
        [la for la in viewer.layers if isinstance(la, Shapes)]
    if not shapes or not len(shapes[-1].data):
        raise InvalidImageError("draw a rectangle, ellipse or polygon in a Shapes layer over the slide first "
                                "(Layers > New Shapes layer), then Segment")
    drawn = shapes[-1]
    pts = _outline_points(np.asarray(drawn.data[-1], dtype=float), drawn.shape_type[-1])
    world = np.asarray([drawn.data_to_world(p) for p in pts])[:, -2:]
    return np.asarray([layer.world_to_data(p) for p in world], dtype=float)[:, -2:]


def _shapes_region(layer, outline: np.ndarray) -> tuple[int, int, int, int]:
    """The bounding box (x, y, w, h; level-0 px) of ``outline`` on the slide."""
    h, w = _level0_shape(layer)
    y0, x0 = np.clip(np.floor(outline.min(axis=0)), 0, (h - 1, w - 1)).astype(int)
    y1, x1 = np.clip(np.ceil(outline.max(axis=0)) + 1, 1, (h, w)).astype(int)
    if y1 - y0 < 8 or x1 - x0 < 8:
        raise InvalidImageError("the shape does not cover the slide (or is smaller than 8 px): draw it over tissue")
    return int(x0), int(y0), int(x1 - x0), int(y1 - y0)


def keep_inside_outline(labels: np.ndarray, outline, plan) -> tuple[np.ndarray, int]:
    """The objects of a region's ``labels`` (run level, ``plan.region``) inside ``outline`` (level-0 px):
    whole objects with at least half of their area inside; the number dropped."""
    from segloop.core.editing.objects import keep_objects_inside

    d = plan.downsample
    origin = np.asarray(plan.region[:2], dtype=float)             # (y0, x0), run-level px
    # pixel centres at integers on both grids: run-level pixel j covers level-0 centres j*d .. j*d + d - 1
    return keep_objects_inside(labels, (np.asarray(outline, dtype=float) - (d - 1) / 2) / d - origin)


def slide_job(layer, scope: str, viewer, model_name: str, *, controls) -> SlideJob:
    """The job for ``scope`` ("whole image", "current view", "shapes region") on a slide-like layer.

    ``controls`` (:class:`~segloop._napari.slide_scope.SlideControls`) give the results folder and
    the block size; a multiscale layer without a slide file is read through its own levels.
    """
    from segloop._napari.slide_scope import layer_geometry, layer_slide

    source = (layer.metadata.get("segloop_slide") or {}).get("source")
    own = None if source else layer_slide(layer)          # InvalidImageError for a layer that is not 2D
    extra = {"geometry": layer_geometry(layer), "slide": own,
             "block": int(controls.block.value)}
    if scope == "current view":
        region = _view_region(layer)
    elif scope == "shapes region":
        outline = _shapes_outline(layer, viewer)
        extra["outline"] = tuple(map(tuple, outline.round(3).tolist()))
        region = _shapes_region(layer, outline)
    elif scope == "whole image":
        stem = Path(source).name.split(".")[0] if source else layer.name
        out = controls.whole_out(source, stem, model_name)
        return SlideJob(source or layer.name, None, out, True, **extra)
    else:
        raise InvalidImageError(f"scope {scope!r} is for stacks; a slide takes 'whole image', 'current view' or "
                                "'shapes region'")
    return SlideJob(source or layer.name, region, Path(tempfile.mkdtemp(prefix="segloop-region-")) / "region.zarr",
                    False, **extra)


def _placement(plan, geometry: dict | None) -> dict:
    """Labels ``scale`` and ``translate`` of a run's labels: on the slide layer (``geometry``), else
    in µm from the plan's pixel size."""
    from segloop._napari.slide_scope import placement

    d = plan.downsample
    if geometry is None:
        mpp0 = (plan.pixel_size[0] / d, plan.pixel_size[1] / d) if plan.pixel_size else (1.0, 1.0)
        geometry = {"scale0": mpp0, "translate0": (0.0, 0.0), "um": bool(plan.pixel_size)}
    return placement(geometry, d, (plan.region[0] * d, plan.region[1] * d))


def _run(widget, req, job: SlideJob, cancel: threading.Event):
    """Worker thread: segment, then build the result layer (never touches the viewer)."""
    import dask.array as da
    import zarr
    from napari.layers import Labels

    from segloop.core.formats.io.wsi import open_slide
    from segloop.core.inference.slide import segment_slide
    from segloop.core.inference.stain import stain_normalization

    model = widget._load_model(req)
    summary = job.out / ".segloop-run" / "summary.json"
    with (job.slide if job.slide is not None else open_slide(job.source)) as slide:
        rgb = slide.levels[0].ndim == 3
        normalization = stain_normalization(model, rgb=rgb, stain=req.stain, stain_norm=req.stain_norm)
        predict = {"tile": req.tile, "overlap": req.overlap, "device": req.device, "engine": req.engine,
                   "normalization": normalization}
        if job.keep_out and summary.is_file():
            done = json.loads(summary.read_text())
            same = (done["plan"]["source"] == str(slide.path) and done["model"].get("sha256") == model.spec.sha256)
            if not same:
                raise WriteError(f"{job.out} holds the result of another slide or model; delete it or choose "
                                 "another results folder")
            res = None                                   # finished before: open it
        else:
            res = segment_slide(slide, model, job.out, region=job.region, predict=predict, include_image=job.keep_out,
                                block=job.block, tissue=job.keep_out,             # a region: all of it
                                pixel_size=req.pixel_size if req.pixel_size and not slide.mpp else None,
                                progress=widget._relay.progressed.emit, cancel=cancel)
    from segloop.core.inference.slide import SlidePlan

    info = json.loads(summary.read_text())
    plan = SlidePlan.from_dict(info["plan"])
    group = zarr.open_group(str(job.out), mode="r")["labels/nuclei"]
    n_levels = len(group.attrs["multiscales"][0]["datasets"])
    prov = {"model": plan.model, "slide": job.source, "region": job.region, "n_objects": info["n_objects"],
            "level": plan.level, "ome_zarr": str(job.out) if job.keep_out else None}
    name = f"{Path(job.source).stem} · {model.spec.name} v{model.spec.version}"
    h, w = group["0"].shape
    if job.keep_out and h * w > EDITABLE_MAX_PIXELS:
        data = [da.from_zarr(group[str(i)]) for i in range(n_levels)]
        layer = Labels(data if n_levels > 1 else data[0], name=name, multiscale=n_levels > 1,
                       metadata={"segloop": prov}, **_placement(plan, job.geometry))
        snapshot = None
    elif job.keep_out:                                   # small enough to edit: one level, in memory
        from segloop.core.editing.corrections import PredictionSnapshot

        labels = np.asarray(group["0"])
        snapshot = PredictionSnapshot(labels)
        layer = Labels(labels, name=name, metadata={"segloop": prov}, **_placement(plan, job.geometry))
    else:
        import shutil

        from segloop.core.editing.corrections import PredictionSnapshot

        labels = np.asarray(group["0"])
        if job.outline is not None:                  # a polygon or ellipse: its objects, not its box's
            labels, _ = keep_inside_outline(labels, job.outline, plan)
            kept = int(np.unique(labels).size - (labels.min() == 0))
            prov.update(outline=[list(p) for p in job.outline], n_objects=kept)
            info = {**info, "n_objects": kept}
        snapshot = PredictionSnapshot(labels)        # corrections are tracked against it, as for images
        layer = Labels(labels, name=f"{name} · region", metadata={"segloop": prov}, **_placement(plan, job.geometry))
        shutil.rmtree(job.out.parent, ignore_errors=True)
    tissue = None
    if res is not None and res.tissue is not None:        # where blocks ran, for a look
        place = _placement(plan, job.geometry)
        f = res.tissue_downsample
        # the mask covers the whole run level (region offset not applied): place it from the origin
        tissue = Labels(res.tissue.astype(np.uint8), name=f"{Path(job.source).stem} · tissue", opacity=0.3,
                        visible=False, scale=(place["scale"][0] * f, place["scale"][1] * f),
                        translate=((f - 1) / 2 * place["scale"][0], (f - 1) / 2 * place["scale"][1]),
                        **{k: v for k, v in place.items() if k == "units"})
    return model, info, res, layer, snapshot, tissue


def start(widget, layer, req) -> None:
    """Start a slide run for the Segment widget (on the main thread); errors go to its status."""
    from napari.qt.threading import create_worker
    from napari.utils.notifications import show_error, show_info

    try:
        model_name = Path(req.model).name if os.sep in req.model else req.model
        job = slide_job(layer, req.scope, widget.viewer, model_name, controls=widget.slide_controls)
    except SegloopError as e:
        widget.status.value = f"error: {e}"
        show_error(f"segloop: {e}")
        return
    import time

    widget._cancel = threading.Event()
    widget._started = time.perf_counter()
    widget.progress.visible = True
    widget.progress.max, widget.progress.value = 1, 0
    widget.run_button.enabled = False
    widget.cancel_button.enabled = True
    widget.status.value = "loading model…"

    def returned(payload):
        model, info, res, new, snapshot, tissue = payload
        if widget._closed:
            return
        secs = time.perf_counter() - widget._started
        where = f" into {job.out}" if job.keep_out else ""
        if res is None:
            widget.status.value = f"{info['n_objects']} objects: opened the finished result {job.out}"
        else:
            count = f"{info['n_objects']} objects inside the shape" if job.outline else f"{res.n_objects} objects"
            widget.status.value = (f"{count} in {secs:.1f} s ({res.blocks_run} of {res.blocks} "
                                   f"blocks on tissue, {res.blocks_resumed} resumed){where}")
        if tissue is not None and job.keep_out:
            widget.viewer.layers.append(tissue)
        widget.viewer.layers.append(new)
        if snapshot is not None:
            from segloop._napari.correction_tracking import track

            track(new, snapshot=snapshot)
        widget.viewer.layers.selection.active = new

    def errored(exc):
        from segloop.errors import Cancelled

        if isinstance(exc, Cancelled) and job.keep_out:
            widget.status.value = f"cancelled; finished blocks are kept in {job.out}: Segment again to resume"
            show_info(f"segloop: cancelled; Segment the whole slide again to resume ({job.out})")
        else:
            widget._on_errored(exc)

    widget._worker = create_worker(_run, widget, req, job, widget._cancel,
                                   _connect={"returned": returned, "errored": errored,
                                             "finished": widget._on_finished})


# --------------------------------------------------------------------------- reader

def read_ome_zarr(path):
    """napari layers of an OME-Zarr (NGFF 0.4) folder: the image (multiscale) and each labels image."""
    import dask.array as da
    import zarr

    from segloop._napari.io import micrometer_units

    try:
        root = zarr.open_group(str(path), mode="r")
        ms = root.attrs["multiscales"][0]
    except (KeyError, IndexError, ValueError, OSError, TypeError) as e:
        raise InvalidImageError(f"{path}: not an OME-Zarr image ({type(e).__name__}: {e})") from None

    def pyramid(group, meta):
        arrays = [da.from_zarr(group[d["path"]]) for d in meta["datasets"]]
        tr = meta["datasets"][0]["coordinateTransformations"]
        scale = next((t["scale"] for t in tr if t["type"] == "scale"), None)
        shift = next((t["translation"] for t in tr if t["type"] == "translation"), None)
        return arrays, scale, shift

    layers = []
    arrays, scale, shift = pyramid(root, ms)
    axes = [a["name"] for a in ms["axes"]]
    kw = {"name": ms.get("name") or Path(path).stem}
    if axes[0] == "c" and arrays[0].shape[0] in (3, 4) and arrays[0].dtype == np.uint8:
        arrays = [a.transpose(1, 2, 0) for a in arrays]
        kw["rgb"] = True
        scale, shift = (scale[1:] if scale else None), (shift[1:] if shift else None)
    if scale:
        kw["scale"] = tuple(scale)
    if shift:
        kw["translate"] = tuple(shift)
    um = any(a.get("unit") == "micrometer" for a in ms["axes"])
    if um:
        kw.update(micrometer_units())
    layers.append((arrays if len(arrays) > 1 else arrays[0], {**kw, "multiscale": len(arrays) > 1}, "image"))
    for name in root["labels"].attrs.get("labels", []) if "labels" in root else []:
        g = root[f"labels/{name}"]
        larr, lscale, lshift = pyramid(g, g.attrs["multiscales"][0])
        lkw = {"name": f"{kw['name']} · {name}", "multiscale": len(larr) > 1,
               "metadata": {"segloop": dict(g.attrs.get("segloop", {}))}}
        if lscale:
            lkw["scale"] = tuple(lscale)
        if lshift:
            lkw["translate"] = tuple(lshift)
        if um:
            lkw.update(micrometer_units())
        layers.append((larr if len(larr) > 1 else larr[0], lkw, "labels"))
    return layers
