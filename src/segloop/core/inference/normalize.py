"""Fit a normalization spec on an image once, then apply it tile by tile (see
:mod:`segloop.core.formats.normalization` for the specs and the rules on bad values).

A spec with a ``stain_norm`` is fitted in two steps on the same strided sample: the stain
map first (:mod:`segloop.core.inference.stain_norm`), then the kind's statistics on the
stain-normalized sample; each tile goes through the same two steps."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from skimage.color import hed_from_rgb

from segloop.core.formats.normalization import (
    SCHEMA_VERSION,
    CTWindow,
    Fixed,
    Hematoxylin,
    NormalizationSpec,
    Percentile,
    Scale,
    describe,
    output_channels,
    spec_from_dict,
)
from segloop.core.inference.stain_norm import StainTransform, fit_stain_norm
from segloop.errors import InvalidImageError, ModelPackageError

__all__ = ["MAX_SAMPLE_PIXELS", "Normalizer", "sample_strides"]

#: At most this many pixels (per channel) are read to compute statistics.
MAX_SAMPLE_PIXELS = 4_000_000

_F32_MAX = float(np.finfo(np.float32).max)
_LOG_ADJUST = math.log(1e-6)  # as in skimage.color.separate_stains


# Sampling
# ---------------------------------------------------------------------------


def sample_strides(shape: tuple[int, ...], *, channel_axis: int | None = None,
                   max_pixels: int = MAX_SAMPLE_PIXELS) -> tuple[int, ...]:
    """Per-axis strides so that ``image[::s0, ::s1, ...]`` has at most ``max_pixels`` pixels.

    Every non-channel axis is strided; the strides are balanced so each axis
    keeps about the same number of samples (a short Z axis keeps all its
    slices while Y and X are thinned).  The channel axis gets stride 1.

    Parameters
    ----------
    shape : tuple of int
        The image's shape.
    channel_axis : None or -1
    max_pixels : int
        Upper bound on the product of the sampled non-channel extents.

    Returns
    -------
    strides : tuple of int
        One per axis of ``shape`` (1 for the channel axis).
    """
    spatial = list(shape[:-1] if channel_axis is not None else shape)
    budget = max(1, int(max_pixels))

    def count(m: int) -> int:
        return math.prod(math.ceil(n / math.ceil(n / m)) for n in spatial)

    if math.prod(spatial) <= budget:
        strides = [1] * len(spatial)
    else:
        lo, hi = 1, max(spatial)  # count(lo) == 1 <= budget; find the largest m that fits
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if count(mid) <= budget:
                lo = mid
            else:
                hi = mid - 1
        strides = [math.ceil(n / lo) for n in spatial]
    if channel_axis is not None:
        strides.append(1)
    return tuple(strides)


def _image_dtype(image: Any) -> np.dtype:
    dt = getattr(image, "dtype", None)
    try:
        return np.dtype(dt) if dt is not None else np.asarray(image).dtype
    except TypeError:
        raise InvalidImageError(f"cannot tell the image's dtype ({dt!r})") from None


def _check_dtype(dt: np.dtype) -> None:
    if dt.kind == "c":
        raise InvalidImageError(
            f"complex images ({dt}) cannot be normalized; take the magnitude or the real part first")
    if dt.kind not in "biuf":
        raise InvalidImageError(f"image dtype {dt} is not numeric; expected bool, integer or float")


def _check_channel_axis(channel_axis: int | None, ndim: int) -> int | None:
    if channel_axis is None:
        return None
    if isinstance(channel_axis, (int, np.integer)) and not isinstance(channel_axis, bool) and (
            int(channel_axis) == -1 or int(channel_axis) == ndim - 1):
        return -1
    raise InvalidImageError(
        f"channel_axis must be None or -1 (channels last), got {channel_axis!r}; "
        "move the channel axis to the end first")


def _to_float64(a: np.ndarray) -> np.ndarray:
    return np.asarray(a).astype(np.float64, copy=False)


# ---------------------------------------------------------------------------
# Normalizer
# ---------------------------------------------------------------------------


def _hematoxylin(rgb01: np.ndarray) -> np.ndarray:
    """Hematoxylin channel of RGB in [0, 1], channels last: ``(..., 3) -> (...)`` float64.

    Exactly :func:`skimage.color.separate_stains` with ``hed_from_rgb``
    (``rgb2hed(...)[..., 0]``), written element-wise (no BLAS matmul) so that
    a tile gives bit-for-bit the values the whole image gives.
    """
    m = hed_from_rgb[:, 0]
    with np.errstate(invalid="ignore", divide="ignore"):
        od = [np.log(np.maximum(rgb01[..., k], 1e-6)) / _LOG_ADJUST for k in range(3)]
    h = od[0] * m[0] + od[1] * m[1] + od[2] * m[2]
    return np.maximum(h, 0.0, out=h)  # NaN stays NaN


def _rgb_scale(dt: np.dtype, finite_max: float) -> float:
    """Divisor that brings an RGB image of dtype ``dt`` to [0, 1]."""
    if dt.kind == "b":
        return 1.0
    if dt.kind in "iu":
        return float(np.iinfo(dt).max)
    # float: [0, 1] as skimage expects; [0, 255] (or more) is taken as 8-bit-like.
    if finite_max <= 1.0:
        return 1.0
    return 255.0 if finite_max <= 255.0 else float(finite_max)


def _percentile_range(vals: np.ndarray, low: float, high: float) -> tuple[float, float, bool]:
    """(low value, high value, degenerate?) of finite 1-D ``vals`` (see module doc)."""
    lo, hi = (float(v) for v in np.percentile(vals, [low, high]))
    eps = 1e-6 * max(1.0, abs(lo), abs(hi))
    if hi - lo >= eps:
        return lo, hi, False
    return lo, max(hi, float(vals.max())), True


def _denominator(lo: float, hi: float) -> float:
    return max(hi - lo, 1e-6 * max(1.0, abs(lo), abs(hi)))


class Normalizer:
    """Image-wide normalization applied tile by tile.

    Build with :meth:`fit` (statistics from a strided sample of the whole
    image), then call it on tiles of the same image::

        norm = Normalizer.fit(Percentile(), image, channel_axis=-1)
        x = norm(image[y:y + 256, x:x + 256])   # (C, 256, 256) float32

    Attributes
    ----------
    spec : NormalizationSpec
    channel_axis : None or -1
        As given to :meth:`fit`; tiles use the same layout.
    in_channels : int
        Channels of the image (1 without a channel axis).
    out_channels : int
        Channels of the output (1 for Hematoxylin).
    stats : dict
        JSON-able provenance: kind, sample strides and size, finite min/max of
        the sample, ``sample_nonfinite`` (sampled pixels with a NaN or Inf, only
        when there are any), for percentile kinds the ``low``/``high`` values used
        (lists, one per channel, or one for all) and, for a spec with a
        ``stain_norm``, what was fitted and whether it was applied (``stain_norm``,
        see :func:`~segloop.core.inference.stain_norm.fit_stain_norm`) and
        ``input_scale`` (the RGB white value).  :meth:`from_stats` rebuilds
        the same normalizer from it.
    """

    def __init__(self, spec: NormalizationSpec, *, channel_axis: int | None, in_channels: int,
                 stats: dict[str, Any]) -> None:
        self.spec = spec
        self.channel_axis = channel_axis
        self.in_channels = int(in_channels)
        self.out_channels = output_channels(spec, self.in_channels)
        self.stats = stats
        self._lo: np.ndarray | None = None
        self._den: np.ndarray | None = None
        self._rgb_scale = 1.0
        self._stain: StainTransform | None = None
        if getattr(spec, "stain_norm", None) is not None:
            sn = stats.get("stain_norm")
            if not isinstance(sn, dict):
                raise ModelPackageError(f"{spec.kind} normalization with stain_norm needs 'stain_norm' stats "
                                        f"(fitted by Normalizer.fit), got {sn!r}")
            self._stain = StainTransform.from_stats(sn)
            self._rgb_scale = float(stats.get("input_scale", 1.0))
        if isinstance(spec, (Percentile, Hematoxylin)):
            try:
                lo = np.asarray(stats["low"], dtype=np.float64).reshape(-1)
                hi = np.asarray(stats["high"], dtype=np.float64).reshape(-1)
            except (KeyError, TypeError, ValueError):
                raise ModelPackageError(
                    f"{spec.kind} normalization stats need 'low' and 'high' lists, got {stats!r}") from None
            n_expected = (self.in_channels if isinstance(spec, Percentile) and spec.per_channel else 1)
            if lo.shape != (n_expected,) or hi.shape != (n_expected,):
                raise ModelPackageError(
                    f"{spec.kind} normalization stats have {lo.size} low / {hi.size} high "
                    f"values, expected {n_expected}")
            self._lo = lo
            self._den = np.array([_denominator(a, b) for a, b in zip(lo, hi, strict=True)])
            if isinstance(spec, Hematoxylin):
                self._rgb_scale = float(stats.get("input_scale", 1.0))

    # -- construction -------------------------------------------------------

    @classmethod
    def fit(cls, spec: NormalizationSpec | dict[str, Any], image: Any, *,
            channel_axis: int | None = None,
            max_sample_pixels: int = MAX_SAMPLE_PIXELS) -> Normalizer:
        """Compute image-wide statistics from a strided sample of ``image``.

        Only ``image[::s0, ::s1, ...]`` is read (one basic-slicing call; see
        :func:`sample_strides`), so a 20k x 20k memmap or zarr array is never
        loaded whole.

        Parameters
        ----------
        spec : NormalizationSpec or dict
        image : array-like, (Y, X), (Y, X, C), (Z, Y, X) or (Z, Y, X, C)
            ndarray, np.memmap or any array with ``shape``, ``dtype`` and
            basic slicing (zarr, dask).  Any leading axes are allowed; all
            of them are strided and pooled.  bool, integer or float.
        channel_axis : None or -1
            Whether the last axis holds channels.
        max_sample_pixels : int
            Pixels (per channel) read at most.

        Returns
        -------
        normalizer : Normalizer

        Raises
        ------
        InvalidImageError
            Bad dtype (complex, non-numeric), too few axes, empty image, no
            finite values in the sample, wrong channel count for the spec.
        ModelPackageError
            ``spec`` is a bad dict.
        """
        spec = spec_from_dict(spec)
        if not hasattr(image, "shape") or not hasattr(image, "__getitem__"):
            image = np.asarray(image)
        shape = tuple(int(n) for n in image.shape)
        dt = _image_dtype(image)
        _check_dtype(dt)
        ca = _check_channel_axis(channel_axis, len(shape))
        n_spatial = len(shape) - (ca is not None)
        if n_spatial < 2:
            raise InvalidImageError(
                f"image of shape {shape} with channel_axis={channel_axis!r} has fewer than 2 "
                "spatial axes; expected (Y, X), (Y, X, C) or a stack (Z, Y, X[, C])")
        if math.prod(shape) == 0:
            raise InvalidImageError(f"image of shape {shape} is empty")
        n_ch = shape[-1] if ca is not None else 1
        output_channels(spec, n_ch)  # channel-count checks, InvalidImageError

        strides = sample_strides(shape, channel_axis=ca, max_pixels=max_sample_pixels)
        sample = np.asarray(image[tuple(slice(None, None, s) for s in strides)])
        flat = _to_float64(sample).reshape(-1, n_ch)  # (pixels, C)
        finite = np.isfinite(flat) if dt.kind == "f" else None
        all_finite = finite is None or bool(finite.all())
        if not all_finite and not finite.any():
            raise InvalidImageError(
                f"image has no finite values: all {flat.size} sampled values (strides "
                f"{list(strides)}) are NaN or Inf; cannot compute normalization statistics")
        fin_vals = flat if all_finite else flat[finite]
        stats: dict[str, Any] = {
            "kind": spec.kind,
            "schema_version": SCHEMA_VERSION,
            "channels": n_ch,
            "sample_strides": list(strides),
            "sample_pixels": int(flat.shape[0]),
            "sample_min": float(fin_vals.min()),
            "sample_max": float(fin_vals.max()),
        }
        if not all_finite:      # said, so a caller can tell the user (they become 0 in apply)
            stats["sample_nonfinite"] = int((~finite).any(axis=1).sum())
        if getattr(spec, "stain_norm", None) is not None:
            flat, finite, all_finite = cls._fit_stain(spec, flat, finite, all_finite, dt, stats)
            fin_vals = flat if all_finite else flat[finite]

        if isinstance(spec, Percentile):
            columns = ([flat[:, c] if all_finite else flat[finite[:, c], c] for c in range(n_ch)]
                       if spec.per_channel else [fin_vals.reshape(-1)])
            lows, highs, degenerate = [], [], []
            for c, vals in enumerate(columns):
                if vals.size == 0:
                    raise InvalidImageError(
                        f"channel {c} has no finite values: all sampled values are NaN or Inf")
                lo, hi, deg = _percentile_range(vals, spec.low, spec.high)
                lows.append(lo)
                highs.append(hi)
                degenerate.append(deg)
            stats.update(low=lows, high=highs, degenerate=degenerate)
        elif isinstance(spec, Hematoxylin):
            ok = np.ones(flat.shape[0], bool) if all_finite else finite.all(axis=1)
            if not ok.any():
                raise InvalidImageError(
                    "image has no finite RGB pixels: every sampled pixel has a NaN or Inf channel")
            rgb = flat[ok]
            scale = stats.get("input_scale") or _rgb_scale(dt, float(rgb.max()))
            h = _hematoxylin(rgb / scale)
            lo, hi, deg = _percentile_range(h, spec.low, spec.high)
            stats.update(low=[lo], high=[hi], degenerate=[deg], input_scale=scale)
        return cls(spec, channel_axis=ca, in_channels=n_ch, stats=stats)

    @staticmethod
    def _fit_stain(spec: NormalizationSpec, flat: np.ndarray, finite: np.ndarray | None, all_finite: bool,
                   dt: np.dtype, stats: dict[str, Any]) -> tuple[np.ndarray, np.ndarray | None, bool]:
        """Fit the stain map on the sample (``stats`` updated) and return the sample mapped by it."""
        ok = np.ones(flat.shape[0], bool) if all_finite else finite.all(axis=1)
        if not ok.any():
            raise InvalidImageError(
                "image has no finite RGB pixels: every sampled pixel has a NaN or Inf channel")
        scale = _rgb_scale(dt, float(flat[ok].max()))
        stats.update(stain_norm=fit_stain_norm(spec.stain_norm, flat[ok] / scale), input_scale=scale)
        transform = StainTransform.from_stats(stats["stain_norm"])
        if transform is None:
            return flat, finite, all_finite
        flat = transform(flat / scale) * scale          # a row with a NaN becomes all NaN
        if all_finite:
            return flat, None, True
        return flat, np.isfinite(flat), False

    @classmethod
    def from_stats(cls, spec: NormalizationSpec | dict[str, Any], stats: dict[str, Any], *,
                   channel_axis: int | None = None) -> Normalizer:
        """Rebuild a normalizer from a previous ``normalizer.stats`` (provenance).

        Parameters
        ----------
        spec : NormalizationSpec or dict
        stats : dict
            As found in :attr:`stats`; needs ``channels`` and, for
            percentile kinds, ``low``/``high`` (and ``input_scale`` for
            hematoxylin); with a ``stain_norm``, ``stain_norm`` and ``input_scale``.
        channel_axis : None or -1
        """
        spec = spec_from_dict(spec)
        if stats.get("kind", spec.kind) != spec.kind:
            raise ModelPackageError(f"stats are for {stats.get('kind')!r}, spec is {spec.kind!r}")
        ca = None if channel_axis is None else -1
        n_ch = int(stats.get("channels", 1))
        if ca is None and n_ch != 1:
            raise InvalidImageError(f"stats are for {n_ch} channels but channel_axis is None")
        return cls(spec, channel_axis=ca, in_channels=n_ch, stats=dict(stats))

    # -- application --------------------------------------------------------

    def __call__(self, tile: Any) -> np.ndarray:
        """Normalize one tile with the image-wide statistics.

        Parameters
        ----------
        tile : (Y, X) or (Y, X, C) array-like
            Same layout (``channel_axis``) and channel count as the fitted
            image; leading axes are allowed and kept: ``(..., Y, X[, C])``.

        Returns
        -------
        out : (C_out, Y, X) float32 ndarray
            Channels first (``(..., C_out, Y, X)`` with leading axes),
            C-contiguous, always finite; non-finite inputs become 0.
        """
        t = np.asarray(tile)
        _check_dtype(t.dtype)
        if self.channel_axis is None:
            if t.ndim < 2:
                raise InvalidImageError(f"tile of shape {t.shape} needs at least (Y, X) axes")
            t = t[..., None]
        elif t.ndim < 3 or t.shape[-1] != self.in_channels:
            raise InvalidImageError(
                f"tile of shape {t.shape} does not match the fitted image: expected "
                f"(..., Y, X, {self.in_channels})")
        x = _to_float64(t)  # (..., Y, X, C)
        bad = ~np.isfinite(x) if t.dtype.kind == "f" else None
        if bad is not None and not bad.any():
            bad = None
        spec = self.spec
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            if self._stain is not None:
                x = self._stain(x / self._rgb_scale) * self._rgb_scale
                if bad is not None:
                    bad = bad.any(axis=-1, keepdims=True)
            if isinstance(spec, Percentile):
                out = (x - self._lo) / self._den
            elif isinstance(spec, Hematoxylin):
                h = _hematoxylin(x / self._rgb_scale)[..., None]
                out = (h - self._lo) / self._den
                if spec.invert:
                    out = 1.0 - out
                if bad is not None:
                    bad = bad.any(axis=-1, keepdims=True)
            elif isinstance(spec, Fixed):
                out = (x - np.asarray(spec.mean)) / np.asarray(spec.std)
            elif isinstance(spec, Scale):
                out = (x - spec.in_min) / (spec.in_max - spec.in_min)
            elif isinstance(spec, CTWindow):
                lo, hi = spec.bounds
                out = (np.clip(x, lo, hi) - lo) / (hi - lo)
            else:  # pragma: no cover - specs are a closed set
                raise ModelPackageError(f"unknown normalization spec {spec!r}")
            np.clip(out, -_F32_MAX, _F32_MAX, out=out)
        if bad is not None:
            out[np.broadcast_to(bad, out.shape)] = 0.0
        return np.ascontiguousarray(np.moveaxis(out, -1, -3), dtype=np.float32)

    def __repr__(self) -> str:
        return (f"Normalizer({describe(self.spec)}; {self.in_channels} -> "
                f"{self.out_channels} channel(s))")
