"""Active learning: which regions should a person correct next?

The loop's last arrow.  An image (or several, or a folder of them) is
segmented with uncertainty (:mod:`segloop.core.uncertainty`); a grid of
regions - tiles of a 2D image, in-plane tiles of every plane, whole planes, or
sub-volumes of a stack - is laid over it (:func:`region_grid`); every region
gets scores (:func:`score_regions`); a :class:`Strategy` picks ``k`` of them,
skipping those already reviewed or skipped.  Strategies share one interface so
they can be compared on the same regions:

``random``
    Uniform, seeded: the baseline every other strategy has to beat.
``uncertainty``
    Top ``k`` by score.
``diversity``
    Uncertainty + diversity: k-center greedy (Sener & Savarese 2018) on
    pooled encoder features (:func:`region_features`) among the top
    ``pool_factor * k`` by score, so ``k`` near-identical uncertain tiles are
    not all proposed.

:func:`rank_images` runs the whole ranking over several images.
:class:`ActiveLearningState` is the queue a person works through, saved as
``segloop-active-learning.json`` in the training folder root.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import uuid
import warnings
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol, runtime_checkable

import numpy as np

from segloop.core.trainfolder import ACTIVE_STATE_FILE, _export_error, _fsync_dir
from segloop.errors import (
    ActiveLearningError,
    ActiveLearningStateError,
    Cancelled,
    ExportError,
    InvalidImageError,
)

if TYPE_CHECKING:
    from segloop.core.predict import Model

__all__ = [
    "Box",
    "Region",
    "REGION_KINDS",
    "SCORES",
    "region_grid",
    "score_regions",
    "region_features",
    "Strategy",
    "RandomStrategy",
    "UncertaintyStrategy",
    "DiversityStrategy",
    "STRATEGIES",
    "get_strategy",
    "rank_images",
    "ActiveLearningState",
    "model_info",
]

Box = tuple[tuple[int, int], ...]
"""``(start, stop)`` per spatial axis: ``((y0, y1), (x0, x1))`` or ``((z0, z1), (y0, y1), (x0, x1))``."""

REGION_KINDS = ("tile", "slice", "subvolume")
RegionKind = Literal["tile", "slice", "subvolume"]

#: What :func:`score_regions` can rank by.
SCORES = ("mean", "boundary", "mean+boundary")

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")


# ---------------------------------------------------------------------------
# Regions
# ---------------------------------------------------------------------------


def _check_box(box) -> Box:
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
        object.__setattr__(self, "box", _check_box(self.box))
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
            return cls(image=str(d["image"]), box=_check_box(d["box"]), score=float(d.get("score", 0.0)),
                       mean_uncertainty=float(d.get("mean_uncertainty", 0.0)),
                       boundary_uncertainty=float(d.get("boundary_uncertainty", 0.0)),
                       n_objects=int(d.get("n_objects", 0)))
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ActiveLearningError(f"not a region: {d!r} ({e})") from None


def _splits(n: int, size: int) -> list[tuple[int, int]]:
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
    tiles = [(ys, xs) for ys in _splits(h, size) for xs in _splits(w, size)]
    if len(shape) == 2:
        return tiles
    zs = [(z, z + 1) for z in range(shape[0])] if kind == "tile" else _splits(shape[0], size)
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
        box = _check_box(box)
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


# ---------------------------------------------------------------------------
# Encoder features, for diversity
# ---------------------------------------------------------------------------


class _Stop(Exception):
    def __init__(self, value):
        self.value = value


def _deepest_encoder_module(network):
    """The module whose output is the network's deepest encoder features (the bottleneck)."""
    enc = getattr(network, "encoder", None)
    if enc is not None and hasattr(enc, "blocks"):
        return enc.blocks[-1]
    stages = getattr(network, "stages", None)
    if stages is not None and len(stages):
        return stages[-1]
    raise ActiveLearningError(
        f"{type(network).__name__} has no encoder segloop knows (an 'encoder' with 'blocks', or "
        "'stages'); use the 'uncertainty' or 'random' strategy, or pass your own features")


