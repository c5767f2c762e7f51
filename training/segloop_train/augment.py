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
   ``"histology"`` / ``"brightfield"`` RGB (:data:`HISTOLOGY_MODALITIES`): H&E/IHC **stain
   jitter** (each stain's optical density scaled and shifted in the colour-deconvolution
   space of :func:`skimage.color.rgb2hed`), then the **photometric** steps of
   :func:`photometric_jitter` - brightness / contrast / saturation / hue, Gaussian blur,
   JPEG artefacts - each with its own probability; ``"ct"``: a **contrast** change about
   the window level, a global **HU shift** and Gaussian **noise**, all in HU, before
   windowing.  Only the image changes here: targets are never touched;
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

__all__ = ["AugmentConfig", "AugmentedPatchSampler", "ReviewedPatchSampler", "color_jitter", "ct_jitter",
           "flip_rotate", "gaussian_blur", "intensity_jitter", "jpeg_artifacts", "photometric_jitter",
           "stain_jitter", "HISTOLOGY_MODALITIES", "PHOTOMETRIC_KEYS"]

#: Folder modalities that get stain jitter (when the image is RGB).
HISTOLOGY_MODALITIES = ("histology", "brightfield", "he", "ihc")

_LOG_ADJUST = math.log(1e-6)     # as in skimage.color.separate_stains / combine_stains

#: AugmentConfig keys of the RGB photometric steps (added after the first checkpoints were
#: written; see segloop_train.config.resume_value).
PHOTOMETRIC_KEYS = ("color_p", "brightness", "contrast", "saturation", "hue", "blur_p", "blur_sigma", "jpeg_p",
                    "jpeg_quality")

# RGB <-> YIQ (NTSC): hue is a rotation and saturation a scaling of the (I, Q) plane
_RGB_TO_YIQ = np.array([[0.299, 0.587, 0.114], [0.595716, -0.274453, -0.321263],
                        [0.211456, -0.522591, 0.311135]])
_YIQ_TO_RGB = np.linalg.inv(_RGB_TO_YIQ)


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
    class_balance : bool
        Foreground patches first draw one of the classes present in the sample (uniformly), then
        a pixel of it, as nnU-Net oversamples foreground: a rare class (a 3 mL lung nodule next
        to 3 L of lung) is then seen as often as a common one.  Off: a foreground pixel of any
        class, so classes are seen in proportion to their area.
    color_p : float
        RGB histology: probability of a colour jitter with factors ``1 + U(-b, b)`` for
        ``brightness``, ``contrast`` and ``saturation`` and a hue turn of ``U(-hue, hue)``
        (a fraction of the colour circle; 0.025 is 9 degrees).  0 turns it off.
    blur_p, blur_sigma : float
        RGB histology: probability of a Gaussian blur with ``sigma ~ U(0, blur_sigma)`` px.
    jpeg_p : float
        RGB histology: probability of a JPEG encode / decode at a quality drawn uniformly
        from ``jpeg_quality`` (inclusive).

    The defaults suit H&E (stain jitter ``stain_sigma`` 0.05 is mild; HED-jitter practice in
    HoVer-Net / StainTools uses up to 0.1-0.2: :meth:`strong_stain`).  None of the RGB
    steps touch other modalities, and each draws from the generator only when it is on, so
    turning them off gives exactly the patches of a config without them.
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
    class_balance: bool = False
    color_p: float = 0.8
    brightness: float = 0.1
    contrast: float = 0.2
    saturation: float = 0.2
    hue: float = 0.025
    blur_p: float = 0.2
    blur_sigma: float = 1.5
    jpeg_p: float = 0.2
    jpeg_quality: tuple[int, int] = (30, 90)
    schema_version: int = 1

    def __post_init__(self) -> None:
        for name in ("color_p", "blur_p", "jpeg_p"):
            v = getattr(self, name)
            if not 0.0 <= float(v) <= 1.0:
                raise ValueError(f"AugmentConfig.{name} is a probability in [0, 1], got {v!r}")
        for name in ("brightness", "contrast", "saturation", "blur_sigma"):
            if not 0.0 <= float(getattr(self, name)) < (1.0 if name != "blur_sigma" else 10.0):
                raise ValueError(f"AugmentConfig.{name} out of range: {getattr(self, name)!r}")
        if not 0.0 <= float(self.hue) <= 0.5:
            raise ValueError(f"AugmentConfig.hue is a fraction of the colour circle in [0, 0.5], got {self.hue!r}")
        lo, hi = (int(q) for q in self.jpeg_quality)
        if not 1 <= lo <= hi <= 100:
            raise ValueError(f"AugmentConfig.jpeg_quality must be (low, high) with 1 <= low <= high <= 100, "
                             f"got {self.jpeg_quality!r}")
        object.__setattr__(self, "jpeg_quality", (lo, hi))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["zoom"] = list(self.zoom) if self.zoom else None
        d["jpeg_quality"] = list(self.jpeg_quality)
        return d

    @property
    def photometric(self) -> bool:
        """Any of the RGB photometric steps (colour, blur, JPEG) is on."""
        return bool(self.color_p or self.blur_p or self.jpeg_p)

    @classmethod
    def none(cls) -> AugmentConfig:
        """No augmentation at all (patches only)."""
        return cls(flips=False, zoom=None, intensity=False, stain_sigma=0.0, stain_bias=0.0,
                   ct_shift_hu=0.0, ct_noise_hu=0.0, ct_contrast=0.0, color_p=0.0, blur_p=0.0, jpeg_p=0.0)

    @classmethod
    def strong_stain(cls, **changes) -> AugmentConfig:
        """The defaults with a stronger H&E stain jitter (``stain_sigma`` 0.12, ``stain_bias``
        0.03), as HED-jitter recipes for stain-robust H&E models use; ``changes`` override."""
        return cls(**{"stain_sigma": 0.12, "stain_bias": 0.03, **changes})


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
    alpha = 1.0 + rng.normal(0.0, sigma, 3) if sigma else np.ones(3)
    beta = rng.normal(0.0, bias, 3) if bias else np.zeros(3)
    # od = ln(x) / ln(1e-6); stains = od @ hed_from_rgb, scaled and shifted, back through
    # rgb_from_hed: folded into ONE affine map of ln(x) (float32: a few ms per 256^2 patch)
    m = (hed_from_rgb * alpha) @ rgb_from_hed
    v = _LOG_ADJUST * (beta @ rgb_from_hed)
    x = np.asarray(rgb, np.float32) * np.float32(1.0 / scale)
    np.clip(x, np.float32(1e-6), np.float32(1.0), out=x)
    out = np.log(x, out=x) @ m.astype(np.float32)
    out += v.astype(np.float32)
    np.exp(out, out=out)
    np.clip(out, 0.0, 1.0, out=out)
    return out * np.float32(scale)


