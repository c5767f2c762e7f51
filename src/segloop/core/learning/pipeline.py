"""The active-learning pipeline: segment with uncertainty, cut into regions, score, select.

One pipeline for every caller - the Active learning widget's worker, the
loop without a screen (:func:`segloop_train.loop.run_loop`) and scripts:

1. each image is segmented with uncertainty
   (:func:`~segloop.core.inference.uncertainty.estimate_uncertainty`, the mean
   of the ``methods`` maps);
2. a grid of regions is laid over it (:func:`~segloop.core.learning.regions.region_grid`)
   and every region is scored (:func:`~segloop.core.learning.regions.score_regions`);
3. strategies that need them get pooled encoder features
   (:func:`~segloop.core.learning.features.region_features`);
4. the strategy selects ``k`` regions from all images together, leaving out
   those already reviewed or skipped.

:func:`rank_regions` returns everything a caller needs (the selection, every
candidate, and on request each image's labels and uncertainty map);
:func:`rank_images` is the short form that returns the selection only.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from segloop.core._runtime import is_cancelled
from segloop.core.learning.features import region_features
from segloop.core.learning.regions import Region, RegionKind, region_grid, score_regions
from segloop.core.learning.strategies import Strategy, check_k, get_strategy
from segloop.errors import (
    ActiveLearningError,
    Cancelled,
)

if TYPE_CHECKING:
    from segloop.core.inference.model import Model

__all__ = ["IMAGE_SUFFIXES", "FEATURE_SCOPES", "Ranking", "ScoredImage", "rank_images", "rank_regions"]

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")

#: Which regions :func:`rank_regions` computes encoder features for (strategies that need them).
FEATURE_SCOPES = ("all", "pool")
FeatureScope = Literal["all", "pool"]

#: ``progress(stage, done, total)``; stages: ``"uncertainty"``, ``"scoring regions"``, ``"region features"``.
StageProgress = Callable[[str, int, int], None]


# ---------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------


def _image_sources(images) -> list[tuple[str, Callable[[], Any]]]:
    """(id, loader) pairs from a mapping of arrays, a folder, or paths."""
    from segloop.core.formats.io import read_image

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


# ---------------------------------------------------------------------------
# The pipeline
# ---------------------------------------------------------------------------


@dataclass
class ScoredImage:
    """One image of a :class:`Ranking`.

    Attributes
    ----------
    name : str
        The image id (mapping key or file stem) its regions carry.
    regions : list of Region
        Every region of its grid, scored, in raster order; boxes in the image's full
        coordinates (also with ``z_range``).
    labels : ndarray or None
        The prediction (instance or class ids), when ``keep_labels`` was asked for.
    uncertainty : float32 ndarray or None
        The combined uncertainty map in [0, 1], when ``keep_uncertainty`` was asked for
        (with ``z_range``: only those planes).
    """

    name: str
    regions: list[Region]
    labels: np.ndarray | None = None
    uncertainty: np.ndarray | None = None


@dataclass
class Ranking:
    """What :func:`rank_regions` found.

    Attributes
    ----------
    selected : list of Region
        The regions to review, in the order to visit.
    candidates : list of Region
        Every region of every image (image by image, raster order).
    excluded : set of str
        Keys of the candidates left out as already done (``exclude`` and ``exclude_where``).
    images : dict of str -> ScoredImage
    """

    selected: list[Region]
    candidates: list[Region]
    excluded: set[str] = field(default_factory=set)
    images: dict[str, ScoredImage] = field(default_factory=dict)


_UNCERTAINTY_KW = {"tta_flips", "mc_samples", "channel_axis", "normalization", "z_range", "tile", "overlap",
                   "batch_size", "skip_background", "max_chunk_bytes"}
_SCORE_KW = {"boundary_px", "score"}


def rank_regions(model: Model, images, *, size: int, kind: RegionKind = "tile", methods=("entropy",),
                 strategy: str | Strategy = "uncertainty", k: int, exclude: Collection[str] = (),
                 exclude_where: Callable[[Region], bool] | None = None, seed: int = 0,
                 feature_scope: FeatureScope = "all", keep_labels: bool = False, keep_uncertainty: bool = False,
                 progress: StageProgress | None = None, cancel=None, **kw) -> Ranking:
    """Segment images with uncertainty, score a grid of regions and pick ``k`` to review.

    Each image is segmented with uncertainty
    (:func:`~segloop.core.inference.uncertainty.estimate_uncertainty`, the mean of the
    ``methods`` maps), cut into regions (:func:`region_grid`) and scored
    (:func:`score_regions`); strategies with ``needs_features`` also get
    :func:`region_features`.  Only regions, scores and features (and what ``keep_*``
    asks for) are kept between images; the strategy selects from all of them together.

    Parameters
    ----------
    model : Model
    images : mapping of str -> array, a folder, or a sequence of paths
        Ids are the mapping's keys or the file stems.  Arrays as for
        :meth:`Model.predict`: (H, W[, C]) or (Z, H, W[, C]).
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
    exclude_where : callable, optional
        ``exclude_where(region) -> bool``: True leaves the region out too (e.g. one a
        person already looked at entirely).
    seed : int
        For the random strategy and MC-dropout.
    feature_scope : {"all", "pool"}
        For strategies that need features.  ``"all"``: every candidate gets features
        (computed image by image), excluded ones too, so what was reviewed counts as
        already covered.  ``"pool"``: the excluded regions are dropped first and only
        the strategy's candidate pool (the ``pool_factor * k`` best by score) gets
        features - much cheaper on a large image.
    keep_labels, keep_uncertainty : bool
        Keep each image's prediction / combined uncertainty map in :attr:`Ranking.images`.
    progress : callable, optional
        ``progress(stage, done, total)``: ``"uncertainty"`` (1000 per image over all
        images), ``"scoring regions"`` (images), ``"region features"`` (regions of one
        feature pass).
    cancel : threading.Event or callable, optional
        Checked before and after each image's segmentation, inside it and before
        selecting; raises :class:`~segloop.errors.Cancelled`.
    **kw
        ``tta_flips``, ``mc_samples``, ``channel_axis``, ``normalization``,
        ``z_range``, ``tile``, ``overlap``, ``batch_size``,
        ``skip_background``, ``max_chunk_bytes`` go to
        ``estimate_uncertainty`` (``channel_axis`` and ``normalization`` also to
        ``region_features``); ``boundary_px``, ``score`` to
        :func:`score_regions`; anything else to the strategy (e.g.
        ``pool_factor``).

    Returns
    -------
    Ranking
    """
    from segloop.core.inference.uncertainty import estimate_uncertainty

    unc_kw = {n: v for n, v in kw.items() if n in _UNCERTAINTY_KW}
    score_kw = {n: v for n, v in kw.items() if n in _SCORE_KW}
    rest = {n: v for n, v in kw.items() if n not in _UNCERTAINTY_KW and n not in _SCORE_KW}
    strat = get_strategy(strategy, **rest) if isinstance(strategy, str) else strategy
    if rest and not isinstance(strategy, str):
        raise ActiveLearningError(f"unknown keyword arguments {sorted(rest)}")
    if feature_scope not in FEATURE_SCOPES:
        raise ActiveLearningError(f"feature_scope must be one of {', '.join(FEATURE_SCOPES)}, got {feature_scope!r}")
    k = check_k(k)
    sources = _image_sources(images)
    if not sources:
        raise ActiveLearningError("no images to rank")
    report = progress or (lambda stage, done, total: None)
    feature_kw = {"channel_axis": unc_kw.get("channel_axis", "auto"), "normalization": unc_kw.get("normalization")}
    wants_features = bool(getattr(strat, "needs_features", False))
    scored: dict[str, ScoredImage] = {}
    feats: list[np.ndarray] = []
    n = len(sources)
    for i, (name, load) in enumerate(sources):
        if is_cancelled(cancel):
            raise Cancelled("ranking was cancelled")
        image = load()
        report("uncertainty", i * 1000, n * 1000)

        def inner(done, total, i=i):
            if total:
                report("uncertainty", i * 1000 + min(999, 1000 * done // total), n * 1000)

        res = estimate_uncertainty(model, image, methods=methods, seed=seed, progress=inner, cancel=cancel,
                                   **unc_kw)
        if is_cancelled(cancel):
            raise Cancelled("ranking was cancelled")
        unc = res.combined()
        z_off = int(res.provenance["uncertainty"]["z_range"][0]) if unc.ndim == 3 else 0
        report("scoring regions", i, n)
        regions = score_regions(unc, res.labels, region_grid(unc.shape, size, kind=kind), image=name, **score_kw)
        if z_off:
            regions = [replace(r, box=((r.box[0][0] + z_off, r.box[0][1] + z_off),) + r.box[1:]) for r in regions]
        scored[name] = ScoredImage(name, regions, labels=np.asarray(res.labels) if keep_labels else None,
                                   uncertainty=unc if keep_uncertainty else None)
        del unc, res
        if wants_features and feature_scope == "all":
            feats.append(region_features(model, image, [r.box for r in regions], cancel=cancel,
                                         progress=lambda d, t: report("region features", d, t), **feature_kw))
        del image
    candidates = [r for s in scored.values() for r in s.regions]
    excluded = set(exclude)
    if exclude_where is not None:
        excluded |= {r.key for r in candidates if exclude_where(r)}
    excluded &= {r.key for r in candidates}
    if feature_scope == "all":
        features = np.concatenate(feats) if wants_features and feats else None
        if is_cancelled(cancel):
            raise Cancelled("ranking was cancelled")
        selected = strat.select(candidates, k, exclude=excluded, features=features, seed=seed)
    else:
        selected = _select_from_pool(model, sources, strat, candidates, excluded, k, seed=seed,
                                     wants_features=wants_features, feature_kw=feature_kw, report=report,
                                     cancel=cancel)
    return Ranking(selected, candidates, excluded, scored)


def _select_from_pool(model, sources, strat, candidates: list[Region], excluded: set[str], k: int, *, seed: int,
                      wants_features: bool, feature_kw: dict, report: StageProgress, cancel) -> list[Region]:
    """``feature_scope="pool"``: drop the excluded regions, features for the strategy's pool only."""
    open_regions = [r for r in candidates if r.key not in excluded]
    features = None
    if wants_features and open_regions:
        factor = getattr(strat, "pool_factor", None)
        pool = sorted(open_regions, key=lambda r: -r.score)
        open_regions = pool[: factor * k] if factor else pool
        report("region features", 0, 1)
        loaders = dict(sources)
        rows: dict[int, np.ndarray] = {}
        for name in dict.fromkeys(r.image for r in open_regions):
            idx = [j for j, r in enumerate(open_regions) if r.image == name]
            f = region_features(model, loaders[name](), [open_regions[j].box for j in idx], cancel=cancel,
                                progress=lambda d, t: report("region features", d, t), **feature_kw)
            rows.update(zip(idx, f))
        features = np.stack([rows[j] for j in range(len(open_regions))])
    if is_cancelled(cancel):
        raise Cancelled("ranking was cancelled")
    return strat.select(open_regions, k, features=features, seed=seed)


