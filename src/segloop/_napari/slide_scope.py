"""The Segment widget's controls for slides, and slides that are only multiscale layers.

A *slide-like* layer is an image layer opened from a slide file by segloop's reader
(``metadata["segloop_slide"]``) or any multiscale image layer (an OME-Zarr image, a pyramid
built in Python).  Segmenting one never reads its full-resolution level whole: the runs are
:mod:`segloop._napari.slide_run`'s, block by block.  This module adds what only slides need:

* :class:`SlideControls` - shown only when the widget's image is slide-like: the folder the
  whole-slide OME-Zarr goes to (empty: next to the slide, else the temp folder), the block size
  of a run (memory and progress granularity) and a button that adds the tissue mask;
* :func:`layer_slide` - a :class:`~segloop.core.formats.io.wsi.Slide` over a multiscale layer's
  own (lazy) levels, for layers that have no slide file behind them;
* :func:`tissue_layer` - the low-resolution tissue mask as a Labels layer placed on the slide.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from magicgui.widgets import FileEdit, PushButton, SpinBox

from segloop.errors import InvalidImageError, SegloopError

__all__ = ["DEFAULT_BLOCK", "SlideControls", "is_slide_like", "layer_geometry", "layer_slide", "placement",
           "tissue_layer"]

#: Level pixels per block side of a slide run (the block is read and segmented in one piece).
DEFAULT_BLOCK = 4096


def is_slide_like(layer) -> bool:
    """An image layer segmented block by block: a slide opened by segloop's reader, or a 2D (or RGB)
    multiscale layer.  Multiscale stacks (Z, Y, X) keep the stack scopes."""
    meta = getattr(layer, "metadata", None) or {}
    if (meta.get("segloop_slide") or {}).get("source"):
        return True
    if not getattr(layer, "multiscale", False):
        return False
    return layer.data[0].ndim == (3 if layer.rgb else 2)


def layer_slide(layer):
    """A lazy :class:`~segloop.core.formats.io.wsi.Slide` over a multiscale layer's own levels.

    Nothing is read: the levels stay the layer's (dask / zarr) arrays.  The pixel size is the
    layer's (:func:`segloop._napari.pixel_size.layer_pixel_size`, µm/px of level 0).

    Raises
    ------
    InvalidImageError
        The layer is not (Y, X) or RGB (Y, X, 3|4).
    """
    import dask.array as da

    from segloop._napari.pixel_size import layer_pixel_size
    from segloop.core.formats.io.wsi import Slide

    levels = list(layer.data) if layer.multiscale else [layer.data]
    base = levels[0]
    rgb = bool(layer.rgb)
    if base.ndim != (3 if rgb else 2):
        raise InvalidImageError(f"layer {layer.name!r} has shape {tuple(base.shape)}: block-by-block segmentation "
                                "takes a 2D (Y, X) or RGB (Y, X, 3) image; pick a 2D layer")
    h0, w0 = int(base.shape[0]), int(base.shape[1])
    downs = [float((h0 / int(a.shape[0]) + w0 / int(a.shape[1])) / 2) for a in levels]
    mpp = layer_pixel_size(layer)
    axes = "YXS" if rgb else "YX"
    meta = {"schema_version": 1, "source": None, "backend": "napari-layer", "vendor": "napari-layer", "mpp": mpp,
            "objective_power": None, "level_shapes": [[int(a.shape[0]), int(a.shape[1])] for a in levels],
            "downsamples": downs, "tile_shape": None, "axes": axes, "associated": [], "properties": {}}
    return Slide(path=Path(layer.name), backend="tifffile", levels=[da.asarray(a) for a in levels],
                 downsamples=downs, mpp=None if mpp is None else tuple(mpp), vendor="napari-layer",
                 objective_power=None, axes=axes, associated={}, metadata=meta)


def layer_geometry(layer) -> dict:
    """World units per level-0 pixel (``scale0``), ``translate0`` (y, x) and whether they are µm
    (``um``) of a slide layer: read on the main thread, given to :func:`placement` in a worker."""
    um = tuple(getattr(layer, "units", ()) or ())[-2:] == ("micrometer",) * 2
    return {"scale0": tuple(float(v) for v in layer.scale[-2:]),
            "translate0": tuple(float(v) for v in layer.translate[-2:]), "um": bool(um)}


def placement(geometry: dict, downsample: float, origin_px: tuple[float, float] = (0.0, 0.0)) -> dict:
    """``scale`` and ``translate`` of a layer over a slide layer of ``geometry`` (:func:`layer_geometry`)
    whose pixel is ``downsample`` level-0 pixels and whose first pixel starts at level-0 pixel
    ``origin_px`` (y, x).

    Pixel centres line up: a pixel of a coarser level covers ``downsample`` level-0 pixels and its
    centre is ``(downsample - 1) / 2`` of them from their first one.
    """
    from segloop._napari.io import micrometer_units

    s0 = np.asarray(geometry["scale0"], dtype=float)
    t0 = np.asarray(geometry["translate0"], dtype=float)
    d = float(downsample)
    translate = t0 + (np.asarray(origin_px, dtype=float) + (d - 1) / 2) * s0
    return {"scale": tuple(float(v) for v in s0 * d), "translate": tuple(float(v) for v in translate),
            **(micrometer_units() if geometry.get("um") else {})}


def _open(layer):
    from segloop.core.formats.io.wsi import open_slide

    source = ((layer.metadata or {}).get("segloop_slide") or {}).get("source")
    return open_slide(source) if source else layer_slide(layer)


def _tissue(layer_slide_or_file):
    """Worker thread: the tissue mask on the slide's overview and its downsample from level 0."""
    from segloop.core.inference.slide import overview, tissue_mask

    with layer_slide_or_file as slide:
        low, down = overview(slide)
        rgb = slide.axes.endswith(("S", "C")) and low.ndim == 3
        return tissue_mask(low, rgb=rgb).astype(np.uint8), down


