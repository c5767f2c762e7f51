"""Segmentation networks, built by name.

>>> from segloop.core.networks import build, available
>>> net = build("unet", 1, 3, dims=2)   # (N, 1, H, W) -> (N, 3, H, W) logits

Every network takes ``in_channels, out_channels`` positionally and the rest
as keywords (``dims`` 2 or 3), accepts any spatial size (padding to a multiple
of its ``divisor`` internally), returns raw logits of the input's spatial size
and has the attributes ``dims``, ``in_channels``, ``out_channels``,
``divisor`` and ``has_dropout``.
"""

from __future__ import annotations

from . import convnext_unet, segunet, unet  # noqa: F401  (register the architectures)
from .registry import available, build, register

__all__ = ["build", "available", "register"]
