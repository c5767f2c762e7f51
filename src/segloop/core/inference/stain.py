"""Which normalization an image gets with a model: the "auto stain" rule and the stain-norm choice.

A nuclei model trained on one channel (fluorescence) can still run on bright-field
RGB tissue (H&E, IHC) when the image is first deconvolved to its hematoxylin
channel (normalization ``{"kind": "hematoxylin"}``,
:mod:`segloop.core.formats.normalization`).  ``"auto"`` does that exactly when the
image is RGB and the model takes one channel; otherwise the package's own
normalization is used (a package whose own normalization is already
``hematoxylin`` keeps it, with its options and its ``stain_norm``).

Stain normalization (Macenko, Reinhard; :mod:`segloop.core.inference.stain_norm`) is the
package's own choice by default (``"model"``: whatever its ``normalization`` declares),
or what a person asks for per run: ``"none"`` turns it off, ``"macenko"`` /
``"reinhard"`` turn it on (with the package's target when it declares one for that
method, else the built-in reference).
"""

from __future__ import annotations

from typing import Literal

from segloop.core.formats.normalization import StainNorm
from segloop.errors import InvalidImageError

__all__ = ["STAINS", "STAIN_NORMS", "Stain", "StainNormChoice", "stain_normalization"]

#: What a person can choose: decide by image and model, never deconvolve, always deconvolve.
STAINS = ("auto", "none", "hematoxylin")
Stain = Literal["auto", "none", "hematoxylin"]

#: Stain normalization a person can choose: as the package says, off, Macenko, Reinhard.
STAIN_NORMS = ("model", "none", "macenko", "reinhard")
StainNormChoice = Literal["model", "none", "macenko", "reinhard"]


def stain_normalization(model, *, rgb: bool, stain: Stain = "auto",
                        stain_norm: StainNormChoice | None = "model") -> dict | None:
    """The normalization override for an image and a model, or None for the package's own.

    Parameters
    ----------
    model : Model or ModelSpec
        Anything with ``in_channels`` and ``normalization``, or with a ``spec`` that has them.
    rgb : bool
        The image is RGB (channels last).
    stain : {"auto", "none", "hematoxylin"}
        ``"auto"``: hematoxylin for an RGB image on a 1-channel model, else none.
    stain_norm : {"model", "none", "macenko", "reinhard"} or None
        ``"model"`` (or None): the package's own ``stain_norm``, if any; ``"none"``: off;
        a method: on, with the package's target for that method if it declares one.

    Returns
    -------
    dict or None
        A normalization spec dict (for :meth:`Model.predict`'s ``normalization``), or
        None for the package's own.

    Raises
    ------
    InvalidImageError
        ``stain`` is not one of :data:`STAINS`, ``stain_norm`` not one of
        :data:`STAIN_NORMS`, or a stain normalization method asked for an image that is
        not RGB.
    """
    if stain not in STAINS:
        raise InvalidImageError(f"unknown stain {stain!r}; use {', '.join(STAINS)}")
    if stain_norm is None:
        stain_norm = "model"
    if stain_norm not in STAIN_NORMS:
        raise InvalidImageError(f"unknown stain normalization {stain_norm!r}; use {', '.join(STAIN_NORMS)}")
    spec = getattr(model, "spec", model)
    own = dict(getattr(spec, "normalization", None) or {})
    if stain == "auto":
        # image channels: an interactive model's in_channels also count its prompt maps
        stain = "hematoxylin" if rgb and int(getattr(spec, "image_channels", spec.in_channels)) == 1 else "none"
    base = {"kind": "hematoxylin"} if stain == "hematoxylin" and own.get("kind") != "hematoxylin" else None
    if stain_norm == "model":
        return base
    current = (base or own).get("stain_norm")
    if stain_norm == "none":
        if current is None:
            return base
        return {k: v for k, v in (base or own).items() if k != "stain_norm"}
    if not rgb:
        raise InvalidImageError(
            f"stain normalization {stain_norm!r} works on RGB (H&E / IHC) images and this image is not RGB; "
            "choose stain normalization 'none' (CLI: --stain-norm none)")
    cur = StainNorm.from_dict(current) if current is not None else None
    chosen = cur.to_dict() if cur is not None and cur.method == stain_norm else {"method": stain_norm}
    return {**(base or own), "stain_norm": chosen}
