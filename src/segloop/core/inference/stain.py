"""Which normalization an image gets with a model: the "auto stain" rule.

A nuclei model trained on one channel (fluorescence) can still run on bright-field
RGB tissue (H&E, IHC) when the image is first deconvolved to its hematoxylin
channel (normalization ``{"kind": "hematoxylin"}``,
:mod:`segloop.core.formats.normalization`).  ``"auto"`` does that exactly when the
image is RGB and the model takes one channel; otherwise the package's own
normalization is used.
"""

from __future__ import annotations

from typing import Literal

from segloop.errors import InvalidImageError

__all__ = ["STAINS", "Stain", "stain_normalization"]

#: What a person can choose: decide by image and model, never deconvolve, always deconvolve.
STAINS = ("auto", "none", "hematoxylin")
Stain = Literal["auto", "none", "hematoxylin"]


def stain_normalization(model, *, rgb: bool, stain: Stain = "auto") -> dict | None:
    """The normalization override for an image and a model, or None for the package's own.

    Parameters
    ----------
    model : Model or ModelSpec
        Anything with ``in_channels``, or with a ``spec`` that has it.
    rgb : bool
        The image is RGB (channels last).
    stain : {"auto", "none", "hematoxylin"}
        ``"auto"``: hematoxylin for an RGB image on a 1-channel model, else none.

    Returns
    -------
    dict or None
        ``{"kind": "hematoxylin"}`` (for :meth:`Model.predict`'s ``normalization``), or
        None.

    Raises
    ------
    InvalidImageError
        ``stain`` is not one of :data:`STAINS`.
    """
    if stain not in STAINS:
        raise InvalidImageError(f"unknown stain {stain!r}; use {', '.join(STAINS)}")
    if stain == "auto":
        spec = getattr(model, "spec", model)
        stain = "hematoxylin" if rgb and int(spec.in_channels) == 1 else "none"
    return {"kind": "hematoxylin"} if stain == "hematoxylin" else None
