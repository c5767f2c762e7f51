"""Where sliding windows go: one N-D grid for 2D tiles and 3D patches.

A :class:`WindowGrid` holds the window size and the start offsets of the
windows along every axis of a spatial shape: ``(H, W)`` for 2D tiles (one
plane at a time), ``(Z, H, W)`` for 3D patches.  Windows are visited in the
order of :meth:`WindowGrid.positions` (the first axis slowest), which is what
lets :mod:`segloop.core.inference.tiling` stream finished bands (rows of a
plane) or slabs (planes of a volume) without holding the whole output.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from segloop.errors import InvalidImageError

__all__ = ["WindowGrid", "check_z_range", "tile_positions"]


def tile_positions(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of windows covering ``[0, length)``, evenly spread (as nnU-Net).

    Parameters
    ----------
    length : int
        Pixels along the axis.
    tile : int
        Window size along the axis.
    overlap : int
        Minimum pixels shared by neighbouring windows.

    Returns
    -------
    list of int
        Sorted starts: the first is 0, the last ends at ``length`` (when
        ``length >= tile``), and neighbours overlap by at least ``overlap``.
    """
    if length <= tile:
        return [0]
    step = max(tile - overlap, 1)
    n = math.ceil((length - tile) / step) + 1
    if n == 1:
        return [0]
    return sorted({round(i * (length - tile) / (n - 1)) for i in range(n)})


def check_z_range(z_range, n_z: int, stack: bool) -> tuple[int, int]:
    """``z_range`` as ``(z0, z1)`` checked against ``n_z`` planes (None: all planes).

    Raises
    ------
    InvalidImageError
        Not a pair, empty, or outside ``[0, n_z]``.
    """
    if z_range is None:
        return 0, n_z
    try:
        z0, z1 = (int(v) for v in z_range)
    except (TypeError, ValueError):
        raise InvalidImageError(f"z_range must be a pair (z0, z1), got {z_range!r}") from None
    if not 0 <= z0 < z1 <= n_z:
        what = f"a stack of {n_z} planes" if stack else "a single 2D image (only (0, 1) is valid)"
        raise InvalidImageError(f"z_range {tuple(z_range)!r} is outside {what}; need 0 <= z0 < z1 <= {n_z}")
    return z0, z1


def _round_up(n: int, m: int) -> int:
    return max(m, int(math.ceil(n / m) * m))


def _overlap_px(overlap: float | int, size: int) -> int:
    """Overlap in pixels: a float is a fraction of ``size`` in [0, 0.9], an int is pixels below ``size``."""
    if isinstance(overlap, (float, np.floating)):
        if not 0 <= overlap <= 0.9:
            raise InvalidImageError(f"overlap {overlap!r} must be a fraction of the tile in [0, 0.9]"
                                    " (or an int number of pixels)")
        return int(round(overlap * size))
    ov = int(overlap)
    if ov < 0 or ov >= size:
        raise InvalidImageError(f"overlap {overlap!r} px must be in [0, tile size {size})")
    return ov


