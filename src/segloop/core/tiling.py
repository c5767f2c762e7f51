"""Tiled inference with Gaussian blending and bounded memory: 2D, 2.5D and 3D.

The predictor is just a callable (MONAI's inferer pattern): it takes a batch of
normalized tiles ``(B, C, th, tw)`` (or 3D patches ``(B, C, pz, py, px)``)
float32 and returns class probabilities of the same spatial shape.  This
module knows nothing about the network.

Memory stays bounded: 2D tiles are visited row by row, probabilities are
accumulated only for the band of rows that later tiles can still touch, and
each finished band is handed to a *sink* at once (which turns it into labels).
3D patches are visited slab by slab along Z and finished whole planes are
handed to the same sink, so the accumulator holds at most one patch depth of
planes.  Only when no sink is given is a full probability array built.

* :func:`predict_tiled` - 2D tiles on one image or on every plane of a stack;
  with ``context_slices=k > 1`` (2.5D) each tile carries the ``k`` neighbouring
  planes as channels.
* :func:`predict_tiled_3d` - 3D patches over a ``(Z, Y, X[, C])`` volume.
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
    "PatchGrid",
    "TileGrid",
    "TiledStats",
    "check_z_range",
    "gaussian_importance",
    "predict_tiled",
    "predict_tiled_3d",
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
    grid : TileGrid, optional
        Explicit tile positions (e.g. to reproduce another tool's grid);
        by default tiles are spread evenly, as nnU-Net does.
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
        grid = TileGrid.build(height, width, tile=tile, overlap=overlap, multiple=multiple)
    elif (grid.height, grid.width) != (height, width):
        raise InvalidImageError(f"grid is for {grid.height}x{grid.width}, the image is {height}x{width}")
    th, tw = grid.tile
    weight_tile = gaussian_importance((th, tw))
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
    done = 0
    k = n_classes
    for z in range(z0, z1):
        # 2.5D reads planes through the ring only (a zarr plane read is real I/O); the raw plane is
        # needed for 2D tiles and for the tissue mask.
        needs_plane = ring is None or (not isinstance(skip_background, np.ndarray) and bool(skip_background)
                                       and channel_axis is not None)
        plane = (image[z] if stack else image) if needs_plane else None
        if ring is not None:
            ring.release_below(z - half)

            def read(y, x, z=z):
                parts = [ring.get(z + d)[:, y:y + th, x:x + tw] for d in range(-half, half + 1)]
                return _pad_to(np.concatenate(parts, axis=0), (th, tw))
        else:
            def read(y, x, plane=plane):
                return _read_tile(plane, y, x, th, tw, channel_axis, normalize)
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
                batch = np.stack([read(y, x) for y, x in todo])
                out = np.asarray(predictor(batch), dtype=np.float32)
                if out.ndim != 4 or out.shape[0] != len(todo) or out.shape[2:] != (th, tw):
                    raise InvalidImageError(
                        f"predictor returned shape {out.shape} for a batch of shape {batch.shape}")
                k = out.shape[1] if k is None else k
                preds = {yx: out[j] for j, yx in enumerate(todo)}
                stats.predicted_tiles += len(todo)
            elif k is None:
                # Every tile so far skipped and K unknown: ask the predictor once.
                k = np.asarray(predictor(read(0, 0)[None])).shape[1]
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


# ---------------------------------------------------------------------------
# 3D patches
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PatchGrid:
    """Where 3D patches go in a ``(Z, Y, X)`` volume.

    Attributes
    ----------
    shape : (Z, Y, X)
        The whole volume.
    patch : (pz, py, px)
        Patch size: a multiple of the network's divisor, never much larger
        than the volume (shrunk to it, rounded up; smaller volumes are padded).
    zs, ys, xs : tuple of int
        Patch start offsets, spread evenly (as :func:`tile_positions`).
        ``zs`` cover the planes ``z_range`` needs plus context.
    z_range : (z0, z1)
        Planes whose probabilities are wanted.
    """

    shape: tuple[int, int, int]
    patch: tuple[int, int, int]
    zs: tuple[int, ...]
    ys: tuple[int, ...]
    xs: tuple[int, ...]
    z_range: tuple[int, int]

    @classmethod
    def build(cls, shape: tuple[int, int, int], *, patch: int | tuple[int, int, int],
              overlap: float | int, multiple: int = 1, z_range: tuple[int, int] | None = None) -> PatchGrid:
        """Patch grid for ``shape``.

        Parameters
        ----------
        shape : (Z, Y, X)
        patch : int or (pz, py, px)
            Requested patch size (an int is a cube).
        overlap : float or int
            Fraction of the patch size in each axis, or voxels.
        multiple : int
            The network's divisor.
        z_range : (z0, z1), optional
            Only these planes are wanted: patches cover ``z0 - c .. z1 + c``
            with ``c = (pz - 1) // 2`` (clamped to the volume, and at least
            one patch depth), so every wanted plane sees context on both
            sides and a single plane costs one patch depth.
        """
        shape = tuple(int(n) for n in shape)
        if len(shape) != 3 or min(shape) < 1:
            raise InvalidImageError(f"a 3D patch grid needs a (Z, Y, X) shape, got {shape}")
        req = (int(patch),) * 3 if isinstance(patch, (int, np.integer)) else tuple(int(p) for p in patch)
        if len(req) != 3 or min(req) < 1:
            raise InvalidImageError(f"3D patch size must be an int or (pz, py, px), got {patch!r}")
        size = tuple(min(_round_up(p, multiple), _round_up(n, multiple)) for p, n in zip(req, shape))
        ovs = tuple(min(_overlap_px(overlap, p), p - 1) for p in size)
        z0, z1 = check_z_range(z_range, shape[0], True)
        pz = size[0]
        lo, hi = z0, z1
        if (z0, z1) != (0, shape[0]):
            c = (pz - 1) // 2
            lo, hi = max(0, z0 - c), min(shape[0], z1 + c)
            if hi - lo < pz:                       # at least one patch depth of context
                hi = min(shape[0], lo + pz)
                lo = max(0, hi - pz)
        zs = tuple(lo + p for p in tile_positions(hi - lo, pz, ovs[0]))
        return cls(shape, size, zs, tuple(tile_positions(shape[1], size[1], ovs[1])),
                   tuple(tile_positions(shape[2], size[2], ovs[2])), (z0, z1))

    def __len__(self) -> int:
        return len(self.zs) * len(self.ys) * len(self.xs)

    @property
    def z_end(self) -> int:
        """One past the last plane any patch covers."""
        return min(self.shape[0], self.zs[-1] + self.patch[0])


class _SlabBlender:
    """Gaussian-weighted accumulation of 3D patches, keeping one patch depth of planes.

    Patches arrive in Z order of their start plane.  The accumulators are a
    ring of ``pz`` planes ``(K, pz, Y, X)``: plane ``z`` lives in slot
    ``z % pz``.  When the next Z position starts, every plane above it is
    final: it is normalized, handed to ``emit(z, probs (K, Y, X))`` if it is
    in ``grid.z_range``, and its slot is cleared.
    """

    def __init__(self, grid: PatchGrid, k: int, weight: np.ndarray,
                 emit: Callable[[int, np.ndarray], None]):
        self.grid, self.weight, self.emit = grid, weight, emit
        pz = grid.patch[0]
        _, height, width = grid.shape
        self.acc = np.zeros((k, pz, height, width), np.float32)
        self.wsum = np.zeros((pz, height, width), np.float32)
        self.next_z = grid.zs[0]          # first plane not yet emitted
        self.row = 0

    def _flush(self, upto: int) -> None:
        pz = self.grid.patch[0]
        z0, z1 = self.grid.z_range
        for z in range(self.next_z, upto):
            s = z % pz
            if z0 <= z < z1:
                probs = self.acc[:, s] / np.maximum(self.wsum[s], 1e-12)
                self.emit(z, probs)
            self.acc[:, s] = 0
            self.wsum[s] = 0
        self.next_z = max(self.next_z, upto)

    def _slots(self, z: int, dz: int) -> list[tuple[slice, slice]]:
        """(ring slots, patch planes) pairs covering planes z .. z + dz - 1."""
        pz = self.grid.patch[0]
        s = z % pz
        first = min(dz, pz - s)
        parts = [(slice(s, s + first), slice(0, first))]
        if first < dz:
            parts.append((slice(0, dz - first), slice(first, dz)))
        return parts

    def add(self, z: int, y: int, x: int, pred: np.ndarray) -> None:
        """Add one patch's probabilities ``(K, pz, py, px)`` (modified in place) at (z, y, x)."""
        zs = self.grid.zs
        while zs[self.row] != z:
            self.row += 1
            self._flush(zs[self.row])
        pz, py, px = self.grid.patch
        depth, height, width = self.grid.shape
        dz, dy, dx = min(pz, depth - z), min(py, height - y), min(px, width - x)
        w = self.weight[:dz, :dy, :dx]
        p = pred[:, :dz, :dy, :dx]
        np.multiply(p, w, out=p)
        for slots, planes in self._slots(z, dz):
            self.acc[:, slots, y:y + dy, x:x + dx] += p[:, planes]
            self.wsum[slots, y:y + dy, x:x + dx] += w[planes]

    def finish(self) -> None:
        zs = self.grid.zs
        while self.row + 1 < len(zs):
            self.row += 1
            self._flush(zs[self.row])
        self._flush(self.grid.z_end)


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
    grid: PatchGrid | None = None,
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
        image-wide statistics (a :class:`~segloop.core.normalize.Normalizer`
        keeps leading axes).  Default: cast, channels first.
    n_classes : int, optional
        ``K``; found from the first prediction when omitted.
    batch_size : int
        Patches per predictor call.
    multiple : int
        The network's divisor.
    z_range : (z0, z1), optional
        Emit only planes ``z0 .. z1 - 1``; patches cover them with about half
        a patch depth of context on each side (see :meth:`PatchGrid.build`).
    grid : PatchGrid, optional
        Explicit patch positions (overrides ``patch``/``overlap``/``z_range``).
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
        raise InvalidImageError(f"batch_size must be at least 1, got {batch_size}")
    if grid is None:
        grid = PatchGrid.build(spatial, patch=patch, overlap=overlap, multiple=multiple, z_range=z_range)
    elif grid.shape != spatial:
        raise InvalidImageError(f"grid is for a {grid.shape} volume, the volume is {spatial}")
    z0, z1 = grid.z_range
    pz, py, px = grid.patch
    if importance is None:
        weight = gaussian_importance(grid.patch)
    else:
        weight = np.ascontiguousarray(importance, dtype=np.float32)
        if weight.shape != grid.patch or not (weight > 0).all():
            raise InvalidImageError(f"importance must be a positive {grid.patch} array (the patch), "
                                    f"got shape {weight.shape}")

    full = None
    if sink is None:
        def sink(z, y0, y1, probs):  # noqa: F811 - collects into one array
            nonlocal full
            if full is None:
                full = np.zeros((probs.shape[0], z1 - z0) + spatial[1:], np.float32)
            full[:, z - z0, y0:y1] = probs

    def read(z: int, y: int, x: int) -> np.ndarray:
        """Read and normalize one patch to (C', pz, py, px), padding past the volume's end."""
        raw = np.asarray(volume[z:z + pz, y:y + py, x:x + px])
        if normalize is not None:
            t = np.moveaxis(np.asarray(normalize(raw), dtype=np.float32), 1, 0)   # (dz, C', ..) -> (C', dz, ..)
        else:
            t = raw.astype(np.float32, copy=False)
            t = t[None] if channel_axis is None else np.moveaxis(t, -1, 0)
        return _pad_to(t, grid.patch)

    positions = [(z, y, x) for z in grid.zs for y in grid.ys for x in grid.xs]
    stats = TiledStats(total_tiles=len(positions))
    blender: _SlabBlender | None = None
    k = n_classes
    for start in range(0, len(positions), int(batch_size)):
        if _is_cancelled(cancel):
            raise Cancelled("segmentation was cancelled")
        chunk = positions[start:start + int(batch_size)]
        batch = np.stack([read(*pos) for pos in chunk])
        out = np.asarray(predictor(batch), dtype=np.float32)
        if out.ndim != 5 or out.shape[0] != len(chunk) or out.shape[2:] != grid.patch:
            raise InvalidImageError(f"predictor returned shape {out.shape} for a batch of shape {batch.shape}")
        if not out.flags.writeable:
            out = out.copy()
        k = out.shape[1] if k is None else k
        if blender is None:
            blender = _SlabBlender(grid, k, weight, lambda z, p: sink(z, 0, spatial[1], p))
        for pos, pred in zip(chunk, out):
            blender.add(*pos, pred)
        stats.predicted_tiles += len(chunk)
        if progress is not None:
            progress(stats.predicted_tiles, stats.total_tiles)
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
