"""The pixel size of an image layer, and what the Segment widget says about the scale it ran at."""

from __future__ import annotations

from segloop.core.formats.pixel_size import check_pixel_size, format_pixel_size
from segloop.core.inference.resolution import unknown_pixel_size_notice
from segloop.errors import InvalidPixelSizeError

__all__ = ["layer_pixel_size", "pixel_size_notice", "pixel_size_status"]


def layer_pixel_size(layer) -> tuple[float, float] | None:
    """µm per pixel (y, x) of an image layer: its scale when that is not napari's 1, else
    ``metadata["pixel_size"]`` (or the reader's ``segloop_source``); None when neither says."""
    scale = tuple(float(v) for v in layer.scale[-2:])
    meta = layer.metadata or {}
    for px in (scale if scale != (1.0, 1.0) else None, meta.get("pixel_size"),
               (meta.get("segloop_source") or {}).get("pixel_size")):
        if px is not None:
            try:
                return check_pixel_size(px)
            except InvalidPixelSizeError:
                continue
    return None


def pixel_size_status(spec, provenance: dict) -> str:
    """What the status line adds about pixel size: the scale run at, or that the image's was unknown."""
    px = provenance.get("pixel_size") or {}
    if px.get("resampled"):
        return (f"; run at the model's {format_pixel_size(px['model'])} µm/px (image {format_pixel_size(px['image'])}"
                f" µm/px, scaled x{format_pixel_size(px['scale'])})")
    if px.get("model") is not None and px.get("image") is None:
        return (f"; pixel size unknown: ran at the image's own resolution, {spec.name} expects "
                f"{format_pixel_size(px['model'])} µm/px (fill in 'Pixel size (µm)' to rescale)")
    return ""


def pixel_size_notice(spec, provenance: dict) -> str | None:
    """The one notice of a run whose model has a pixel size and whose image had none, else None.

    The library says it as a :class:`~segloop.core.inference.resolution.PixelSizeWarning`, but
    warnings raised in a napari worker thread reach no notification (napari's relay is not
    connected for function workers), so the widget shows it from the run's provenance.
    """
    px = provenance.get("pixel_size") or {}
    return unknown_pixel_size_notice(spec) if px.get("model") is not None and px.get("image") is None else None
