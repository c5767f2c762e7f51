"""Pixel sizes (µm per pixel, ``(y, x)``): checked, parsed from text, compared and shown.

A model package records the pixel size it was trained at (``ModelSpec.pixel_size``), an image
may carry one (TIFF / OME-TIFF metadata, a napari layer's scale, ``--pixel-size``), and a
training sample records its ``spacing``.  This module is the one place that says what a valid
pixel size is; resampling lives in :mod:`segloop.core.inference.resolution`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from segloop.errors import InvalidPixelSizeError

__all__ = ["TOLERANCE", "check_pixel_size", "differs", "format_pixel_size", "parse_pixel_size"]

#: Pixel sizes within this relative difference (per axis) count as the same: no resampling.
TOLERANCE = 0.05


def check_pixel_size(value, *, source: str = "pixel size") -> tuple[float, float]:
    """``value`` as ``(y, x)`` µm per pixel, or a typed error naming ``source``.

    Parameters
    ----------
    value : float or sequence of 1 or 2 floats
        One number (square pixels) or ``(y, x)``.
    source : str
        Where the value came from, for the message (``"--pixel-size"``, ``"pixel_size"`` ...).

    Returns
    -------
    (float, float)

    Raises
    ------
    InvalidPixelSizeError
        Not numbers, not one or two of them, or not finite and positive.
    """
    if isinstance(value, str):
        return parse_pixel_size(value, source=source)
    items = [value] if not isinstance(value, Sequence) and not hasattr(value, "__len__") else list(value)
    if len(items) not in (1, 2):
        raise InvalidPixelSizeError(f"{source}: give one pixel size in µm (e.g. 0.25) or two as y,x; "
                                    f"got {len(items)} values {value!r}")
    try:
        if any(isinstance(v, bool) for v in items):
            raise TypeError
        numbers = [float(v) for v in items]
    except (TypeError, ValueError):
        raise InvalidPixelSizeError(f"{source}: {value!r} is not a pixel size; give µm per pixel as a number "
                                    "(e.g. 0.25) or y,x") from None
    if not all(math.isfinite(v) and v > 0 for v in numbers):
        raise InvalidPixelSizeError(f"{source}: pixel size {value!r} must be a positive, finite number of µm per "
                                    "pixel (e.g. 0.25 at 40x, 0.5 at 20x)")
    return (numbers[0], numbers[-1])


def parse_pixel_size(text: str, *, source: str = "--pixel-size") -> tuple[float, float]:
    """``"0.25"`` -> ``(0.25, 0.25)``; ``"0.25,0.3"`` -> ``(0.25, 0.3)`` (y, x); else a typed error.

    Raises
    ------
    InvalidPixelSizeError
        Empty, not numbers, more than two, or not finite and positive; the message names ``source``
        and the text.
    """
    where = f"{source} {str(text)!r}".strip()
    parts = [p.strip() for p in str(text).split(",")]
    try:
        numbers = [float(p) for p in parts]
    except ValueError:
        raise InvalidPixelSizeError(f"{where} is not a pixel size; give µm per pixel as one number (e.g. 0.25) "
                                    "or y,x (e.g. 0.25,0.25)") from None
    if len(numbers) > 2:
        raise InvalidPixelSizeError(f"{where}: give one pixel size in µm (e.g. 0.25) or two as y,x")
    if not all(math.isfinite(v) and v > 0 for v in numbers):
        raise InvalidPixelSizeError(f"{where}: a pixel size must be a positive, finite number of µm per pixel "
                                    "(e.g. 0.25 at 40x, 0.5 at 20x)")
    return (numbers[0], numbers[-1])


def differs(a: Sequence[float], b: Sequence[float], *, tolerance: float = TOLERANCE) -> bool:
    """Whether pixel sizes ``a`` and ``b`` differ by more than ``tolerance`` (relative) in some axis."""
    return any(abs(float(p) / float(q) - 1.0) > tolerance for p, q in zip(a, b, strict=True))


def format_pixel_size(px: Sequence[float] | None) -> str:
    """``(0.25, 0.25)`` -> ``"0.25"``; ``(0.25, 0.3)`` -> ``"0.25,0.3"`` (y,x); None -> ``"unknown"``."""
    if px is None:
        return "unknown"
    y, x = (float(v) for v in px)
    return f"{y:.4g}" if y == x else f"{y:.4g},{x:.4g}"
