"""Drawing active-learning regions in napari: the regions overlay, the uncertainty heatmap, the camera.

Main thread only (these functions create and change layers).  The Active
learning widget keeps the layers these functions return and passes them back
in, so a redraw updates a layer in place instead of stacking new ones.
"""

from __future__ import annotations

import numpy as np
from napari.layers import Image, Shapes

from segloop._napari._regions import spatial_shape

__all__ = ["CURRENT", "QUEUED", "REVIEWED", "SKIPPED", "draw_regions", "layer_geometry", "legend_html",
           "region_colors", "region_rectangles", "show_heatmap", "zoom_to_region"]

# overlay colours (RGBA): queued outline, current outline, reviewed fill, skipped outline
QUEUED = (1.0, 0.85, 0.1, 1.0)
CURRENT = (0.1, 0.9, 1.0, 1.0)
REVIEWED = (0.2, 0.9, 0.3, 1.0)
SKIPPED = (0.6, 0.6, 0.6, 1.0)
NO_FILL = (0.0, 0.0, 0.0, 0.0)
REVIEWED_FILL = (0.2, 0.9, 0.3, 0.25)


def legend_html() -> str:
    """The colour legend shown under the navigation buttons (rich text)."""
    def swatch(rgba, text):
        r, g, b = (int(255 * c) for c in rgba[:3])
        return f'<span style="color: rgb({r},{g},{b})">■</span> {text}'

    return " &nbsp; ".join([swatch(CURRENT, "current"), swatch(QUEUED, "queued"), swatch(REVIEWED, "reviewed"),
                            swatch(SKIPPED, "skipped")])


def layer_geometry(lab) -> dict:
    """``scale`` and ``translate`` of ``lab``'s spatial axes, for layers drawn over it."""
    n = len(spatial_shape(lab))
    return {"scale": tuple(lab.scale)[-n:], "translate": tuple(lab.translate)[-n:]}


def show_heatmap(viewer, unc: np.ndarray, lab, *, visible: bool):
    """Show ``unc`` over ``lab`` as an inferno heatmap, reusing the earlier heatmap layer when it fits."""
    name = f"{lab.name} · uncertainty"
    named = viewer.layers[name] if name in viewer.layers else None
    if isinstance(named, Image) and named.data.shape == unc.shape:
        named.data = unc
        named.contrast_limits = (0.0, 1.0)
        named.visible = visible
        layer = named
    else:
        if named is not None:
            name = f"{lab.name} · uncertainty (active learning)"
        layer = viewer.add_image(unc, name=name, colormap="inferno", blending="additive", opacity=0.6,
                                 contrast_limits=(0.0, 1.0), visible=visible,
                                 metadata={"segloop_overlay_of": lab.name}, **layer_geometry(lab))
    viewer.layers.selection.active = lab
    return layer


def region_rectangles(queue) -> tuple[list[np.ndarray], list[int]]:
    """One rectangle per region and plane (data coordinates, pixel edges) and its queue index."""
    rects, owner = [], []
    for i, region in enumerate(queue):
        box = region.box
        (y0, y1), (x0, x1) = box[-2:]
        corners = np.array([[y0, x0], [y0, x1], [y1, x1], [y1, x0]], float) - 0.5
        lead = box[:-2]
        if not lead:
            rects.append(corners)
            owner.append(i)
            continue
        for idx in np.ndindex(*[b - a for a, b in lead]):
            plane = [a + k for (a, _), k in zip(lead, idx)]
            rects.append(np.hstack([np.tile(np.array(plane, float), (4, 1)), corners]))
            owner.append(i)
    return rects, owner


