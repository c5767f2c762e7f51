"""The classical nuclei baseline of the benchmarks: no learning, one function per image kind.

* **Greyscale fluorescence** (:func:`classical_nuclei`): Gaussian smoothing, Otsu threshold,
  holes filled, distance-transform watershed seeded by :func:`skimage.feature.peak_local_max`,
  small objects removed.
* **RGB bright-field (H&E, IHC)** (:func:`classical_brightfield`): the hematoxylin channel of
  :func:`skimage.color.rgb2hed` (nuclei are the hematoxylin-rich pixels), then the same steps.

:func:`baseline_parameters` scales the seed distance, the smoothing and the smallest object to
the pixel size when it is known (nuclei are 5-10 µm across whatever the scanner); with an
unknown pixel size it uses fixed pixel values (seeds >= 5 px apart, objects >= 15 px).
:func:`classical_instances` picks the variant by the image's shape.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["SEED_DISTANCE_UM", "MIN_AREA_UM2", "SMOOTH_UM", "baseline_parameters", "classical_nuclei",
           "classical_brightfield", "classical_instances"]

#: Watershed seeds at least this far apart (µm): a quarter to half a nucleus.
SEED_DISTANCE_UM = 2.5
#: Objects smaller than this (µm², a disc 3 µm across) are dropped.
MIN_AREA_UM2 = 7.0
#: Gaussian smoothing before the threshold and of the distance map (µm).
SMOOTH_UM = 0.5


def baseline_parameters(pixel_size: float | None) -> dict[str, float]:
    """``min_distance`` (px), ``min_size`` (px) and ``sigma`` (px) for a pixel size in µm/px (None: unknown)."""
    if pixel_size is None or not (math.isfinite(pixel_size) and pixel_size > 0):
        return {"min_distance": 5, "min_size": 15, "sigma": 1.0}
    return {"min_distance": max(2, round(SEED_DISTANCE_UM / pixel_size)),
            "min_size": max(4, round(MIN_AREA_UM2 / pixel_size ** 2)),
            "sigma": max(1.0, SMOOTH_UM / pixel_size)}


def classical_nuclei(image: np.ndarray, *, min_size: int = 15, min_distance: int = 4, sigma: float = 1.0
                     ) -> np.ndarray:
    """Bright nuclei on a dark background -> instances: Otsu + distance-transform watershed.

    Parameters
    ----------
    image : (H, W) ndarray
        One channel, nuclei bright (fluorescence, or a hematoxylin channel).
    min_size : int
        Objects of at most this many pixels are removed (before and after the watershed).
    min_distance : int
        Minimum distance between watershed seeds, pixels.
    sigma : float
        Gaussian smoothing of the image and of the distance map, pixels.

    Returns
    -------
    (H, W) ndarray of uint16 (uint32 above 65,535 objects)
        Object ids 1..n, 0 = background.
    """
    from scipy import ndimage as ndi
    from skimage import feature, filters, measure, morphology, segmentation

    img = filters.gaussian(np.asarray(image, np.float64), sigma)
    if float(img.max()) == float(img.min()):                   # a flat image has no threshold
        return np.zeros(img.shape, np.uint16)
    fg = img > filters.threshold_otsu(img)
    fg = ndi.binary_fill_holes(fg)
    fg = morphology.remove_small_objects(fg, max_size=min_size)
    dist = ndi.distance_transform_edt(fg)
    peaks = feature.peak_local_max(filters.gaussian(dist, sigma), min_distance=int(min_distance),
                                   labels=measure.label(fg), exclude_border=False)
    markers = np.zeros(fg.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    lab = segmentation.watershed(-dist, markers, mask=fg)
    lab = morphology.remove_small_objects(lab, max_size=min_size)
    lab = segmentation.relabel_sequential(lab)[0]
    return lab.astype(np.uint16 if lab.max() <= np.iinfo(np.uint16).max else np.uint32)


def hematoxylin_channel(rgb: np.ndarray) -> np.ndarray:
    """The hematoxylin optical density of an RGB(A) bright-field image (:func:`skimage.color.rgb2hed`)."""
    from skimage.color import rgb2hed

    return rgb2hed(np.asarray(rgb)[..., :3])[..., 0]


def classical_brightfield(rgb: np.ndarray, **params) -> np.ndarray:
    """H&E / IHC ``(H, W, 3|4)`` -> instances: :func:`classical_nuclei` on the hematoxylin channel."""
    return classical_nuclei(hematoxylin_channel(rgb), **params)


def classical_instances(image: np.ndarray, *, pixel_size: float | None = None) -> tuple[np.ndarray, str]:
    """The baseline for one image, chosen by its shape; returns ``(labels, variant)``.

    ``(H, W, 3)`` / ``(H, W, 4)`` images are bright-field RGB (``variant = "hematoxylin"``);
    ``(H, W)`` and ``(H, W, 1)`` are greyscale (``"grey"``); other channel counts are averaged
    to one channel (``"channel mean"``).  Parameters from :func:`baseline_parameters`.
    """
    params = baseline_parameters(pixel_size)
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] in (3, 4):
        return classical_brightfield(image, **params), "hematoxylin"
    if image.ndim == 3:
        if image.shape[-1] == 1:
            return classical_nuclei(image[..., 0], **params), "grey"
        return classical_nuclei(image.mean(-1), **params), "channel mean"
    return classical_nuclei(image, **params), "grey"
