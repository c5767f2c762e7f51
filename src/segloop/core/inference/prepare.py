"""The one preparation step: what a model's network will see of an image.

:func:`prepare_image` (and :meth:`segloop.core.inference.model.Model.prepare`,
which adds a cache of fitted normalizers) checks an image against a model
package's spec - dtype, axes, channels (an alpha channel dropped, ``bool`` read
as ``uint8``) -, resolves the normalization (the package's, an override or an
already fitted normalizer), fits it once on the whole image and resolves the
tile.  Prediction, uncertainty, active-learning features and the trainer's
data and evaluation all read pixels through it, so they see the same pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from segloop.core.formats.normalization import (
    NormalizationSpec,
    input_channels,
    output_channels,
    spec_from_dict,
)
from segloop.core.formats.package import ModelSpec
from segloop.core.inference.normalize import Normalizer
from segloop.errors import InvalidImageError

__all__ = ["PreparedImage", "drop_alpha", "prepare_image", "resolve_normalization", "tile_shape", "validate_image"]


def _channels_per_plane(spec: ModelSpec) -> int:
    """Normalized channels of one plane: image channels / ``context_slices`` (2.5D stacks k planes).

    The image channels are ``in_channels`` less an interactive model's prompt maps."""
    return spec.image_channels // int(spec.context_slices)


def validate_image(image, *, channels: int, channel_axis: int | None | Literal["auto"] = "auto"
                   ) -> tuple[int | None, bool]:
    """Check an image for a model needing ``channels`` input channels.

    Parameters
    ----------
    image : array-like
        (H, W), (H, W, C), (Z, H, W) or (Z, H, W, C).
    channels : int
        Raw channels the model needs (3 for RGB / hematoxylin models).
    channel_axis : None, -1 or "auto"

    Returns
    -------
    channel_axis : None or -1
    is_stack : bool

    Raises
    ------
    InvalidImageError
        With a message that says what is wrong and what to do.
    """
    shape = tuple(getattr(image, "shape", ()))
    dtype = np.dtype(getattr(image, "dtype", np.float64))
    if dtype.kind not in "biuf":
        raise InvalidImageError(
            f"image dtype {dtype} is not supported; give a numeric array (bool, int, uint or float)")
    if len(shape) < 2:
        raise InvalidImageError(f"image must be at least 2D (H, W), got shape {shape}")
    if any(s == 0 for s in shape):
        raise InvalidImageError(f"image is empty (shape {shape})")
    if channel_axis == "auto":
        last = shape[-1]
        if channels == 1:
            if len(shape) == 2:
                channel_axis = None
            elif len(shape) == 3 and last in (1, 2) and min(shape[:2]) > 2:
                channel_axis = -1              # (H, W, 1), or grey + alpha (H, W, 2)
            elif len(shape) == 3 and last in (3, 4) and min(shape[:2]) > 4:
                raise InvalidImageError(
                    f"image of shape {shape} looks RGB but the model takes 1 channel. For stained "
                    "tissue use hematoxylin normalization (CLI: --stain hematoxylin); for a "
                    "multichannel fluorescence image pick the nuclear channel")
            elif len(shape) == 3:
                channel_axis = None           # (Z, H, W) stack
            elif len(shape) == 4 and last in (1, 2):
                channel_axis = -1
            elif len(shape) == 4 and last in (3, 4):
                raise InvalidImageError(
                    f"image of shape {shape} looks like an RGB stack but the model takes 1 channel; use "
                    "hematoxylin normalization (--stain hematoxylin) or pick one channel")
            else:
                raise InvalidImageError(
                    f"image of shape {shape} has too many axes for a 1-channel 2D model; give (H, W) or (Z, H, W)")
        else:
            if last == channels or (channels == 3 and last == 4):
                channel_axis = -1
            elif shape[0] == channels and len(shape) == 3:
                raise InvalidImageError(
                    f"image of shape {shape} looks channels-first; the model needs channels last "
                    f"(H, W, {channels}): use np.moveaxis(image, 0, -1)")
            else:
                raise InvalidImageError(
                    f"model needs {channels} channels (last axis) but the image has shape {shape}")
    spatial = len(shape) - (0 if channel_axis is None else 1)
    if spatial not in (2, 3):
        raise InvalidImageError(
            f"image of shape {shape} with channel_axis={channel_axis} is {spatial}D; expected (H, W) "
            "or a stack (Z, H, W), channels last")
    if channel_axis is not None:
        have = shape[-1]
        if not (have == channels or (channels == 3 and have == 4) or (channels == 1 and have == 2)):
            raise InvalidImageError(f"model needs {channels} channels, the image has {have} (shape {shape})")
    return channel_axis, spatial == 3


def drop_alpha(image, channel_axis, channels):
    """RGBA -> RGB and grey + alpha -> grey (a view, no copy); anything else unchanged."""
    if channel_axis is not None and image.shape[-1] == channels + 1 and channels in (1, 3):
        return image[..., :channels]
    return image


