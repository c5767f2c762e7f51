"""Which model the Segment widget offers for an image layer, by modality, and how it says so.

The choice itself is :func:`segloop.core.formats.registry.pick_model` (the preference
table) on :func:`segloop.core.formats.modality.guess_modality` (or the modality a person
chose); this module only reads a layer for them and words the result for the widget.
"""

from __future__ import annotations

from segloop.core.formats.modality import guess_modality
from segloop.core.formats.registry import ModelPick, pick_model
from segloop.errors import ModelNotFoundError

__all__ = ["MODALITY_CHOICES", "hand_choice_text", "layer_modality", "pick_for_layer", "picked_text"]

#: The widget's "modality" choices: (shown, value).
MODALITY_CHOICES = [("auto", "auto"), ("H&E", "he"), ("IHC", "ihc"), ("fluorescence", "fluorescence"), ("CT", "ct")]


def layer_modality(layer, choice: str = "auto") -> str | None:
    """``choice`` unless it is ``"auto"``; else guessed from the layer.

    The guess reads a bounded sample of the layer's smallest pyramid level (its data for a
    single-scale layer) and the reader's volume geometry in ``metadata["segloop_volume"]``.
    """
    if choice != "auto":
        return choice
    data = layer.data[-1] if getattr(layer, "multiscale", False) else layer.data
    return guess_modality(data, rgb=bool(layer.rgb), info=layer.metadata.get("segloop_volume"))


def pick_for_layer(layer, choice: str, names: list[str]) -> ModelPick | None:
    """The model to offer for ``layer`` among ``names``, or None (modality unknown, nothing fits)."""
    modality = layer_modality(layer, choice)
    if modality is None:
        return None
    try:
        return pick_model(modality, available=names)
    except ModelNotFoundError:
        return None


def picked_text(pick: ModelPick) -> str:
    """The line under the model: ``Picked he-nuclei-unet for an H&E image``."""
    return f"Picked {pick.name} {pick.reason}"


def hand_choice_text(name: str, pick: ModelPick) -> str:
    """The line under the model once a person chose another one than the pick."""
    return f"{name}: your choice (auto picks {pick.name} for this image)"
