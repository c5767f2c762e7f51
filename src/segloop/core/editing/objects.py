"""The objects of a label image, one plane at a time: what a click or a box selects.

Instance labels: each id on a plane is one object. Semantic labels (class ids): each connected
part of a class on a plane is one object (a liver, a tumour). Volumes are walked plane by plane,
because interactive models segment one plane. Used by the click trainer and the click
benchmark, so both see the same objects.

:func:`keep_objects_inside` keeps the objects of a drawn region (a polygon), whole: what a
pathologist's annotation of a slide region contains.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from segloop.errors import InvalidLabelsError

__all__ = ["LabelObject", "keep_objects_inside", "label_objects"]


@dataclass(frozen=True)
class LabelObject:
    """One object on one plane.

    Attributes
    ----------
    z : int or None
        The plane of a volume (None for a 2D label image).
    value : int
        The instance id, or the class id of a semantic object.
    part : int
        Connected part of a semantic class on the plane (1..n); 0 for instances.
    bbox : (r0, c0, r1, c1)
        Rows and columns on the plane, end exclusive.
    area : int
        Pixels.
    seed : (r, c)
        One pixel of the object on the plane.
    """

    z: int | None
    value: int
    part: int
    bbox: tuple[int, int, int, int]
    area: int
    seed: tuple[int, int]

    def mask(self, labels: np.ndarray) -> np.ndarray:
        """The object as a bool array of the plane's shape."""
        from scipy import ndimage as ndi

        plane = np.asarray(labels if self.z is None else labels[self.z])
        out = plane == self.value
        if self.part:
            r0, c0, r1, c1 = self.bbox
            # the object lies inside its bbox, so its connected part there is the one under its seed
            lab, _ = ndi.label(out[r0:r1, c0:c1])
            inside = np.zeros_like(out)
            inside[r0:r1, c0:c1] = lab == lab[self.seed[0] - r0, self.seed[1] - c0]
            out = inside
        return out


def _seed(inside: np.ndarray, sl: tuple[slice, slice]) -> tuple[int, int]:
    r, c = np.argwhere(inside)[0]
    return int(r + sl[0].start), int(c + sl[1].start)


def _plane_objects(plane: np.ndarray, z: int | None, task: str, classes: Sequence[int] | None,
                   min_area: int) -> Iterator[LabelObject]:
    from scipy import ndimage as ndi

    if task == "instance":
        slices = ndi.find_objects(plane.astype(np.int64, copy=False))
        for i, sl in enumerate(slices, start=1):
            if sl is None:
                continue
            inside = plane[sl] == i
            area = int(inside.sum())
            if area >= min_area:
                yield LabelObject(z, i, 0, (sl[0].start, sl[1].start, sl[0].stop, sl[1].stop), area,
                                  _seed(inside, sl))
        return
    values = [int(v) for v in np.unique(plane) if v != 0]
    for v in values:
        if classes is not None and v not in classes:
            continue
        lab, _ = ndi.label(plane == v)
        for j, sl in enumerate(ndi.find_objects(lab), start=1):
            inside = lab[sl] == j
            area = int(inside.sum())
            if area >= min_area:
                yield LabelObject(z, v, j, (sl[0].start, sl[1].start, sl[0].stop, sl[1].stop), area,
                                  _seed(inside, sl))


def label_objects(labels: np.ndarray, *, task: Literal["instance", "semantic"], classes: Sequence[int] | None = None,
                  min_area: int = 16) -> list[LabelObject]:
    """Every object of a 2D label image or of each plane of a volume.

    Parameters
    ----------
    labels : (H, W) or (Z, H, W) integer ndarray
    task : {"instance", "semantic"}
    classes : sequence of int, optional
        Semantic only: the class ids to take (default all but 0).
    min_area : int
        Smaller objects (specks) are left out.

    Raises
    ------
    InvalidLabelsError
        Not a 2D / 3D integer array, or an unknown task.
    """
    labels = np.asarray(labels)
    if labels.ndim not in (2, 3) or labels.dtype.kind not in "iub":
        raise InvalidLabelsError(f"labels must be a 2D or 3D integer array, got {labels.dtype} {labels.shape}")
    if task not in ("instance", "semantic"):
        raise InvalidLabelsError(f"task must be 'instance' or 'semantic', got {task!r}")
    if labels.ndim == 2:
        return list(_plane_objects(labels, None, task, classes, min_area))
    return [o for z in range(labels.shape[0]) for o in _plane_objects(labels[z], z, task, classes, min_area)]


def keep_objects_inside(labels: np.ndarray, polygon, *, min_fraction: float = 0.5) -> tuple[np.ndarray, int]:
    """The objects of a 2D instance label image that lie inside ``polygon``, whole; the rest set to 0.

    An object is kept when at least ``min_fraction`` of its pixels (pixel centres) lie inside, so
    nuclei on the outline are neither cut nor counted twice by neighbouring regions (as QuPath
    keeps the detections whose centre is in an annotation).

    Parameters
    ----------
    labels : (H, W) integer ndarray
    polygon : (N, 2) array-like
        Vertices (row, column) in pixel-index coordinates of ``labels`` (pixel centres at integers);
        N >= 3.
    min_fraction : float
        In (0, 1].

    Returns
    -------
    (labels, dropped)
        A new label image and the number of objects removed.

    Raises
    ------
    InvalidLabelsError
        ``labels`` is not a 2D integer array, or ``polygon`` has fewer than 3 finite vertices.
    """
    from skimage.draw import polygon2mask

    labels = np.asarray(labels)
    if labels.ndim != 2 or labels.dtype.kind not in "iu":
        raise InvalidLabelsError(f"labels must be a 2D integer array, got {labels.dtype} {labels.shape}")
    poly = np.asarray(polygon, dtype=float)
    if poly.ndim != 2 or poly.shape[1] != 2 or len(poly) < 3 or not np.isfinite(poly).all():
        raise InvalidLabelsError(f"a region outline needs at least 3 finite (row, column) vertices, got {poly.shape}")
    if not 0 < min_fraction <= 1:
        raise InvalidLabelsError(f"min_fraction must be in (0, 1], got {min_fraction}")
    if labels.size == 0 or not labels.any():
        return labels.copy(), 0
    ids = labels.ravel().astype(np.int64, copy=False)
    n = int(ids.max()) + 1
    total = np.bincount(ids, minlength=n)
    inside = np.bincount(ids[polygon2mask(labels.shape, poly).ravel()], minlength=n)
    keep = inside >= min_fraction * total
    keep[0] = True
    dropped = int(np.count_nonzero(~keep & (total > 0)))
    return np.where(keep[labels], labels, 0).astype(labels.dtype, copy=False), dropped
