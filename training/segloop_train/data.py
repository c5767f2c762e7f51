"""Training samples, targets and patch sampling (no Qt, no napari).

A :class:`Sample` is one image with its labels and an optional ``reviewed``
mask (pixels with ``reviewed == 0`` are ignored by the loss).  Instance labels
become three-class targets (background / interior / boundary), the
representation the instance post-processing in ``segloop.core.inference.postprocess``
expects.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
from skimage.segmentation import find_boundaries

from segloop.core.formats.normalization import spec_from_dict
from segloop.core.inference.normalize import Normalizer

__all__ = ["Sample", "instance_targets", "reviewed_targets", "PatchSampler", "normalize_sample"]

IGNORE = 255


@dataclass
class Sample:
    """One training image.

    Attributes
    ----------
    image : (H, W) or (H, W, C) ndarray
    labels : (H, W) integer ndarray
        Instance ids (task "instance") or class ids (task "semantic").
    reviewed : (H, W) uint8 ndarray or None
        1 where a person checked the labels; 0 pixels are ignored in training.
    source : str
        Where it came from (file + frame), for provenance and splits.
    """

    image: np.ndarray
    labels: np.ndarray
    reviewed: np.ndarray | None = None
    source: str = ""
    meta: dict = field(default_factory=dict)


def instance_targets(labels: np.ndarray, *, boundary_px: int = 2) -> np.ndarray:
    """Instance ids -> uint8 classes 0 background, 1 interior, 2 boundary.

    The boundary is the inner rim of each object (``boundary_px`` thick), and
    pixels where two objects touch, so touching nuclei are separated by it.
    """
    lab = np.asarray(labels)
    bnd = find_boundaries(lab, mode="inner")
    for _ in range(boundary_px - 1):
        bnd |= find_boundaries(np.where(bnd, 0, lab), mode="inner") & (lab > 0)
    out = np.zeros(lab.shape, np.uint8)
    out[lab > 0] = 1
    out[bnd & (lab > 0)] = 2
    return out


def reviewed_targets(sample: Sample, task: str, *, boundary_px: int = 2, per_slice: bool = False) -> np.ndarray:
    """Class targets of ``sample`` with ``IGNORE`` (255) wherever they depend on unreviewed pixels.

    Semantic: the labels, ``IGNORE`` where ``reviewed == 0``.  Instance: the
    :func:`instance_targets` classes, ``IGNORE`` where ``reviewed == 0`` and also on object
    pixels within ``boundary_px`` of an unreviewed pixel, because whether such a pixel is
    interior or boundary depends on the (unknown) labels next to it.  So changing the labels
    of unreviewed pixels never changes a target, hence never the loss or its gradient.

    Works in 2D and 3D (boundaries and the unreviewed neighbourhood in the labels' own
    dimensionality).  ``per_slice=True`` treats a ``(Z, H, W)`` sample as ``Z`` separate 2D
    slices (2.5D models, whose targets are single slices).

    Returns
    -------
    uint8 ndarray, the labels' shape
    """
    from scipy import ndimage as ndi

    lab = np.asarray(sample.labels)
    if per_slice and lab.ndim == 3:
        rev = None if sample.reviewed is None else np.asarray(sample.reviewed)
        return np.stack([reviewed_targets(Sample(sample.image, lab[z], None if rev is None else rev[z]), task,
                                          boundary_px=boundary_px) for z in range(lab.shape[0])])
    if task == "instance":
        t = instance_targets(lab, boundary_px=boundary_px)
    else:
        t = lab.astype(np.uint8)
    if sample.reviewed is None:
        return t
    unreviewed = np.asarray(sample.reviewed) == 0
    if not unreviewed.any():
        return t
    t = np.where(unreviewed, IGNORE, t).astype(np.uint8)
    if task == "instance":
        near = ndi.binary_dilation(unreviewed, structure=np.ones((3,) * unreviewed.ndim, bool),
                                   iterations=boundary_px)
        t[near & (lab > 0)] = IGNORE
    return t


def normalize_sample(sample: Sample, norm_spec: dict) -> np.ndarray:
    """Whole-image normalization (stats from the full image, as at inference): (C, H, W) float32."""
    spec = spec_from_dict(norm_spec)
    ch_axis = -1 if sample.image.ndim == 3 else None
    return Normalizer.fit(spec, sample.image, channel_axis=ch_axis)(sample.image)


class PatchSampler:
    """Random patches weighted toward foreground and reviewed pixels, with augmentation.

    Parameters
    ----------
    images : list of (C, H, W) float32
        Normalized images.
    targets : list of (H, W) uint8
        Class targets, ``IGNORE`` (255) where not reviewed.
    patch : int
    foreground_fraction : float
        Share of patches centred on a foreground pixel.
    intensity_jitter : bool
        Random gain/offset/gamma on the normalized image.
    """

    def __init__(self, images: list[np.ndarray], targets: list[np.ndarray], *, patch: int = 256,
                 foreground_fraction: float = 0.7, intensity_jitter: bool = True, seed: int = 0):
        self.images, self.targets = images, targets
        self.patch = patch
        self.fg_frac = foreground_fraction
        self.jitter = intensity_jitter
        self.rng = np.random.default_rng(seed)
        self.fg_coords = [np.argwhere((t > 0) & (t != IGNORE)) for t in targets]
        self.weights = np.array([t.size for t in targets], float)
        self.weights /= self.weights.sum()

    def _crop(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        img, tgt = self.images[i], self.targets[i]
        h, w = tgt.shape
        p = self.patch
        if self.rng.random() < self.fg_frac and len(self.fg_coords[i]):
            cy, cx = self.fg_coords[i][self.rng.integers(len(self.fg_coords[i]))]
            y, x = cy - p // 2 + self.rng.integers(-p // 4, p // 4 + 1), cx - p // 2 + self.rng.integers(-p // 4, p // 4 + 1)
        else:
            y, x = self.rng.integers(0, max(h - p, 0) + 1), self.rng.integers(0, max(w - p, 0) + 1)
        y = int(np.clip(y, 0, max(h - p, 0)))
        x = int(np.clip(x, 0, max(w - p, 0)))
        ci, ct = img[:, y:y + p, x:x + p], tgt[y:y + p, x:x + p]
        ph, pw = p - ct.shape[0], p - ct.shape[1]
        if ph or pw:
            ci = np.pad(ci, ((0, 0), (0, ph), (0, pw)), mode="reflect" if min(ct.shape) > max(ph, pw) else "edge")
            ct = np.pad(ct, ((0, ph), (0, pw)), constant_values=IGNORE)
        return ci, ct

    def _augment(self, img: np.ndarray, tgt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        k = int(self.rng.integers(4))
        img, tgt = np.rot90(img, k, axes=(1, 2)), np.rot90(tgt, k)
        if self.rng.random() < 0.5:
            img, tgt = img[:, :, ::-1], tgt[:, ::-1]
        if self.jitter:
            gain = float(np.exp(self.rng.normal(0, 0.2)))
            offset = float(self.rng.normal(0, 0.1))
            img = img * gain + offset
            if self.rng.random() < 0.3:
                gamma = float(np.exp(self.rng.normal(0, 0.25)))
                img = np.sign(img) * np.abs(img) ** gamma
            if self.rng.random() < 0.3:
                img = img + self.rng.normal(0, 0.03, img.shape)
        return np.ascontiguousarray(img, np.float32), np.ascontiguousarray(tgt)

    def batch(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """``(n, C, p, p)`` float32 images and ``(n, p, p)`` int64 targets."""
        xs, ys = [], []
        for _ in range(n):
            i = int(self.rng.choice(len(self.images), p=self.weights))
            img, tgt = self._augment(*self._crop(i))
            xs.append(img)
            ys.append(tgt)
        return np.stack(xs), np.stack(ys).astype(np.int64)

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        while True:
            yield self.batch(8)
