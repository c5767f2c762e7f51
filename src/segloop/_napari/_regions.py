"""Which part of a layer the person means: the current slice, the visible view, or everything."""

from __future__ import annotations

import numpy as np


class OffView(ValueError):
    """The view shows none of the layer."""


def spatial_shape(layer) -> tuple[int, ...]:
    data = layer.data[0] if getattr(layer, "multiscale", False) else layer.data
    shape = tuple(data.shape)
    return shape[:-1] if getattr(layer, "rgb", False) else shape


def plane_index(layer, viewer) -> tuple[int, ...]:
    """Data indices of the leading (non-displayed) axes at the viewer's current point.

    Assumes the last two axes are the displayed ones (napari's default order).
    """
    shape = spatial_shape(layer)
    lead = len(shape) - 2
    if lead <= 0:
        return ()
    point = np.asarray(layer.world_to_data(viewer.dims.point))[-len(shape):]
    return tuple(int(np.clip(np.round(point[i]), 0, shape[i] - 1)) for i in range(lead))


def view_box(layer) -> tuple[slice, slice]:
    """The visible in-plane rectangle (data pixels) of a layer, from its corner pixels."""
    shape = spatial_shape(layer)
    corners = np.asarray(layer.corner_pixels)[:, len(shape) - 2:len(shape)]
    y0, x0 = np.clip(corners[0], 0, None).astype(int)
    y1, x1 = np.minimum(corners[1] + 1, shape[-2:]).astype(int)
    if y1 - y0 < 1 or x1 - x0 < 1:
        y0, x0, (y1, x1) = 0, 0, shape[-2:]
    # napari clamps the corners to the data: a view panned off the image collapses to its edge
    if (y1 - y0 <= 1 or x1 - x0 <= 1) and min(shape[-2:]) > 1:
        raise OffView("the view shows none of the layer; pan back onto the image")
    return slice(int(y0), int(y1)), slice(int(x0), int(x1))


def region(layer, viewer, scope: str) -> tuple[slice, ...]:
    """Slices (one per spatial axis) for ``scope`` in {"whole", "slice", "view"}."""
    shape = spatial_shape(layer)
    if scope == "whole":
        return tuple(slice(0, n) for n in shape)
    idx = tuple(slice(i, i + 1) for i in plane_index(layer, viewer))
    if scope == "slice":
        return idx + (slice(0, shape[-2]), slice(0, shape[-1]))
    if scope == "view":
        return idx + view_box(layer)
    raise ValueError(f"unknown scope {scope!r}; use 'whole', 'slice' or 'view'")
