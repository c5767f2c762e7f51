"""Tiled inference with Gaussian blending and bounded memory.

The predictor is just a callable (MONAI's inferer pattern): it takes a batch of
normalized tiles ``(B, C, th, tw)`` float32 and returns class probabilities
``(B, K, th, tw)``.  This module knows nothing about the network.

Memory stays bounded: tiles are visited row by row, probabilities are
accumulated only for the band of rows that later tiles can still touch, and
each finished band is handed to a *sink* at once (which turns it into labels).
Only when no sink is given is a full ``(K, H, W)`` probability array built.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from segloop.errors import Cancelled, InvalidImageError

__all__ = [
    "Predictor",
    "BandSink",
    "TileGrid",
    "gaussian_importance",
    "predict_tiled",
    "tile_positions",
    "tissue_mask",
]

Predictor = Callable[[np.ndarray], np.ndarray]
ProgressCallback = Callable[[int, int], None]


class BandSink(Protocol):
    """Receives finished rows: ``sink(z, y0, y1, probs)`` with ``probs (K, y1-y0, W)``."""

    def __call__(self, z: int, y0: int, y1: int, probs: np.ndarray) -> None: ...


def _is_cancelled(cancel) -> bool:
    if cancel is None:
        return False
    if callable(cancel) and not hasattr(cancel, "is_set"):
        return bool(cancel())
    return bool(cancel.is_set())


def tile_positions(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles covering ``[0, length)``, evenly spread.

    The first tile starts at 0, the last ends at ``length`` (when
    ``length >= tile``), and neighbours overlap by at least ``overlap`` pixels.
    """
    if length <= tile:
        return [0]
    step = max(tile - overlap, 1)
    n = math.ceil((length - tile) / step) + 1
    if n == 1:
        return [0]
    return sorted({round(i * (length - tile) / (n - 1)) for i in range(n)})


def gaussian_importance(shape: tuple[int, int], *, sigma_scale: float = 1 / 8) -> np.ndarray:
    """nnU-Net's Gaussian importance map: peak 1 at the centre, no zeros.

    Parameters
    ----------
    shape : (th, tw)
        Tile size in pixels.
    sigma_scale : float
        sigma = tile size * sigma_scale in each axis (nnU-Net uses 1/8).

    Returns
    -------
    weights : (th, tw) float32 ndarray
    """
    axes = []
    for n in shape:
        sigma = max(n * sigma_scale, 1e-3)
        x = np.arange(n, dtype=np.float64) - (n - 1) / 2
        axes.append(np.exp(-0.5 * (x / sigma) ** 2))
    g = np.outer(axes[0], axes[1])
    g /= g.max()
    smallest = g[g > 0].min()
    g[g == 0] = smallest
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


@dataclass(frozen=True)
class TileGrid:
    """Where tiles go on one 2D plane."""

    height: int
    width: int
    tile: tuple[int, int]
    ys: tuple[int, ...]
    xs: tuple[int, ...]

    @classmethod
    def build(cls, height: int, width: int, *, tile: int | tuple[int, int], overlap: float | int,
              multiple: int = 1) -> TileGrid:
        th, tw = (tile, tile) if isinstance(tile, int) else tuple(tile)
        ov = _overlap_px(overlap, min(th, tw))
        # Tiles are a multiple of the network's divisor (so it never pads), and
        # never much larger than the image: shrink to it, rounded up.
        th = min(_round_up(th, multiple), _round_up(height, multiple))
        tw = min(_round_up(tw, multiple), _round_up(width, multiple))
        ov = min(ov, min(th, tw) - 1)          # a pixel overlap may exceed a shrunken tile
        return cls(height, width, (th, tw), tuple(tile_positions(height, th, ov)),
                   tuple(tile_positions(width, tw, ov)))

    def __len__(self) -> int:
        return len(self.ys) * len(self.xs)


def _round_up(n: int, m: int) -> int:
    return max(m, int(math.ceil(n / m) * m))


def _overlap_px(overlap: float | int, tile: int) -> int:
    """Overlap in pixels: a float is a fraction of the tile in [0, 0.9], an int is pixels."""
    if isinstance(overlap, float) or isinstance(overlap, np.floating):
        if not 0 <= overlap <= 0.9:
            raise InvalidImageError(f"overlap {overlap!r} must be a fraction of the tile in [0, 0.9]"
                                    " (or an int number of pixels)")
        return int(round(overlap * tile))
    ov = int(overlap)
    if ov < 0 or ov >= tile:
        raise InvalidImageError(f"overlap {overlap!r} px must be in [0, tile size {tile})")
    return ov


