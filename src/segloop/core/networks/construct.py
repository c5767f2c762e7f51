"""Building a network by name, after checking its settings and the memory it needs.

:func:`build` refuses settings out of bounds (:mod:`~segloop.core.networks.limits`) and a
network whose weights alone would not fit in the memory available
(:mod:`~segloop.core.networks.memory`), before the constructor allocates anything.
:func:`check_network` is the same check for a piece of work - a training step on a patch,
an inference batch of tiles - for callers that know the shape and the batch.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from typing import Any

from segloop.errors import ArchitectureArgumentsError

from .limits import check_arguments
from .memory import MemoryEstimate, check_memory, estimate_memory
from .registry import constructor

__all__ = ["build", "check_network"]


def check_network(name: str, in_channels: int, out_channels: int, *, dims: int | None, kwargs: Mapping[str, Any],
                  shape: Sequence[int] | None = None, batch: int = 1, training: bool = False,
                  device: Any = "cpu", source: str = "architecture_kwargs",
                  advice: str = "lower depth or base_width", batch_flag: str | None = None,
                  include_weights: bool = True, weight_copies: int | None = None,
                  processes: int = 1) -> MemoryEstimate | None:
    """Check a network's settings and the memory a piece of work with it needs, allocating nothing.

    Bounds first (:func:`~segloop.core.networks.limits.check_arguments`), then the estimate
    (:func:`~segloop.core.networks.memory.estimate_memory`) against the memory available on
    ``device`` (:func:`~segloop.core.networks.memory.check_memory`).

    Parameters
    ----------
    name, in_channels, out_channels, dims, kwargs
        The network (``kwargs`` without ``dims``).
    shape : sequence of int, optional
        Patch or tile; None checks the weights only.
    batch : int
    training : bool
    device : str or torch.device
        Where the work runs.
    source, advice, batch_flag, include_weights, processes
        See :func:`~segloop.core.networks.memory.check_memory`.
    weight_copies : int, optional
        See :func:`~segloop.core.networks.memory.estimate_memory`.

    Returns
    -------
    MemoryEstimate or None
        None when the architecture cannot be estimated (only its bounds were checked).

    Raises
    ------
    UnknownArchitectureError
    ArchitectureArgumentsError
        A setting of the wrong kind or out of range, or one the constructor refuses.
    NetworkTooLargeError
        The estimate is above the memory available; the message gives both figures.
    """
    check_arguments(name, kwargs, source=source)
    est = estimate_memory(name, in_channels, out_channels, dims=dims, kwargs=kwargs, shape=shape, batch=batch,
                          training=training, weight_copies=weight_copies, source=source)
    if est is not None:
        check_memory(est, device=device, source=source, advice=advice, batch_flag=batch_flag,
                     include_weights=include_weights, processes=processes)
    return est


def _is_count(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def build(name: str, *args: Any, **kwargs: Any):
    """Construct the network registered as ``name``.

    Before the constructor runs, the settings are checked against the architecture's bounds
    and the network's weights against the memory available (the network is first built on
    torch's ``meta`` device, which allocates nothing).

    Parameters
    ----------
    name : str
        A name from :func:`~segloop.core.networks.available`.
    *args, **kwargs
        Passed to the constructor, usually ``in_channels, out_channels, dims=...``.

    Returns
    -------
    torch.nn.Module
        The freshly initialised network (train mode).

    Raises
    ------
    segloop.errors.UnknownArchitectureError
        If no architecture is registered under ``name``.
    segloop.errors.ArchitectureArgumentsError
        The constructor refuses the arguments (wrong type or value, unknown keyword), or a
        setting is out of bounds.
    segloop.errors.NetworkTooLargeError
        The weights alone would need more memory than is available.
    """
    make = constructor(name)
    settings = {k: v for k, v in kwargs.items() if k != "dims"}
    check_arguments(name, settings, source=None)
    if len(args) == 2 and _is_count(args[0]) and _is_count(args[1]):
        dims = kwargs.get("dims")
        est = estimate_memory(name, int(args[0]), int(args[1]), dims=None if dims is None else dims,
                              kwargs=settings)
        if est is not None:
            check_memory(est, source=None, advice="lower depth or base_width")
    try:
        return make(*args, **kwargs)
    except (TypeError, ValueError) as e:          # e.g. depth "four", an unknown keyword
        shown = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
        raise ArchitectureArgumentsError(f"architecture {name!r} cannot be built with {shown}: {e}") from None
