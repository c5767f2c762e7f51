"""Interactive (prompted) segmentation: clicks and boxes -> one object's mask.

``load_interactive(name)`` returns an :class:`InteractiveModel`;
``model.segment(image, positive=[(y, x)], negative=[...], box=None, previous=None)`` returns a
bool mask of the image's shape. Only a window around the prompt is read, normalized and run
through the network (see :mod:`segloop.core.formats.prompt`), so a click costs the same on a
tile and on a whole slide; :meth:`InteractiveModel.segment_crop` returns just that window's
mask and where it goes, for callers that paint into large label arrays.

The window and the prompt maps are computed by :func:`prompt_window`, :func:`encode_prompt` and
:func:`read_window`, which the trainer uses too, so training and inference see the same inputs.
"""

from __future__ import annotations

import math
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from segloop.core.formats.package import ModelPackage, load_package
from segloop.core.formats.prompt import PromptSpec
from segloop.core.formats.registry import model_path
from segloop.core.inference.normalize import Normalizer
from segloop.core.inference.prepare import drop_alpha, resolve_normalization, validate_image
from segloop.errors import InvalidImageError, InvalidPromptError, ModelPackageError

__all__ = ["CropMask", "InteractiveModel", "Prompt", "Window", "check_prompt", "encode_prompt",
           "image_view", "load_interactive", "mask_to_window", "prompt_window", "read_window", "window_to_image"]


@dataclass(frozen=True)
class Prompt:
    """Clicks, box and previous mask on one plane, in image pixel coordinates ``(y, x)``.

    Attributes
    ----------
    positive, negative : tuple of (float, float)
    box : (y0, x0, y1, x1) or None
        Corners, ``y0 < y1`` and ``x0 < x1``.
    previous : bool ndarray or None
        The object's mask from the previous round: the plane's shape, or a crop of it whose
        first pixel is at ``previous_offset``.
    previous_offset : (int, int)
    """

    positive: tuple[tuple[float, float], ...] = ()
    negative: tuple[tuple[float, float], ...] = ()
    box: tuple[float, float, float, float] | None = None
    previous: np.ndarray | None = None
    previous_offset: tuple[int, int] = (0, 0)

    @property
    def n_clicks(self) -> int:
        return len(self.positive) + len(self.negative)