def tissue_layer(layer, mask: np.ndarray, downsample: float):
    """The tissue ``mask`` (1 = tissue) of slide layer ``layer`` as a Labels layer over it."""
    from napari.layers import Labels

    return Labels(mask, name=f"{layer.name} · tissue", opacity=0.3,
                  metadata={"segloop": {"tissue_mask": True, "source_layer": layer.name,
                                        "downsample": float(downsample),
                                        "tissue_fraction": float(mask.mean()) if mask.size else 0.0}},
                  **placement(layer_geometry(layer), downsample))


class SlideControls:
    """The slide-only rows of the Segment widget, inserted after its 'scope' row.

    ``folder`` (a FileEdit; empty = next to the slide, or the temp folder when that is not
    writable) is where a whole-slide run writes ``<slide>.<model>.segloop.zarr``; ``block`` is
    the block side of a run in level pixels; ``tissue_button`` adds the tissue mask layer.
    """

    def __init__(self, widget):
        self.widget = widget
        self.folder = FileEdit(label="results folder", mode="d", value="", visible=False,
                               tooltip="Whole slide: the OME-Zarr goes here. Empty: next to the slide file "
                                       "(the temp folder when that is not writable)")
        self.block = SpinBox(label="block (px)", min=512, max=16384, step=512, value=DEFAULT_BLOCK, visible=False,
                             tooltip="A slide is segmented in blocks this many pixels a side (of the level run "
                                     "at), one at a time: smaller blocks use less memory and report progress "
                                     "more often")
        self.tissue_button = PushButton(text="Add tissue mask", visible=False,
                                        tooltip="The tissue found on a low-resolution level (what a whole-slide "
                                                "run segments), as a Labels layer over the slide")
        at = widget.index(widget.scope) + 1
        for i, w in enumerate((self.folder, self.block, self.tissue_button)):
            widget.insert(at + i, w)
        self.tissue_button.changed.connect(self.add_tissue)
        widget.image.changed.connect(self.update)
        self._worker = None
        self.update()

    def update(self, _event=None) -> None:
        """Show the rows only for a slide-like image."""
        layer = self.widget.image.value
        on = layer is not None and is_slide_like(layer)
        for w in (self.folder, self.block, self.tissue_button):
            w.visible = on

    def folder_value(self) -> Path | None:
        """The chosen results folder, or None (next to the slide)."""
        p = self.folder.value
        return None if p is None or str(p) in ("", ".") else Path(p)

    def whole_out(self, source: str | None, name: str, model_name: str) -> Path:
        """Where a whole-slide run of ``model_name`` writes: ``<folder>/<name>.<model>.segloop.zarr``."""
        import re
        import tempfile

        fname = re.sub(r"[^\w.-]+", "_", f"{name}.{model_name}") + ".segloop.zarr"
        folder = self.folder_value()
        if folder is not None:
            if not folder.is_dir() or not os.access(folder, os.W_OK):
                raise InvalidImageError(f"results folder {folder} does not exist or is not writable: choose "
                                        "another, or clear it to write next to the slide")
            return folder / fname
        if source and os.access(Path(source).parent, os.W_OK):
            return Path(source).parent / fname
        if source:                                      # a read-only slide folder: resumable in the temp folder
            return Path(tempfile.gettempdir()) / fname
        # a layer with no file: nothing says a later image of that name is the same one, so a new folder
        return Path(tempfile.mkdtemp(prefix="segloop-slide-")) / fname

    def add_tissue(self, _event=None) -> None:
        """Compute the tissue mask of the widget's slide in a worker; add it as a Labels layer."""
        from napari.qt.threading import create_worker
        from napari.utils.notifications import show_error

        w = self.widget
        layer = w.image.value
        if layer is None or not is_slide_like(layer):
            w.status.value = "tissue: pick a slide (or a multiscale image) under 'image' first"
            show_error(f"segloop: {w.status.value}")
            return
        if self._worker is not None:
            return
        try:
            source = _open(layer)
        except SegloopError as e:
            w.status.value = f"error: {e}"
            show_error(f"segloop: {e}")
            return
        self.tissue_button.enabled = False
        w.status.value = "tissue: reading a low-resolution level…"

        def returned(payload):
            mask, down = payload
            if w._closed or layer not in w.viewer.layers:
                return
            new = tissue_layer(layer, mask, down)
            w.viewer.layers.append(new)
            w.status.value = (f"tissue: {100 * mask.mean():.0f}% of the slide, at 1/{down:g} of full "
                              "resolution")

        def errored(exc):
            w.status.value = f"tissue failed: {type(exc).__name__}: {exc}"
            show_error(f"segloop: {w.status.value}")

        def finished():
            self._worker = None
            self.tissue_button.enabled = True

        self._worker = create_worker(_tissue, source,
                                     _connect={"returned": returned, "errored": errored, "finished": finished})