def region_colors(state, owner: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """``(edge, face)`` RGBA colours, ``(n, 4)`` float, of the rectangles owned by queue indices ``owner``."""
    reviewed, skipped = set(state.reviewed), set(state.skipped)
    edge, face = [], []
    for i in owner:
        key = state.queue[i].key
        if i == state.cursor:
            edge.append(CURRENT)
            face.append(REVIEWED_FILL if key in reviewed else NO_FILL)
        elif key in reviewed:
            edge.append(REVIEWED)
            face.append(REVIEWED_FILL)
        elif key in skipped:
            edge.append(SKIPPED)
            face.append(NO_FILL)
        else:
            edge.append(QUEUED)
            face.append(NO_FILL)
    return np.array(edge, float).reshape(-1, 4), np.array(face, float).reshape(-1, 4)


def draw_regions(viewer, overlay, state, lab):
    """(Re)build the regions overlay of ``state`` over ``lab``; returns the Shapes layer.

    ``overlay`` is the layer a previous call returned (or None): recoloured in
    place when the rectangles are the same, replaced at the same position in
    the layer list otherwise.  The labels layer stays selected, so the brush
    and the keys keep working on it.
    """
    rects, owner = region_rectangles(state.queue)
    edge, face = region_colors(state, owner)
    size = max(int(state.region_size or 0), max((r.box[-1][1] - r.box[-1][0] for r in state.queue), default=64))
    width = max(1.0, min(size / 48.0, 8.0))
    features = {"rank": [i + 1 for i in owner]}
    if overlay is not None and overlay in viewer.layers and len(overlay.data) == len(rects) \
            and overlay.metadata.get("segloop_regions_of") == lab.name:
        overlay.edge_color = edge
        overlay.face_color = face
        overlay.refresh()
        return overlay
    index = None
    if overlay is not None and overlay in viewer.layers:
        index = viewer.layers.index(overlay)
        viewer.layers.remove(overlay)
    overlay = Shapes(rects, shape_type="rectangle", edge_color=edge, face_color=face, edge_width=width,
                     features=features, name=f"{lab.name} · regions",
                     text={"string": "{rank}", "color": "white", "size": 10, "anchor": "upper_left"},
                     metadata={"segloop_overlay_of": lab.name, "segloop_regions_of": lab.name},
                     **layer_geometry(lab))
    if index is None:
        viewer.layers.append(overlay)
    else:
        viewer.layers.insert(index, overlay)
    viewer.layers.selection.active = lab          # keep brush and keys on the labels
    return overlay


def _camera(viewer):
    scene = getattr(viewer, "scene", None)           # napari >= 0.9
    return scene.camera if scene is not None else viewer.camera


def _canvas_size(viewer) -> np.ndarray:
    canvas = getattr(viewer, "canvas", None)
    size = getattr(canvas, "size", None) if canvas is not None else None
    if size is None:
        size = getattr(viewer, "_canvas_size", (600, 800))
    return np.maximum(np.asarray(size, float), 1.0)


def zoom_to_region(viewer, lab, region) -> None:
    """Move the camera (and the slice) so that ``region`` of ``lab`` fills the view."""
    box = np.asarray(region.box, float)                       # (n, 2) data (start, stop)
    n = box.shape[0]
    mid = (box[:, 0] + box[:, 1] - 1) / 2
    mid[:-2] = np.floor(mid[:-2])                             # slices: the middle plane
    lo = box[:, 0] - 0.5
    hi = box[:, 1] - 0.5
    w_mid = np.asarray(lab.data_to_world(mid), float)[-n:]
    w_lo = np.asarray(lab.data_to_world(lo), float)[-n:]
    w_hi = np.asarray(lab.data_to_world(hi), float)[-n:]
    dims = viewer.dims
    offset = dims.ndim - n
    displayed = list(dims.displayed)
    for i in range(n):
        axis = offset + i
        if axis not in displayed:
            dims.set_point(axis, float(w_mid[i]))
    shown = [a - offset for a in displayed if a >= offset]
    camera = _camera(viewer)
    camera.center = tuple(float(w_mid[i]) for i in shown)
    extent = np.abs(w_hi - w_lo)[shown[-2:]]
    extent[extent <= 0] = 1.0
    camera.zoom = float(0.9 * np.min(_canvas_size(viewer) / extent))