def _points(points, name: str, ndim: int) -> list[tuple[float, ...]]:
    if points is None:
        return []
    try:
        arr = np.asarray(points, dtype=np.float64)
    except (TypeError, ValueError):
        raise InvalidPromptError(f"{name} clicks must be a list of (y, x) points, got {points!r}") from None
    if arr.size == 0:
        return []
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[1] != ndim:
        axes = "(z, y, x)" if ndim == 3 else "(y, x)"
        raise InvalidPromptError(f"{name} clicks must be {axes} points for this image, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise InvalidPromptError(f"{name} clicks must be finite numbers, got {points!r}")
    return [tuple(float(v) for v in row) for row in arr]


def check_prompt(shape: Sequence[int], positive=(), negative=(), box=None, previous=None, *,
                 z: int | None = None) -> tuple[Prompt, int | None]:
    """Check a prompt against an image's spatial shape and bring it to one plane.

    Parameters
    ----------
    shape : (H, W) or (Z, H, W)
    positive, negative : sequence of points
        ``(y, x)``, or ``(z, y, x)`` on a volume (all on one plane, the one segmented).
    box : (y0, x0, y1, x1) or None
        On a volume, the plane comes from the clicks or ``z``.
    previous : bool array of ``shape`` (or of the plane's shape), a :class:`CropMask`, or None
        A CropMask (the last answer of :meth:`InteractiveModel.segment_crop`) keeps a whole
        slide's previous mask as small as the window.
    z : int, optional
        The plane of a volume; needed when no click gives it.

    Returns
    -------
    (Prompt, z)
        ``z`` is None for a 2D image.

    Raises
    ------
    InvalidPromptError
        No positive click and no box; a click outside the image; clicks on several planes of a
        volume; a box of zero area or outside the image; a previous mask of another shape.
    """
    shape = tuple(int(s) for s in shape)
    volume = len(shape) == 3
    pos = _points(positive, "positive", len(shape))
    neg = _points(negative, "negative", len(shape))
    plane = shape[-2:]
    if volume:
        zs = {int(round(p[0])) for p in pos + neg} | ({int(z)} if z is not None else set())
        if len(zs) > 1:
            raise InvalidPromptError(f"clicks on planes {sorted(zs)}: this model segments one plane at a time; "
                                     "click on one plane")
        if not zs:
            raise InvalidPromptError("a box on a volume needs the plane: give z= or a click")
        z = zs.pop()
        if not 0 <= z < shape[0]:
            raise InvalidPromptError(f"plane z={z} is outside the volume (0..{shape[0] - 1})")
        pos = [p[1:] for p in pos]
        neg = [p[1:] for p in neg]
    else:
        z = None
    for name, pts in (("positive", pos), ("negative", neg)):
        for y, x in pts:
            if not (-0.5 <= y < plane[0] - 0.5 and -0.5 <= x < plane[1] - 0.5):
                raise InvalidPromptError(f"{name} click at (y={y:.1f}, x={x:.1f}) is outside the image "
                                         f"({plane[0]} x {plane[1]}); click on the image")
    bx = None
    if box is not None:
        try:
            b = np.asarray(box, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError):
            raise InvalidPromptError(f"box must be (y0, x0, y1, x1), got {box!r}") from None
        if b.size != 4 or not np.isfinite(b).all():
            raise InvalidPromptError(f"box must be 4 finite numbers (y0, x0, y1, x1), got {box!r}")
        y0, y1 = sorted(b[[0, 2]])
        x0, x1 = sorted(b[[1, 3]])
        y0, x0 = max(y0, -0.5), max(x0, -0.5)
        y1, x1 = min(y1, plane[0] - 0.5), min(x1, plane[1] - 0.5)
        if y1 - y0 < 1 or x1 - x0 < 1:
            raise InvalidPromptError(f"the box {tuple(float(v) for v in b)} has no area inside the image "
                                     f"({plane[0]} x {plane[1]}); draw a box around the object")
        bx = (float(y0), float(x0), float(y1), float(x1))
    if not pos and bx is None:
        raise InvalidPromptError("give at least one positive click or a box around the object")
    prev, offset = None, (0, 0)
    if isinstance(previous, CropMask):
        if volume and (len(previous.offset) != 3 or previous.offset[0] != z):
            raise InvalidPromptError(f"the previous mask is on another plane than the clicks (z={z})")
        prev, offset = np.asarray(previous.mask, bool), tuple(int(v) for v in previous.offset[-2:])
        if offset[0] < 0 or offset[1] < 0 or offset[0] + prev.shape[0] > plane[0] or offset[1] + prev.shape[1] > plane[1]:
            raise InvalidPromptError(f"the previous mask at {offset} of shape {prev.shape} is outside the image plane "
                                     f"{plane}")
    elif previous is not None:
        prev = np.asarray(previous)
        if volume and prev.shape == shape:
            prev = prev[z]
        if prev.shape != plane:
            raise InvalidPromptError(f"previous mask has shape {prev.shape}, the image plane is {plane}")
        prev = prev.astype(bool, copy=False)
    if prev is not None and not prev.any():
        prev, offset = None, (0, 0)
    return Prompt(tuple(pos), tuple(neg), bx, prev, offset), z


@dataclass(frozen=True)
class Window:
    """A square window of the image seen by the network: ``side`` image pixels from (y0, x0)
    resampled to ``out`` x ``out`` network pixels (``scale = out / side``)."""

    y0: float
    x0: float
    side: float
    out: int

    @property
    def scale(self) -> float:
        return self.out / self.side

    def to_net(self, y: float, x: float) -> tuple[float, float]:
        """Image pixel centre -> network pixel coordinates."""
        s = self.scale
        return (y - self.y0 + 0.5) * s - 0.5, (x - self.x0 + 0.5) * s - 0.5

    def bounds(self, plane: Sequence[int]) -> tuple[int, int, int, int]:
        """Integer image rows/cols ``(r0, c0, r1, c1)`` the window covers, clipped to the plane."""
        r0 = max(0, int(math.floor(self.y0)))
        c0 = max(0, int(math.floor(self.x0)))
        r1 = min(int(plane[0]), int(math.ceil(self.y0 + self.side)))
        c1 = min(int(plane[1]), int(math.ceil(self.x0 + self.side)))
        return r0, c0, r1, c1


def prompt_window(prompt: Prompt, spec: PromptSpec, *, min_side: float | None = None) -> Window:
    """The window the network sees for ``prompt``.

    The extent of the clicks, the box and the previous mask, grown by ``spec.context`` of its
    size on each side, as a square no smaller than ``min_side`` image pixels (default
    ``spec.crop``: the model's resolution), centred on the extent.
    """
    ys: list[float] = [p[0] for p in prompt.positive + prompt.negative]
    xs: list[float] = [p[1] for p in prompt.positive + prompt.negative]
    if prompt.box is not None:
        ys += [prompt.box[0], prompt.box[2]]
        xs += [prompt.box[1], prompt.box[3]]
    if prompt.previous is not None:
        rows = np.flatnonzero(prompt.previous.any(axis=1)) + prompt.previous_offset[0]
        cols = np.flatnonzero(prompt.previous.any(axis=0)) + prompt.previous_offset[1]
        ys += [float(rows[0]), float(rows[-1])]
        xs += [float(cols[0]), float(cols[-1])]
    y0, y1, x0, x1 = min(ys), max(ys), min(xs), max(xs)
    extent = max(y1 - y0, x1 - x0) + 1.0
    side = max(float(spec.crop if min_side is None else min_side), extent * (1.0 + 2.0 * spec.context))
    cy, cx = (y0 + y1) / 2.0, (x0 + x1) / 2.0
    # whole-pixel corners: at the model's resolution the window is an exact crop, no interpolation
    return Window(float(round(cy + 0.5 - side / 2.0)), float(round(cx + 0.5 - side / 2.0)), side, int(spec.crop))


def _disk_map(points, window: Window, radius: float) -> np.ndarray:
    out = np.zeros((window.out, window.out), np.float32)
    if not points:
        return out
    g = np.arange(window.out, dtype=np.float32)
    r2 = float(radius) ** 2
    for y, x in points:
        ny, nx = window.to_net(y, x)
        d2 = (g[:, None] - ny) ** 2 + (g[None, :] - nx) ** 2
        out[d2 <= r2] = 1.0
    return out


def _sample_grid(window: Window, r0: int, c0: int, step: int) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates, in an array read from (r0, c0) with ``step``, of the network pixels' centres."""
    g = (np.arange(window.out) + 0.5) / window.scale - 0.5     # image coordinates from the window's corner
    ry = (window.y0 + g - r0) / step
    rx = (window.x0 + g - c0) / step
    return ry, rx


def _resample(plane: np.ndarray, ry: np.ndarray, rx: np.ndarray, order: int) -> np.ndarray:
    """``plane[..., ry, rx]`` on the outer grid of ``ry`` x ``rx``; 0 outside."""
    from scipy.ndimage import map_coordinates

    yy, xx = np.meshgrid(ry, rx, indexing="ij")
    if plane.ndim == 2:
        return map_coordinates(plane, [yy, xx], order=order, mode="constant", cval=0.0, prefilter=False)
    return np.stack([map_coordinates(c, [yy, xx], order=order, mode="constant", cval=0.0, prefilter=False)
                     for c in plane])


def encode_prompt(prompt: Prompt, window: Window, spec: PromptSpec) -> np.ndarray:
    """The prompt maps ``(len(spec.maps), out, out)`` float32 of ``prompt`` in ``window``."""
    maps = []
    for name in spec.maps:
        if name == "positive":
            maps.append(_disk_map(prompt.positive, window, spec.radius))
        elif name == "negative":
            maps.append(_disk_map(prompt.negative, window, spec.radius))
        elif name == "box":
            m = np.zeros((window.out, window.out), np.float32)
            if prompt.box is not None:
                y0, x0 = window.to_net(prompt.box[0], prompt.box[1])
                y1, x1 = window.to_net(prompt.box[2], prompt.box[3])
                g = np.arange(window.out)
                m[np.ix_((g >= y0) & (g <= y1), (g >= x0) & (g <= x1))] = 1.0
            maps.append(m)
        elif prompt.previous is None:   # previous
            maps.append(np.zeros((window.out, window.out), np.float32))
        else:
            maps.append((mask_to_window(prompt.previous, window, offset=prompt.previous_offset) >= 0.5
                         ).astype(np.float32))
    return np.stack(maps)


def mask_to_window(mask: np.ndarray, window: Window, *, offset: tuple[int, int] = (0, 0)) -> np.ndarray:
    """A mask (bool or 0..1) resampled onto the window's ``(out, out)`` grid (linear; 0 outside
    the mask): the previous-mask map, and the trainer's target and loss weights. ``mask`` is
    plane-shaped, or a crop of the plane whose first pixel is at ``offset``."""
    oy, ox = offset
    shifted = Window(window.y0 - oy, window.x0 - ox, window.side, window.out)
    r0, c0, r1, c1 = shifted.bounds(mask.shape)
    crop = np.asarray(mask[r0:r1, c0:c1], dtype=np.float32)
    ry, rx = _sample_grid(shifted, r0, c0, 1)
    return _resample(crop, ry, rx, 1).astype(np.float32)


def read_window(image: Any, window: Window, normalizer: Normalizer, *, channel_axis: int | None,
                z: int | None = None, context_slices: int = 1) -> np.ndarray:
    """The normalized image in ``window``: ``(C, out, out)`` float32, 0 outside the image.

    Only the window is read (with a stride when it is much larger than the network's input), so
    the cost does not grow with the image. On a volume, ``z`` is the plane and ``context_slices``
    neighbouring planes (clamped at the ends) are stacked as channels, as in 2.5D models.
    """
    spatial = tuple(image.shape[:-1] if channel_axis is not None else image.shape)
    plane = spatial[-2:]
    r0, c0, r1, c1 = window.bounds(plane)
    if r1 <= r0 or c1 <= c0:
        raise InvalidPromptError("the prompt's window is outside the image")
    step = max(1, int(1.0 / window.scale / 2.0))    # read at most ~2x the network's resolution
    if z is None:
        planes = [np.asarray(image[r0:r1:step, c0:c1:step])]
    else:
        k = context_slices // 2
        zs = [min(max(z + d, 0), spatial[0] - 1) for d in range(-k, k + 1)]
        planes = [np.asarray(image[zz, r0:r1:step, c0:c1:step]) for zz in zs]
    ry, rx = _sample_grid(window, r0, c0, step)
    out = [_resample(normalizer(p), ry, rx, 1) for p in planes]      # each (C, out, out)
    return np.ascontiguousarray(np.concatenate(out, axis=0), dtype=np.float32)


def window_to_image(prob: np.ndarray, window: Window, plane: Sequence[int]) -> tuple[np.ndarray, tuple[int, int]]:
    """Network-resolution probabilities back onto the image pixels the window covers.

    Returns ``(probabilities (h, w) float32, (r0, c0))``.
    """
    r0, c0, r1, c1 = window.bounds(plane)
    s = window.scale
    ry = (np.arange(r0, r1) - window.y0 + 0.5) * s - 0.5
    rx = (np.arange(c0, c1) - window.x0 + 0.5) * s - 0.5
    from scipy.ndimage import map_coordinates

    yy, xx = np.meshgrid(ry, rx, indexing="ij")
    back = map_coordinates(prob.astype(np.float32), [yy, xx], order=1, mode="nearest", prefilter=False)
    return back.astype(np.float32), (r0, c0)


def keep_prompted(mask: np.ndarray, prompt: Prompt, origin: tuple[int, int]) -> np.ndarray:
    """The parts of ``mask`` the prompt asked for: the connected parts under a positive click
    (the largest part when none is), with the pixels under negative clicks removed."""
    from scipy import ndimage as ndi

    if not mask.any():
        return mask
    lab, n = ndi.label(mask)
    r0, c0 = origin
    keep: set[int] = set()
    for y, x in prompt.positive:
        r, c = int(round(y)) - r0, int(round(x)) - c0
        if 0 <= r < mask.shape[0] and 0 <= c < mask.shape[1] and lab[r, c]:
            keep.add(int(lab[r, c]))
    if not keep:
        sizes = np.bincount(lab.ravel())[1:]
        keep = {int(np.argmax(sizes)) + 1}
    out = np.isin(lab, sorted(keep))
    for y, x in prompt.negative:
        r, c = int(round(y)) - r0, int(round(x)) - c0
        if 0 <= r < mask.shape[0] and 0 <= c < mask.shape[1]:
            out[r, c] = False
    return out


@dataclass
class CropMask:
    """The result of :meth:`InteractiveModel.segment_crop`.

    Attributes
    ----------
    mask : (h, w) bool ndarray
        The object inside the window (clipped to the image).
    offset : tuple of int
        Where ``mask[0, 0]`` is in the image: ``(y, x)``, or ``(z, y, x)`` on a volume.
    probability : (h, w) float32 ndarray
    window : Window
    n_clicks : int
    milliseconds : float
        Time of this call, reading the window included.
    """

    mask: np.ndarray
    offset: tuple[int, ...]
    probability: np.ndarray
    window: Window
    n_clicks: int
    milliseconds: float

    def paste(self, shape: Sequence[int]) -> np.ndarray:
        """The mask in a bool array of the image's spatial ``shape``."""
        full = np.zeros(tuple(int(s) for s in shape), bool)
        idx = tuple(slice(o, o + n) for o, n in zip(self.offset[-2:], self.mask.shape, strict=True))
        full[(*((self.offset[0],) if len(self.offset) == 3 else ()), *idx)] = self.mask
        return full


def image_view(spec, image, *, channel_axis: int | None | Literal["auto"] = "auto", stain: str = "auto"
               ) -> tuple[Any, int | None, bool, Any]:
    """Check an image for an interactive model and pick its normalization.

    A one-channel model reads an RGB image (H&E, IHC) through its hematoxylin channel unless
    ``stain="none"`` (the rule of :func:`~segloop.core.inference.stain.stain_normalization`).

    Returns
    -------
    (view, channel_axis, is_stack, norm_spec)
        ``view`` has an alpha channel dropped and bool read as uint8.

    Raises
    ------
    InvalidImageError
    """
    from segloop.core.inference.stain import stain_normalization

    shape = tuple(getattr(image, "shape", ()))
    rgb = channel_axis in ("auto", -1) and len(shape) >= 3 and shape[-1] in (3, 4)
    override = stain_normalization(spec, rgb=rgb, stain=stain) if rgb else None
    norm_spec, channels, _ = resolve_normalization(spec, override)
    channel_axis, stack = validate_image(image, channels=channels, channel_axis=channel_axis)
    view = drop_alpha(image, channel_axis, channels)
    if np.dtype(view.dtype) == np.bool_:
        view = np.asarray(view, dtype=np.uint8)
    return view, channel_axis, stack, norm_spec


class InteractiveModel:
    """A loaded interactive (click) model.

    Attributes
    ----------
    spec : ModelSpec
    prompt : PromptSpec
    predictor : TorchPredictor
    """

    def __init__(self, package: ModelPackage, *, device: str = "auto", precision: str = "auto",
                 stain: str = "auto"):
        from segloop.core.inference.engines import TorchPredictor
        from segloop.core.inference.model import build_network

        self.package = package
        self.spec = package.spec
        if self.spec.task != "interactive":
            raise ModelPackageError(f"{self.spec.name} is an automatic ({self.spec.task}) model, not an interactive "
                                    "one: use segloop.load_model(...).predict(image), or pick an interactive model")
        if int(self.spec.dims) != 2:
            raise ModelPackageError(f"{self.spec.name}: interactive models are 2D (dims 2), got dims {self.spec.dims}")
        self.prompt = self.spec.prompt_spec
        self.name = self.spec.name
        self.network = build_network(package)
        self.predictor = TorchPredictor(self.network, device=device, precision=precision)
        self.stain = stain
        self._norm_cache: tuple[Any, tuple, Normalizer] | None = None

    # -- image ---------------------------------------------------------------------
    def normalizer_for(self, image, *, channel_axis: int | None | Literal["auto"] = "auto") -> Normalizer:
        """The normalization (see :func:`image_view`) fitted on a strided sample of the whole image;
        the last image's is remembered, so repeated clicks on one layer fit it once."""
        key = (tuple(image.shape), str(image.dtype), channel_axis, self.stain)
        if self._norm_cache is not None:
            ref, k, norm = self._norm_cache
            if k == key and ref() is image:
                return norm
        view, ca, _, norm_spec = image_view(self.spec, image, channel_axis=channel_axis, stain=self.stain)
        norm = Normalizer.fit(norm_spec, view, channel_axis=ca)
        try:
            self._norm_cache = (weakref.ref(image), key, norm)
        except TypeError:                     # objects without weak references are not cached
            self._norm_cache = None
        return norm


    # -- segmenting ------------------------------------------------------------------
    def segment_crop(self, image, positive=(), negative=(), box=None, previous=None, *, z: int | None = None,
                     channel_axis: int | None | Literal["auto"] = "auto", normalizer: Normalizer | None = None,
                     pixel_size: float | None = None) -> CropMask:
        """Segment the prompted object and return only the window's mask (see :class:`CropMask`).

        Parameters are those of :meth:`segment`.
        """
        t0 = time.perf_counter()
        if not hasattr(image, "shape") or not hasattr(image, "dtype"):
            image = np.asarray(image)
        view, ca, stack, _ = image_view(self.spec, image, channel_axis=channel_axis, stain=self.stain)
        spatial = tuple(int(s) for s in (view.shape[:-1] if ca is not None else view.shape))
        if not stack and len(spatial) != 2:
            raise InvalidImageError(f"image of shape {tuple(view.shape)}: give (Y, X[, C]) or (Z, Y, X[, C])")
        prompt, z = check_prompt(spatial, positive, negative, box, previous, z=z)
        min_side = float(self.prompt.crop)
        if pixel_size is not None and self.spec.pixel_size:
            if not (isinstance(pixel_size, (int, float)) and math.isfinite(pixel_size) and pixel_size > 0):
                raise InvalidImageError(f"pixel_size must be a positive number of µm, got {pixel_size!r}")
            min_side *= float(self.spec.pixel_size[0]) / float(pixel_size)
        window = prompt_window(prompt, self.prompt, min_side=min_side)
        norm = normalizer if normalizer is not None else self.normalizer_for(image, channel_axis=channel_axis)
        x = read_window(view, window, norm, channel_axis=ca, z=z,
                        context_slices=int(self.spec.context_slices))
        maps = encode_prompt(prompt, window, self.prompt)
        batch = np.concatenate([x, maps], axis=0)[None]
        self.predictor.calibrate((window.out, window.out), in_channels=batch.shape[1])
        prob_net = self.predictor(batch)[0, 1]
        prob, origin = window_to_image(prob_net, window, spatial[-2:])
        mask = keep_prompted(prob >= self.prompt.threshold, prompt, origin)
        offset = origin if z is None else (z, *origin)
        return CropMask(mask, tuple(int(v) for v in offset), prob, window, prompt.n_clicks,
                        (time.perf_counter() - t0) * 1e3)

    def segment(self, image, positive=(), negative=(), box=None, previous=None, *, z: int | None = None,
                channel_axis: int | None | Literal["auto"] = "auto", normalizer: Normalizer | None = None,
                pixel_size: float | None = None) -> np.ndarray:
        """Segment the object the prompt points at.

        Parameters
        ----------
        image : (H, W[, C]) or (Z, H, W[, C]) array-like
            ndarray, memmap, zarr or dask; only the window around the prompt is read.
        positive, negative : sequence of (y, x)
            Clicks on / off the object, in pixels; ``(z, y, x)`` on a volume (one plane).
        box : (y0, x0, y1, x1), optional
        previous : bool array, optional
            The object's mask from the previous round (the image's or the plane's shape).
        z : int, optional
            The plane of a volume, when no click gives it (a box alone).
        channel_axis : None, -1 or "auto"
        normalizer : Normalizer, optional
            Fitted on the whole image; by default fitted once per image and remembered.
        pixel_size : float, optional
            µm per pixel of the image; the window is scaled to the model's pixel size.

        Returns
        -------
        (H, W) or (Z, H, W) bool ndarray

        Raises
        ------
        InvalidPromptError
            A click outside the image, a box of zero area, no positive click and no box, clicks
            on several planes of a volume, a previous mask of another shape.
        InvalidImageError
            Wrong dtype, axes or channels for the model.
        """
        crop = self.segment_crop(image, positive, negative, box, previous, z=z, channel_axis=channel_axis,
                                 normalizer=normalizer, pixel_size=pixel_size)
        shape = tuple(image.shape[:-1] if _has_channels(image, crop) else image.shape)
        return crop.paste(shape)


def _has_channels(image, crop: CropMask) -> bool:
    return np.ndim(image) == len(crop.offset) + 1


def load_interactive(name_or_path, *, device: str = "auto", precision: str = "auto",
                     stain: str = "auto") -> InteractiveModel:
    """Load an interactive model package by name or path.

    ``stain``: ``"auto"`` reads RGB images through their hematoxylin channel on a one-channel
    model; ``"none"`` never does (see :func:`image_view`).

    Raises
    ------
    ModelNotFoundError
        No such name or path.
    ModelPackageError
        The package is an automatic (semantic / instance) model.
    """
    return InteractiveModel(load_package(model_path(name_or_path)), device=device, precision=precision, stain=stain)
