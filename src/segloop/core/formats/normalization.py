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

Stain normalization (RGB bright-field)
--------------------------------------
``percentile``, ``fixed``, ``scale`` and ``hematoxylin`` take an optional
``"stain_norm"``: the RGB image is first mapped to a target stain appearance,
then the kind's own step runs on the mapped RGB::

    {"kind": "percentile", "low": 1.0, "high": 99.8, "per_channel": true,
     "stain_norm": {"method": "macenko",
                    "target": {"stain_matrix": [[0.5626, 0.7201, 0.4062],
                                                [0.2159, 0.8012, 0.5581]],
                               "max_concentrations": [1.9705, 1.0308]}}}

``macenko``   optical density ``-ln(rgb / white)``; the image's two stain
              vectors (Macenko et al. 2009) and its 99th-percentile
              concentrations are swapped for the target's.  ``stain_matrix``:
              rows hematoxylin, eosin (or DAB), unit optical-density vectors
              over R, G, B; ``max_concentrations``: one per row.
``reinhard``  CIELAB (D65) mean and standard deviation of the tissue matched to
              the target's ``lab_mean`` / ``lab_std`` (Reinhard et al. 2001).

Without ``"target"`` the built-in references are used
(:data:`MACENKO_REFERENCE`, :data:`REINHARD_REFERENCE`).  The source side is
fitted once per image, on the tissue pixels of the same strided sample as the
statistics (:mod:`segloop.core.inference.stain_norm`), so every tile is mapped
the same way.  A stain-normalized spec needs RGB (3 channels).

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

import json
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
    "MACENKO_REFERENCE",
    "REINHARD_REFERENCE",
    "STAIN_NORM_METHODS",
    "StainNorm",
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


#: Stain normalization methods (:class:`StainNorm`).
STAIN_NORM_METHODS = ("macenko", "reinhard")

#: Macenko target used when a spec gives none: the H&E reference stain vectors and
#: 99th-percentile concentrations of Macenko et al. (2009), as used by StainTools and
#: torchstain (natural-log optical density).
MACENKO_REFERENCE: dict[str, Any] = {
    "stain_matrix": [[0.5626, 0.7201, 0.4062], [0.2159, 0.8012, 0.5581]],
    "max_concentrations": [1.9705, 1.0308],
}

#: Reinhard target used when a spec gives none: CIELAB (D65) mean and standard deviation of
#: the tissue pixels of an H&E image rendered from :data:`MACENKO_REFERENCE` (hematoxylin and
#: eosin concentrations exponentially distributed, 99th percentile at ``max_concentrations``),
#: so both built-in targets describe the same appearance (tests/test_stain.py re-derives it).
REINHARD_REFERENCE: dict[str, Any] = {
    "lab_mean": [61.9, 20.32, -13.39],
    "lab_std": [13.66, 6.57, 5.48],
}


def _floats(where: str, name: str, value: Any, n: int) -> tuple[float, ...]:
    """``value`` as ``n`` finite floats, or ModelPackageError naming ``name``."""
    ok = isinstance(value, (list, tuple)) and len(value) == n and all(
        isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) and math.isfinite(v)
        for v in value)
    if not ok:
        raise ModelPackageError(f"{where}: {name!r} must be a list of {n} finite numbers, got {value!r}")
    return tuple(float(v) for v in value)