def region_features(model: Model, image, boxes: Sequence[Box], *, channel_axis="auto", normalization=None,
                    batch_size: int = 8, max_planes: int = 4, progress: Callable[[int, int], None] | None = None,
                    cancel=None) -> np.ndarray:
    """Pooled deepest-encoder features of each region, for diversity-aware selection.

    Every region's pixels are normalized as for prediction and run through the
    network's encoder only (forward stops at the bottleneck); the bottleneck
    activations are averaged over space.  Regions larger than the model's
    tile are cut into tile-sized pieces and the pieces' features averaged,
    weighted by size.  For 2D/2.5D models on a stack, up to ``max_planes``
    evenly spaced planes of a region are used (2.5D: each with its
    neighbouring planes as channels); 3D models see the region's sub-volume,
    widened in Z to at least one patch depth.

    Parameters
    ----------
    model : Model
    image : array-like
        As for :meth:`Model.predict`.
    boxes : sequence of Box
        Full-image coordinates.
    channel_axis, normalization
        As for :meth:`Model.predict`.
    batch_size : int
        Pieces per forward pass.
    max_planes : int
        Planes used per region for 2D/2.5D models on stacks.
    progress : callable(done, total), optional
        Called after each region with the number of regions done.
    cancel : threading.Event or callable, optional
        Checked before each region; when set, :class:`~segloop.errors.Cancelled` is raised.

    Returns
    -------
    (n, F) float32 ndarray
        ``F`` = channels of the bottleneck.
    """
    import torch

    from segloop.core.engines import TorchPredictor
    from segloop.core.predict import _drop_alpha, validate_image

    _, channels, _ = model._norm_spec(normalization, None)
    channel_axis, stack = validate_image(image, channels=channels, channel_axis=channel_axis)
    normalizer = model.normalizer_for(image, channel_axis=channel_axis, normalization=normalization)
    img = _drop_alpha(image, channel_axis, channels)
    spatial = tuple(int(n) for n in img.shape[: 3 if stack else 2])
    dims, ctx = int(model.spec.dims), int(model.spec.context_slices)
    if dims == 3 and not stack:
        raise InvalidImageError(f"{model.spec.name} is a 3D model: give a volume (Z, Y, X)")
    tile = model._tile_shape(None)
    if isinstance(model.predictor, TorchPredictor):
        net, device = model.predictor.network, model.predictor.device
    else:
        net, device = model.network, "cpu"
    target = _deepest_encoder_module(net)

    def norm2d(z: int | None, ys: slice, xs: slice) -> np.ndarray:
        raw = np.asarray(img[z, ys, xs] if z is not None else img[ys, xs])
        return np.asarray(normalizer(raw), dtype=np.float32)          # (C', h, w)

    def pieces(box: Box):
        """(weight, input (C, *S)) per piece of one box."""
        ys_all = _splits(box[-2][1] - box[-2][0], tile[-2])
        xs_all = _splits(box[-1][1] - box[-1][0], tile[-1])
        y_off, x_off = box[-2][0], box[-1][0]
        inplane = [(slice(y_off + a, y_off + b), slice(x_off + c, x_off + d)) for a, b in ys_all for c, d in xs_all]
        if dims == 3:
            nz = spatial[0]
            for za, zb in _splits(box[0][1] - box[0][0], tile[0]):
                za, zb = box[0][0] + za, box[0][0] + zb
                need = min(tile[0], nz)
                if zb - za < need:                              # widen to one patch depth, centred
                    za = max(0, min(nz - need, (za + zb - need) // 2))
                    zb = za + need
                for ys, xs in inplane:
                    raw = np.asarray(img[za:zb, ys, xs])
                    x = np.moveaxis(np.asarray(normalizer(raw), dtype=np.float32), 1, 0)   # (C', dz, h, w)
                    yield x[0].size, x
            return
        if stack:
            z0, z1 = box[0]
            planes = np.unique(np.linspace(z0, z1 - 1, num=min(max_planes, z1 - z0)).round().astype(int))
        else:
            planes = [None]
        half = ctx // 2
        for z in planes:
            for ys, xs in inplane:
                if ctx == 1:
                    x = norm2d(None if z is None else int(z), ys, xs)
                else:
                    x = np.concatenate([norm2d(None if z is None else int(np.clip(z + d, 0, spatial[0] - 1)), ys, xs)
                                        for d in range(-half, half + 1)], axis=0)
                yield x[0].size, x

    def hook(module, inputs, output):
        raise _Stop(output)

    sums: np.ndarray | None = None
    weights = np.zeros(len(boxes), np.float64)
    pending: list[tuple[int, float, np.ndarray]] = []

    def flush():
        nonlocal sums
        if not pending:
            return
        batch = torch.from_numpy(np.stack([p[2] for p in pending])).to(device)
        try:
            with torch.inference_mode():
                net(batch)
            raise ActiveLearningError("the network finished without reaching its encoder's last block")
        except _Stop as stop:
            feats = stop.value.float().mean(dim=tuple(range(2, stop.value.dim()))).cpu().numpy()
        if sums is None:
            sums = np.zeros((len(boxes), feats.shape[1]), np.float64)
        for (i, wgt, _), f in zip(pending, feats):
            sums[i] += wgt * f
            weights[i] += wgt
        pending.clear()

    from segloop.core.tiling import _is_cancelled

    handle = target.register_forward_hook(hook)
    try:
        for i, box in enumerate(boxes):
            if _is_cancelled(cancel):
                raise Cancelled("computing region features was cancelled")
            if progress is not None:
                progress(i, len(boxes))
            box = _check_box(box)
            if len(box) != len(spatial) or any(b > n for (_, b), n in zip(box, spatial)):
                raise ActiveLearningError(f"box {box} does not fit an image of spatial shape {spatial}")
            for wgt, x in pieces(box):
                if pending and (x.shape != pending[0][2].shape or len(pending) >= batch_size):
                    flush()
                pending.append((i, float(wgt), x))
        flush()
        if progress is not None:
            progress(len(boxes), len(boxes))
    finally:
        handle.remove()
    if sums is None:
        return np.zeros((0, 0), np.float32)
    return (sums / np.maximum(weights, 1e-12)[:, None]).astype(np.float32)


# ---------------------------------------------------------------------------
# Strategies
# ---------------------------------------------------------------------------


@runtime_checkable
class Strategy(Protocol):
    """Picks ``k`` regions to review.

    ``select(regions, k, exclude=keys, features=None, seed=0)`` returns at most
    ``k`` regions (fewer when fewer are left), never one whose
    :attr:`Region.key` is in ``exclude``, in the order to visit them.
    ``features`` (``(len(regions), F)``) rows belong to ``regions`` row by row.
    """

    name: str

    def select(self, regions: Sequence[Region], k: int, *, exclude: Collection[str] = (),
               features: np.ndarray | None = None, seed: int = 0) -> list[Region]: ...


def _check_k(k) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
        raise ActiveLearningError(f"k (regions to propose) must be a non-negative integer, got {k!r}")
    return int(k)


def _open(regions: Sequence[Region], exclude: Collection[str]) -> list[int]:
    ex = set(exclude)
    return [i for i, r in enumerate(regions) if r.key not in ex]


def _by_score(regions: Sequence[Region], idx: list[int]) -> list[int]:
    return sorted(idx, key=lambda i: (-float(regions[i].score), i))


class RandomStrategy:
    """Uniformly random regions (seeded): the baseline."""

    name = "random"
    needs_features = False

    def select(self, regions: Sequence[Region], k: int, *, exclude: Collection[str] = (),
               features: np.ndarray | None = None, seed: int = 0) -> list[Region]:
        k = _check_k(k)
        idx = _open(regions, exclude)
        order = np.random.default_rng(seed).permutation(len(idx))[:k]
        return [regions[idx[j]] for j in order]


class UncertaintyStrategy:
    """The ``k`` highest-scoring regions (ties: the earlier region first)."""

    name = "uncertainty"
    needs_features = False

    def select(self, regions: Sequence[Region], k: int, *, exclude: Collection[str] = (),
               features: np.ndarray | None = None, seed: int = 0) -> list[Region]:
        k = _check_k(k)
        return [regions[i] for i in _by_score(regions, _open(regions, exclude))[:k]]


def _spatial_features(regions: Sequence[Region]) -> np.ndarray:
    """Box centres (Z, Y, X), different images far apart: diversity's fallback without features."""
    ids = {name: i for i, name in enumerate(dict.fromkeys(r.image for r in regions))}
    span = max((b for r in regions for _, b in r.box), default=1) * 10.0
    out = np.zeros((len(regions), 4), np.float64)
    for j, r in enumerate(regions):
        centre = [(a + b) / 2 for a, b in r.box]
        out[j, 4 - len(centre):] = centre
        out[j, 0] += ids[r.image] * span
    return out


class DiversityStrategy:
    """Uncertainty + diversity: k-center greedy on features among the top ``pool_factor * k`` by score.

    The first pick is the highest-scoring region of the pool (or, when regions
    in ``exclude`` have features, the pool region farthest from all of them,
    so what was already reviewed counts as covered); each next pick is the
    pool region farthest (Euclidean) from every region picked so far.
    Without ``features`` it spreads the picks in space (box centres, images
    apart) and warns.

    Parameters
    ----------
    pool_factor : int
        Candidates = the ``pool_factor * k`` highest-scoring open regions;
        1 = pure uncertainty, larger = more diversity.
    """

    name = "diversity"
    needs_features = True

    def __init__(self, pool_factor: int = 4):
        if isinstance(pool_factor, bool) or not isinstance(pool_factor, (int, np.integer)) or pool_factor < 1:
            raise ActiveLearningError(f"pool_factor must be a positive integer, got {pool_factor!r}")
        self.pool_factor = int(pool_factor)

    def select(self, regions: Sequence[Region], k: int, *, exclude: Collection[str] = (),
               features: np.ndarray | None = None, seed: int = 0) -> list[Region]:
        k = _check_k(k)
        open_idx = _open(regions, exclude)
        pool = _by_score(regions, open_idx)[: self.pool_factor * k]
        if k == 0 or not pool:
            return []
        if features is None:
            warnings.warn("diversity strategy without region features: spreading picks by position instead "
                          "(pass features from region_features for encoder-feature diversity)", stacklevel=2)
            feats = _spatial_features(regions)
        else:
            feats = np.asarray(features, dtype=np.float64)
            if feats.ndim != 2 or feats.shape[0] != len(regions):
                raise ActiveLearningError(f"features must be (n_regions={len(regions)}, F), got {feats.shape}")
        x = feats[pool]
        open_set = set(open_idx)
        done = [i for i in range(len(regions)) if i not in open_set]
        min_d = np.full(len(pool), np.inf)
        for start in range(0, len(done), 1024):
            c = feats[done[start:start + 1024]]
            d = np.sqrt(((x[:, None, :] - c[None, :, :]) ** 2).sum(-1)).min(axis=1)
            min_d = np.minimum(min_d, d)
        picked: list[int] = []
        chosen = np.zeros(len(pool), bool)
        while len(picked) < min(k, len(pool)):
            if not picked and not done:
                j = 0                                   # the top score
            else:
                cand = np.where(chosen, -np.inf, min_d)
                j = int(np.argmax(cand))                # ties: the higher score (earlier in the pool)
            chosen[j] = True
            picked.append(j)
            min_d = np.minimum(min_d, np.sqrt(((x - x[j]) ** 2).sum(-1)))
        return [regions[pool[j]] for j in picked]


STRATEGIES: dict[str, type] = {
    "random": RandomStrategy,
    "uncertainty": UncertaintyStrategy,
    "diversity": DiversityStrategy,
}
_ALIASES = {"uncertainty+diversity": "diversity", "kcenter": "diversity", "k-center": "diversity",
            "top-k": "uncertainty"}


def get_strategy(name: str, **kwargs) -> Strategy:
    """The strategy called ``name`` (see :data:`STRATEGIES`), built with ``kwargs``.

    Raises
    ------
    ActiveLearningError
        Unknown name (the message lists the known ones) or bad keyword arguments.
    """
    key = _ALIASES.get(str(name).lower(), str(name).lower())
    cls = STRATEGIES.get(key)
    if cls is None:
        raise ActiveLearningError(f"unknown active-learning strategy {name!r}; choose from {', '.join(STRATEGIES)}")
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ActiveLearningError(f"strategy {key!r} does not take {sorted(kwargs)}: {e}") from None


# ---------------------------------------------------------------------------
# Several images
# ---------------------------------------------------------------------------


def _image_sources(images) -> list[tuple[str, Callable[[], Any]]]:
    """(id, loader) pairs from a mapping of arrays, a folder, or paths."""
    from segloop.core.io import read_image

    if isinstance(images, Mapping):
        return [(str(name), (lambda a=arr: a)) for name, arr in images.items()]
    if isinstance(images, (str, os.PathLike)):
        folder = Path(images)
        if not folder.is_dir():
            images = [folder]
        else:
            images = sorted(p for p in folder.iterdir()
                            if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES)
            if not images:
                raise ActiveLearningError(f"{folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    out: list[tuple[str, Callable[[], Any]]] = []
    seen: set[str] = set()
    for item in images:
        if not isinstance(item, (str, os.PathLike)):
            raise ActiveLearningError("give images as a {name: array} mapping, a folder, or a list of paths; "
                                      f"got an item of type {type(item).__name__}")
        p = Path(item)
        name, n = p.stem, 1
        while name in seen:                    # x, x-2, x-3 ...: every image keeps its own region keys
            n += 1
            name = f"{p.stem}-{n}"
        seen.add(name)
        out.append((name, (lambda p=p: read_image(p)[0])))
    return out


_UNCERTAINTY_KW = {"tta_flips", "mc_samples", "channel_axis", "normalization", "z_range", "tile", "overlap",
                   "batch_size", "skip_background", "max_chunk_bytes"}
_SCORE_KW = {"boundary_px", "score"}


def rank_images(model: Model, images, *, size: int, kind: RegionKind = "tile", methods=("entropy",),
                strategy: str | Strategy = "uncertainty", k: int, exclude: Collection[str] = (),
                seed: int = 0, progress: Callable[[int, int], None] | None = None, cancel=None,
                **kw) -> list[Region]:
    """Rank regions of several images jointly and pick ``k`` to review.

    Each image is segmented with uncertainty (:func:`~segloop.core.uncertainty.estimate_uncertainty`,
    the mean of the ``methods`` maps), cut into regions (:func:`region_grid`)
    and scored (:func:`score_regions`); diversity strategies also get
    :func:`region_features`.  Only regions, scores and features are kept
    between images, then the strategy selects from all of them together.

    Parameters
    ----------
    model : Model
    images : mapping of str -> array, a folder, or a sequence of paths
        Ids are the mapping's keys or the file stems.
    size, kind
        See :func:`region_grid`.
    methods : sequence of str
        Uncertainty methods (``"entropy"``, ``"tta"``, ``"mc_dropout"``).
    strategy : str or Strategy
        ``"random"``, ``"uncertainty"``, ``"diversity"``, or an instance.
    k : int
        Regions to propose.
    exclude : collection of str
        :attr:`Region.key` values already reviewed or skipped.
    seed : int
        For the random strategy and MC-dropout.
    progress : callable, optional
        ``progress(done, total)``: 1000 per image.
    cancel : threading.Event or callable, optional
    **kw
        ``tta_flips``, ``mc_samples``, ``channel_axis``, ``normalization``,
        ``z_range``, ``tile``, ``overlap``, ``batch_size``,
        ``skip_background``, ``max_chunk_bytes`` go to
        ``estimate_uncertainty``; ``boundary_px``, ``score`` to
        :func:`score_regions`; anything else to the strategy (e.g.
        ``pool_factor``).

    Returns
    -------
    list of Region
        The selection, in the order to visit; boxes are in each image's full
        coordinates (also with ``z_range``).
    """
    from segloop.core.tiling import _is_cancelled
    from segloop.core.uncertainty import estimate_uncertainty

    unc_kw = {n: v for n, v in kw.items() if n in _UNCERTAINTY_KW}
    score_kw = {n: v for n, v in kw.items() if n in _SCORE_KW}
    rest = {n: v for n, v in kw.items() if n not in _UNCERTAINTY_KW and n not in _SCORE_KW}
    strat = get_strategy(strategy, **rest) if isinstance(strategy, str) else strategy
    if rest and not isinstance(strategy, str):
        raise ActiveLearningError(f"unknown keyword arguments {sorted(rest)}")
    k = _check_k(k)
    sources = _image_sources(images)
    if not sources:
        raise ActiveLearningError("no images to rank")
    wants_features = bool(getattr(strat, "needs_features", False))
    regions: list[Region] = []
    feats: list[np.ndarray] = []
    n = len(sources)
    for i, (name, load) in enumerate(sources):
        if _is_cancelled(cancel):
            raise Cancelled("ranking was cancelled")
        image = load()

        def inner(done, total, i=i):
            if progress is not None and total:
                progress(i * 1000 + min(999, 1000 * done // total), n * 1000)

        res = estimate_uncertainty(model, image, methods=methods, seed=seed, progress=inner, cancel=cancel,
                                   **unc_kw)
        unc = res.combined()
        z_off = int(res.provenance["uncertainty"]["z_range"][0]) if unc.ndim == 3 else 0
        boxes = region_grid(unc.shape, size, kind=kind)
        scored = score_regions(unc, res.labels, boxes, image=name, **score_kw)
        if z_off:
            scored = [replace(r, box=((r.box[0][0] + z_off, r.box[0][1] + z_off),) + r.box[1:]) for r in scored]
        del unc, res
        if wants_features:
            f = region_features(model, image, [r.box for r in scored], channel_axis=unc_kw.get("channel_axis", "auto"),
                                normalization=unc_kw.get("normalization"), cancel=cancel)
            feats.append(f)
        regions.extend(scored)
        if progress is not None:
            progress((i + 1) * 1000, n * 1000)
    features = np.concatenate(feats) if wants_features and feats else None
    return strat.select(regions, k, exclude=exclude, features=features, seed=seed)


# ---------------------------------------------------------------------------
# The queue a person works through
# ---------------------------------------------------------------------------


def model_info(model: Model) -> dict:
    """``{"name", "version", "sha256"}`` of a model, as :class:`ActiveLearningState` records it."""
    s = model.spec
    return {"name": s.name, "version": s.version, "sha256": s.sha256}


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _save_error(e: OSError, folder: Path) -> ExportError:
    return _export_error(e, folder, "save the active-learning state",
                         after=f"then try again. The previous {ActiveLearningState.FILE} (if any) is unchanged")


@dataclass
class ActiveLearningState:
    """A round of active learning: the proposed regions and what a person did with them.

    Saved as ``segloop-active-learning.json`` in the training folder root
    (documented in ``docs/formats.md``).  Navigation: :meth:`current` is the
    region under the cursor; :meth:`next` moves to the next region not yet
    reviewed or skipped; :meth:`previous` moves back one (any region, to look
    again); :meth:`skip` marks the current one skipped and moves on.

    Attributes
    ----------
    strategy : str
    region_size : int
    region_kind : str
    budget : int
        Regions asked for (the queue may be shorter when fewer were open).
    queue : list of Region
        In visiting order.
    reviewed, skipped : list of str
        :attr:`Region.key` values, in the order they were marked; kept across
        rounds (pass them as ``exclude`` to the next ranking).
    cursor : int
        Index into ``queue``; ``len(queue)`` when past the end.
    model : dict or None
        name, version, sha256 of the model that scored the regions.
    created, updated : str
        ISO 8601 UTC times; set by :meth:`save`.
    """

    strategy: str
    region_size: int
    region_kind: str
    budget: int
    queue: list[Region] = field(default_factory=list)
    reviewed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    cursor: int = 0
    model: dict | None = None
    created: str = ""
    updated: str = ""

    FILE: ClassVar[str] = ACTIVE_STATE_FILE
    FORMAT: ClassVar[str] = "segloop-active-learning"
    FORMAT_VERSION: ClassVar[int] = 1

    @classmethod
    def from_ranking(cls, regions: Sequence[Region], *, strategy: str, region_size: int, region_kind: str,
                     budget: int | None = None, model: Model | dict | None = None,
                     previous: ActiveLearningState | None = None) -> ActiveLearningState:
        """A new round: ``regions`` (e.g. :func:`rank_images`) as the queue.

        ``previous`` carries the reviewed and skipped keys of the last round over.
        """
        info = model_info(model) if model is not None and not isinstance(model, dict) else model
        return cls(strategy=str(strategy), region_size=int(region_size), region_kind=str(region_kind),
                   budget=int(len(regions) if budget is None else budget), queue=list(regions),
                   reviewed=list(previous.reviewed) if previous else [],
                   skipped=list(previous.skipped) if previous else [], cursor=0, model=info, created=_now())

    # -- progress and navigation ----------------------------------------------
    @property
    def done_keys(self) -> set[str]:
        """Keys reviewed or skipped: what the next ranking should exclude."""
        return set(self.reviewed) | set(self.skipped)

    @property
    def n_reviewed(self) -> int:
        """Regions of the queue marked reviewed."""
        rev = set(self.reviewed)
        return sum(r.key in rev for r in self.queue)

    @property
    def n_skipped(self) -> int:
        """Regions of the queue skipped (and not reviewed since)."""
        sk = set(self.skipped) - set(self.reviewed)
        return sum(r.key in sk for r in self.queue)

    def progress_text(self) -> str:
        """E.g. ``"3 of 20 regions reviewed"``."""
        n = len(self.queue)
        return f"{self.n_reviewed} of {n} region{'s' if n != 1 else ''} reviewed"

    def remaining(self) -> list[Region]:
        """Queue regions neither reviewed nor skipped, in order."""
        done = self.done_keys
        return [r for r in self.queue if r.key not in done]

    def current(self) -> Region | None:
        """The region under the cursor, or None past the end (or with an empty queue)."""
        return self.queue[self.cursor] if 0 <= self.cursor < len(self.queue) else None

    def next(self) -> Region | None:
        """Move to the next region after the cursor not yet reviewed or skipped; None when none is left."""
        done = self.done_keys
        i = max(self.cursor, -1) + 1
        while i < len(self.queue) and self.queue[i].key in done:
            i += 1
        self.cursor = min(i, len(self.queue))
        return self.current()

    def previous(self) -> Region | None:
        """Move back one region (reviewed or not); stays on the first."""
        if self.queue:
            self.cursor = max(0, min(self.cursor, len(self.queue)) - 1)
        return self.current()

    def skip(self) -> Region | None:
        """Mark the current region skipped and move to the next open one (returned)."""
        r = self.current()
        if r is not None and r.key not in self.skipped and r.key not in self.reviewed:
            self.skipped.append(r.key)
        return self.next()

    def mark_reviewed(self, key: str) -> None:
        """Record ``key`` (a :attr:`Region.key`) as reviewed (no longer skipped); the cursor stays."""
        key = key.key if isinstance(key, Region) else str(key)
        if key not in self.reviewed:
            self.reviewed.append(key)
        if key in self.skipped:
            self.skipped.remove(key)

    # -- file -------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"format": self.FORMAT, "format_version": self.FORMAT_VERSION, "strategy": self.strategy,
                "region_size": int(self.region_size), "region_kind": self.region_kind, "budget": int(self.budget),
                "cursor": int(self.cursor), "model": self.model, "created": self.created, "updated": self.updated,
                "queue": [r.to_dict() for r in self.queue], "reviewed": list(self.reviewed),
                "skipped": list(self.skipped)}

    @classmethod
    def from_dict(cls, d: Any, *, source: str = "active-learning state") -> ActiveLearningState:
        """Parse :meth:`to_dict` output; :class:`ActiveLearningStateError` on anything else."""
        if not isinstance(d, dict) or d.get("format") != cls.FORMAT:
            raise ActiveLearningStateError(
                f"{source} is not a segloop active-learning state (format must be {cls.FORMAT!r}); "
                "delete or move it to start a new round")
        version = d.get("format_version")
        if not isinstance(version, int) or isinstance(version, bool):
            raise ActiveLearningStateError(f"{source} has no valid format_version; delete it to start a new round")
        if version > cls.FORMAT_VERSION:
            raise ActiveLearningStateError(
                f"{source} has format_version {version}, written by a newer segloop (this one reads up to "
                f"{cls.FORMAT_VERSION}); upgrade segloop")
        if version < 1:
            raise ActiveLearningStateError(f"{source} has an unknown format_version {version}")
        try:
            keys = [d["reviewed"], d["skipped"]]
            if not all(isinstance(x, list) and all(isinstance(s, str) for s in x) for x in keys):
                raise TypeError("reviewed and skipped must be lists of region keys")
            if not isinstance(d["queue"], list):
                raise TypeError("queue must be a list")
            model = d.get("model")
            if model is not None and not isinstance(model, dict):
                raise TypeError("model must be an object or null")
            state = cls(strategy=str(d["strategy"]), region_size=int(d["region_size"]),
                        region_kind=str(d["region_kind"]), budget=int(d["budget"]),
                        queue=[Region.from_dict(r) for r in d["queue"]], reviewed=list(d["reviewed"]),
                        skipped=list(d["skipped"]), cursor=int(d.get("cursor", 0)), model=model,
                        created=str(d.get("created", "")), updated=str(d.get("updated", "")))
        except (KeyError, TypeError, ValueError, ActiveLearningError) as e:
            what = f"missing {e}" if isinstance(e, KeyError) else str(e)
            raise ActiveLearningStateError(f"{source} is malformed ({what}); delete it to start a new round") from None
        state.cursor = min(max(state.cursor, 0), len(state.queue))
        return state

    def save(self, folder: str | os.PathLike) -> Path:
        """Write the state to ``folder / FILE`` atomically; returns the path.

        Written to a temporary file in the same folder, fsynced, renamed over
        the old file (``os.replace``) and the folder fsynced: a crash leaves
        the old or the new state, never a mix.  Sets ``updated`` (and
        ``created`` the first time) only when the write succeeded.

        Raises
        ------
        ExportError
            The folder does not exist, or cannot be written (read-only, full
            disk, permissions); the previous file is left as it was.
        """
        folder = Path(folder)
        if not folder.is_dir():
            raise ExportError(f"cannot save the active-learning state: {folder} is not a folder; create the "
                              "training folder first (export a sample, or TrainingFolder.create)")
        now = _now()
        data = self.to_dict()
        data["created"] = self.created or now
        data["updated"] = now
        payload = (json.dumps(data, indent=1, allow_nan=False) + "\n").encode("utf-8")
        target = folder / self.FILE
        tmp = folder / f".{self.FILE}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp"
        try:
            with open(tmp, "wb") as f:
                f.write(payload)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
            _fsync_dir(folder)
        except OSError as e:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise _save_error(e, folder) from None
        self.created, self.updated = data["created"], data["updated"]
        return target

    @classmethod
    def load(cls, folder: str | os.PathLike) -> ActiveLearningState | None:
        """The state saved in ``folder``, or None when there is none.

        Raises
        ------
        ActiveLearningStateError
            The file is unreadable, not JSON (corrupt, truncated), has the
            wrong schema or a newer ``format_version``.
        """
        path = Path(folder) / cls.FILE
        if not path.is_file():
            return None
        try:
            raw = path.read_bytes()
        except OSError as e:
            raise ActiveLearningStateError(f"{path} cannot be read ({e.strerror or e})") from None
        try:
            data = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise ActiveLearningStateError(
                f"{path} is not valid JSON (corrupt or truncated); delete it to start a new round of "
                "active learning") from None
        return cls.from_dict(data, source=str(path))
