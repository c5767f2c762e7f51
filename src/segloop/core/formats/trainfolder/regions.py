"""Training folder v1: where a sample lies in its source, and the leak guard between splits.

Regions are ``[[start, stop], ...]`` per axis in source coordinates.  Reviewed pixels of a
sample that lie (within a gap) in a region of the same source used by another split are
cleared, so no pixel is trained on and validated on.
"""

from __future__ import annotations

import numpy as np

__all__ = ["clear_overlap", "reviewed_region", "source_region"]


def source_region(spatial: tuple[int, ...], crop: list | None, slice_range: list | None) -> list[list[int]]:
    """Where the sample lies in its source image; no crop = the whole source from its origin."""
    if crop is not None:
        return [list(c) for c in crop]
    region = [[0, n] for n in spatial]
    if slice_range is not None:
        if len(spatial) == 3:
            region[0] = list(slice_range)
        else:
            region = [list(slice_range), *region]       # one 2D slice of a volume
    return region


def reviewed_region(rev: np.ndarray, region: list[list[int]]) -> list[list[int]] | None:
    """Bounding box of the reviewed pixels, in source coordinates; None when nothing is reviewed."""
    if not rev.any():
        return None
    lead = len(region) - rev.ndim
    out = [list(r) for r in region[:lead]]
    for ax in range(rev.ndim):
        other = tuple(i for i in range(rev.ndim) if i != ax)
        hit = np.flatnonzero(rev.any(axis=other) if other else rev)
        start = region[lead + ax][0]
        out.append([start + int(hit[0]), start + int(hit[-1]) + 1])
    return out


def clear_overlap(rev: np.ndarray, region: list[list[int]], other: list[list[int]], gap: int) -> int:
    """Zero ``rev`` where ``other`` (grown by ``gap``) overlaps ``region``; axes are matched from the
    end, axes only one side has are unconstrained.  Returns the number of pixels cleared."""
    k = min(len(region), len(other))
    inter = []
    for (a0, a1), (b0, b1) in zip(region[-k:], other[-k:]):
        lo, hi = max(a0, b0 - gap), min(a1, b1 + gap)
        if lo >= hi:
            return 0
        inter.append((lo, hi))
    lead = len(region) - rev.ndim                       # region axes beyond the array (a slice's Z)
    index = []
    for ax in range(rev.ndim):
        ri = lead + ax
        ki = ri - (len(region) - k)
        if ki >= 0:
            lo, hi = inter[ki]
            index.append(slice(lo - region[ri][0], hi - region[ri][0]))
        else:
            index.append(slice(None))
    block = rev[tuple(index)]
    n = int(np.count_nonzero(block))
    block[...] = 0
    return n