@dataclass(frozen=True)
class PreparedImage:
    """An image made ready for a model by :meth:`Model.prepare`.

    Every consumer (prediction, uncertainty, region features for active
    learning, the trainer's held-out evaluation) reads pixels through this one
    step, so they all see the same channels and the same normalization.

    Attributes
    ----------
    image : (H, W[, C]) or (Z, H, W[, C]) array-like
        A view of the input with an alpha channel dropped and ``bool`` read as
        ``uint8``; not normalized (the normalizer runs tile by tile).
    channel_axis : None or -1
    stack : bool
        Whether ``image`` has a Z axis.
    spatial_shape : tuple of int
        ``(H, W)`` or ``(Z, H, W)``.
    norm_spec : NormalizationSpec
    normalizer : Normalizer
        Fitted once on the whole image (or the one given).
    tile : tuple of int
        Tile (2D / 2.5D) or patch (3D) size, one int per spatial axis of the model.
    """

    image: Any
    channel_axis: int | None
    stack: bool
    spatial_shape: tuple[int, ...]
    norm_spec: NormalizationSpec
    normalizer: Normalizer
    tile: tuple[int, ...]


def tile_shape(spec: ModelSpec, tile=None) -> tuple[int, ...]:
    """Tile (2D) or patch (3D) size: ``tile`` or the package's, one int per spatial axis.

    Raises
    ------
    InvalidImageError
        ``tile`` is not an int or one int per axis, or is under 8 pixels.
    """
    dims = int(spec.dims)
    size = spec.tile.get("size", 256 if dims == 2 else 96) if tile is None else tile
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        shape = (int(size),) * dims
    else:
        try:
            shape = tuple(int(v) for v in size)
        except (TypeError, ValueError):
            raise InvalidImageError(f"tile (--tile) must be an int or {dims} ints, got {size!r}") from None
    if len(shape) != dims:
        raise InvalidImageError(f"tile {size!r} has {len(shape)} sizes; a {dims}D model needs an int or {dims} ints")
    if min(shape) < 8:
        raise InvalidImageError(f"tile (--tile) must be at least 8 pixels in every axis, got {size!r}")
    return shape


def resolve_normalization(spec: ModelSpec, normalization=None, normalizer: Normalizer | None = None
                          ) -> tuple[NormalizationSpec, int, int]:
    """The normalization a model package reads an image with.

    Parameters
    ----------
    spec : ModelSpec
    normalization : dict or NormalizationSpec, optional
        Override of ``spec.normalization``.
    normalizer : Normalizer, optional
        An already fitted one (then ``normalization`` must be None).

    Returns
    -------
    (norm_spec, raw_channels, channels_per_plane)
        Raw channels the image must have, and normalized channels of one plane.

    Raises
    ------
    InvalidImageError
        Both given, or a normalization that does not give the network's channels.
    """
    if normalizer is not None:
        if normalization is not None:
            raise InvalidImageError("give either normalization (a spec) or normalizer (fitted), not both")
        if not isinstance(normalizer, Normalizer):
            raise InvalidImageError(
                f"normalizer must be a segloop.core.inference.normalize.Normalizer, got {type(normalizer).__name__}")
        norm_spec = normalizer.spec
    elif normalization is not None:
        norm_spec = spec_from_dict(normalization if isinstance(normalization, dict) else normalization.to_dict())
    else:
        norm_spec = spec_from_dict(spec.normalization)
    per_plane = _channels_per_plane(spec)
    channels = input_channels(norm_spec, per_plane)
    if output_channels(norm_spec, channels) != per_plane:
        raise InvalidImageError(
            f"normalization {norm_spec.kind!r} gives {output_channels(norm_spec, channels)} "
            f"channel(s) but {spec.name} takes {per_plane}"
            + (f" per slice ({spec.in_channels} over {spec.context_slices} slices)"
               if spec.context_slices > 1 else ""))
    return norm_spec, channels, per_plane


def prepare_image(spec: ModelSpec, image, *, channel_axis: int | None | Literal["auto"] = "auto",
                  normalization: dict | NormalizationSpec | None = None, normalizer: Normalizer | None = None,
                  tile: int | tuple[int, ...] | None = None) -> PreparedImage:
    """:meth:`Model.prepare` for a model package's spec, without a built network (the trainer's path).

    See :meth:`Model.prepare` for the parameters and errors.
    """
    norm_spec, channels, _ = resolve_normalization(spec, normalization, normalizer)
    channel_axis, stack = validate_image(image, channels=channels, channel_axis=channel_axis)
    if int(spec.dims) == 3 and not stack:
        raise InvalidImageError(
            f"{spec.name} is a 3D model: give a volume (Z, Y, X) (channels last), "
            f"not a single plane of shape {tuple(image.shape)}")
    view = drop_alpha(image, channel_axis, channels)
    if np.dtype(view.dtype) == np.bool_:
        view = np.asarray(view, dtype=np.uint8)
    if normalizer is None:
        normalizer = Normalizer.fit(norm_spec, view, channel_axis=channel_axis)
    elif normalizer.channel_axis != channel_axis or normalizer.in_channels != (
            view.shape[-1] if channel_axis is not None else 1):
        raise InvalidImageError(
            f"the normalizer was fitted on {normalizer.in_channels}-channel data (channel_axis="
            f"{normalizer.channel_axis}); this image has shape {tuple(view.shape)} (channel_axis="
            f"{channel_axis}). Fit it on this image (Model.normalizer_for)")
    spatial = tuple(int(n) for n in view.shape[: 3 if stack else 2])
    return PreparedImage(view, channel_axis, stack, spatial, norm_spec, normalizer, tile_shape(spec, tile))