def rank_images(model: Model, images, *, size: int, kind: RegionKind = "tile", methods=("entropy",),
                strategy: str | Strategy = "uncertainty", k: int, exclude: Collection[str] = (),
                seed: int = 0, progress: Callable[[int, int], None] | None = None, cancel=None,
                **kw) -> list[Region]:
    """Rank regions of several images jointly and pick ``k`` to review.

    The short form of :func:`rank_regions` (``feature_scope="all"``): the same
    parameters, the selection only.

    Parameters
    ----------
    progress : callable, optional
        ``progress(done, total)``: 1000 per image.
    model, images, size, kind, methods, strategy, k, exclude, seed, cancel, **kw
        See :func:`rank_regions`.

    Returns
    -------
    list of Region
        The selection, in the order to visit; boxes are in each image's full
        coordinates (also with ``z_range``).
    """
    total = [0]

    def stage(name: str, done: int, n: int) -> None:
        if name == "uncertainty" and progress is not None:
            total[0] = n
            progress(done, n)

    ranking = rank_regions(model, images, size=size, kind=kind, methods=methods, strategy=strategy, k=k,
                           exclude=exclude, seed=seed, progress=stage, cancel=cancel, **kw)
    if progress is not None and total[0]:
        progress(total[0], total[0])
    return ranking.selected
