"""Run a model at the pixel size it was trained at: resample the image in, map the results back.

Nuclei are 5-10 µm whatever the scanner, so a model trained at 0.25 µm/px (40x) sees nuclei of
20-40 pixels and misses them at 0.5 µm/px (20x), where they are half as wide.  When both the
model's pixel size (``ModelSpec.pixel_size``) and the image's are known and differ by more than
:data:`~segloop.core.formats.pixel_size.TOLERANCE` (5 %) in some axis,
:meth:`~segloop.core.inference.model.Model.predict`:

1. reads the image through :class:`ResampledImage`, a lazy view of it on the model's pixel grid
   (bilinear; Gaussian anti-aliasing first where it shrinks, ``sigma = (1 / factor - 1) / 2``
   source pixels as :func:`skimage.transform.resize` does).  Only the tiles the sliding window
   asks for are resampled, each from a source window with enough margin that the result is
   the same as resampling the whole image at once: no resampled copy of the image is made;
2. runs the network and assembles the labels on the model's grid (post-processing parameters
   such as ``min_size`` are in the model's pixels);
3. maps the labels back to the image's grid by nearest neighbour (instance ids kept, band by
   band: :func:`map_labels`) and streams the blended probabilities back bilinearly
   (:class:`BandRegridder`), so the uncertainty map, ``probabilities`` and
   ``probability_sink`` are on the image's grid too.

Pixel grids are centre-aligned: pixel ``i`` of the target grid sits at source coordinate
``(i + 0.5) * n_src / n_dst - 0.5``; the target grid has ``round(n * factor)`` pixels,
``factor = image pixel size / model pixel size`` (model pixels per image pixel).

An image whose pixel size is unknown runs at its own resolution, with one
:class:`PixelSizeWarning` that says what the model expects and how to give the pixel size.  A
model without a pixel size changes nothing and says nothing.  :func:`resample_image` and
:func:`resample_labels` do the same on whole arrays (the trainer's samples).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from segloop.core.formats.pixel_size import check_pixel_size, differs, format_pixel_size
from segloop.errors import InvalidPixelSizeError

__all__ = ["MAX_FACTOR", "BandRegridder", "PixelSizeWarning", "RescalePlan", "ResampledImage", "grid_shape",
           "map_labels", "pixel_size_record", "plan_rescale", "resample_image", "resample_labels", "unknown_pixel_size_notice"]

#: Resampling by more than this factor (either way) is refused: the pixel size is surely wrong
#: (a 72 dpi tag read as 352 µm/px, mm given for µm).
MAX_FACTOR = 16.0


class PixelSizeWarning(UserWarning):
    """The model knows its pixel size but the image's is unknown: it runs at the image's own resolution."""


def unknown_pixel_size_notice(spec) -> str:
    """The one-line notice for an image of unknown pixel size given to a model that has one."""
    return (f"{spec.name} expects {format_pixel_size(spec.pixel_size)} µm/px but this image's pixel size is "
            "unknown, so it runs at the image's own resolution; give the pixel size (--pixel-size UM, the "
            "'Pixel size (µm)' field, pixel_size=) to have it rescaled")


@dataclass(frozen=True)
class RescalePlan:
    """How an image is resampled to a model's pixel size.

    Attributes
    ----------
    image_pixel_size, model_pixel_size : (float, float)
        µm per pixel, ``(y, x)``.
    image_shape, model_shape : (int, int)
        ``(H, W)`` of the image and of its resampled grid.
    """

    image_pixel_size: tuple[float, float]
    model_pixel_size: tuple[float, float]
    image_shape: tuple[int, int]
    model_shape: tuple[int, int]

    @property
    def factor(self) -> tuple[float, float]:
        """Model pixels per image pixel, ``(y, x)``: above 1 the image is enlarged."""
        return tuple(i / m for i, m in zip(self.image_pixel_size, self.model_pixel_size, strict=True))


def plan_rescale(spec, pixel_size, shape: tuple[int, int], *, source: str = "pixel_size (--pixel-size)",
                 stacklevel: int = 2) -> RescalePlan | None:
    """Whether and how to resample an image of ``shape`` (H, W) and ``pixel_size`` for ``spec``.

    Parameters
    ----------
    spec : ModelSpec
    pixel_size : float, (float, float) or None
        The image's µm per pixel; None = unknown.
    shape : (H, W)
    source : str
        Names the value in errors.
    stacklevel : int
        Of the :class:`PixelSizeWarning`, for the caller's caller.

    Returns
    -------
    RescalePlan or None
        None when the model has no pixel size, the image's is unknown (with one
        :class:`PixelSizeWarning`) or within 5 % of the model's.

    Raises
    ------
    InvalidPixelSizeError
        ``pixel_size`` is not one or two positive, finite numbers, or is more than
        :data:`MAX_FACTOR` times larger or smaller than the model's.
    """
    image_px = None if pixel_size is None else check_pixel_size(pixel_size, source=source)
    model_px = getattr(spec, "pixel_size", None)
    if model_px is None:
        return None
    model_px = (float(model_px[0]), float(model_px[-1]))
    if image_px is None:
        warnings.warn(unknown_pixel_size_notice(spec), PixelSizeWarning, stacklevel=stacklevel + 1)
        return None
    if not differs(image_px, model_px):
        return None
    factor = [i / m for i, m in zip(image_px, model_px, strict=True)]
    if any(not 1 / MAX_FACTOR <= f <= MAX_FACTOR for f in factor):
        worst = max(factor, key=lambda f: max(f, 1 / f))
        raise InvalidPixelSizeError(
            f"{source}: the image's pixel size {format_pixel_size(image_px)} µm/px is "
            f"{max(worst, 1 / worst):.0f}x {'larger' if worst > 1 else 'smaller'} than {spec.name}'s "
            f"{format_pixel_size(model_px)} µm/px (resampling by more than {MAX_FACTOR:.0f}x is refused); check "
            "the pixel size (a 72 dpi tag reads as 352.8 µm/px) and give the right one")
    return RescalePlan(image_px, model_px, (int(shape[0]), int(shape[1])), grid_shape(shape, factor))


def pixel_size_record(spec, pixel_size, plan: RescalePlan | None) -> dict[str, Any]:
    """What a run's provenance says about pixel sizes (JSON-able)."""
    image_px = None if pixel_size is None else list(check_pixel_size(pixel_size))
    model_px = None if getattr(spec, "pixel_size", None) is None else [float(v) for v in spec.pixel_size]
    rec: dict[str, Any] = {"image": image_px, "model": model_px, "resampled": plan is not None,
                           "scale": [1.0, 1.0]}
    if plan is not None:
        rec.update(scale=[round(f, 6) for f in plan.factor], model_grid=list(plan.model_shape),
                   method="image bilinear (anti-aliased when shrinking); labels back by nearest neighbour, "
                          "probabilities bilinear")
    elif model_px is not None and image_px is None:
        rec["note"] = "image pixel size unknown: run at the image's own resolution"
    return rec