def color_jitter(rgb: np.ndarray, rng: np.random.Generator, *, brightness: float = 0.1, contrast: float = 0.2,
                 saturation: float = 0.2, hue: float = 0.025, scale: float = 255.0) -> np.ndarray:
    """Brightness, contrast, saturation and hue jitter of RGB, as one linear map per patch.

    Factors ``1 + U(-x, x)`` for brightness (a gain), contrast (about the patch's mean
    luminance) and saturation (about each pixel's luminance, in the YIQ chroma plane), and
    a hue turn of ``2 pi U(-hue, hue)`` of the chroma plane.  Grey stays grey under
    saturation and hue.  Four draws from ``rng`` whatever the strengths.

    Parameters
    ----------
    rgb : (..., 3) ndarray
        RGB in ``[0, scale]``.
    rng : numpy.random.Generator
    brightness, contrast, saturation, hue : float
    scale : float
        White value of ``rgb``.

    Returns
    -------
    (..., 3) float32 ndarray in ``[0, scale]``.
    """
    b, c, s = (1.0 + rng.uniform(-v, v) for v in (brightness, contrast, saturation))
    turn = 2.0 * math.pi * rng.uniform(-hue, hue)
    chroma = s * np.array([[math.cos(turn), -math.sin(turn)], [math.sin(turn), math.cos(turn)]])
    m = _YIQ_TO_RGB @ np.block([[np.ones((1, 1)), np.zeros((1, 2))], [np.zeros((2, 1)), chroma]]) @ _RGB_TO_YIQ
    x = np.asarray(rgb, np.float32)
    mu = float(np.mean(x @ _RGB_TO_YIQ[0].astype(np.float32))) * b
    # m keeps grey: m @ (g, g, g) = (g, g, g), so contrast about mu commutes with it
    out = x @ (b * c * m.T).astype(np.float32) + np.float32((1.0 - c) * mu)
    return np.clip(out, 0.0, scale, out=out)