@dataclass(frozen=True)
class StainNorm:
    """Stain normalization of RGB bright-field images before the kind's own step.

    JSON form: ``{"method": "macenko" | "reinhard", "target": {...}}`` (``target``
    optional; the built-in reference without it).

    Parameters
    ----------
    method : {"macenko", "reinhard"}
    stain_matrix : ((3 floats), (3 floats)) or None
        Macenko target: hematoxylin and eosin (or DAB) unit optical-density vectors over
        R, G, B (each row's length within 1% of 1; rows not parallel).
    max_concentrations : (float, float) or None
        Macenko target: the 99th-percentile concentration of each stain, positive.
    lab_mean, lab_std : (float, float, float) or None
        Reinhard target: CIELAB mean (L in ``[0, 100]``) and standard deviation (positive).
    """

    method: str = "macenko"
    stain_matrix: tuple[tuple[float, float, float], tuple[float, float, float]] | None = None
    max_concentrations: tuple[float, float] | None = None
    lab_mean: tuple[float, float, float] | None = None
    lab_std: tuple[float, float, float] | None = None

    def __post_init__(self) -> None:
        where = f"stain_norm {self.method!r}"
        if self.method not in STAIN_NORM_METHODS:
            raise ModelPackageError(
                f"unknown stain_norm method {self.method!r}; use {' or '.join(STAIN_NORM_METHODS)}")
        mine = ("stain_matrix", "max_concentrations") if self.method == "macenko" else ("lab_mean", "lab_std")
        others = [n for n in ("stain_matrix", "max_concentrations", "lab_mean", "lab_std")
                  if n not in mine and getattr(self, n) is not None]
        if others:
            raise ModelPackageError(f"{where}: target key(s) {', '.join(map(repr, others))} belong to another "
                                    f"method; a {self.method} target has {' and '.join(map(repr, mine))}")
        given = [getattr(self, n) is not None for n in mine]
        if any(given) and not all(given):
            raise ModelPackageError(f"{where}: the target needs both {' and '.join(map(repr, mine))} "
                                    "(or no target: the built-in reference)")
        if not all(given):
            return
        if self.method == "macenko":
            rows = self.stain_matrix
            if not isinstance(rows, (list, tuple)) or len(rows) != 2:
                raise ModelPackageError(f"{where}: 'stain_matrix' must be 2 rows (hematoxylin, eosin) of 3 "
                                        f"numbers (R, G, B optical density), got {rows!r}")
            m = tuple(_floats(where, "stain_matrix", r, 3) for r in rows)
            norms = [math.sqrt(sum(v * v for v in r)) for r in m]
            if any(abs(n - 1.0) > 0.01 for n in norms):
                raise ModelPackageError(f"{where}: each 'stain_matrix' row must be a unit vector, got lengths "
                                        f"{', '.join(f'{n:.3g}' for n in norms)}")
            cos = sum(a * b for a, b in zip(*m, strict=True)) / (norms[0] * norms[1])
            if abs(cos) > 0.999:
                raise ModelPackageError(f"{where}: the two 'stain_matrix' rows are (almost) parallel; give two "
                                        "different stains")
            c = _floats(where, "max_concentrations", self.max_concentrations, 2)
            if min(c) <= 0:
                raise ModelPackageError(f"{where}: 'max_concentrations' must be positive, got {list(c)}")
            _set(self, "stain_matrix", m)
            _set(self, "max_concentrations", c)
        else:
            mean = _floats(where, "lab_mean", self.lab_mean, 3)
            std = _floats(where, "lab_std", self.lab_std, 3)
            if not 0.0 <= mean[0] <= 100.0:
                raise ModelPackageError(f"{where}: 'lab_mean' L must be in [0, 100], got {mean[0]}")
            if min(std) <= 0:
                raise ModelPackageError(f"{where}: 'lab_std' must be positive, got {list(std)}")
            _set(self, "lab_mean", mean)
            _set(self, "lab_std", std)

    @property
    def has_target(self) -> bool:
        """A target is given (else the built-in reference is used)."""
        return (self.stain_matrix if self.method == "macenko" else self.lab_mean) is not None

    def target(self) -> dict[str, Any]:
        """The target in use: the one given, or :data:`MACENKO_REFERENCE` / :data:`REINHARD_REFERENCE`."""
        if self.method == "macenko":
            if self.stain_matrix is None:
                return json.loads(json.dumps(MACENKO_REFERENCE))
            return {"stain_matrix": [list(r) for r in self.stain_matrix],
                    "max_concentrations": list(self.max_concentrations)}
        if self.lab_mean is None:
            return json.loads(json.dumps(REINHARD_REFERENCE))
        return {"lab_mean": list(self.lab_mean), "lab_std": list(self.lab_std)}

    def to_dict(self) -> dict[str, Any]:
        """``{"method": ..., "target": {...}}`` (no ``target`` for the built-in reference)."""
        return {"method": self.method, **({"target": self.target()} if self.has_target else {})}

    @classmethod
    def from_dict(cls, d: Any, *, kind: str = "") -> StainNorm:
        """Build from the JSON form; ModelPackageError for anything else (naming the kind)."""
        if isinstance(d, StainNorm):
            return d
        where = f"normalization {kind!r}: " if kind else ""
        if isinstance(d, str):
            d = {"method": d}
        if not isinstance(d, dict):
            raise ModelPackageError(f"{where}'stain_norm' must be an object such as {{\"method\": \"macenko\"}}, "
                                    f"got {d!r}")
        unknown = sorted(k for k in d if k not in ("method", "target"))
        if unknown:
            raise ModelPackageError(f"{where}'stain_norm': unknown key(s) {', '.join(map(repr, unknown))}; "
                                    "allowed: method, target")
        if "method" not in d:
            raise ModelPackageError(f"{where}'stain_norm' has no 'method'; use {' or '.join(STAIN_NORM_METHODS)}")
        target = d.get("target")
        if target is None:
            target = {}
        if not isinstance(target, dict):
            raise ModelPackageError(f"{where}'stain_norm' 'target' must be an object, got {target!r}")
        allowed = ("stain_matrix", "max_concentrations", "lab_mean", "lab_std")
        unknown = sorted(k for k in target if k not in allowed)
        if unknown:
            raise ModelPackageError(f"{where}'stain_norm' target: unknown key(s) {', '.join(map(repr, unknown))}; "
                                    f"allowed: {', '.join(allowed)}")
        try:
            return cls(method=d["method"], **target)
        except ModelPackageError as e:
            raise ModelPackageError(f"{where}{e}") from None


