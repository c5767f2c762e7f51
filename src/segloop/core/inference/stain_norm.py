"""Stain normalization of RGB bright-field images: Macenko and Reinhard, fitted once per image.

A spec's ``"stain_norm"`` (:class:`segloop.core.formats.normalization.StainNorm`) says which
method and which target.  :class:`~segloop.core.inference.normalize.Normalizer` fits the
*source* side here on the same strided sample it takes its statistics from
(:func:`fit_stain_norm`), records it in its ``stats["stain_norm"]`` (so a result's
provenance says what was applied), and maps every tile with the same fitted
:class:`StainTransform`, so tiles agree and a tiled image equals the whole one bit for bit
(the maps are written element-wise, no BLAS).

Methods
-------
``macenko``
    Optical density ``od = -ln(max(rgb / white, 1e-3))``.  Tissue pixels (``od >= 0.15`` in
    every channel, Macenko et al. 2009) give the image's two stain vectors: the plane of the
    two main eigenvectors of the od covariance, the directions at the 1st and 99th
    percentile of the angle in that plane, the one with more red absorbance first
    (hematoxylin).  Concentrations are the least-squares solution; their 99th percentiles
    are scaled to the target's ``max_concentrations`` and re-rendered with the target's
    ``stain_matrix``.  Whatever the two stains do not explain (the residual) is dropped, as
    in the method.
``reinhard``
    sRGB -> CIELAB (D65); each channel of every pixel is mapped by
    ``(lab - mean_tissue) * target_std / std_tissue + target_mean`` (Reinhard et al. 2001,
    in CIELAB as StainTools does, statistics over the tissue pixels), then back to sRGB,
    clipped.

When it does nothing
--------------------
An image with no tissue to fit on (fewer than :data:`MIN_TISSUE_PIXELS` tissue pixels, or
under 0.1% of the sample: a blank or white-only field), tissue that shows one stain only
(Macenko's two directions less than 3 degrees apart) or one uniform colour (Reinhard: a
CIELAB standard deviation under 0.1) is left as it is.  The stats then say
``"applied": false`` and why (``"reason"``); ``segloop predict`` prints that reason.  It is
never an error and never produces NaN.  Images that are not RGB are refused earlier, with
:class:`~segloop.errors.InvalidImageError`
(:func:`segloop.core.formats.normalization.output_channels`).

No GUI code and nothing beyond numpy here.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from segloop.core.formats.normalization import StainNorm
from segloop.errors import InvalidImageError, ModelPackageError

__all__ = ["MIN_TISSUE_PIXELS", "OD_TISSUE", "StainTransform", "fit_stain_norm", "fit_stain_target", "lab_to_rgb",
           "rgb_to_lab", "tissue_mask"]

#: Optical density every channel of a tissue pixel reaches (Macenko's beta).
OD_TISSUE = 0.15
#: Fewest tissue pixels a fit needs (and at least 0.1% of the sampled pixels).
MIN_TISSUE_PIXELS = 100
#: Tissue pixels used by a fit at most (a regular subsample beyond).
MAX_FIT_PIXELS = 1_000_000

_OD_FLOOR = 1e-3          # rgb / white below this is read as this (od <= 6.9): no log(0)
_ANGLE_PERCENTILE = 1.0   # Macenko's alpha
_MIN_STAIN_ANGLE = math.radians(3.0)
_MIN_LAB_STD = 0.1

# sRGB (D65) <-> XYZ, as skimage.color (rgb2xyz / xyz2rgb) uses them
_RGB_TO_XYZ = np.array([[0.412453, 0.357580, 0.180423],
                        [0.212671, 0.715160, 0.072169],
                        [0.019334, 0.119193, 0.950227]])
_XYZ_TO_RGB = np.linalg.inv(_RGB_TO_XYZ)
_WHITE_D65 = (0.95047, 1.0, 1.08883)


# ---------------------------------------------------------------------------
# element-wise colour maps (a tile gives exactly what the whole image gives)
# ---------------------------------------------------------------------------


def _mat3(m: np.ndarray, x: list[np.ndarray]) -> list[np.ndarray]:
    """``m @ x`` per pixel for three channel planes ``x``, written out (no BLAS)."""
    return [x[0] * m[i, 0] + x[1] * m[i, 1] + x[2] * m[i, 2] for i in range(3)]


def _od(rgb01: np.ndarray) -> list[np.ndarray]:
    return [-np.log(np.maximum(rgb01[..., k], _OD_FLOOR)) for k in range(3)]


def rgb_to_lab(rgb01: np.ndarray) -> np.ndarray:
    """sRGB in ``[0, 1]`` (channels last) to CIELAB (D65, 2°), element-wise.

    Parameters
    ----------
    rgb01 : (..., 3) float ndarray

    Returns
    -------
    (..., 3) float64 ndarray
        L in ``[0, 100]``; matches :func:`skimage.color.rgb2lab` to rounding.
    """
    x = [np.asarray(rgb01[..., k], np.float64) for k in range(3)]
    lin = [np.where(c > 0.04045, ((c + 0.055) / 1.055) ** 2.4, c / 12.92) for c in x]
    xyz = _mat3(_RGB_TO_XYZ, lin)
    f = []
    for c, w in zip(xyz, _WHITE_D65, strict=True):
        t = c / w
        f.append(np.where(t > 0.008856, np.cbrt(t), 7.787 * t + 16.0 / 116.0))
    return np.stack([116.0 * f[1] - 16.0, 500.0 * (f[0] - f[1]), 200.0 * (f[1] - f[2])], axis=-1)


def lab_to_rgb(lab: np.ndarray) -> np.ndarray:
    """CIELAB (D65, 2°) to sRGB in ``[0, 1]`` (clipped), element-wise; the inverse of :func:`rgb_to_lab`."""
    L, a, b = (np.asarray(lab[..., k], np.float64) for k in range(3))
    fy = (L + 16.0) / 116.0
    f = [fy + a / 500.0, fy, fy - b / 200.0]
    xyz = [np.where(t > 0.2068966, t ** 3, (t - 16.0 / 116.0) / 7.787) * w for t, w in zip(f, _WHITE_D65, strict=True)]
    lin = _mat3(_XYZ_TO_RGB, xyz)
    out = []
    for c in lin:
        c = np.maximum(c, 0.0)
        out.append(np.clip(np.where(c > 0.0031308, 1.055 * c ** (1 / 2.4) - 0.055, 12.92 * c), 0.0, 1.0))
    return np.stack(out, axis=-1)


# ---------------------------------------------------------------------------
# fitting
# ---------------------------------------------------------------------------


def tissue_mask(rgb01: np.ndarray) -> np.ndarray:
    """Pixels with optical density >= :data:`OD_TISSUE` in every channel: ``(..., 3) -> (...)`` bool."""
    od = _od(rgb01)
    return (od[0] >= OD_TISSUE) & (od[1] >= OD_TISSUE) & (od[2] >= OD_TISSUE)


class _NotApplied(Exception):
    """The fit found nothing to normalize (the reason is the message)."""


def _tissue(rgb01: np.ndarray) -> np.ndarray:
    """The tissue pixels of ``(N, 3)`` RGB (a regular subsample beyond :data:`MAX_FIT_PIXELS`)."""
    t = rgb01[tissue_mask(rgb01)]
    need = max(MIN_TISSUE_PIXELS, int(math.ceil(0.001 * rgb01.shape[0])))
    if t.shape[0] < need:
        raise _NotApplied(f"no tissue to fit on: {t.shape[0]} of {rgb01.shape[0]} sampled pixels are stained "
                          f"(optical density >= {OD_TISSUE} in R, G and B); {need} needed")
    if t.shape[0] > MAX_FIT_PIXELS:
        t = t[:: int(math.ceil(t.shape[0] / MAX_FIT_PIXELS))]
    return t


def _macenko(tissue: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(stain_matrix (2, 3), max_concentrations (2,))`` of tissue RGB in ``[0, 1]``."""
    od = np.stack(_od(tissue), axis=-1)
    _, vecs = np.linalg.eigh(np.cov(od, rowvar=False))
    plane = vecs[:, [2, 1]]                          # the two main directions
    plane[:, plane[0] < 0] *= -1.0                   # pointing into positive red od
    proj = od @ plane
    phi = np.arctan2(proj[:, 1], proj[:, 0])
    lo, hi = np.percentile(phi, [_ANGLE_PERCENTILE, 100.0 - _ANGLE_PERCENTILE])
    if hi - lo < _MIN_STAIN_ANGLE:
        raise _NotApplied(f"the tissue shows one stain only (its two stain directions are "
                          f"{math.degrees(hi - lo):.1f} degrees apart)")
    v1 = plane @ np.array([math.cos(lo), math.sin(lo)])
    v2 = plane @ np.array([math.cos(hi), math.sin(hi)])
    stains = np.array([v1, v2] if v1[0] > v2[0] else [v2, v1])   # hematoxylin: more red absorbance
    stains /= np.linalg.norm(stains, axis=1, keepdims=True)
    conc = np.linalg.lstsq(stains.T, od.T, rcond=None)[0]        # (2, N)
    cmax = np.percentile(conc, 99, axis=1)
    if not (np.all(np.isfinite(cmax)) and cmax.min() > 1e-6):
        raise _NotApplied("the stain concentrations of the tissue are (almost) zero")
    return stains, cmax