@dataclass(frozen=True)
class WindowGrid:
    """Sliding-window positions over an N-D spatial shape (2D tiles or 3D patches).

    Attributes
    ----------
    shape : tuple of int
        The spatial shape covered: ``(H, W)`` (one plane) or ``(Z, H, W)``.
    window : tuple of int
        Window size per axis: a multiple of the network's divisor, never much
        larger than ``shape`` (shrunk to it, rounded up; smaller images are padded).
    starts : tuple of tuple of int
        Window start offsets per axis, spread evenly (:func:`tile_positions`).
    span : (a0, a1), optional
        Positions of the first axis whose values are wanted (3D: planes
        ``z0 .. z1 - 1``); ``None`` means the whole axis.  Windows may cover
        more (context); the blender emits only the span.
    """

    shape: tuple[int, ...]
    window: tuple[int, ...]
    starts: tuple[tuple[int, ...], ...]
    span: tuple[int, int] | None = None

    @classmethod
    def build(cls, shape: tuple[int, ...], *, window: int | tuple[int, ...], overlap: float | int,
              multiple: int = 1, span: tuple[int, int] | None = None) -> WindowGrid:
        """The evenly spread grid of ``window``-sized windows over ``shape``.

        Parameters
        ----------
        shape : (H, W) or (Z, H, W)
        window : int or tuple of int
            Requested window size (an int is a square / cube).  Each axis is
            rounded up to ``multiple`` and shrunk to the image (rounded up).
        overlap : float or int
            A fraction of the window (``0 <= overlap <= 0.9``) or pixels.
            2D: one overlap for both axes, of the smaller requested side,
            clamped to the shrunk tile minus one pixel.  3D: per axis, of
            the patch used (pixels must be below it).
        multiple : int
            The network's divisor.
        span : (a0, a1), optional
            Only these positions of the first axis are wanted: windows cover
            ``a0 - c .. a1 + c`` with ``c = (w0 - 1) // 2`` (clamped to the
            shape, and at least one window deep), so every wanted position
            sees context on both sides and a single plane costs one window depth.

        Raises
        ------
        InvalidImageError
            A bad shape, window, overlap or span.
        """
        shape = tuple(int(n) for n in shape)
        if len(shape) not in (2, 3) or min(shape) < 1:
            raise InvalidImageError(f"a window grid needs an (H, W) or (Z, H, W) shape, got {shape}")
        nd = len(shape)
        if isinstance(window, (int, np.integer)):
            req = (int(window),) * nd
        else:
            req = tuple(int(p) for p in window)
        if len(req) != nd or min(req) < 1:
            raise InvalidImageError(f"window size must be an int or {nd} ints, got {window!r}")
        size = tuple(min(_round_up(p, multiple), _round_up(n, multiple)) for p, n in zip(req, shape))
        if nd == 2:
            # 2D tiles: one overlap for both axes, a fraction of the smaller requested side, as
            # segloop has always tiled (so a non-square or non-multiple tile lands where it did)
            ov = min(_overlap_px(overlap, min(req)), min(size) - 1)
            ovs = (ov, ov)
        else:
            ovs = tuple(min(_overlap_px(overlap, w), w - 1) for w in size)   # 3D: per axis of the patch
        starts = [tuple(tile_positions(n, w, ov)) for n, w, ov in zip(shape, size, ovs)]
        if span is not None:
            a0, a1 = check_z_range(span, shape[0], True)
            lo, hi = a0, a1
            if (a0, a1) != (0, shape[0]):
                w0 = size[0]
                c = (w0 - 1) // 2
                lo, hi = max(0, a0 - c), min(shape[0], a1 + c)
                if hi - lo < w0:                       # at least one window depth of context
                    hi = min(shape[0], lo + w0)
                    lo = max(0, hi - w0)
            starts[0] = tuple(lo + p for p in tile_positions(hi - lo, size[0], ovs[0]))
            span = (a0, a1)
        return cls(shape, size, tuple(starts), span)

    def __post_init__(self):
        if not (len(self.shape) == len(self.window) == len(self.starts)):
            raise InvalidImageError(f"grid shape {self.shape}, window {self.window} and starts need one "
                                    "entry per axis")

    def __len__(self) -> int:
        return math.prod(len(s) for s in self.starts)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def zs(self) -> tuple[int, ...]:
        """Window starts along Z (3D grids only)."""
        if self.ndim != 3:
            raise AttributeError("a 2D grid has no Z axis")
        return self.starts[0]

    @property
    def ys(self) -> tuple[int, ...]:
        return self.starts[-2]

    @property
    def xs(self) -> tuple[int, ...]:
        return self.starts[-1]

    @property
    def wanted(self) -> tuple[int, int]:
        """``span``, or the whole first axis."""
        return self.span if self.span is not None else (0, self.shape[0])

    @property
    def end(self) -> int:
        """One past the last position of the first axis any window covers."""
        return min(self.shape[0], self.starts[0][-1] + self.window[0])

    def positions(self) -> Iterator[tuple[int, ...]]:
        """Every window's start, first axis slowest (the order the blender needs)."""
        return itertools.product(*self.starts)
