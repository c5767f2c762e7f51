"""One N-D sliding window with Gaussian blending and bounded memory: 2D, 2.5D and 3D.

The predictor is just a callable (MONAI's inferer pattern): it takes a batch of
normalized windows ``(B, C, *window)`` float32 - 2D tiles ``(B, C, th, tw)``
or 3D patches ``(B, C, pz, py, px)`` - and returns class probabilities of the
same spatial shape.  This module knows nothing about the network.

:func:`sliding_window` is the one loop: it visits the windows of a
:class:`~segloop.core.inference.grid.WindowGrid` in order (first axis
slowest), batches them, and blends them in one :class:`WindowBlender`.
Memory stays bounded: the blender accumulates only a ring of one window depth
along the first axis and hands every finished band to a sink at once - rows
of a plane for 2D tiles, whole planes of a volume for 3D patches.  Only when
no sink is given is a full probability array built.

* :func:`predict_tiled` - 2D tiles on one image or on every plane of a stack;
  with ``context_slices=k > 1`` (2.5D) each tile carries the ``k`` neighbouring
  planes as channels.
* :func:`predict_tiled_3d` - 3D patches over a ``(Z, Y, X[, C])`` volume.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from segloop.core._runtime import is_cancelled
from segloop.core.inference.grid import WindowGrid, check_z_range
from segloop.errors import Cancelled, InvalidImageError

__all__ = [
    "BandSink",
    "Predictor",
    "TiledStats",
    "WindowBlender",
    "gaussian_importance",
    "predict_tiled",
    "predict_tiled_3d",
    "sliding_window",
    "tissue_mask",
]

Predictor = Callable[[np.ndarray], np.ndarray]
ProgressCallback = Callable[[int, int], None]
Position = tuple[int, ...]


class BandSink(Protocol):
    """Receives finished rows: ``sink(z, y0, y1, probs)`` with ``probs (K, y1-y0, W)``."""

    def __call__(self, z: int, y0: int, y1: int, probs: np.ndarray) -> None: ...


@dataclass
class TiledStats:
    """What a sink-driven :func:`predict_tiled` / :func:`predict_tiled_3d` run did (tiles = 3D patches)."""

    total_tiles: int = 0
    predicted_tiles: int = 0
    skipped_tiles: int = 0


def gaussian_importance(shape: tuple[int, ...], *, sigma_scale: float = 1 / 8) -> np.ndarray:
    """nnU-Net's Gaussian importance map: peak 1 at the centre, no zeros.

    Parameters
    ----------
    shape : (th, tw) or (pz, py, px)
        Tile or patch size in pixels (any number of axes).
    sigma_scale : float
        sigma = size * sigma_scale in each axis (nnU-Net uses 1/8).

    Returns
    -------
    weights : float32 ndarray of ``shape``
        The outer product of one 1D Gaussian per axis, scaled to a maximum
        of 1; zeros (underflow) are replaced by the smallest positive weight.
    """
    g = np.ones((), np.float64)
    for n in shape:
        sigma = max(n * sigma_scale, 1e-3)
        x = np.arange(n, dtype=np.float64) - (n - 1) / 2
        g = np.multiply.outer(g, np.exp(-0.5 * (x / sigma) ** 2))
    g /= g.max()
    if (g == 0).any():
        g[g == 0] = g[g > 0].min()
    return g.astype(np.float32)


def tissue_mask(image: np.ndarray, *, channel_axis: int | None, max_side: int = 1024) -> tuple[np.ndarray, int]:
    """Low-resolution tissue mask of a bright-field RGB image (Otsu on saturation).

    Parameters
    ----------
    image : (H, W, 3) array-like
        RGB, any numeric dtype; read through a strided view, never copied whole.
    max_side : int
        The mask's longest side is at most about this many pixels.

    Returns
    -------
    mask : (h, w) bool ndarray
        True where there is tissue, at ``stride`` times lower resolution.
    stride : int
    """
    from scipy.ndimage import binary_dilation
    from skimage.color import rgb2hsv
    from skimage.filters import threshold_otsu
    from skimage.morphology import disk

    h, w = image.shape[:2]
    stride = max(1, math.ceil(max(h, w) / max_side))
    small = np.asarray(image[::stride, ::stride])
    if channel_axis is None or small.ndim != 3 or small.shape[-1] < 3:
        return np.ones(small.shape[:2], dtype=bool), stride
    rgb = small[..., :3].astype(np.float32)
    hi = float(np.nanmax(rgb)) if rgb.size else 1.0
    rgb /= hi if hi > 0 else 1.0
    sat = rgb2hsv(np.clip(np.nan_to_num(rgb), 0, 1))[..., 1]
    if float(sat.max() - sat.min()) < 0.05:
        # No contrast in saturation: either all tissue or all glass; keep all.
        return np.ones(sat.shape, dtype=bool), stride
    thr = threshold_otsu(sat)
    # Pale tissue can sit below Otsu's split; never treat >0.08 saturation as glass.
    mask = sat > min(thr, 0.08)
    mask = binary_dilation(mask, structure=disk(2))
    return mask, stride


def _channels_first(raw: np.ndarray, channel_axis: int | None,
                    normalize: Callable[[np.ndarray], np.ndarray] | None) -> np.ndarray:
    """Raw ``(h, w[, C])`` -> normalized ``(C', h, w)`` float32."""
    if normalize is not None:
        t = normalize(raw)
    else:
        t = raw.astype(np.float32, copy=False)
        t = t[None] if channel_axis is None else np.moveaxis(t, -1, 0)
    return np.asarray(t, dtype=np.float32)


def _pad_to(t: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Pad the trailing axes of ``t`` (channels first) at their end up to ``shape``.

    Reflect where every pad is shorter than its axis, else edge-replicate.
    """
    pads = [n - m for n, m in zip(shape, t.shape[1:], strict=True)]
    if not any(pads):
        return t
    mode = "reflect" if all(p < m for p, m in zip(pads, t.shape[1:])) else "edge"
    return np.pad(t, ((0, 0), *((0, p) for p in pads)), mode=mode)


def _read_tile(image, y: int, x: int, th: int, tw: int, channel_axis: int | None,
               normalize: Callable[[np.ndarray], np.ndarray] | None) -> np.ndarray:
    """Read, normalize and reflect-pad one tile to (C, th, tw) float32."""
    raw = np.asarray(image[y:y + th, x:x + tw])
    return _pad_to(_channels_first(raw, channel_axis, normalize), (th, tw))


class _PlaneCache:
    """Normalized whole planes ``(C', H, W)`` float32 of a stack, each read and normalized once.

    Plane indices outside ``[0, Z)`` are clamped (edge replicate).  The owner
    releases planes it no longer needs, so only a few planes are held.
    """

    def __init__(self, image, *, stack: bool, channel_axis: int | None,
                 normalize: Callable[[np.ndarray], np.ndarray] | None):
        self.image, self.stack = image, stack
        self.channel_axis, self.normalize = channel_axis, normalize
        self.n_z = int(image.shape[0]) if stack else 1
        self.planes: dict[int, np.ndarray] = {}
        self.reads = 0

    def get(self, z: int) -> np.ndarray:
        z = min(max(int(z), 0), self.n_z - 1)
        plane = self.planes.get(z)
        if plane is None:
            raw = np.asarray(self.image[z] if self.stack else self.image)
            plane = np.ascontiguousarray(_channels_first(raw, self.channel_axis, self.normalize))
            self.planes[z] = plane
            self.reads += 1
        return plane

    def release_below(self, z: int) -> None:
        """Forget planes with index < ``z`` (after clamping)."""
        z = min(max(int(z), 0), self.n_z - 1)
        for key in [k for k in self.planes if k < z]:
            del self.planes[key]


# ---------------------------------------------------------------------------
# The one blender and the one sliding window
# ---------------------------------------------------------------------------


class WindowBlender:
    """Weighted accumulation of N-D windows that streams finished bands of the first axis.

    Windows arrive in the order of :meth:`WindowGrid.positions` (sorted by
    their start on the first axis).  The accumulators are a ring of ``w0``
    positions of the first axis (``w0 = grid.window[0]``): ``acc (K, w0, *rest)``
    and ``wsum (w0, *rest)`` float32, where ``rest = grid.shape[1:]``; position
    ``a`` lives in slot ``a % w0``.  When windows with the next start begin,
    every position before that start is final: it is normalized
    (``acc / wsum``), handed to ``emit`` if it is in ``grid.wanted``, and its
    slot is cleared.  Memory is one window depth, whatever the image size:
    ``(K, th, W)`` for the rows of a 2D plane, ``(K, pz, Y, X)`` for 3D.

    Parameters
    ----------
    grid : WindowGrid
    k : int
        Classes (channels of the predictions).
    weight : float32 ndarray of ``grid.window``
        Positive blending weights of one window (:func:`gaussian_importance`).
    emit : callable
        ``emit(a0, a1, probs)`` with ``probs (K, a1 - a0, *rest)`` float32,
        valid during the call only.  Positions no window covered get
        probability 1 for class 0 (background).
    band : int, optional
        At most this many positions per ``emit`` (default and maximum ``w0``:
        2D planes emit whole bands of rows; 3D volumes pass 1, one plane per call).
    """

    def __init__(self, grid: WindowGrid, k: int, weight: np.ndarray,
                 emit: Callable[[int, int, np.ndarray], None], *, band: int | None = None):
        self.grid, self.weight, self.emit = grid, weight, emit
        w0 = grid.window[0]
        self.acc = np.zeros((k, w0, *grid.shape[1:]), np.float32)
        self.wsum = np.zeros((w0, *grid.shape[1:]), np.float32)
        self.band = w0 if band is None else max(1, min(int(band), w0))
        self.next = grid.starts[0][0]        # first position of the first axis not yet emitted
        self.row = 0                         # index into grid.starts[0] of the windows being added

    def _ring(self, a: int, n: int) -> list[tuple[slice, slice]]:
        """(ring slots, local positions) pairs covering positions ``a .. a + n - 1`` (n <= w0)."""
        w0 = self.grid.window[0]
        s = a % w0
        first = min(n, w0 - s)
        parts = [(slice(s, s + first), slice(0, first))]
        if first < n:
            parts.append((slice(0, n - first), slice(first, n)))
        return parts

    def _normalized(self, a: int, n: int) -> np.ndarray:
        """Blended probabilities ``(K, n, *rest)`` of positions ``a .. a + n - 1``."""
        probs = np.empty((self.acc.shape[0], n, *self.grid.shape[1:]), np.float32)
        for slots, local in self._ring(a, n):
            w = self.wsum[slots]
            dst = probs[:, local]
            np.divide(self.acc[:, slots], np.maximum(w, 1e-12), out=dst)
            empty = w <= 0
            if empty.any():                  # covered only by skipped windows: background
                dst[:, empty] = 0.0
                dst[0, empty] = 1.0
        return probs

    def _flush(self, upto: int) -> None:
        """Emit the wanted positions of ``[next, upto)`` in bands and clear their slots."""
        lo, hi = self.grid.wanted
        end = self.grid.end
        a = self.next
        while a < upto:
            if a >= end and not lo <= a < hi:  # nothing held and nothing wanted here
                a = upto if a >= hi else min(upto, lo)
                continue
            b = min(upto, a + self.band)
            e0, e1 = max(a, lo), min(b, hi)
            if e0 < e1:
                self.emit(e0, e1, self._normalized(e0, e1 - e0))
            if a < min(b, end):
                for slots, _ in self._ring(a, min(b, end) - a):
                    self.acc[:, slots] = 0
                    self.wsum[slots] = 0
            a = b
        self.next = max(self.next, upto)

    def add(self, pos: Position, pred: np.ndarray | None) -> None:
        """Add one window's probabilities ``(K, *window)`` at start ``pos`` (None: a skipped window)."""
        starts0 = self.grid.starts[0]
        while starts0[self.row] != pos[0]:       # windows with the next start begin
            self.row += 1
            self._flush(starts0[self.row])
        if pred is None:
            return
        ext = tuple(min(w, n - p) for w, n, p in zip(self.grid.window, self.grid.shape, pos))
        box = tuple(slice(0, e) for e in ext)
        wt = self.weight[box]
        p = pred[(slice(None), *box)] * wt
        rest = tuple(slice(q, q + e) for q, e in zip(pos[1:], ext[1:]))
        for slots, local in self._ring(pos[0], ext[0]):
            self.acc[(slice(None), slots, *rest)] += p[:, local]
            self.wsum[(slots, *rest)] += wt[local]

    def finish(self) -> None:
        """Emit everything left, down to the end of the first axis."""
        starts0 = self.grid.starts[0]
        while self.row + 1 < len(starts0):
            self.row += 1
            self._flush(starts0[self.row])
        self._flush(max(self.grid.end, self.grid.wanted[1]))


def sliding_window(
    predictor: Predictor,
    grid: WindowGrid,
    read: Callable[[Position], np.ndarray],
    *,
    emit: Callable[[int, int, np.ndarray], None],
    weight: np.ndarray | None = None,
    n_classes: int | None = None,
    batch_size: int = 4,
    skip: Callable[[Position], bool] | None = None,
    band: int | None = None,
    stats: TiledStats | None = None,
    progress: ProgressCallback | None = None,
    cancel=None,
) -> int:
    """Run ``predictor`` over every window of ``grid`` and blend the predictions.

    The one loop behind :func:`predict_tiled` (a grid per plane) and
    :func:`predict_tiled_3d` (one 3D grid), after MONAI's
    ``sliding_window_inference``: the predictor and the reader are callables,
    and this function knows nothing about networks or file formats.

    Parameters
    ----------
    predictor : callable
        ``(B, C, *grid.window) float32 -> (B, K, *grid.window) float32`` probabilities.
    grid : WindowGrid
        Where the windows go; visited first axis slowest.
    read : callable
        ``read(pos) -> (C, *grid.window) float32``: the normalized, padded
        input of the window starting at ``pos``.
    emit : callable
        ``emit(a0, a1, probs)`` receives every finished band of the first
        axis, in order, ``probs (K, a1 - a0, *grid.shape[1:])`` float32
        (see :class:`WindowBlender`).
    weight : float32 ndarray of ``grid.window``, optional
        Blending weights; default :func:`gaussian_importance` of the window.
    n_classes : int, optional
        ``K``; found from the first prediction when omitted.
    batch_size : int
        Windows per predictor call.  With ``skip``, batches are filled with
        windows that run (up to ``4 * batch_size`` windows are looked at).
    skip : callable, optional
        ``skip(pos) -> bool``: True to not run the window (background).
    band : int, optional
        At most this many first-axis positions per ``emit`` call.
    stats : TiledStats, optional
        Counters to add to (``total_tiles`` is the caller's).
    progress : callable, optional
        ``progress(done, stats.total_tiles)`` after every batch, in windows
        (skipped ones count as done).
    cancel : threading.Event-like or callable, optional
        Checked before every batch; raises :class:`segloop.errors.Cancelled`.

    Returns
    -------
    k : int
        The number of classes.
    """
    stats = TiledStats(total_tiles=len(grid)) if stats is None else stats
    weight = gaussian_importance(grid.window) if weight is None else weight
    positions = list(grid.positions())
    blender: WindowBlender | None = None
    pending: list[tuple[Position, bool]] = []
    k = n_classes
    for i, pos in enumerate(positions):
        pending.append((pos, skip is None or not skip(pos)))
        n_run = sum(r for _, r in pending)
        if n_run < batch_size and len(pending) < 4 * batch_size and i + 1 < len(positions):
            continue
        if is_cancelled(cancel):
            raise Cancelled("segmentation was cancelled")
        todo = [p for p, r in pending if r]
        preds: dict[Position, np.ndarray] = {}
        if todo:
            batch = np.stack([read(p) for p in todo])
            out = np.asarray(predictor(batch), dtype=np.float32)
            if out.ndim != grid.ndim + 2 or out.shape[0] != len(todo) or out.shape[2:] != grid.window:
                raise InvalidImageError(
                    f"predictor returned shape {out.shape} for a batch of shape {batch.shape}")
            k = out.shape[1] if k is None else k
            preds = dict(zip(todo, out))
            stats.predicted_tiles += len(todo)
        elif k is None:
            # Every window so far skipped and K unknown: ask the predictor once.
            k = np.asarray(predictor(read(positions[0])[None])).shape[1]
        if blender is None:
            blender = WindowBlender(grid, k, weight, emit, band=band)
        for p, r in pending:
            blender.add(p, preds.get(p))
            stats.skipped_tiles += not r
        pending.clear()
        if progress is not None:
            progress(stats.predicted_tiles + stats.skipped_tiles, stats.total_tiles)
    blender.finish()
    return k


# ---------------------------------------------------------------------------
# Entry points: 2D / 2.5D tiles and 3D patches
# ---------------------------------------------------------------------------


def predict_tiled(
    predictor: Predictor,
    image,
    *,
    tile: int | tuple[int, int] = 256,
    overlap: float | int = 0.25,
    channel_axis: int | None = None,
    normalize: Callable[[np.ndarray], np.ndarray] | None = None,
    n_classes: int | None = None,
    batch_size: int = 4,
    multiple: int = 1,
    skip_background: bool | np.ndarray = False,
    grid: WindowGrid | None = None,
    context_slices: int = 1,
    z_range: tuple[int, int] | None = None,
    sink: BandSink | None = None,
    progress: ProgressCallback | None = None,
    cancel=None,
) -> np.ndarray | TiledStats:
    """Run ``predictor`` over ``image`` tile by tile and blend with Gaussian weights.

    Parameters
    ----------
    predictor : callable
        ``(B, C, th, tw) float32 -> (B, K, th, tw) float32`` class probabilities.
    image : (H, W), (H, W, C), (Z, H, W) or (Z, H, W, C) array-like
        Any array supporting basic slicing (ndarray, memmap, zarr).  Stacks are
        predicted slice by slice.  ``C`` must be last and ``channel_axis=-1``.
    tile : int or (int, int)
        Tile size in pixels (shrunk to the image, rounded up to ``multiple``).
    overlap : float or int
        Fraction of the tile (``0 <= overlap < 1``) or pixels.
    channel_axis : None or -1
        Whether the last axis holds channels.
    normalize : callable, optional
        Raw tile ``(th, tw[, C])`` -> ``(C', th, tw)`` float32.  Default: cast,
        channels first.  Statistics must be image-wide (see ``normalize.py``).
        With ``context_slices > 1`` it is called on whole planes.
    n_classes : int, optional
        ``K``; found from the first prediction when omitted.
    batch_size : int
        Tiles per predictor call.
    multiple : int
        Tile sizes are kept a multiple of this (the network's divisor).
    skip_background : bool or (h, w) bool ndarray
        ``True``: compute a tissue mask (RGB only) and skip tiles with no
        tissue; an array: use it as the mask (its stride is inferred).  Pixels
        no predicted tile covers get probability 1 for class 0.
    grid : WindowGrid, optional
        Explicit 2D tile positions over ``(H, W)`` (e.g. to reproduce another
        tool's grid); by default tiles are spread evenly, as nnU-Net does.
    context_slices : int
        Odd ``k``.  ``1``: plain 2D.  ``k > 1`` (2.5D): the predictor gets
        ``k * C'`` channels per tile, slice-major - the normalized planes
        ``z - k//2 .. z + k//2`` in that order, each with its ``C'`` channels -
        with plane indices clamped to the stack (edge replicate; a 2D image is
        its own neighbour).  Each plane is read and normalized once (a ring of
        ``k`` normalized planes, ``k * C' * H * W`` float32, is kept).
    z_range : (z0, z1), optional
        Predict only planes ``z0 .. z1 - 1`` of a stack (2.5D still reads
        their neighbours outside the range).  Default: every plane.
    sink : callable, optional
        ``sink(z, y0, y1, probs)`` receives each finished band of rows, in
        order, as ``(K, y1 - y0, W)`` float32; ``z`` is the plane's index in
        the stack (0 for a 2D image).  When given, nothing image-sized is
        allocated here and a :class:`TiledStats` is returned.
    progress : callable, optional
        ``progress(done, total)`` in tiles (skipped tiles count as done).
    cancel : threading.Event-like or callable, optional
        Checked before every batch; when set, raises :class:`segloop.errors.Cancelled`.

    Returns
    -------
    probs : (K, H, W) or (Z', K, H, W) float32 ndarray
        When ``sink`` is None (``Z' = z1 - z0``).
    stats : TiledStats
        When ``sink`` is given.
    """
    shape = tuple(image.shape)
    spatial_ndim = len(shape) - (0 if channel_axis is None else 1)
    if channel_axis not in (None, -1):
        raise InvalidImageError("channel_axis must be None or -1 (channels last)")
    if spatial_ndim not in (2, 3):
        raise InvalidImageError(
            f"expected (H, W[, C]) or (Z, H, W[, C]) image, got shape {shape} with channel_axis={channel_axis}")
    k_ctx = int(context_slices)
    if k_ctx < 1 or k_ctx % 2 == 0:
        raise InvalidImageError(f"context_slices must be an odd integer >= 1, got {context_slices!r}")
    stack = spatial_ndim == 3
    n_z = shape[0] if stack else 1
    height, width = (shape[1], shape[2]) if stack else (shape[0], shape[1])
    if min(height, width) < 1 or n_z < 1:
        raise InvalidImageError(f"image has an empty axis: shape {shape}")
    z0, z1 = check_z_range(z_range, n_z, stack)
    if grid is None:
        grid = WindowGrid.build((height, width), window=tile, overlap=overlap, multiple=multiple)
    elif grid.shape != (height, width):
        raise InvalidImageError(f"grid is for {'x'.join(map(str, grid.shape))}, the image is {height}x{width}")
    th, tw = grid.window
    weight = gaussian_importance((th, tw))
    half = k_ctx // 2
    ring = _PlaneCache(image, stack=stack, channel_axis=channel_axis, normalize=normalize) if k_ctx > 1 else None

    full = None
    if sink is None:
        def sink(z, y0, y1, probs):  # noqa: F811 - collects into one array
            nonlocal full
            if full is None:
                full = np.zeros(((z1 - z0,) if stack else ()) + (probs.shape[0], height, width), np.float32)
            (full[z - z0] if stack else full)[:, y0:y1] = probs

    stats = TiledStats(total_tiles=len(grid) * (z1 - z0))
    k = n_classes
    for z in range(z0, z1):
        # 2.5D reads planes through the ring only (a zarr plane read is real I/O); the raw plane is
        # needed for 2D tiles and for the tissue mask.
        needs_plane = ring is None or (not isinstance(skip_background, np.ndarray) and bool(skip_background)
                                       and channel_axis is not None)
        plane = (image[z] if stack else image) if needs_plane else None
        if ring is not None:
            ring.release_below(z - half)

            def read(pos, z=z):
                y, x = pos
                parts = [ring.get(z + d)[:, y:y + th, x:x + tw] for d in range(-half, half + 1)]
                return _pad_to(np.concatenate(parts, axis=0), (th, tw))
        else:
            def read(pos, plane=plane):
                return _read_tile(plane, *pos, th, tw, channel_axis, normalize)
        skip_mask, stride = None, 1
        if isinstance(skip_background, np.ndarray):
            skip_mask = skip_background
            stride = max(1, math.ceil(height / skip_mask.shape[0]))
        elif skip_background and channel_axis is not None:
            skip_mask, stride = tissue_mask(plane, channel_axis=channel_axis)
        skip = None
        if skip_mask is not None:
            def skip(pos, mask=skip_mask, stride=stride):
                y, x = pos
                return not mask[y // stride:(y + th) // stride + 1, x // stride:(x + tw) // stride + 1].any()
        k = sliding_window(predictor, grid, read, emit=lambda y0, y1, p, z=z: sink(z, y0, y1, p), weight=weight,
                           n_classes=k, batch_size=batch_size, skip=skip, stats=stats, progress=progress,
                           cancel=cancel)

    if full is not None:
        return full
    return stats


def predict_tiled_3d(
    predictor: Predictor,
    volume,
    *,
    patch: int | tuple[int, int, int] = 96,
    overlap: float | int = 0.25,
    channel_axis: int | None = None,
    normalize: Callable[[np.ndarray], np.ndarray] | None = None,
    n_classes: int | None = None,
    batch_size: int = 1,
    multiple: int = 1,
    z_range: tuple[int, int] | None = None,
    grid: WindowGrid | None = None,
    importance: np.ndarray | None = None,
    sink: BandSink | None = None,
    progress: ProgressCallback | None = None,
    cancel=None,
) -> np.ndarray | TiledStats:
    """Run a 3D ``predictor`` over ``volume`` patch by patch with 3D Gaussian blending.

    Memory is bounded by the patch depth, not the volume: patches are visited
    in Z order and accumulated into ``(K, pz, Y, X)`` and ``(pz, Y, X)``
    float32 buffers (a ring of planes); each plane is final once the next Z
    position of patches starts, and is then handed to ``sink`` as a whole
    plane.  Patches are read and normalized one batch at a time (overlaps are
    normalized again: cheap next to the network, and nothing else is held).

    Parameters
    ----------
    predictor : callable
        ``(B, C, pz, py, px) float32 -> (B, K, pz, py, px) float32`` probabilities.
    volume : (Z, Y, X) or (Z, Y, X, C) array-like
        Anything with ``shape`` and basic slicing (ndarray, memmap, zarr).
    patch : int or (pz, py, px)
        Patch size in voxels; rounded up to ``multiple`` and shrunk to the
        volume (rounded up, so volumes smaller than a patch are padded:
        reflect, or edge where the volume is too thin).
    overlap : float or int
        Fraction of the patch in each axis (``0 <= overlap <= 0.9``) or voxels.
    channel_axis : None or -1
    normalize : callable, optional
        Raw patch ``(dz, py, px[, C])`` -> ``(dz, C', py, px)`` float32 with
        image-wide statistics (a :class:`~segloop.core.inference.normalize.Normalizer`
        keeps leading axes).  Default: cast, channels first.
    n_classes : int, optional
        ``K``; found from the first prediction when omitted.
    batch_size : int
        Patches per predictor call.
    multiple : int
        The network's divisor.
    z_range : (z0, z1), optional
        Emit only planes ``z0 .. z1 - 1``; patches cover them with about half
        a patch depth of context on each side (see :meth:`WindowGrid.build`).
    grid : WindowGrid, optional
        Explicit 3D patch positions over ``(Z, Y, X)``, its ``span`` the
        planes to emit (overrides ``patch``/``overlap``/``z_range``).
    importance : (pz, py, px) ndarray, optional
        Positive blending weights of one patch; default
        :func:`gaussian_importance` of the patch (nnU-Net's).  Give another
        tool's map (e.g. MONAI's ``compute_importance_map``) to reproduce it.
    sink : callable, optional
        ``sink(z, 0, Y, probs)`` receives each finished plane, in Z order, as
        ``(K, Y, X)`` float32: the same interface as :func:`predict_tiled`'s
        band sink, one whole plane per call.
    progress : callable, optional
        ``progress(done, total)`` in patches.
    cancel : threading.Event-like or callable, optional
        Checked before every batch; raises :class:`segloop.errors.Cancelled`.

    Returns
    -------
    probs : (K, Z', Y, X) float32 ndarray
        When ``sink`` is None (``Z' = z1 - z0``); for tests and small volumes.
    stats : TiledStats
        When ``sink`` is given (tiles = patches).
    """
    shape = tuple(volume.shape)
    if channel_axis not in (None, -1):
        raise InvalidImageError("channel_axis must be None or -1 (channels last)")
    spatial = shape if channel_axis is None else shape[:-1]
    if len(spatial) != 3:
        raise InvalidImageError(
            f"3D inference needs a (Z, Y, X[, C]) volume, got shape {shape} with channel_axis={channel_axis}")
    if min(spatial) < 1:
        raise InvalidImageError(f"volume has an empty axis: shape {shape}")
    if int(batch_size) < 1:
        raise InvalidImageError(f"batch_size (--batch) must be at least 1, got {batch_size}")
    if grid is None:
        grid = WindowGrid.build(spatial, window=patch, overlap=overlap, multiple=multiple, span=z_range)
    elif grid.shape != spatial:
        raise InvalidImageError(f"grid is for a {grid.shape} volume, the volume is {spatial}")
    z0, z1 = grid.wanted
    pz, py, px = grid.window
    if importance is None:
        weight = gaussian_importance(grid.window)
    else:
        weight = np.ascontiguousarray(importance, dtype=np.float32)
        if weight.shape != grid.window or not (weight > 0).all():
            raise InvalidImageError(f"importance must be a positive {grid.window} array (the patch), "
                                    f"got shape {weight.shape}")

    full = None
    if sink is None:
        def sink(z, y0, y1, probs):  # noqa: F811 - collects into one array
            nonlocal full
            if full is None:
                full = np.zeros((probs.shape[0], z1 - z0) + spatial[1:], np.float32)
            full[:, z - z0, y0:y1] = probs

    def read(pos: Position) -> np.ndarray:
        """Read and normalize one patch to (C', pz, py, px), padding past the volume's end."""
        z, y, x = pos
        raw = np.asarray(volume[z:z + pz, y:y + py, x:x + px])
        if normalize is not None:
            t = np.moveaxis(np.asarray(normalize(raw), dtype=np.float32), 1, 0)   # (dz, C', ..) -> (C', dz, ..)
        else:
            t = raw.astype(np.float32, copy=False)
            t = t[None] if channel_axis is None else np.moveaxis(t, -1, 0)
        return _pad_to(t, grid.window)

    def emit(a0: int, a1: int, probs: np.ndarray) -> None:
        for i, z in enumerate(range(a0, a1)):               # whole planes, one per sink call
            sink(z, 0, spatial[1], probs[:, i])

    stats = TiledStats(total_tiles=len(grid))
    sliding_window(predictor, grid, read, emit=emit, weight=weight, n_classes=n_classes,
                   batch_size=int(batch_size), band=1, stats=stats, progress=progress, cancel=cancel)
    if full is not None:
        return full
    return stats
