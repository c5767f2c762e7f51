"""Augmentation and patch sampling for fine-tuning (no Qt, no napari).

A patch goes through, in this order (all randomness from the ``numpy.random.Generator``
passed in, so a run is reproducible from its seed and a resumed run draws the same
patches as an uninterrupted one):

1. **where**: a sample is drawn in proportion to its reviewed pixels; the patch is centred
   on a reviewed foreground pixel (``foreground_fraction`` of the time) or on any reviewed
   pixel, jittered by up to a quarter patch;
2. **scale**: with probability ``zoom_p`` a window ``patch / s`` wide (``s`` log-uniform in
   ``zoom``) is cut and resampled to ``patch`` (image bilinear, target nearest);
3. **raw intensities**, by modality (``FolderInfo.modality``):
   ``"histology"`` / ``"brightfield"`` RGB: H&E/IHC **stain jitter** (each stain's optical
   density scaled and shifted in the colour-deconvolution space of
   :func:`skimage.color.rgb2hed`); ``"ct"``: a **contrast** change about the window level,
   a global **HU shift** and Gaussian **noise**, all in HU, before windowing;
4. **normalization** with the statistics fitted on the sample's whole image, as
   ``Model.predict`` does at inference;
5. **flips and 90° rotations** (all modalities);
6. **intensity gain/offset and gamma** (and a little noise) on the normalized patch.

Targets (class ids, ``IGNORE`` = 255 where not reviewed) follow every geometric step,
so image and target stay aligned; padding outside the image is ``IGNORE``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from skimage.color import hed_from_rgb, rgb_from_hed
from skimage.transform import resize

from segloop.core.inference.normalize import Normalizer
from segloop_train.data import IGNORE

__all__ = ["AugmentConfig", "AugmentedPatchSampler", "ReviewedPatchSampler", "ct_jitter", "flip_rotate",
           "intensity_jitter", "stain_jitter", "HISTOLOGY_MODALITIES"]

#: Folder modalities that get stain jitter (when the image is RGB).
HISTOLOGY_MODALITIES = ("histology", "brightfield", "he", "ihc")

_LOG_ADJUST = math.log(1e-6)     # as in skimage.color.separate_stains / combine_stains


@dataclass(frozen=True)
class AugmentConfig:
    """Which augmentations run and how strong they are (saved in the package's record).

    Attributes
    ----------
    flips : bool
        Random flips and 90° rotations.
    zoom : (float, float) or None
        Range of spatial scale factors (log-uniform); None: no rescaling.
    zoom_p : float
        Probability of rescaling a patch.
    intensity : bool
        Gain ``exp(N(0, 0.2))``, offset ``N(0, 0.1)``, gamma ``exp(N(0, 0.25))`` (p = 0.3)
        and noise ``N(0, 0.03)`` (p = 0.3) on the normalized patch.
    stain_sigma, stain_bias : float
        Stain jitter for RGB histology: each stain's optical density becomes
        ``od * (1 + N(0, stain_sigma)) + N(0, stain_bias)``; 0 turns it off.
    ct_shift_hu, ct_noise_hu : float
        CT: add ``N(0, ct_shift_hu)`` HU to the whole patch and noise with a standard
        deviation drawn uniformly in ``[0, ct_noise_hu]`` HU; 0 turns them off.
    ct_contrast : float
        CT: scale HU about the window level by ``exp(N(0, ct_contrast))`` (before the shift
        and the noise); 0 turns it off.
    foreground_fraction : float
        Share of patches centred on a reviewed foreground pixel.
    """

    flips: bool = True
    zoom: tuple[float, float] | None = (0.8, 1.25)
    zoom_p: float = 0.5
    intensity: bool = True
    stain_sigma: float = 0.05
    stain_bias: float = 0.02
    ct_shift_hu: float = 20.0
    ct_noise_hu: float = 15.0
    ct_contrast: float = 0.1
    foreground_fraction: float = 0.7
    schema_version: int = 1

    def to_dict(self) -> dict:
        d = asdict(self)
        d["zoom"] = list(self.zoom) if self.zoom else None
        return d

    @classmethod
    def none(cls) -> AugmentConfig:
        """No augmentation at all (patches only)."""
        return cls(flips=False, zoom=None, intensity=False, stain_sigma=0.0, stain_bias=0.0,
                   ct_shift_hu=0.0, ct_noise_hu=0.0, ct_contrast=0.0)


def stain_jitter(rgb: np.ndarray, rng: np.random.Generator, *, sigma: float = 0.05, bias: float = 0.02,
                 scale: float = 255.0) -> np.ndarray:
    """H&E / IHC stain jitter in colour-deconvolution (HED optical density) space.

    Parameters
    ----------
    rgb : (..., 3) ndarray
        RGB in ``[0, scale]`` (uint8 images: 255).
    rng : numpy.random.Generator
    sigma, bias : float
        Each of hematoxylin, eosin and DAB gets ``od * (1 + N(0, sigma)) + N(0, bias)``.
    scale : float
        White value of ``rgb``.

    Returns
    -------
    (..., 3) float32 ndarray in ``[0, scale]``.  With ``sigma = bias = 0`` it equals ``rgb``
    (up to rounding): the transform is inverted exactly, without clipping stains.
    """
    x = np.clip(np.asarray(rgb, np.float64) / scale, 1e-6, 1.0)
    od = np.log(x) / _LOG_ADJUST                       # (..., 3), >= 0
    stains = od @ hed_from_rgb
    alpha = 1.0 + rng.normal(0.0, sigma, 3) if sigma else np.ones(3)
    beta = rng.normal(0.0, bias, 3) if bias else np.zeros(3)
    stains = stains * alpha + beta
    out = np.exp(_LOG_ADJUST * (stains @ rgb_from_hed))
    return (np.clip(out, 0.0, 1.0) * scale).astype(np.float32)


def ct_jitter(hu: np.ndarray, rng: np.random.Generator, *, shift_hu: float = 20.0,
              noise_hu: float = 15.0, contrast: float = 0.0, level: float = 40.0) -> np.ndarray:
    """CT intensity jitter in Hounsfield units (before windowing); float32 HU out.

    ``level + (hu - level) * exp(N(0, contrast))`` (contrast about the window level), then a
    global shift ``N(0, shift_hu)`` and Gaussian noise with a standard deviation drawn
    uniformly in ``[0, noise_hu]``.  Each term is skipped when its strength is 0.
    """
    out = np.asarray(hu, np.float32)
    if contrast:
        gain = np.float32(np.exp(rng.normal(0.0, contrast)))
        out = np.float32(level) + (out - np.float32(level)) * gain
    if shift_hu:
        out = out + np.float32(rng.normal(0.0, shift_hu))
    if noise_hu:
        sd = float(rng.uniform(0.0, noise_hu))
        out = out + rng.normal(0.0, sd, out.shape).astype(np.float32)
    return out


def flip_rotate(img: np.ndarray, tgt: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The same random 90° rotation and horizontal flip of ``img`` (C, H, W) and ``tgt`` (H, W)."""
    k = int(rng.integers(4))
    img, tgt = np.rot90(img, k, axes=(1, 2)), np.rot90(tgt, k)
    if rng.random() < 0.5:
        img, tgt = img[:, :, ::-1], tgt[:, ::-1]
    return img, tgt


def intensity_jitter(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Gain, offset, gamma and noise on a normalized (C, H, W) patch."""
    img = img * np.float32(np.exp(rng.normal(0, 0.2))) + np.float32(rng.normal(0, 0.1))
    if rng.random() < 0.3:
        gamma = float(np.exp(rng.normal(0, 0.25)))
        img = np.sign(img) * np.abs(img) ** gamma
    if rng.random() < 0.3:
        img = img + rng.normal(0, 0.03, img.shape).astype(np.float32)
    return img


def _coords(mask: np.ndarray, rng: np.random.Generator, limit: int = 200_000) -> np.ndarray:
    """Flat indices of ``mask`` (at most ``limit``, a fixed random subset) as int64."""
    idx = np.flatnonzero(mask)
    if idx.size > limit:
        idx = np.sort(rng.choice(idx, limit, replace=False))
    return idx


class ReviewedPatchSampler:
    """What the 2D and the volume samplers share: where patches are drawn from, raw jitter,
    zoom, the last augmentation steps and batching.

    ``targets`` hold class ids with ``IGNORE`` where not reviewed; a sample is drawn in
    proportion to its reviewed pixels (voxels).
    """

    images: list[np.ndarray]
    normalizers: list[Normalizer]
    targets: list[np.ndarray]
    modalities: list[str]
    config: AugmentConfig

    def _index(self, images, normalizers, targets, modalities, config: AugmentConfig, what: str) -> None:
        self.images, self.normalizers, self.targets = images, normalizers, targets
        self.modalities = [m.lower() for m in modalities]
        self.config = config
        rng = np.random.default_rng(0)       # only to subsample coordinates of huge images
        self.reviewed = [_coords(t != IGNORE, rng) for t in targets]
        self.foreground = [_coords((t > 0) & (t != IGNORE), rng) for t in targets]
        w = np.array([np.count_nonzero(t != IGNORE) for t in targets], float)
        if w.sum() == 0:
            raise ValueError(f"no reviewed {what}")
        self.weights = w / w.sum()

    def _centre_index(self, i: int, rng: np.random.Generator) -> int:
        """Flat index of a reviewed pixel of sample ``i``: foreground ``foreground_fraction`` of the time."""
        pool = self.foreground[i] if (len(self.foreground[i]) and rng.random() < self.config.foreground_fraction) \
            else self.reviewed[i]
        return int(pool[rng.integers(len(pool))])

    def _zoomed_side(self, p: int, rng: np.random.Generator) -> int:
        """The side of the raw crop that becomes a ``p`` patch (zoom, ``zoom_p`` of the time)."""
        cfg = self.config
        scale = 1.0
        if cfg.zoom and rng.random() < cfg.zoom_p:
            lo, hi = cfg.zoom
            scale = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
        return max(4, int(round(p / scale)))

    def _raw_jitter(self, i: int, raw: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        cfg, mod = self.config, self.modalities[i]
        if mod in HISTOLOGY_MODALITIES and raw.ndim >= 3 and raw.shape[-1] in (3, 4) \
                and (cfg.stain_sigma or cfg.stain_bias):
            scale = float(self.normalizers[i].stats.get("input_scale", 255.0 if raw.dtype == np.uint8 else 1.0))
            rgb = stain_jitter(raw[..., :3], rng, sigma=cfg.stain_sigma, bias=cfg.stain_bias, scale=scale)
            return rgb if raw.shape[-1] == 3 else np.concatenate([rgb, raw[..., 3:].astype(np.float32)], -1)
        if mod == "ct" and (cfg.ct_shift_hu or cfg.ct_noise_hu or cfg.ct_contrast):
            level = float(getattr(self.normalizers[i].spec, "level", 40.0))
            return ct_jitter(raw, rng, shift_hu=cfg.ct_shift_hu, noise_hu=cfg.ct_noise_hu, contrast=cfg.ct_contrast,
                             level=level)
        return raw

    def _finish(self, img: np.ndarray, tgt: np.ndarray, p: int | None, rng: np.random.Generator,
                flip=None) -> tuple[np.ndarray, np.ndarray]:
        """Resize a zoomed ``(C, side, side)`` crop to ``p`` (None: no zoom), then flips / rotations
        (``flip``, default :func:`flip_rotate`) and intensity jitter."""
        cfg = self.config
        if p is not None and img.shape[-1] != p:
            img = resize(img, (img.shape[0], p, p), order=1, mode="edge", anti_aliasing=False,
                         preserve_range=True).astype(np.float32)
            tgt = resize(tgt, (p, p), order=0, mode="edge", anti_aliasing=False,
                         preserve_range=True).astype(np.uint8)
        if cfg.flips:
            img, tgt = (flip or flip_rotate)(img, tgt, rng)
        if cfg.intensity:
            img = intensity_jitter(img, rng)
        return np.ascontiguousarray(img, np.float32), np.ascontiguousarray(tgt, np.uint8)

    def sample(self, i: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def batch(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """``(n, C, *patch)`` float32 images and ``(n, *patch)`` int64 targets."""
        xs, ys = [], []
        for _ in range(n):
            i = int(rng.choice(len(self.images), p=self.weights))
            img, tgt = self.sample(i, rng)
            xs.append(img)
            ys.append(tgt)
        return np.stack(xs), np.stack(ys).astype(np.int64)


class AugmentedPatchSampler(ReviewedPatchSampler):
    """Random augmented patches of raw 2D samples.

    Parameters
    ----------
    images : list of (H, W) or (H, W, C) ndarray
        Raw images as exported (any dtype).
    normalizers : list of Normalizer
        Fitted on each whole image (``Normalizer.fit``); give ``(C_out, h, w)`` float32.
    targets : list of (H, W) uint8
        Class ids, ``IGNORE`` (255) where not reviewed.
    modalities : list of str
        The folder modality of each image (chooses stain / CT jitter).
    patch : int
        Output patch side.
    config : AugmentConfig
    """

    def __init__(self, images: list[np.ndarray], normalizers: list[Normalizer], targets: list[np.ndarray],
                 modalities: list[str], *, patch: int, config: AugmentConfig = AugmentConfig()):
        if not images:
            raise ValueError("no images to sample patches from")
        self.patch = int(patch)
        self._index(images, normalizers, targets, modalities, config, "pixels in any training image")

    # ------------------------------------------------------------------ steps

    def _window(self, i: int, rng: np.random.Generator, side: int) -> tuple[int, int]:
        h, w = self.targets[i].shape
        cy, cx = divmod(self._centre_index(i, rng), w)
        q = side // 4
        y = cy - side // 2 + int(rng.integers(-q, q + 1))
        x = cx - side // 2 + int(rng.integers(-q, q + 1))
        return int(np.clip(y, 0, max(h - side, 0))), int(np.clip(x, 0, max(w - side, 0)))

    def _raw_crop(self, i: int, y: int, x: int, side: int) -> tuple[np.ndarray, np.ndarray]:
        img, tgt = self.images[i], self.targets[i]
        ci, ct = np.asarray(img[y:y + side, x:x + side]), tgt[y:y + side, x:x + side]
        ph, pw = side - ct.shape[0], side - ct.shape[1]
        if ph or pw:
            pad = ((0, ph), (0, pw)) + ((0, 0),) * (ci.ndim - 2)
            mode = "reflect" if min(ct.shape) > max(ph, pw) else "edge"
            ci = np.pad(ci, pad, mode=mode)
            ct = np.pad(ct, ((0, ph), (0, pw)), constant_values=IGNORE)
        return ci, ct

    def sample(self, i: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """One augmented patch of image ``i``: ``(C, p, p)`` float32 and ``(p, p)`` uint8."""
        side = self._zoomed_side(self.patch, rng)
        y, x = self._window(i, rng, side)
        raw, tgt = self._raw_crop(i, y, x, side)
        raw = self._raw_jitter(i, raw, rng)
        return self._finish(self.normalizers[i](raw), tgt, self.patch, rng)   # normalized: (C, side, side)