def _read_tile(image, y: int, x: int, th: int, tw: int, channel_axis: int | None,
               normalize: Callable[[np.ndarray], np.ndarray] | None) -> np.ndarray:
    """Read, normalize and reflect-pad one tile to (C, th, tw) float32."""
    raw = np.asarray(image[y:y + th, x:x + tw])
    if normalize is not None:
        t = normalize(raw)
    else:
        t = raw.astype(np.float32, copy=False)
        t = t[None] if channel_axis is None else np.moveaxis(t, -1, 0)
    t = np.asarray(t, dtype=np.float32)
    ph, pw = th - t.shape[1], tw - t.shape[2]
    if ph or pw:
        mode = "reflect" if (t.shape[1] > ph and t.shape[2] > pw) else "edge"
        t = np.pad(t, ((0, 0), (0, ph), (0, pw)), mode=mode)
    return t


def _tiles(grid: TileGrid, skip: np.ndarray | None, stride: int) -> Iterator[tuple[int, int, bool]]:
    th, tw = grid.tile
    for y in grid.ys:
        for x in grid.xs:
            run = True
            if skip is not None:
                sub = skip[y // stride:(y + th) // stride + 1, x // stride:(x + tw) // stride + 1]
                run = bool(sub.any())
            yield y, x, run


class _BandBlender:
    """Gaussian-weighted accumulation for one plane, keeping only a band of rows.

    Tiles arrive row by row; when a new row of tiles starts, every image row
    above it is final, is normalized and handed to ``emit``, and the buffers
    shift up.  Buffers are ``(K, th, W)``: independent of the image height.
    """

    def __init__(self, grid: TileGrid, k: int, weight_tile: np.ndarray,
                 emit: Callable[[int, int, np.ndarray], None]):
        self.grid, self.weight_tile, self.emit = grid, weight_tile, emit
        th = grid.tile[0]
        self.acc = np.zeros((k, th, grid.width), np.float32)
        self.wsum = np.zeros((th, grid.width), np.float32)
        self.buf_y = grid.ys[0]      # first image row the buffers hold
        self.row = 0                 # index into grid.ys of the row being accumulated

    def _flush(self, upto: int) -> None:
        """Emit rows [buf_y, upto) and shift the buffers up by as many rows."""
        n = upto - self.buf_y
        if n <= 0:
            return
        th = self.grid.tile[0]
        w = self.wsum[:n]
        probs = self.acc[:, :n] / np.maximum(w, 1e-12)
        empty = w <= 0
        if empty.any():  # covered only by skipped tiles: background
            probs[:, empty] = 0.0
            probs[0, empty] = 1.0
        self.emit(self.buf_y, upto, probs)
        if n < th:
            self.acc[:, : th - n] = self.acc[:, n:].copy()
            self.wsum[: th - n] = self.wsum[n:].copy()
        self.acc[:, max(th - n, 0):] = 0
        self.wsum[max(th - n, 0):] = 0
        self.buf_y = upto

    def add(self, y: int, x: int, pred: np.ndarray | None) -> None:
        """Add one tile's prediction (None: a skipped tile) at (y, x)."""
        ys = self.grid.ys
        while ys[self.row] != y:        # a new row of tiles starts
            self.row += 1
            self._flush(ys[self.row])
        if pred is None:
            return
        th, tw = self.grid.tile
        h_eff, w_eff = min(th, self.grid.height - y), min(tw, self.grid.width - x)
        oy = y - self.buf_y
        wt = self.weight_tile[:h_eff, :w_eff]
        self.acc[:, oy:oy + h_eff, x:x + w_eff] += pred[:, :h_eff, :w_eff] * wt
        self.wsum[oy:oy + h_eff, x:x + w_eff] += wt

    def finish(self) -> None:
        """Emit everything left, down to the bottom of the plane."""
        while self.row + 1 < len(self.grid.ys):
            self.row += 1
            self._flush(self.grid.ys[self.row])
        self._flush(self.grid.height)


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
    grid: TileGrid | None = None,
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
    grid : TileGrid, optional
        Explicit tile positions (e.g. to reproduce another tool's grid);
        by default tiles are spread evenly, as nnU-Net does.
    sink : callable, optional
        ``sink(z, y0, y1, probs)`` receives each finished band of rows, in
        order, as ``(K, y1 - y0, W)`` float32.  When given, nothing image-sized
        is allocated here and a :class:`TiledStats` is returned.
    progress : callable, optional
        ``progress(done, total)`` in tiles (skipped tiles count as done).
    cancel : threading.Event-like or callable, optional
        Checked before every batch; when set, raises :class:`segloop.errors.Cancelled`.

    Returns
    -------
    probs : (K, H, W) or (Z, K, H, W) float32 ndarray
        When ``sink`` is None.
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
    stack = spatial_ndim == 3
    n_z = shape[0] if stack else 1
    height, width = (shape[1], shape[2]) if stack else (shape[0], shape[1])
    if min(height, width) < 1 or n_z < 1:
        raise InvalidImageError(f"image has an empty axis: shape {shape}")
    if grid is None:
        grid = TileGrid.build(height, width, tile=tile, overlap=overlap, multiple=multiple)
    elif (grid.height, grid.width) != (height, width):
        raise InvalidImageError(f"grid is for {grid.height}x{grid.width}, the image is {height}x{width}")
    th, tw = grid.tile
    weight_tile = gaussian_importance((th, tw))

    full = None
    if sink is None:
        def sink(z, y0, y1, probs):  # noqa: F811 - collects into one array
            nonlocal full
            if full is None:
                full = np.zeros(((n_z,) if stack else ()) + (probs.shape[0], height, width), np.float32)
            (full[z] if stack else full)[:, y0:y1] = probs

    stats = TiledStats(total_tiles=len(grid) * n_z)
    done = 0
    k = n_classes
    for z in range(n_z):
        plane = image[z] if stack else image
        skip_mask, stride = None, 1
        if isinstance(skip_background, np.ndarray):
            skip_mask = skip_background
            stride = max(1, math.ceil(height / skip_mask.shape[0]))
        elif skip_background and channel_axis is not None:
            skip_mask, stride = tissue_mask(plane, channel_axis=channel_axis)
        blender: _BandBlender | None = None
        pending: list[tuple[int, int, bool]] = []
        tiles = list(_tiles(grid, skip_mask, stride))
        for i, item in enumerate(tiles):
            pending.append(item)
            n_run = sum(r for _, _, r in pending)
            if n_run < batch_size and len(pending) < 4 * batch_size and i + 1 < len(tiles):
                continue
            if _is_cancelled(cancel):
                raise Cancelled("segmentation was cancelled")
            todo = [(y, x) for y, x, r in pending if r]
            preds: dict[tuple[int, int], np.ndarray] = {}
            if todo:
                batch = np.stack([_read_tile(plane, y, x, th, tw, channel_axis, normalize) for y, x in todo])
                out = np.asarray(predictor(batch), dtype=np.float32)
                if out.ndim != 4 or out.shape[0] != len(todo) or out.shape[2:] != (th, tw):
                    raise InvalidImageError(
                        f"predictor returned shape {out.shape} for a batch of shape {batch.shape}")
                k = out.shape[1] if k is None else k
                preds = {yx: out[j] for j, yx in enumerate(todo)}
                stats.predicted_tiles += len(todo)
            elif k is None:
                # Every tile so far skipped and K unknown: ask the predictor once.
                probe = _read_tile(plane, 0, 0, th, tw, channel_axis, normalize)[None]
                k = np.asarray(predictor(probe)).shape[1]
            if blender is None:
                blender = _BandBlender(grid, k, weight_tile, lambda y0, y1, p, z=z: sink(z, y0, y1, p))
            for y, x, r in pending:
                blender.add(y, x, preds.get((y, x)))
                stats.skipped_tiles += not r
            done += len(pending)
            pending.clear()
            if progress is not None:
                progress(done, stats.total_tiles)
        blender.finish()

    if full is not None:
        return full
    return stats


@dataclass
class TiledStats:
    """What a sink-driven :func:`predict_tiled` run did."""

    total_tiles: int = 0
    predicted_tiles: int = 0
    skipped_tiles: int = 0
