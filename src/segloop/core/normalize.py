"""Input normalization that travels with the model weights.

A normalization *spec* is plain data stored in the model package's JSON (the
``"normalization"`` field, like timm's pretrained config), so a network is
always fed the same kind of input it was trained on::

    {"kind": "percentile", "schema_version": 1, "low": 1.0, "high": 99.8, "per_channel": true}

Statistics (percentiles) are computed **once per image** by
:meth:`Normalizer.fit`, on a strided view of the image (``image[::s, ::s]``,
at most :data:`MAX_SAMPLE_PIXELS` pixels read, whatever the image size), and
then applied tile by tile by ``normalizer(tile)``.  Per-tile statistics would
make every tile a little different and leave seams in the blended prediction;
image-wide statistics make tiled and whole-image normalization bit-identical.

Kinds
-----
``percentile``  ``(x - p_low) / (p_high - p_low)`` per channel, not clipped.
``fixed``       ``(x - mean) / std`` per channel (ImageNet-style constants).
``scale``       ``(x - in_min) / (in_max - in_min)``.
``ct_window``   clip Hounsfield units to ``[level - width/2, level + width/2]``,
                map to ``[0, 1]``.
``hematoxylin`` RGB bright-field (H&E, IHC) -> colour deconvolution
                (:func:`skimage.color.rgb2hed`) -> the hematoxylin channel,
                percentile-normalized: ONE output channel in which nuclei are
                bright on dark, like a nuclear fluorescence stain.

Bad values (the same for every kind)
------------------------------------
* Statistics ignore NaN and +-Inf.  An image whose sampled values are all
  non-finite raises :class:`~segloop.errors.InvalidImageError`.
* ``normalizer(tile)`` writes **0** for every non-finite input value (for
  ``hematoxylin``: every pixel with a non-finite R, G or B).  0 is the output
  of the low statistic for ``percentile``/``hematoxylin``, of the mean for
  ``fixed``, of ``in_min`` for ``scale`` and of the window's lower edge for
  ``ct_window``.
* Outputs are always finite float32: results beyond the float32 range are
  clipped to +-``np.finfo(np.float32).max``.
* Degenerate percentiles: when ``p_high - p_low < eps`` with
  ``eps = 1e-6 * max(1, |p_low|, |p_high|)`` (a constant or almost constant
  image, or a sparse one such as a few bright nuclei on a zero background)
  the sample's finite maximum is used as the high value instead; if that is
  still within ``eps`` of ``p_low`` (a constant image) the denominator is
  ``eps``, so the constant maps to exactly 0 and nothing is divided by zero.
* ``bool`` images are read as 0/1; every integer width (signed or not) and
  float16/32/64 is accepted; complex, string and object images raise
  :class:`~segloop.errors.InvalidImageError`.

This module imports no GUI code: numpy and scikit-image only.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar, Literal

import numpy as np
from skimage.color import hed_from_rgb

from segloop.errors import FormatVersionError, InvalidImageError, ModelPackageError

__all__ = [
    "MAX_SAMPLE_PIXELS",
    "SCHEMA_VERSION",
    "NormalizationSpec",
    "Percentile",
    "Fixed",
    "Scale",
    "CTWindow",
    "CT_PRESETS",
    "Hematoxylin",
    "Normalizer",
    "spec_from_dict",
    "output_channels",
    "describe",
    "sample_strides",
]

#: Version of the spec dictionaries written by :meth:`NormalizationSpec.to_dict`.
SCHEMA_VERSION = 1

#: At most this many pixels (per channel) are read to compute statistics.
MAX_SAMPLE_PIXELS = 4_000_000

_F32_MAX = float(np.finfo(np.float32).max)
_LOG_ADJUST = math.log(1e-6)  # as in skimage.color.separate_stains


# ---------------------------------------------------------------------------
# Specs
# ---------------------------------------------------------------------------


def _number(cls_kind: str, name: str, value: Any) -> float:
    """``value`` as a finite float, or ModelPackageError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ModelPackageError(
            f"normalization {cls_kind!r}: {name!r} must be a number, got {value!r}")
    v = float(value)
    if not math.isfinite(v):
        raise ModelPackageError(f"normalization {cls_kind!r}: {name!r} must be finite, got {value!r}")
    return v


