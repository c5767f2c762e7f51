"""What kind of image this is: H&E, IHC, fluorescence or CT, guessed cheaply from its pixels.

:func:`guess_modality` looks at a bounded sample of the image (a few windows of each of a
few planes, never the whole array), so it costs the same on a tile and on a whole slide,
read eagerly, memory-mapped or lazily (dask).  The rules, in order:

* a volume whose reader says CT (DICOM ``Modality``, Hounsfield units), or any grey image
  or volume where at least 1 % of the sampled values are below -500 (air in HU: no
  microscope image has them) -> ``"ct"``;
* a volume read with geometry (NIfTI, DICOM, MRC) that is not CT -> ``None`` (MR, electron
  microscopy ...: no bundled model fits);
* a grey (single-channel) or multi-channel non-RGB image -> ``"fluorescence"``;
* an RGB image on a dark background (more than half of the sampled pixels near black: a
  colour fluorescence composite), or without colour (a grey image saved as RGB) and mostly
  dark -> ``"fluorescence"``;
* other RGB images are bright-field: ``"ihc"`` when DAB dominates, else ``"he"`` (also for
  blank glass and grey bright-field images saved as RGB, which then go through the
  hematoxylin channel like H&E).

DAB is told from hematoxylin and eosin by its colour in optical density (OD): of the three
stains only DAB absorbs blue more than green (Ruifrok & Johnston's stain vectors, as in
:func:`skimage.color.rgb2hed`: hematoxylin (0.65, 0.70, 0.29), eosin (0.07, 0.99, 0.11),
DAB (0.27, 0.57, 0.78) in R, G, B).  A tissue pixel counts as DAB when its blue OD exceeds
its green OD by :data:`DAB_MARGIN` and the DAB channel of ``rgb2hed`` exceeds the hematoxylin
channel; the image is IHC when at least :data:`DAB_FRACTION` of its tissue pixels are DAB.
(The DAB channel of ``rgb2hed`` alone does not separate them: on H&E tiles of CoNSeP and
CPM-15, eosin leaks into it and its mean reaches several times the hematoxylin mean.)
Measured on 1,443 H&E tiles (NuInsSeg 665, CoNSeP 656, DSB2018 colour 107, CPM-15 15; all
taken for H&E) the DAB fraction is at most 0.021; on scikit-image's IHC image and each of its
quarters it is 0.23-0.67.  No labelled IHC collection was at hand, so that is the only IHC
measured.  An IHC slide with little DAB is taken for H&E, which routes it to the same model
(see :func:`segloop.core.formats.registry.pick_model`).
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np

__all__ = ["DAB_FRACTION", "DAB_MARGIN", "MODALITIES", "MODALITY_LABELS", "Modality", "check_input_modality",
           "guess_modality"]

#: The modalities a model is picked for.
MODALITIES = ("he", "ihc", "fluorescence", "ct", "mr")
Modality = Literal["he", "ihc", "fluorescence", "ct", "mr"]

#: How each is written for people.
MODALITY_LABELS = {"he": "H&E", "ihc": "IHC", "fluorescence": "fluorescence", "ct": "CT", "mr": "MR"}

#: A tissue pixel is DAB when its blue optical density exceeds its green one by this much.
DAB_MARGIN = 0.2
#: The image is IHC when at least this fraction of its tissue pixels are DAB.
DAB_FRACTION = 0.07

_TISSUE_OD = 0.3          # summed R+G+B optical density above which a pixel is not glass
_DARK = 0.1               # a pixel whose brightest channel is below this is near black
_COLOURLESS = 0.02        # mean (max - min channel) below this: a grey image saved as RGB
_AIR_HU = -500.0
_AIR_FRACTION = 0.01
_WINDOW = 128             # sampled windows are at most this wide
_GRID = 4                 # ... on a grid of this many per side, for planes too big to stride
_PLANES = 5               # planes sampled along the last stack axis


def guess_modality(image=None, *, rgb: bool | None = None, info=None) -> Modality | None:
    """Guess what kind of image ``image`` is, from a bounded sample of its pixels.

    Parameters
    ----------
    image : (..., Y, X[, C]) array-like, optional
        The image: numpy, memory-mapped or dask; only a sample of it is read (at most
        ``5 * 16`` windows of 128 x 128 pixels, planes spread along the last stack axis).
    rgb : bool, optional
        The last axis holds RGB(A) colour (it must have 3 or 4 entries).  Default: ``info.axes``
        ends with ``S`` when ``info`` is an :class:`~segloop.core.formats.io.images.ImageInfo`,
        else the last axis has 3 or 4 entries.
    info : ImageInfo or VolumeInfo, optional
        What the reader said about the file: a :class:`VolumeInfo` with ``units == "HU"``
        or ``modality == "CT"`` is CT without looking at the pixels.

    Returns
    -------
    {"he", "ihc", "fluorescence", "ct", "mr"} or None
        ``"mr"`` only when the file says so (DICOM Modality MR).  None when no rule fits: no
        image and an ``info`` that says nothing, or a volume read with geometry that is not CT
        (an MR NIfTI says nothing of its modality; electron microscopy).

    Notes
    -----
    The rules and the DAB criterion are in this module's docstring.  Nothing is guessed
    from the file name.
    """
    from segloop.core.formats.io.geometry import VolumeInfo

    if info is not None and (str(getattr(info, "units", "")).upper() == "HU"
                             or str(getattr(info, "modality", "")).upper() == "CT"):
        return "ct"
    if info is not None and str(getattr(info, "modality", "")).upper() == "MR":
        return "mr"
    volume = isinstance(info, VolumeInfo)
    if image is None:
        return None
    shape = tuple(int(n) for n in image.shape)
    if len(shape) < 2:
        return None
    axes = str(getattr(info, "axes", "") or "")
    if rgb is None:
        rgb = axes.endswith("S") if axes else True
    rgb = bool(rgb) and len(shape) >= 3 and shape[-1] in (3, 4)           # grey + alpha is not colour
    if rgb and not volume:
        return _colour_modality(_sample(image, rgb=True)[:, :3])
    sample = _sample(image, rgb=False)
    if _looks_like_hu(sample):
        return "ct"
    return None if volume else "fluorescence"


def _sample(image, *, rgb: bool) -> np.ndarray:
    """A bounded sample of ``image``: ``(N, C)`` values for RGB, ``(N,)`` otherwise.

    Planes: the middle of every stack axis but the last, up to :data:`_PLANES` spread
    along the last.  In each plane, a strided view of at most ``_WINDOW * _GRID`` per side
    when it is that small, else a grid of ``_GRID x _GRID`` windows of ``_WINDOW`` pixels
    (whole chunks of a lazy array are read, never all of them).
    """
    shape = tuple(int(n) for n in image.shape)
    n_sp = len(shape) - (1 if rgb else 0)
    lead = shape[: n_sp - 2]
    h, w = shape[n_sp - 2: n_sp]
    fixed = tuple(n // 2 for n in lead[:-1])
    zs = sorted({int(round(v)) for v in np.linspace(0, lead[-1] - 1, min(_PLANES, lead[-1]))}) if lead else [None]
    side = _WINDOW * _GRID
    if h <= side and w <= side:
        step = max(1, math.ceil(max(h, w) / (side // 2)))
        boxes = [(slice(None, None, step), slice(None, None, step))]
    else:
        ys = np.linspace(0, max(h - _WINDOW, 0), _GRID).astype(int)
        xs = np.linspace(0, max(w - _WINDOW, 0), _GRID).astype(int)
        boxes = [(slice(y, y + _WINDOW), slice(x, x + _WINDOW)) for y in sorted(set(ys)) for x in sorted(set(xs))]
    parts = []
    for z in zs:
        at = fixed + ((z,) if z is not None else ())
        for by, bx in boxes:
            part = np.asarray(image[at + (by, bx)])
            parts.append(part.reshape(-1, shape[-1]) if rgb else part.reshape(-1))
    return np.concatenate(parts)


def _looks_like_hu(values: np.ndarray) -> bool:
    """At least 1 % of the values are air in Hounsfield units (below -500)."""
    if values.size == 0 or not (np.issubdtype(values.dtype, np.signedinteger)
                                or np.issubdtype(values.dtype, np.floating)):
        return False
    v = values[np.isfinite(values)] if np.issubdtype(values.dtype, np.floating) else values
    return v.size > 0 and float(np.mean(v < _AIR_HU)) >= _AIR_FRACTION


def _unit_rgb(x: np.ndarray) -> np.ndarray:
    """RGB values scaled to [0, 1] (by the integer type's range; floats by their own)."""
    if np.issubdtype(x.dtype, np.integer):
        return x.astype(np.float32) / float(np.iinfo(x.dtype).max)
    x = np.nan_to_num(x.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    top = float(x.max()) if x.size else 1.0
    return np.clip(x / (1.0 if top <= 1.0 else 255.0 if top <= 255.0 else top), 0.0, 1.0)


def _colour_modality(pixels: np.ndarray) -> Modality:
    """``(N, 3)`` RGB values -> fluorescence (dark or colourless), ihc (DAB) or he."""
    from skimage.color import rgb2hed

    x = _unit_rgb(pixels)
    if x.size == 0 or float(np.mean(x.max(axis=1) < _DARK)) > 0.5:
        return "fluorescence"
    if float(np.mean(x.max(axis=1) - x.min(axis=1))) < _COLOURLESS:      # grey saved as RGB
        return "fluorescence" if float(np.median(x.mean(axis=1))) < 0.5 else "he"
    od = -np.log(np.clip(x, 1.0 / 255.0, 1.0))
    tissue = od.sum(axis=1) > _TISSUE_OD
    if not tissue.any():
        return "he"                       # (nearly) blank glass: bright-field, nothing to tell the stain by
    t = x[tissue]
    hed = rgb2hed(t[None])[0]
    dab = ((od[tissue, 2] - od[tissue, 1]) > DAB_MARGIN) & (hed[:, 2] > hed[:, 0])
    return "ihc" if float(np.mean(dab)) >= DAB_FRACTION else "he"


def check_input_modality(spec, image, info=None, *, what: str = "the image") -> None:
    """Refuse a volume a CT or MR model cannot read: CT models window Hounsfield units, so an MR
    volume (or any volume without air at -1000 HU) would come out as noise; an MR model on CT the same.

    Parameters
    ----------
    spec : ModelSpec
    image : array-like
        The volume (only a bounded sample is read, as :func:`guess_modality`).
    info : VolumeInfo, optional
        What the reader said (DICOM Modality, HU units).
    what : str
        How the message names the input (a path, a layer name).

    Raises
    ------
    segloop.errors.InvalidImageError
        A CT model (``ct_window`` normalization) given a volume that is not CT in HU, or an MR
        model given CT.
    """
    from segloop.errors import InvalidImageError

    kind = (getattr(spec, "normalization", None) or {}).get("kind")
    model_mr = str(getattr(spec, "modality", "") or "").upper() == "MR"
    if kind != "ct_window" and not model_mr:
        return
    said = str(getattr(info, "modality", "") or "").upper()
    found = guess_modality(image, rgb=False, info=info)
    if kind == "ct_window" and found != "ct":
        why = ("the file says MR" if said == "MR" else
               f"the file says {said}" if said else "its values are not Hounsfield units (no air near -1000)")
        raise InvalidImageError(f"{what}: {spec.name} reads CT in Hounsfield units, but {why}; choose a model for "
                                "this modality (segloop list-models), or convert the scan to HU")
    if model_mr and found == "ct":
        raise InvalidImageError(f"{what}: {spec.name} is an MR model, but this is CT (Hounsfield units); choose a "
                                "CT model (segloop list-models)")