def gaussian_blur(rgb: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of ``(..., H, W, 3)`` RGB over H and W (``sigma`` px, reflected edges); float32."""
    from scipy.ndimage import gaussian_filter

    x = np.asarray(rgb, np.float32)
    return gaussian_filter(x, (0.0,) * (x.ndim - 3) + (sigma, sigma, 0.0), mode="reflect", truncate=3.0)


def jpeg_artifacts(rgb: np.ndarray, quality: int, *, scale: float = 255.0) -> np.ndarray:
    """``(..., H, W, 3)`` RGB in ``[0, scale]`` through a JPEG encode and decode (Pillow); float32."""
    import io

    from PIL import Image

    x = np.asarray(rgb, np.float32)
    u8 = np.clip(np.rint(x * np.float32(255.0 / scale)), 0, 255).astype(np.uint8)
    planes = u8.reshape(-1, *u8.shape[-3:])
    out = np.empty(planes.shape, np.float32)
    for k, plane in enumerate(planes):
        buf = io.BytesIO()
        Image.fromarray(plane, "RGB").save(buf, format="JPEG", quality=int(quality))
        buf.seek(0)
        with Image.open(buf) as im:
            out[k] = np.asarray(im.convert("RGB"), np.float32)
    return (out * np.float32(scale / 255.0)).reshape(x.shape)


def photometric_jitter(rgb: np.ndarray, rng: np.random.Generator, config: AugmentConfig, *,
                       scale: float = 255.0) -> np.ndarray:
    """The RGB photometric steps of ``config``, in order: colour jitter, blur, JPEG.

    Each step runs with its probability (``color_p``, ``blur_p``, ``jpeg_p``) and draws from
    ``rng`` only when that probability is above 0, so a config with all three at 0 returns
    ``rgb`` unchanged and leaves ``rng`` where it was.

    Parameters
    ----------
    rgb : (..., H, W, 3) ndarray
        RGB in ``[0, scale]``.
    rng : numpy.random.Generator
    config : AugmentConfig
    scale : float
        White value of ``rgb``.

    Returns
    -------
    ndarray
        ``rgb`` itself when no step ran, else float32 in ``[0, scale]``.
    """
    cfg = config
    if cfg.color_p and rng.random() < cfg.color_p:
        rgb = color_jitter(rgb, rng, brightness=cfg.brightness, contrast=cfg.contrast, saturation=cfg.saturation,
                           hue=cfg.hue, scale=scale)
    if cfg.blur_p and rng.random() < cfg.blur_p:
        sigma = float(rng.uniform(0.0, cfg.blur_sigma))
        if sigma >= 0.1:                      # narrower kernels are (almost) the identity
            rgb = gaussian_blur(rgb, sigma)
    if cfg.jpeg_p and rng.random() < cfg.jpeg_p:
        lo, hi = cfg.jpeg_quality
        rgb = jpeg_artifacts(rgb, int(rng.integers(lo, hi + 1)), scale=scale)
    return rgb


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
        self.by_class = [[_coords(t == c, rng) for c in np.unique(t) if 0 < c != IGNORE] if config.class_balance
                         else [] for t in targets]
        w = np.array([np.count_nonzero(t != IGNORE) for t in targets], float)
        if w.sum() == 0:
            raise ValueError(f"no reviewed {what}")
        self.weights = w / w.sum()

    def _centre_index(self, i: int, rng: np.random.Generator) -> int:
        """Flat index of a reviewed pixel of sample ``i``: foreground ``foreground_fraction`` of the time."""
        pool = self.foreground[i] if (len(self.foreground[i]) and rng.random() < self.config.foreground_fraction) \
            else self.reviewed[i]
        if pool is self.foreground[i] and self.by_class[i]:            # class_balance: a class, then a pixel
            pool = self.by_class[i][int(rng.integers(len(self.by_class[i])))]
        return int(pool[rng.integers(len(pool))])

    def _zoomed_side(self, p: int, rng: np.random.Generator) -> int:
        """The side of the raw crop that becomes a ``p`` patch (zoom, ``zoom_p`` of the time)."""
        cfg = self.config
        scale = 1.0
        if cfg.zoom and rng.random() < cfg.zoom_p:
            lo, hi = cfg.zoom
            scale = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
        return max(4, int(round(p / scale)))

    def _white(self, i: int, raw: np.ndarray) -> float:
        """The white value of sample ``i``'s RGB (as its normalizer read it, else by dtype)."""
        stats = self.normalizers[i].stats
        if "input_scale" in stats:
            return float(stats["input_scale"])
        dt = raw.dtype
        if dt.kind in "iu":
            return float(np.iinfo(dt).max)
        top = float(stats.get("sample_max", 1.0))
        return 1.0 if dt.kind == "b" or top <= 1.0 else 255.0 if top <= 255.0 else top

    def _raw_jitter(self, i: int, raw: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Modality-specific jitter of a raw crop (``(..., C)``); targets are not touched here."""
        cfg, mod = self.config, self.modalities[i]
        if mod in HISTOLOGY_MODALITIES and raw.ndim >= 3 and raw.shape[-1] in (3, 4) \
                and (cfg.stain_sigma or cfg.stain_bias or cfg.photometric):
            scale = self._white(i, raw)
            rgb = original = raw[..., :3]
            if cfg.stain_sigma or cfg.stain_bias:
                rgb = stain_jitter(rgb, rng, sigma=cfg.stain_sigma, bias=cfg.stain_bias, scale=scale)
            rgb = photometric_jitter(rgb, rng, cfg, scale=scale)
            if rgb is original:                   # no step ran (every probability missed)
                return raw
            rgb = np.asarray(rgb, np.float32)
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
