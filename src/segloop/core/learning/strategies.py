"""Which regions to propose: random, uncertainty, uncertainty + diversity."""

from __future__ import annotations

import warnings
from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

from segloop.core.learning.regions import Region
from segloop.errors import (
    ActiveLearningError,
)

if TYPE_CHECKING:
    pass


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


def check_k(k) -> int:
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
        k = check_k(k)
        idx = _open(regions, exclude)
        order = np.random.default_rng(seed).permutation(len(idx))[:k]
        return [regions[idx[j]] for j in order]


class UncertaintyStrategy:
    """The ``k`` highest-scoring regions (ties: the earlier region first)."""

    name = "uncertainty"
    needs_features = False

    def select(self, regions: Sequence[Region], k: int, *, exclude: Collection[str] = (),
               features: np.ndarray | None = None, seed: int = 0) -> list[Region]:
        k = check_k(k)
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
        k = check_k(k)
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


