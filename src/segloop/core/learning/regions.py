"""Regions of an image to review, and their uncertainty scores."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

from segloop.errors import (
    ActiveLearningError,
    InvalidImageError,
)

if TYPE_CHECKING:
    pass

Box = tuple[tuple[int, int], ...]
"""``(start, stop)`` per spatial axis: ``((y0, y1), (x0, x1))`` or ``((z0, z1), (y0, y1), (x0, x1))``."""

REGION_KINDS = ("tile", "slice", "subvolume")
RegionKind = Literal["tile", "slice", "subvolume"]

#: What :func:`score_regions` can rank by.
SCORES = ("mean", "boundary", "mean+boundary")


# ---------------------------------------------------------------------------
# Regions
# ---------------------------------------------------------------------------


def check_box(box) -> Box:
    try:
        out = tuple((int(a), int(b)) for a, b in box)
    except (TypeError, ValueError):
        raise ActiveLearningError(f"a box is ((start, stop), ...) per spatial axis, got {box!r}") from None
    if len(out) not in (2, 3) or any(a < 0 or b <= a for a, b in out):
        raise ActiveLearningError(f"a box needs 2 or 3 axes with 0 <= start < stop, got {box!r}")
    return out


@dataclass(frozen=True)
class Region:
    """One candidate region of one image, with its scores.

    Attributes
    ----------
    image : str
        Image id (file stem or layer name).
    box : Box
        ``(start, stop)`` per spatial axis, ``(Y, X)`` or ``(Z, Y, X)``.
    score : float
        Ranking score, higher = more useful to correct (see :func:`score_regions`).
    mean_uncertainty : float
        Mean of the uncertainty map over the box.
    boundary_uncertainty : float
        Mean uncertainty on predicted object boundaries in the box (0 if no objects).
    n_objects : int
        Predicted objects (instances, or connected parts of a class) touching the box.
    """

    image: str
    box: Box
    score: float = 0.0
    mean_uncertainty: float = 0.0
    boundary_uncertainty: float = 0.0
    n_objects: int = 0

    def __post_init__(self):
        object.__setattr__(self, "box", check_box(self.box))
        object.__setattr__(self, "image", str(self.image))

    @property
    def key(self) -> str:
        """Stable id: ``"<image>:z0-z1,y0-y1,x0-x1"`` (what reviewed / skipped lists hold)."""
        return f"{self.image}:" + ",".join(f"{a}-{b}" for a, b in self.box)

    @property
    def area(self) -> int:
        """Pixels (voxels) in the box."""
        return int(np.prod([b - a for a, b in self.box]))

    @property
    def slices(self) -> tuple[slice, ...]:
        """The box as slices, to index an image or label array."""
        return tuple(slice(a, b) for a, b in self.box)

    def to_dict(self) -> dict:
        return {"image": self.image, "box": [list(ab) for ab in self.box], "score": float(self.score),
                "mean_uncertainty": float(self.mean_uncertainty),
                "boundary_uncertainty": float(self.boundary_uncertainty), "n_objects": int(self.n_objects)}

    @classmethod
    def from_dict(cls, d: Mapping) -> Region:
        try:
            return cls(image=str(d["image"]), box=check_box(d["box"]), score=float(d.get("score", 0.0)),
                       mean_uncertainty=float(d.get("mean_uncertainty", 0.0)),
                       boundary_uncertainty=float(d.get("boundary_uncertainty", 0.0)),
                       n_objects=int(d.get("n_objects", 0)))
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ActiveLearningError(f"not a region: {d!r} ({e})") from None


def split_evenly(n: int, size: int) -> list[tuple[int, int]]:
    """``[0, n)`` cut into pieces of ``size``; a last piece shorter than ``size / 2`` joins its neighbour."""
    if n <= size:
        return [(0, n)]
    bounds = [(s, min(s + size, n)) for s in range(0, n, size)]
    if len(bounds) > 1 and (bounds[-1][1] - bounds[-1][0]) * 2 < size:
        bounds[-2] = (bounds[-2][0], n)
        bounds.pop()
    return bounds


def region_grid(shape: Sequence[int], size: int, *, kind: RegionKind = "tile") -> list[Box]:
    """Boxes that cover an image once: the candidates active learning ranks.

    Parameters
    ----------
    shape : (H, W) or (Z, H, W)
        Spatial shape (no channel axis).
    size : int
        Tile side in pixels (a cube's side for ``"subvolume"``).  Edge boxes
        are clipped to the image; a remainder shorter than ``size / 2`` is
        merged into its neighbour (no slivers), so edge boxes are between
        ``size / 2`` and ``1.5 * size`` long.
    kind : {"tile", "slice", "subvolume"}
        2D: ``"tile"`` and ``"subvolume"`` give ``size x size`` tiles,
        ``"slice"`` the whole image as one box.  3D: ``"tile"`` = in-plane
        tiles on every plane (``(z, z + 1)``), ``"slice"`` = whole planes,
        ``"subvolume"`` = ``size^3`` blocks (Z cut the same way).

    Returns
    -------
    list of Box
        In raster order (Z, then Y, then X); every pixel is in exactly one box.
    """
    shape = tuple(int(n) for n in shape)
    if len(shape) not in (2, 3) or min(shape) < 1:
        raise ActiveLearningError(f"region_grid needs a spatial shape (H, W) or (Z, H, W), got {shape}")
    if kind not in REGION_KINDS:
        raise ActiveLearningError(f"unknown region kind {kind!r}; choose from {', '.join(REGION_KINDS)}")
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise ActiveLearningError(f"region size must be a positive integer (pixels), got {size!r}")
    size = int(size)
    h, w = shape[-2:]
    if kind == "slice":
        plane = ((0, h), (0, w))
        return [plane] if len(shape) == 2 else [((z, z + 1),) + plane for z in range(shape[0])]
    tiles = [(ys, xs) for ys in split_evenly(h, size) for xs in split_evenly(w, size)]
    if len(shape) == 2:
        return tiles
    zs = [(z, z + 1) for z in range(shape[0])] if kind == "tile" else split_evenly(shape[0], size)
    return [(zr,) + t for zr in zs for t in tiles]


def _boundaries(labels: np.ndarray, width: int) -> np.ndarray:
    """Pixels within ``width`` of a change of label, plane by plane (ids may restart per plane)."""
    from scipy.ndimage import binary_dilation
    from skimage.segmentation import find_boundaries

    planes = labels if labels.ndim == 3 else labels[None]
    out = np.zeros(planes.shape, bool)
    for i, plane in enumerate(planes):
        if plane.max() == plane.min():
            continue
        b = find_boundaries(plane, mode="thick")
        if width > 1:
            b = binary_dilation(b, iterations=width - 1)
        out[i] = b
    return out if labels.ndim == 3 else out[0]


def score_regions(uncertainty: np.ndarray, labels: np.ndarray, boxes: Iterable[Box], *, image: str = "image",
                  boundary_px: int = 1, score: Literal["mean", "boundary", "mean+boundary"] = "mean"
                  ) -> list[Region]:
    """Score every box of one image.

    Parameters
    ----------
    uncertainty : (H, W) or (Z, H, W) float ndarray
        A map in [0, 1] (e.g. :meth:`UncertaintyResult.combined`).
    labels : ndarray of the same shape
        The prediction: instance ids or class ids (0 = background).
    boxes : iterable of Box
        E.g. :func:`region_grid`, in the same coordinates.
    image : str
        Id stored in each region.
    boundary_px : int
        Half-width of the boundary band: pixels within this distance of a
        change of label (both sides), found plane by plane.
    score : {"mean", "boundary", "mean+boundary"}
        What ``Region.score`` is.  ``"mean"`` (default): the mean uncertainty,
        an unbiased estimate of how much of the box the model is unsure
        about, which does not favour boxes by their size or object count.
        ``"boundary"``: the mean uncertainty on predicted object boundaries
        (where instance errors - merges, splits, wrong outlines - live; 0 for
        a box with no boundary).  ``"mean+boundary"``: their average.

    Returns
    -------
    list of Region
        One per box, in the order given.
    """
    from skimage.measure import label as connected

    u = np.asarray(uncertainty)
    lab = np.asarray(labels)
    if u.shape != lab.shape or u.ndim not in (2, 3):
        raise InvalidImageError(f"uncertainty {u.shape} and labels {lab.shape} must have the same 2D or 3D shape")
    if score not in SCORES:
        raise ActiveLearningError(f"unknown score {score!r}; choose from {', '.join(SCORES)}")
    if isinstance(boundary_px, bool) or not isinstance(boundary_px, (int, np.integer)) or boundary_px < 1:
        raise ActiveLearningError(f"boundary_px must be a positive integer, got {boundary_px!r}")
    regions = []
    for box in boxes:
        box = check_box(box)
        if len(box) != u.ndim or any(b > n for (_, b), n in zip(box, u.shape)):
            raise ActiveLearningError(f"box {box} does not fit an image of shape {u.shape}")
        sl = tuple(slice(a, b) for a, b in box)
        ub = u[sl].astype(np.float32, copy=False)
        mean = float(ub.mean())
        # Boundaries need a margin of context in-plane so that a boundary on the box edge is seen.
        m = int(boundary_px)
        grown = sl[:-2] + tuple(slice(max(0, a - m), min(n, b + m)) for (a, b), n in zip(box[-2:], u.shape[-2:]))
        inner = sl[:-2] + tuple(slice(a - g.start, b - g.start) for (a, b), g in zip(box[-2:], grown[-2:]))
        bnd = _boundaries(lab[grown], m)[inner]
        boundary = float(ub[bnd].mean()) if bnd.any() else 0.0
        lb = lab[sl]
        n_obj = int(connected(lb, background=0, connectivity=1).max()) if lb.any() else 0
        mean = mean if np.isfinite(mean) else 0.0
        boundary = boundary if np.isfinite(boundary) else 0.0
        s = {"mean": mean, "boundary": boundary, "mean+boundary": 0.5 * (mean + boundary)}[score]
        regions.append(Region(image, box, s, mean, boundary, n_obj))
    return regions

