"""Which model the Segment widget offers for an image layer, by modality, and how it says so.

The choice itself is :func:`segloop.core.formats.registry.pick_model` (the preference
table) on :func:`segloop.core.formats.modality.guess_modality` (or the modality a person
chose); this module only reads a layer for them and words the result for the widget.
"""

from __future__ import annotations

from pathlib import Path

from segloop.core.formats.modality import guess_modality
from segloop.core.formats.registry import ModelPick, pick_model
from segloop.errors import ModelNotFoundError, SegloopError

__all__ = ["MODALITY_CHOICES", "automatic_labels_note", "automatic_models", "check_layer_fits", "default_model",
           "hand_choice_text", "interactive_models", "is_ct_layer", "layer_modality", "model_for_layer",
           "pick_for_layer", "picked_text"]

#: The widget's "modality" choices: (shown, value).
MODALITY_CHOICES = [("auto", "auto"), ("H&E", "he"), ("IHC", "ihc"), ("fluorescence", "fluorescence"), ("CT", "ct"),
                    ("MR", "mr")]


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
    info = getattr(layer, "metadata", {}).get("segloop_volume")
    body_part = (getattr(info, "extra", None) or {}).get("body_part")
    try:
        return pick_model(modality, available=names, body_part=body_part)
    except ModelNotFoundError:
        return None


def picked_text(pick: ModelPick) -> str:
    """The line under the model: ``Picked he-nuclei-unet for an H&E image``."""
    return f"Picked {pick.name} {pick.reason}"


def hand_choice_text(name: str, pick: ModelPick) -> str:
    """The line under the model once a person chose another one than the pick."""
    return f"{name}: your choice (auto picks {pick.name} for this image)"


def _model_modality(name: str) -> str:
    """The bundled/registered model's modality from its JSON spec ("" if unknown)."""
    try:
        from segloop.core.formats.package import read_spec
        from segloop.core.formats.registry import discover_models

        return str(read_spec(discover_models().get(name, Path(name))).modality or "")
    except (SegloopError, OSError):
        return ""


_TASKS: dict[tuple[str, int], str] = {}


def _model_task(path: Path) -> str:
    """The ``task`` of a package's JSON spec ("" if unreadable), remembered per path and modification time."""
    try:
        key = (str(path), path.stat().st_mtime_ns)
    except OSError:
        return ""
    if key not in _TASKS:
        from segloop.core.formats.package import read_spec

        try:
            _TASKS[key] = str(read_spec(path).task)
        except (SegloopError, OSError):
            _TASKS[key] = ""
    return _TASKS[key]


def interactive_models() -> list[str]:
    """Names of the bundled and registered click models (spec ``task == "interactive"``), sorted."""
    from segloop.core.formats.registry import discover_models

    return sorted(name for name, path in discover_models().items() if _model_task(Path(path)) == "interactive")


def automatic_models() -> list[str]:
    """Names of the bundled and registered models the Segment widget runs: all but the click models."""
    from segloop.core.formats.registry import discover_models

    return sorted(name for name, path in discover_models().items() if _model_task(Path(path)) != "interactive")


def is_ct_layer(layer) -> bool:
    """An image read as CT (DICOM/NIfTI/MRC in HU), by the geometry the volume readers attach."""
    info = getattr(layer, "metadata", {}).get("segloop_volume")
    return info is not None and (getattr(info, "units", "") == "HU" or getattr(info, "modality", "") == "CT")


def default_model(names: list[str], *, ct: bool) -> str | None:
    """The model to offer for an image: the one picked for CT or fluorescence (``pick_model``'s
    preference table), else any CT model for CT and any other for the rest, else the first."""
    from segloop.core.formats.registry import pick_model

    try:
        return pick_model("ct" if ct else "fluorescence", available=names).name
    except ModelNotFoundError:
        pass
    for name in names:
        if (_model_modality(name).upper() == "CT") == ct:
            return name
    return names[0] if names else None


def model_for_layer(layer, choice: str, names: list[str], *, current: str,
                    pinned: str | None = None) -> tuple[ModelPick | None, str]:
    """The pick for ``layer`` and the model to select among ``names``.

    ``pinned`` (a model selected on purpose, e.g. by "Use this model") stays while it fits the
    image (a CT model for CT, another for the rest); else the pick for the modality; when no
    modality fits (an MR volume), ``current`` unless it is a CT model for a non-CT image or the
    reverse, then :func:`default_model`.
    """
    pick = pick_for_layer(layer, choice, names)
    ct = is_ct_layer(layer)
    if pinned in names and (_model_modality(pinned).upper() == "CT") == ct:
        return pick, pinned
    if pick is not None:
        return pick, pick.name
    if (_model_modality(current).upper() == "CT") != ct:
        best = default_model(names, ct=ct)
        if best and (_model_modality(best).upper() == "CT") == ct:
            return pick, best
    return pick, current


def automatic_labels_note(spec) -> str:
    """What the widget adds under a model trained (partly) on automatic labels: `` - trained partly
    on AUTOMATIC labels ...``; ``""`` for a model trained on people's labels (or that does not say)."""
    labels = str((getattr(spec, "training", None) or {}).get("labels", ""))
    if "automatic" not in labels:
        return ""
    return (f" - trained {'partly ' if 'partly' in labels else ''}on AUTOMATIC labels (a method's output, not a "
            "person's): read its card before trusting it")


def check_layer_fits(spec, data, metadata: dict | None, name: str) -> None:
    """A volume layer read with its geometry must suit the model: a CT model on MR (or the reverse)
    would only give noise (:func:`segloop.core.formats.modality.check_input_modality`; raises
    :class:`~segloop.errors.InvalidImageError`).  Layers without volume geometry are not checked."""
    from segloop.core.formats.modality import check_input_modality

    info = (metadata or {}).get("segloop_volume")
    if info is not None:
        check_input_modality(spec, data, info, what=name)
