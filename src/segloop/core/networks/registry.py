"""Name -> constructor registry of the segmentation networks.

Model packages name their architecture as a string (``"unet"``, ``"unet26"``
...); :func:`build` turns that name plus keyword arguments into a
``torch.nn.Module``.  Architectures add themselves with :func:`register`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from segloop.errors import ArchitectureArgumentsError, UnknownArchitectureError

__all__ = ["register", "build", "available"]

_REGISTRY: dict[str, Callable[..., Any]] = {}


def register(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Class or function decorator that registers a network constructor under ``name``.

    Parameters
    ----------
    name : str
        Architecture name stored in model packages.

    Returns
    -------
    callable
        The decorator; it returns the constructor unchanged.

    Raises
    ------
    ValueError
        If ``name`` is already taken by a different constructor.
    """

    def decorator(constructor: Callable[..., Any]) -> Callable[..., Any]:
        known = _REGISTRY.get(name)
        if known is not None and getattr(known, "__qualname__", None) != getattr(
                constructor, "__qualname__", None):
            raise ValueError(f"architecture name {name!r} is already registered to {known!r}")
        _REGISTRY[name] = constructor
        return constructor

    return decorator


def build(name: str, *args: Any, **kwargs: Any):
    """Construct the network registered as ``name``.

    Parameters
    ----------
    name : str
        A name from :func:`available`.
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
        The constructor refuses the arguments (wrong type or value, unknown keyword).
    """
    try:
        constructor = _REGISTRY[name]
    except (KeyError, TypeError):
        raise UnknownArchitectureError(
            f"unknown architecture {name!r}; known architectures: {', '.join(available())}"
        ) from None
    try:
        return constructor(*args, **kwargs)
    except (TypeError, ValueError) as e:          # e.g. depth "four", an unknown keyword
        shown = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
        raise ArchitectureArgumentsError(f"architecture {name!r} cannot be built with {shown}: {e}") from None


def available() -> list[str]:
    """Sorted names of the registered architectures."""
    return sorted(_REGISTRY)
