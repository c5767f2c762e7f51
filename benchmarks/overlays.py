"""Overlay pictures of the benchmarks: an image with reference and predicted outlines.

Reference (ground truth) outlines are green, predicted ones magenta (:func:`skimage.segmentation.find_boundaries`):
the reference outline is drawn just outside its objects and the prediction's just inside, so
where the two agree both stay visible side by side, and touching objects stay apart.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["TRUTH_COLOUR", "PRED_COLOUR", "outline", "display_rgb", "overlay", "write_png"]

TRUTH_COLOUR = (0.1, 0.95, 0.2)        # green
PRED_COLOUR = (1.0, 0.2, 0.9)          # magenta


def outline(labels: np.ndarray, mode: str = "inner") -> np.ndarray:
    """Boolean mask of the boundary pixels of every object of ``labels`` (``mode`` of ``find_boundaries``)."""
    from skimage.segmentation import find_boundaries

    return find_boundaries(labels, mode=mode)


def _stretch(img: np.ndarray) -> np.ndarray:
    img = np.asarray(img, np.float64)
    lo, hi = np.percentile(img, (1, 99.8))
    return np.clip((img - lo) / max(hi - lo, 1e-9), 0, 1)


def display_rgb(image: np.ndarray) -> np.ndarray:
    """``(H, W, 3)`` float RGB in [0, 1] for showing ``image``.

    ``(H, W)`` is stretched between its 1st and 99.8th percentile and shown grey; uint8 RGB(A)
    as is (alpha dropped); other RGB dtypes stretched per channel; other channel counts
    are shown as their mean, grey.
    """
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] in (3, 4):
        rgb = image[..., :3]
        if rgb.dtype == np.uint8:
            return rgb.astype(np.float64) / 255.0
        return np.stack([_stretch(rgb[..., c]) for c in range(3)], -1)
    grey = image.mean(-1) if image.ndim == 3 else image
    return np.repeat(_stretch(grey)[..., None], 3, -1)


def overlay(image: np.ndarray, truth: np.ndarray | None, pred: np.ndarray | None) -> np.ndarray:
    """``image`` dimmed to 85 % with ``truth`` outlines green (outside) and ``pred`` magenta (inside), float RGB."""
    rgb = display_rgb(image) * 0.85
    if truth is not None:
        rgb[outline(truth, "outer")] = TRUTH_COLOUR
    if pred is not None:
        rgb[outline(pred)] = PRED_COLOUR
    return rgb


def write_png(path: Path, rgb: np.ndarray) -> Path:
    """Write float RGB in [0, 1] as an 8-bit PNG, atomically."""
    import imageio.v3 as iio

    from segloop.core._runtime import atomic_write_bytes

    data = iio.imwrite("<bytes>", np.round(np.clip(rgb, 0, 1) * 255).astype(np.uint8), extension=".png")
    return atomic_write_bytes(path, data, durable=False)
