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

The specs are data (this module); fitting and applying them is
:class:`segloop.core.inference.normalize.Normalizer`.  No GUI code here.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar, Literal

import numpy as np

from segloop.errors import FormatVersionError, InvalidImageError, ModelPackageError

__all__ = [
    "SCHEMA_VERSION",
    "NormalizationSpec",
    "Percentile",
    "Fixed",
    "Scale",
    "CTWindow",
    "CT_PRESETS",
    "Hematoxylin",
    "spec_from_dict",
    "input_channels",
    "output_channels",
    "describe",
]

#: Version of the spec dictionaries written by :meth:`NormalizationSpec.to_dict`.
SCHEMA_VERSION = 1


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


def input_channels(spec: NormalizationSpec | dict[str, Any], network_channels: int) -> int:
    """Raw image channels a network taking ``network_channels`` per plane needs under ``spec``.

    The inverse of :func:`output_channels`, and the one rule inference and
    training share: 3 (RGB) for :class:`Hematoxylin`, else ``network_channels``.
    """
    return 3 if spec_from_dict(spec).kind == "hematoxylin" else int(network_channels)


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