def _reinhard(tissue: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(lab_mean (3,), lab_std (3,))`` of tissue RGB in ``[0, 1]``."""
    lab = rgb_to_lab(tissue)
    mean, std = lab.mean(axis=0), lab.std(axis=0)
    if std.min() < _MIN_LAB_STD:
        raise _NotApplied(f"the tissue has one uniform colour (CIELAB std {', '.join(f'{v:.2g}' for v in std)})")
    return mean, std


def _as_rgb01(rgb01: Any) -> np.ndarray:
    a = np.asarray(rgb01, np.float64)
    if a.ndim < 2 or a.shape[-1] != 3:
        raise InvalidImageError(f"stain normalization needs RGB pixels (..., 3), got shape {a.shape}")
    a = a.reshape(-1, 3)
    return a[np.isfinite(a).all(axis=1)]


def fit_stain_norm(spec: StainNorm | dict, rgb01: np.ndarray) -> dict[str, Any]:
    """Fit the source side of a stain normalization on sampled pixels of the whole image.

    Parameters
    ----------
    spec : StainNorm or dict
        Method and target (``{"method": "macenko"}``: the built-in reference).
    rgb01 : (N, 3) or (..., 3) float ndarray
        RGB in ``[0, 1]`` (white = 1), e.g. the strided sample of the image; rows with a
        NaN or Inf are ignored.

    Returns
    -------
    stats : dict
        JSON-able: ``method``, ``target`` (the one in use), ``target_source``
        (``"spec"`` or ``"reference"``), ``tissue_pixels``, ``applied`` and, when applied,
        ``source`` (the fitted stain matrix and max concentrations, or CIELAB mean and
        std), else ``reason``.  :meth:`StainTransform.from_stats` rebuilds the map.
    """
    spec = StainNorm.from_dict(spec)
    px = _as_rgb01(rgb01)
    stats: dict[str, Any] = {"method": spec.method, "target": spec.target(),
                             "target_source": "spec" if spec.has_target else "reference",
                             "tissue_pixels": int(np.count_nonzero(tissue_mask(px)))}
    try:
        tissue = _tissue(px)
        if spec.method == "macenko":
            stains, cmax = _macenko(tissue)
            stats["source"] = {"stain_matrix": stains.round(6).tolist(), "max_concentrations": cmax.round(6).tolist()}
        else:
            mean, std = _reinhard(tissue)
            stats["source"] = {"lab_mean": mean.round(6).tolist(), "lab_std": std.round(6).tolist()}
    except _NotApplied as e:
        stats.update(applied=False, reason=str(e))
        return stats
    stats["applied"] = True
    return stats


def fit_stain_target(method: str, image: Any) -> dict[str, Any]:
    """A target for a spec's ``stain_norm``, fitted on a reference image you choose.

    Parameters
    ----------
    method : {"macenko", "reinhard"}
    image : (H, W, 3) or (H, W, 4) array-like
        A well-stained reference tile (uint8, uint16, or float in ``[0, 1]`` / ``[0, 255]``).

    Returns
    -------
    dict
        ``{"method": ..., "target": {...}}``, to put as ``"stain_norm"`` in a
        normalization spec.

    Raises
    ------
    InvalidImageError
        Not RGB, or no usable tissue in the image.
    """
    StainNorm(method=method)                              # the method is known (ModelPackageError)
    a = np.asarray(image)
    if a.ndim != 3 or a.shape[-1] not in (3, 4) or a.dtype.kind not in "biuf":
        raise InvalidImageError(f"a stain target needs an RGB image (H, W, 3), got shape {a.shape} {a.dtype}")
    rgb = a[..., :3].astype(np.float64)
    finite_max = float(np.nanmax(np.where(np.isfinite(rgb), rgb, np.nan))) if rgb.size else 0.0
    white = (float(np.iinfo(a.dtype).max) if a.dtype.kind in "iu" else 1.0 if a.dtype.kind == "b" or finite_max <= 1
             else 255.0 if finite_max <= 255 else finite_max)
    stats = fit_stain_norm({"method": method}, rgb / white)
    if not stats["applied"]:
        raise InvalidImageError(f"cannot fit a {method} stain target on this image: {stats['reason']}")
    return {"method": method, "target": stats["source"]}


# ---------------------------------------------------------------------------
# applying
# ---------------------------------------------------------------------------


class StainTransform:
    """The fitted per-pixel map of one image: RGB in ``[0, 1]`` -> normalized RGB in ``[0, 1]``.

    Build with :meth:`from_stats` (the output of :func:`fit_stain_norm`); call on a tile,
    channels last.  Element-wise: a tile gives exactly the values the whole image gives.
    """

    def __init__(self, method: str, *, matrix: np.ndarray | None = None, lab_scale: np.ndarray | None = None,
                 lab_shift: np.ndarray | None = None) -> None:
        self.method = method
        self._m = matrix
        self._scale = lab_scale
        self._shift = lab_shift

    @classmethod
    def from_stats(cls, stats: dict[str, Any]) -> StainTransform | None:
        """The map recorded in ``stats``, or None when the fit was not applied.

        Raises
        ------
        ModelPackageError
            ``stats`` is not the output of :func:`fit_stain_norm`.
        """
        try:
            if not stats["applied"]:
                return None
            method, target, source = stats["method"], stats["target"], stats["source"]
            if method == "macenko":
                src = np.asarray(source["stain_matrix"], np.float64).reshape(2, 3)
                tgt = np.asarray(target["stain_matrix"], np.float64).reshape(2, 3)
                ratio = (np.asarray(target["max_concentrations"], np.float64).reshape(2)
                         / np.asarray(source["max_concentrations"], np.float64).reshape(2))
                to_conc = np.linalg.pinv(src.T)                    # (2, 3): od -> concentrations
                matrix = tgt.T @ (ratio[:, None] * to_conc)        # (3, 3): od -> normalized od
                if not np.all(np.isfinite(matrix)):
                    raise ValueError("non-finite map")
                return cls(method, matrix=matrix)
            if method == "reinhard":
                mean_s, std_s = (np.asarray(source[k], np.float64).reshape(3) for k in ("lab_mean", "lab_std"))
                mean_t, std_t = (np.asarray(target[k], np.float64).reshape(3) for k in ("lab_mean", "lab_std"))
                scale = std_t / std_s
                if not (np.all(np.isfinite(scale)) and np.all(np.isfinite(mean_s))):
                    raise ValueError("non-finite map")
                return cls(method, lab_scale=scale, lab_shift=mean_t - mean_s * scale)
            raise ValueError(f"unknown method {method!r}")
        except (KeyError, TypeError, ValueError) as e:
            raise ModelPackageError(f"stain normalization stats cannot be read ({e}); they must come from "
                                    "fit_stain_norm") from None

    def __call__(self, rgb01: np.ndarray) -> np.ndarray:
        """Map RGB in ``[0, 1]``: ``(..., 3) -> (..., 3)`` float64 in ``[0, 1]``; NaN stays NaN."""
        if self.method == "macenko":
            od = _mat3(self._m, _od(rgb01))
            return np.stack([np.clip(np.exp(-o), 0.0, 1.0) for o in od], axis=-1)
        lab = rgb_to_lab(np.clip(rgb01, 0.0, 1.0))
        for k in range(3):
            lab[..., k] = lab[..., k] * self._scale[k] + self._shift[k]
        return lab_to_rgb(lab)

    def __repr__(self) -> str:
        return f"StainTransform({self.method})"