# ---------------------------------------------------------------------------- grids


def _source_coords(n_src: int, n_dst: int, idx: np.ndarray) -> np.ndarray:
    """Source coordinates of target pixels ``idx`` (centre-aligned grids)."""
    return (np.asarray(idx, np.float64) + 0.5) * (n_src / n_dst) - 0.5


def _linear(coords: np.ndarray, n_src: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Neighbours ``i0 <= c <= i1`` and the weight of ``i1`` for linear interpolation (edges clamped)."""
    c = np.clip(coords, 0, n_src - 1)
    i0 = np.floor(c).astype(np.intp)
    i1 = np.minimum(i0 + 1, n_src - 1)
    return i0, i1, c - i0


def _nearest(n_src: int, n_dst: int, idx: np.ndarray) -> np.ndarray:
    """Nearest source pixel of target pixels ``idx``."""
    return np.clip(np.floor(_source_coords(n_src, n_dst, idx) + 0.5), 0, n_src - 1).astype(np.intp)


def _cast(x: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Interpolated values back to the image's dtype (integers rounded and clipped)."""
    if dtype.kind in "ui":
        info = np.iinfo(dtype)
        return np.clip(np.rint(x), info.min, info.max).astype(dtype)
    if dtype.kind == "b":
        return x >= 0.5
    return x.astype(dtype, copy=False)


def _work_dtype(dtype: np.dtype) -> type:
    return np.float64 if (dtype.kind in "ui" and dtype.itemsize >= 4) or dtype == np.float64 else np.float32


class ResampledImage:
    """A lazy view of an image on another pixel grid: what :meth:`Model.predict` reads when it rescales.

    Anything with ``shape``, ``dtype`` and basic slicing (ndarray, memmap, dask, zarr) works as
    the source; only the windows asked for are read.  Reads with step 1 (tiles, planes) are
    bilinear, after a Gaussian anti-aliasing filter along each axis that shrinks; their value is
    the same as that of the whole image resampled at once.  Strided reads (``view[::s, ::s]``,
    the tissue mask) take the nearest source pixel.  Values come back in the source's dtype.

    Parameters
    ----------
    image : (H, W[, C]) or (Z, H, W[, C]) array-like
    shape : (H', W')
        The grid to present.
    stack : bool
        Whether ``image`` has a leading Z axis (passed through unchanged).
    channel_axis : None or -1
    """

    def __init__(self, image, shape: tuple[int, int], *, stack: bool, channel_axis: int | None):
        self.source = image
        self.stack = bool(stack)
        self.channel_axis = channel_axis
        src = tuple(int(n) for n in image.shape)
        self.source_yx = src[1:3] if self.stack else src[:2]
        self.shape_yx = (int(shape[0]), int(shape[1]))
        self.shape = (src[:1] if self.stack else ()) + self.shape_yx + (src[-1:] if channel_axis is not None else ())
        self.dtype = np.dtype(image.dtype)
        self.ndim = len(self.shape)
        self._sigma = [max(0.0, (s / d - 1.0) / 2.0) for s, d in zip(self.source_yx, self.shape_yx, strict=True)]

    def __len__(self) -> int:
        return self.shape[0]

    def __array__(self, dtype=None, copy=None):
        out = self[(slice(None),) * self.ndim]
        return out if dtype is None else out.astype(dtype, copy=False)

    def __getitem__(self, key):
        key = _full_key(key, self.ndim)
        lead: tuple = ()
        if self.stack:
            zk, key = key[0], key[1:]
            if _is_int(zk):                      # one plane: a lazy view of it
                plane = ResampledImage(self.source[int(zk)], self.shape_yx, stack=False,
                                       channel_axis=self.channel_axis)
                return plane if all(k == slice(None) for k in key) else plane[key]
            lead = (zk,)
        yk, xk, *rest = key
        ay = len(lead)
        plans, src_keys, squeeze = [], [], []
        for a, (k, n_dst, n_src) in enumerate(zip((yk, xk), self.shape_yx, self.source_yx, strict=True)):
            if _is_int(k):
                i = int(k) + (n_dst if k < 0 else 0)
                if not 0 <= i < n_dst:
                    raise IndexError(f"index {int(k)} is out of bounds for an axis of size {n_dst}")
                idx, step = np.array([i]), 1
                squeeze.append(ay + a)
            elif isinstance(k, slice):
                start, stop, step = k.indices(n_dst)
                if step < 1:
                    raise IndexError("a resampled image is read with positive steps only")
                idx = np.arange(start, stop, step)
            else:
                raise TypeError(f"a resampled image takes ints and slices, not {type(k).__name__}")
            if idx.size == 0:
                shape = list(self.shape)
                shape[ay + a] = 0
                return np.empty(shape, self.dtype)[(*lead, slice(None), slice(None), *rest)]
            if step == 1:
                sigma = self._sigma[a]
                margin = int(4.0 * sigma + 0.5) + 1 if sigma > 0 else 0
                i0, i1, w = _linear(_source_coords(n_src, n_dst, idx), n_src)
                lo, hi = max(0, int(i0[0]) - margin), min(n_src, int(i1[-1]) + 1 + margin)
                src_keys.append(slice(lo, hi))
                plans.append(("linear", i0 - lo, i1 - lo, w, sigma))
            else:
                near = _nearest(n_src, n_dst, idx)
                t = max(1, int(step * n_src / n_dst))
                lo, hi = int(near[0]), int(near[-1]) + 1
                src_keys.append(slice(lo, hi, t))
                count = -(-(hi - lo) // t)
                plans.append(("nearest", np.clip(np.floor((near - lo) / t + 0.5).astype(np.intp), 0, count - 1)))
        block = np.asarray(self.source[(*lead, *src_keys, *rest)])
        x = block.astype(_work_dtype(self.dtype), copy=False)
        for a, plan in enumerate(plans):
            axis = ay + a
            if plan[0] == "nearest":
                x = np.take(x, plan[1], axis=axis)
                continue
            _, i0, i1, w, sigma = plan
            if sigma > 0:
                from scipy.ndimage import gaussian_filter1d

                x = gaussian_filter1d(x, sigma, axis=axis, mode="nearest", truncate=4.0)
            shape = [1] * x.ndim
            shape[axis] = -1
            w = w.reshape(shape).astype(x.dtype)
            x = np.take(x, i0, axis=axis) * (1 - w) + np.take(x, i1, axis=axis) * w
        if squeeze:
            x = x.reshape([n for i, n in enumerate(x.shape) if i not in squeeze])
        return _cast(x, self.dtype)


def _is_int(k) -> bool:
    return isinstance(k, int | np.integer) and not isinstance(k, bool)


def _full_key(key, ndim: int) -> tuple:
    """``key`` as a tuple of ``ndim`` ints / slices (``...`` expanded, missing axes full)."""
    key = key if isinstance(key, tuple) else (key,)
    if any(k is Ellipsis for k in key):
        i = next(i for i, k in enumerate(key) if k is Ellipsis)
        key = key[:i] + (slice(None),) * (ndim - len(key) + 1) + key[i + 1:]
    if len(key) > ndim:
        raise IndexError(f"too many indices ({len(key)}) for a {ndim}-D resampled image")
    for k in key:
        if not (_is_int(k) or isinstance(k, slice)):
            raise TypeError(f"a resampled image takes ints and slices, not {type(k).__name__}")
    return key + (slice(None),) * (ndim - len(key))


# ---------------------------------------------------------------------------- back to the image's grid


class BandRegridder:
    """A band sink that resamples probability bands from the model's grid to the image's (bilinear).

    Bands ``sink(z, y0, y1, probs (K, y1 - y0, W'))`` arrive in row order, plane by plane, as
    the sliding window emits them; every row of the image's grid whose two neighbouring model
    rows have arrived is interpolated and passed on as ``sink(z, r0, r1, (K, r1 - r0, W))``.
    Only the model rows still needed by later image rows are kept (one or two).

    Parameters
    ----------
    sink : callable
        Receives the bands on the image's grid (e.g. a
        :class:`~segloop.core.inference.postprocess.LabelAssembly` without labels).
    model_shape, image_shape : (H', W'), (H, W)
    """

    def __init__(self, sink, *, model_shape: tuple[int, int], image_shape: tuple[int, int]):
        self.sink = sink
        (self.src_h, src_w), (self.dst_h, dst_w) = model_shape, image_shape
        self.i0y, self.i1y, wy = _linear(_source_coords(self.src_h, self.dst_h, np.arange(self.dst_h)), self.src_h)
        self.wy = wy.astype(np.float32)
        self.i0x, self.i1x, wx = _linear(_source_coords(src_w, dst_w, np.arange(dst_w)), src_w)
        self.wx = wx.astype(np.float32)
        self.z: int | None = None
        self.next = 0
        self.buf: np.ndarray | None = None
        self.buf0 = 0

    def __call__(self, z: int, y0: int, y1: int, probs: np.ndarray) -> None:
        if z != self.z:
            self.z, self.next, self.buf, self.buf0 = z, 0, None, 0
        band = np.asarray(probs, np.float32)
        if self.buf is None:
            buf, b0 = band, int(y0)
        else:
            buf, b0 = np.concatenate([self.buf, band], axis=1), self.buf0
        end = self.dst_h if y1 >= self.src_h else int(np.searchsorted(self.i1y, y1, side="left"))
        if end > self.next:
            d = slice(self.next, end)
            w = self.wy[d][None, :, None]
            rows = np.take(buf, self.i0y[d] - b0, axis=1) * (1 - w) + np.take(buf, self.i1y[d] - b0, axis=1) * w
            out = rows[:, :, self.i0x] * (1 - self.wx) + rows[:, :, self.i1x] * self.wx
            self.sink(z, self.next, end, out)
            self.next = end
        if self.next < self.dst_h:
            keep = int(self.i0y[self.next])
            self.buf, self.buf0 = buf[:, keep - b0:].copy(), keep
        else:
            self.buf = None


def map_labels(src: np.ndarray, dst: np.ndarray, *, rows: int = 256) -> np.ndarray:
    """Write labels ``src (H', W')`` onto the grid of ``dst (H, W)`` by nearest neighbour, band by band.

    Ids are copied, never renumbered.  Returns a bool array ``present`` with ``present[i]`` True
    for every id ``i`` that is still in ``dst`` (a small object can fall between the pixels of
    a coarser grid).
    """
    (sh, sw), (dh, dw) = src.shape, dst.shape
    iy, ix = _nearest(sh, dh, np.arange(dh)), _nearest(sw, dw, np.arange(dw))
    present = np.zeros(int(src.max(initial=0)) + 1, bool)
    for r0 in range(0, dh, rows):
        band = np.asarray(src[iy[r0:r0 + rows]])[:, ix]
        dst[r0:r0 + rows] = band
        present[np.unique(band)] = True
    return present


# ---------------------------------------------------------------------------- whole arrays (training)


def resample_image(image: np.ndarray, shape: tuple[int, int], *, channel_axis: int | None = None) -> np.ndarray:
    """``image (H, W[, C])`` on a grid of ``shape`` (H', W'): bilinear, anti-aliased where it shrinks.

    The same values as a :class:`ResampledImage` read whole (and as
    :func:`skimage.transform.resize` with ``order=1, anti_aliasing=True``, up to its edge
    handling); the dtype is kept.
    """
    return np.asarray(ResampledImage(image, shape, stack=False, channel_axis=channel_axis))


def resample_labels(labels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Labels / masks ``(H, W)`` on a grid of ``shape`` by nearest neighbour (ids and dtype kept)."""
    labels = np.asarray(labels)
    out = np.empty(tuple(int(n) for n in shape), labels.dtype)
    iy, ix = _nearest(labels.shape[0], out.shape[0], np.arange(out.shape[0])), \
        _nearest(labels.shape[1], out.shape[1], np.arange(out.shape[1]))
    out[...] = labels[iy][:, ix]
    return out


def grid_shape(shape: tuple[int, int], factor: tuple[float, float]) -> tuple[int, int]:
    """``round(n * f)`` per axis, at least 1: the grid of ``shape`` scaled by ``factor``."""
    return tuple(max(1, int(round(int(n) * float(f)))) for n, f in zip(shape, factor, strict=True))

