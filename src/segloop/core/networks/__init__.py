"""Segmentation networks, built by name.

>>> from segloop.core.networks import build, available
>>> net = build("unet", 1, 3, dims=2)   # (N, 1, H, W) -> (N, 3, H, W) logits

Every network takes ``in_channels, out_channels`` positionally and the rest
as keywords (``dims`` 2 or 3), accepts any spatial size (padding to a multiple
of its ``divisor`` internally), returns raw logits of the input's spatial size
and has the attributes ``dims``, ``in_channels``, ``out_channels``,
``divisor`` and ``has_dropout``.

Settings are checked against each architecture's bounds (:mod:`.limits`) and the
memory a network needs is estimated before anything is allocated (:mod:`.memory`):
:func:`build` does both for the weights, :func:`check_network` for a training step or an
inference batch of a given shape.
"""

from __future__ import annotations

from . import convnext_unet, segunet, unet  # noqa: F401  (register the architectures)
from .construct import build, check_network
from .limits import Limit, check_arguments
from .memory import MemoryEstimate, available_memory, estimate_memory, format_bytes, network_facts
from .registry import available, limits_of, register

__all__ = ["build", "available", "register", "check_network", "check_arguments", "estimate_memory",
           "available_memory", "network_facts", "format_bytes", "limits_of", "Limit", "MemoryEstimate"]