def _stain_norm(kind: str, value: Any) -> StainNorm | None:
    return None if value is None else StainNorm.from_dict(value, kind=kind)


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
        if "stain_norm" in d:                    # omitted when off, so older specs read the same
            sn = d.pop("stain_norm")
            if sn is not None:
                d["stain_norm"] = self.stain_norm.to_dict()
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
    stain_norm : StainNorm, dict or None
        Stain normalization of an RGB image first (see the module doc); needs 3 channels.
    """

    kind: ClassVar[Literal["percentile"]] = "percentile"

    low: float = 1.0
    high: float = 99.8
    per_channel: bool = True
    stain_norm: StainNorm | None = None

    def __post_init__(self) -> None:
        _set(self, "stain_norm", _stain_norm(self.kind, self.stain_norm))
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
    stain_norm : StainNorm, dict or None
        Stain normalization of an RGB image first (see the module doc); needs 3 channels.
    """

    kind: ClassVar[Literal["fixed"]] = "fixed"

    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    stain_norm: StainNorm | None = None

    def __post_init__(self) -> None:
        _set(self, "stain_norm", _stain_norm(self.kind, self.stain_norm))
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
    stain_norm : StainNorm, dict or None
        Stain normalization of an RGB image first (see the module doc); needs 3 channels.
    """

    kind: ClassVar[Literal["scale"]] = "scale"

    in_min: float = 0.0
    in_max: float = 255.0
    stain_norm: StainNorm | None = None

    def __post_init__(self) -> None:
        _set(self, "stain_norm", _stain_norm(self.kind, self.stain_norm))
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
    stain_norm : StainNorm, dict or None
        Stain normalization of an RGB image first (see the module doc); needs 3 channels.
    """

    kind: ClassVar[Literal["hematoxylin"]] = "hematoxylin"

    low: float = 1.0
    high: float = 99.8
    invert: bool = False
    stain_norm: StainNorm | None = None

    def __post_init__(self) -> None:
        _set(self, "stain_norm", _stain_norm(self.kind, self.stain_norm))
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
        The spec cannot take this many channels (Hematoxylin and any
        ``stain_norm`` need 3; Fixed constants for another channel count).
    """
    spec = spec_from_dict(spec)
    in_channels = int(in_channels)
    if in_channels < 1:
        raise InvalidImageError(f"in_channels must be >= 1, got {in_channels}")
    sn = getattr(spec, "stain_norm", None)
    if sn is not None and in_channels != 3:
        raise InvalidImageError(
            f"stain normalization ({sn.method}) works on RGB bright-field images (3 channels), but "
            f"{in_channels} channel(s) reach normalization {spec.kind!r}; give an RGB image, turn stain "
            "normalization off, or (a 1-channel nuclei model on H&E) use hematoxylin normalization")
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
    sn = getattr(spec, "stain_norm", None)
    if sn is not None:
        first = f"{sn.method} stain normalization ({'own' if sn.has_target else 'reference'} target), then "
        return first + _describe(spec)
    return _describe(spec)


def _describe(spec: NormalizationSpec) -> str:
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