def _set(obj: Any, name: str, value: Any) -> None:
    object.__setattr__(obj, name, value)


def _check_percentiles(kind: str, low: float, high: float) -> None:
    if not (0.0 <= low < high <= 100.0):
        raise ModelPackageError(
            f"normalization {kind!r}: need 0 <= low < high <= 100, got low={low}, high={high}")


@dataclass(frozen=True)
class NormalizationSpec:
    """Base class of the normalization specs (frozen, JSON-able data)."""

    kind: ClassVar[str] = ""
    schema_version: ClassVar[int] = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        """The spec as a JSON-able dict, ``kind`` and ``schema_version`` first.

        Returns
        -------
        d : dict
            Round-trips through :func:`spec_from_dict`.
        """
        d = asdict(self)
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = list(v)
        return {"kind": self.kind, "schema_version": self.schema_version, **d}


@dataclass(frozen=True)
class Percentile(NormalizationSpec):
    """``(x - p_low) / (p_high - p_low)`` with image-wide percentiles; not clipped.

    Parameters
    ----------
    low, high : float
        Percentiles in ``[0, 100]``, ``low < high``.
    per_channel : bool
        One pair of percentiles per channel (True) or one for all channels.
    """

    kind: ClassVar[Literal["percentile"]] = "percentile"

    low: float = 1.0
    high: float = 99.8
    per_channel: bool = True

    def __post_init__(self) -> None:
        _set(self, "low", _number(self.kind, "low", self.low))
        _set(self, "high", _number(self.kind, "high", self.high))
        if not isinstance(self.per_channel, (bool, np.bool_)):
            raise ModelPackageError(
                f"normalization 'percentile': 'per_channel' must be true or false, got {self.per_channel!r}")
        _set(self, "per_channel", bool(self.per_channel))
        _check_percentiles(self.kind, self.low, self.high)


@dataclass(frozen=True)
class Fixed(NormalizationSpec):
    """``(x - mean) / std`` per channel with constants from training.

    Parameters
    ----------
    mean, std : tuple of float
        One value per channel, or a single value used for every channel.
        ``std`` values must be positive.
    """

    kind: ClassVar[Literal["fixed"]] = "fixed"

    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)

    def __post_init__(self) -> None:
        for name in ("mean", "std"):
            v = getattr(self, name)
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                v = (v,)
            if not isinstance(v, (tuple, list)) or len(v) == 0:
                raise ModelPackageError(
                    f"normalization 'fixed': {name!r} must be a non-empty list of numbers, got {v!r}")
            _set(self, name, tuple(_number(self.kind, name, x) for x in v))
        if any(s <= 0 for s in self.std):
            raise ModelPackageError(f"normalization 'fixed': 'std' must be positive, got {list(self.std)}")
        nm, ns = len(self.mean), len(self.std)
        if nm != ns and 1 not in (nm, ns):
            raise ModelPackageError(
                f"normalization 'fixed': 'mean' has {nm} values and 'std' {ns}; "
                "give one per channel or a single value")

    @property
    def n_channels(self) -> int:
        """Channels the constants are for (1 means: broadcast to any)."""
        return max(len(self.mean), len(self.std))


@dataclass(frozen=True)
class Scale(NormalizationSpec):
    """``(x - in_min) / (in_max - in_min)``; not clipped.

    Parameters
    ----------
    in_min, in_max : float
        The input range mapped to ``[0, 1]``; ``in_max != in_min``.
    """

    kind: ClassVar[Literal["scale"]] = "scale"

    in_min: float = 0.0
    in_max: float = 255.0

    def __post_init__(self) -> None:
        _set(self, "in_min", _number(self.kind, "in_min", self.in_min))
        _set(self, "in_max", _number(self.kind, "in_max", self.in_max))
        if self.in_max == self.in_min:
            raise ModelPackageError(f"normalization 'scale': 'in_max' equals 'in_min' ({self.in_min})")


