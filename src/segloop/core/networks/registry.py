"""Name -> constructor registry of the segmentation networks.

Model packages name their architecture as a string (``"unet"``, ``"unet26"``
...); :func:`segloop.core.networks.build` turns that name plus keyword
arguments into a ``torch.nn.Module``.  Architectures add themselves with
:func:`register`, together with the bounds of their settings
(:class:`~segloop.core.networks.limits.Limit`, checked before anything is built).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from segloop.errors import UnknownArchitectureError

__all__ = ["register", "available", "constructor", "limits_of"]

_REGISTRY: dict[str, Callable[..., Any]] = {}
_LIMITS: dict[str, tuple[Any, ...]] = {}


def register(name: str, *, limits: Sequence[Any] = ()) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Class or function decorator that registers a network constructor under ``name``.

    Parameters
    ----------
    name : str
        Architecture name stored in model packages.
    limits : sequence of Limit, optional
        Bounds of the constructor's keyword arguments
        (:class:`segloop.core.networks.limits.Limit`); settings without one are
        only checked by the constructor itself.

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
        _LIMITS[name] = tuple(limits)
        return constructor

    return decorator


def constructor(name: str) -> Callable[..., Any]:
    """The constructor registered as ``name``.

    Raises
    ------
    segloop.errors.UnknownArchitectureError
        If no architecture is registered under ``name``.
    """
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise UnknownArchitectureError(
            f"unknown architecture {name!r}; known architectures: {', '.join(available())}"
        ) from None


def limits_of(name: str) -> tuple[Any, ...]:
    """The :class:`~segloop.core.networks.limits.Limit` s registered with ``name`` (empty if none)."""
    constructor(name)
    return _LIMITS.get(name, ())


def available() -> list[str]:
    """Sorted names of the registered architectures."""
    return sorted(_REGISTRY)