#: CT window presets, ``name: (level, width)`` in HU (common radiology defaults).
CT_PRESETS: dict[str, tuple[float, float]] = {
    "lung": (-600.0, 1500.0),
    "mediastinum": (50.0, 350.0),
    "soft tissue": (40.0, 400.0),
    "abdomen": (60.0, 400.0),
    "liver": (80.0, 150.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
}


@dataclass(frozen=True)
class CTWindow(NormalizationSpec):
    """Clip Hounsfield units to a window and map it to ``[0, 1]``.

    Parameters
    ----------
    level, width : float
        Window centre and width in HU (``width > 0``); ``level - width/2``
        maps to 0 and ``level + width/2`` to 1.  Defaults: soft tissue.
    """

    kind: ClassVar[Literal["ct_window"]] = "ct_window"

    level: float = 40.0
    width: float = 400.0

    def __post_init__(self) -> None:
        _set(self, "level", _number(self.kind, "level", self.level))
        _set(self, "width", _number(self.kind, "width", self.width))
        if self.width <= 0:
            raise ModelPackageError(f"normalization 'ct_window': 'width' must be positive, got {self.width}")

    @classmethod
    def preset(cls, name: str) -> CTWindow:
        """The window of a named preset (see ``CT_PRESETS``), e.g. ``CTWindow.preset("lung")``."""
        key = str(name).strip().lower().replace("_", " ")
        if key not in CT_PRESETS:
            raise ModelPackageError(f"unknown CT window preset {name!r}; known: {', '.join(CT_PRESETS)}")
        level, width = CT_PRESETS[key]
        return cls(level=level, width=width)

    @property
    def bounds(self) -> tuple[float, float]:
        """``(level - width/2, level + width/2)`` in HU."""
        return self.level - self.width / 2, self.level + self.width / 2


@dataclass(frozen=True)
class Hematoxylin(NormalizationSpec):
    """RGB bright-field -> hematoxylin channel (colour deconvolution) -> percentiles.

    Lets a nuclei model trained on fluorescence (bright nuclei on a dark
    background) run on H&E or IHC tissue: hematoxylin-rich nuclei come out
    bright.  The output has ONE channel.

    Parameters
    ----------
    low, high : float
        Percentiles of the hematoxylin channel mapped to 0 and 1.
    invert : bool
        Output ``1 - normalized`` instead (nuclei dark on bright).
    """

    kind: ClassVar[Literal["hematoxylin"]] = "hematoxylin"

    low: float = 1.0
    high: float = 99.8
    invert: bool = False

    def __post_init__(self) -> None:
        _set(self, "low", _number(self.kind, "low", self.low))
        _set(self, "high", _number(self.kind, "high", self.high))
        if not isinstance(self.invert, (bool, np.bool_)):
            raise ModelPackageError(
                f"normalization 'hematoxylin': 'invert' must be true or false, got {self.invert!r}")
        _set(self, "invert", bool(self.invert))
        _check_percentiles(self.kind, self.low, self.high)


_KINDS: dict[str, type[NormalizationSpec]] = {
    c.kind: c for c in (Percentile, Fixed, Scale, CTWindow, Hematoxylin)
}


def spec_from_dict(d: dict[str, Any] | NormalizationSpec) -> NormalizationSpec:
    """Build a spec from its dict (the package JSON's ``"normalization"``).

    Parameters
    ----------
    d : dict
        ``{"kind": ..., "schema_version": 1, <options>}``.  A missing
        ``schema_version`` is read as 1; missing options take their defaults.
        A spec instance is returned unchanged.

    Returns
    -------
    spec : Percentile, Fixed, Scale, CTWindow or Hematoxylin

    Raises
    ------
    ModelPackageError
        Not a dict, missing or unknown ``kind``, unknown option key, bad value.
    FormatVersionError
        ``schema_version`` other than 1 (a subclass of ModelPackageError).
    """
    if isinstance(d, NormalizationSpec):
        return d
    if not isinstance(d, dict):
        raise ModelPackageError(f"normalization must be a JSON object with a 'kind', got {d!r}")
    if "kind" not in d:
        raise ModelPackageError(
            f"normalization has no 'kind'; expected one of {', '.join(_KINDS)}")
    kind = d["kind"]
    cls = _KINDS.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ModelPackageError(
            f"unknown normalization kind {kind!r}; this segloop knows {', '.join(_KINDS)}. "
            "Upgrade napari-segloop or fix the package's 'normalization'")
    sv = d.get("schema_version", SCHEMA_VERSION)
    if isinstance(sv, bool) or sv != SCHEMA_VERSION:
        raise FormatVersionError(
            f"normalization {kind!r}: schema_version {sv!r} is not supported "
            f"(this segloop reads {SCHEMA_VERSION}); upgrade napari-segloop")
    names = {f.name for f in fields(cls)}
    opts = {k: v for k, v in d.items() if k not in ("kind", "schema_version")}
    unknown = sorted(k for k in opts if k not in names)
    if unknown:
        raise ModelPackageError(
            f"normalization {kind!r}: unknown key(s) {', '.join(map(repr, unknown))}; "
            f"allowed: {', '.join(sorted(names))}")
    return cls(**opts)


def output_channels(spec: NormalizationSpec | dict[str, Any], in_channels: int) -> int:
    """Channels the network sees for an image with ``in_channels`` channels.

    Parameters
    ----------
    spec : NormalizationSpec or dict
    in_channels : int
        Channels of the image (1 for an image without a channel axis).

    Returns
    -------
    n : int
        1 for :class:`Hematoxylin`, else ``in_channels``.

    Raises
    ------
    InvalidImageError
        The spec cannot take this many channels (Hematoxylin needs 3; Fixed
        constants for another channel count).
    """
    spec = spec_from_dict(spec)
    in_channels = int(in_channels)
    if in_channels < 1:
        raise InvalidImageError(f"in_channels must be >= 1, got {in_channels}")
    if isinstance(spec, Hematoxylin):
        if in_channels != 3:
            raise InvalidImageError(
                f"hematoxylin normalization needs an RGB image (3 channels), got {in_channels}; "
                "drop an alpha channel first, or use another normalization")
        return 1
    if isinstance(spec, Fixed) and spec.n_channels not in (1, in_channels):
        raise InvalidImageError(
            f"fixed normalization has constants for {spec.n_channels} channels, "
            f"the image has {in_channels}")
    return in_channels


def _fmt(v: float) -> str:
    return f"{v:g}"


def describe(spec: NormalizationSpec | dict[str, Any]) -> str:
    """One line for ``segloop info``, e.g. ``"percentile 1-99.8, per channel"``."""
    spec = spec_from_dict(spec)
    if isinstance(spec, Percentile):
        return (f"percentile {_fmt(spec.low)}-{_fmt(spec.high)}, "
                f"{'per channel' if spec.per_channel else 'all channels together'}")
    if isinstance(spec, Fixed):
        return (f"fixed mean ({', '.join(map(_fmt, spec.mean))}) "
                f"std ({', '.join(map(_fmt, spec.std))})")
    if isinstance(spec, Scale):
        return f"scale [{_fmt(spec.in_min)}, {_fmt(spec.in_max)}] -> [0, 1]"
    if isinstance(spec, CTWindow):
        lo, hi = spec.bounds
        return (f"CT window level {_fmt(spec.level)} width {_fmt(spec.width)} HU "
                f"([{_fmt(lo)}, {_fmt(hi)}] -> [0, 1], clipped)")
    if isinstance(spec, Hematoxylin):
        return (f"hematoxylin (RGB colour deconvolution -> 1 channel, nuclei "
                f"{'dark' if spec.invert else 'bright'}), percentile "
                f"{_fmt(spec.low)}-{_fmt(spec.high)}")
    raise ModelPackageError(f"unknown normalization spec {spec!r}")  # pragma: no cover


# ---------------------------------------------------------------------------
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
        the sample and, for percentile kinds, the ``low``/``high`` values used
        (lists, one per channel, or one for all).  :meth:`from_stats` rebuilds
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
            scale = _rgb_scale(dt, float(rgb.max()))
            h = _hematoxylin(rgb / scale)
            lo, hi, deg = _percentile_range(h, spec.low, spec.high)
            stats.update(low=[lo], high=[hi], degenerate=[deg], input_scale=scale)
        return cls(spec, channel_axis=ca, in_channels=n_ch, stats=stats)

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
            hematoxylin).
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
            out[bad] = 0.0
        return np.ascontiguousarray(np.moveaxis(out, -1, -3), dtype=np.float32)

    def __repr__(self) -> str:
        return (f"Normalizer({describe(self.spec)}; {self.in_channels} -> "
                f"{self.out_channels} channel(s))")
