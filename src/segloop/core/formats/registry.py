"""Where model packages are found (bundled, ``$SEGLOOP_MODEL_PATH``, registered by name), and which to pick."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from segloop.core._runtime import atomic_write_text
from segloop.core.formats.modality import MODALITIES, MODALITY_LABELS
from segloop.core.formats.package import load_package
from segloop.errors import ModelNotFoundError

__all__ = ["BODY_PART_PREFERENCES", "BUNDLED_DIR", "MODEL_PREFERENCES", "ModelPick", "body_region", "discover_models", "list_models", "model_dirs",
           "model_path", "pick_model", "register_model"]

BUNDLED_DIR = Path(__file__).resolve().parents[2] / "models"
_registered: dict[str, Path] = {}


def model_dirs() -> list[Path]:
    """Folders searched for packages: bundled, then each entry of ``$SEGLOOP_MODEL_PATH``."""
    dirs = [BUNDLED_DIR]
    for d in os.environ.get("SEGLOOP_MODEL_PATH", "").split(os.pathsep):
        if d:
            dirs.append(Path(d).expanduser())
    return dirs


def discover_models() -> dict[str, Path]:
    """``{name: package path}`` of every bundled, ``$SEGLOOP_MODEL_PATH`` and registered package."""
    found: dict[str, Path] = {}
    for d in model_dirs():
        if not d.is_dir():
            continue
        for p in sorted(d.iterdir()):
            if (p / "segloop-model.json").is_file() or (p.suffix == ".zip" and p.is_file()):
                found.setdefault(p.stem if p.suffix == ".zip" else p.name, p)
    for key, p in _saved_registrations().items():
        if Path(p).exists():
            found.setdefault(key, Path(p))
    found.update(_registered)
    return found


def _registry_file() -> Path:
    from segloop.core._runtime import cache_dir

    return cache_dir() / "registered-models.json"


def _saved_registrations() -> dict[str, str]:
    import json

    try:
        data = json.loads(_registry_file().read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def register_model(path: str | os.PathLike, *, name: str | None = None, persist: bool = False) -> str:
    """Make a package available by name to :func:`list_models` / :func:`load_model`.

    The package is verified (sha256) first; :func:`segloop.register_model` also
    checks that this segloop has its architecture.  ``persist=True`` also remembers it
    for later sessions (``registered-models.json`` in the segloop cache folder;
    packages that no longer exist are skipped).
    """
    import json

    from segloop.core.formats.package import read_spec

    load_package(path)                   # hashes verified: a broken package is refused here, not at first use
    key = name or read_spec(path).name
    path = Path(path).resolve()
    _registered[key] = path
    if persist:
        saved = {**_saved_registrations(), key: str(path)}
        f = _registry_file()
        try:
            f.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(f, json.dumps(saved, indent=1), durable=False)
        except OSError:
            pass                          # remembered for this session only
    return key


def list_models() -> list[str]:
    """Names of the bundled and registered model packages, sorted."""
    return sorted(discover_models())


def model_path(name_or_path: str | os.PathLike) -> Path:
    """The package folder / ``.zip`` of a bundled or registered name, or an existing path.

    Raises
    ------
    ModelNotFoundError
        No such name and no such path; the message lists the known names.
    """
    known = discover_models()
    key = str(name_or_path)
    if key in known:
        return Path(known[key])
    path = Path(name_or_path).expanduser()
    if not path.exists():
        raise ModelNotFoundError(
            f"no model named or at {key!r}; known models: {', '.join(sorted(known)) or 'none'}")
    return path


#: For each modality, the models to pick, best first, with the stain route each needs on that
#: modality's images (``"hematoxylin"``: a 1-channel nuclei model runs on the deconvolved
#: hematoxylin channel of RGB tissue, :mod:`segloop.core.inference.stain`).  IHC goes the H&E
#: way; whether that or the hematoxylin channel serves IHC better is not measured (there is no
#: labelled IHC data).
MODEL_PREFERENCES: dict[str, tuple[tuple[str, str | None], ...]] = {
    "he": (("he-nuclei-unet", None), ("nuclei-unet", "hematoxylin")),
    "ihc": (("he-nuclei-unet", None), ("nuclei-unet", "hematoxylin")),
    # fluo-nuclei-unet (hand-drawn BBBC039 + Kromp) beats the BBBC007 nuclei-unet on every source,
    # the unseen Aitslab-bioimaging1 included (docs/models.md)
    "fluorescence": (("fluo-nuclei-unet", None), ("nuclei-unet", None)),
    "ct": (("ct-liver-segunet25d", None), ("ct-liver-unet3d", None)),
    "mr": (("mri-brain-tumour-segunet25d", None),),
}

#: Models preferred when the file names the body part (DICOM BodyPartExamined, see
#: :func:`body_region`), tried before :data:`MODEL_PREFERENCES` of the modality.
BODY_PART_PREFERENCES: dict[tuple[str, str], tuple[tuple[str, str | None], ...]] = {
    ("ct", "chest"): (("ct-lung-tumour-segunet25d", None),),
    ("ct", "abdomen"): (("ct-liver-segunet25d", None), ("ct-liver-unet3d", None)),
    ("mr", "brain"): (("mri-brain-tumour-segunet25d", None),),
}

_REGIONS = {"chest": ("CHEST", "THORAX", "LUNG", "LUNGS", "THORACIC"),
            "abdomen": ("ABDOMEN", "LIVER", "ABDOMENPELVIS", "ABD", "PELVIS", "CHESTABDOMEN"),
            "brain": ("BRAIN", "HEAD", "SKULL", "HEADNECK")}


def body_region(body_part: str | None) -> str | None:
    """``"chest"``, ``"abdomen"``, ``"brain"`` from a DICOM BodyPartExamined (e.g. ``"THORAX"``); else None."""
    key = "".join(ch for ch in str(body_part or "").upper() if ch.isalpha())
    for region, names in _REGIONS.items():
        if key in names:
            return region
    return None

_AN_IMAGE = {"he": "an H&E image", "ihc": "an IHC image", "fluorescence": "a fluorescence image",
             "ct": "a CT image", "mr": "an MR image"}


@dataclass(frozen=True)
class ModelPick:
    """The model :func:`pick_model` chose, and why.

    ``reason`` completes "picked ..." (``"for an H&E image"``); ``stain`` is the stain
    route the model needs on this modality (``"hematoxylin"`` or None).
    """

    name: str
    modality: str
    reason: str
    stain: str | None = None


def pick_model(modality: str, available=None, *, body_part: str | None = None) -> ModelPick:
    """The model to segment an image of ``modality`` with, from :data:`MODEL_PREFERENCES`.

    Parameters
    ----------
    modality : {"he", "ihc", "fluorescence", "ct"}
        What the image is (:func:`segloop.core.formats.modality.guess_modality` guesses it).
    available : iterable of str, optional
        Model names to choose from; default :func:`list_models`.
    body_part : str, optional
        What the file says was imaged (DICOM BodyPartExamined): a model of that region
        (:data:`BODY_PART_PREFERENCES`) comes first.

    Returns
    -------
    ModelPick
        The first preferred model that is available; its ``reason`` says which modality it
        was picked for and, for a fallback, which better model is not installed.  IHC
        picks say that IHC routing is not measured.

    Raises
    ------
    ModelNotFoundError
        ``modality`` is unknown, or none of its models is available (the message names them).
    """
    if modality not in MODEL_PREFERENCES:
        raise ModelNotFoundError(f"no models are picked for modality {modality!r}; use one of {', '.join(MODALITIES)}")
    names = set(list_models() if available is None else available)
    region = body_region(body_part)
    for name, stain in BODY_PART_PREFERENCES.get((modality, region or ""), ()):
        if name in names:
            return ModelPick(name, modality, f"for {_AN_IMAGE[modality]} of the {region} (the file's body part: "
                                             f"{body_part})", stain)
    prefs = MODEL_PREFERENCES[modality]
    for i, (name, stain) in enumerate(prefs):
        if name not in names:
            continue
        reason = f"for {_AN_IMAGE[modality]}"
        if stain:
            reason += f", on its {stain} channel"
        if i:
            reason += f", as {' and '.join(n for n, _ in prefs[:i])} {'is' if i == 1 else 'are'} not installed"
        if modality == "ihc":
            reason += "; IHC routing is not measured: no labelled IHC data"
        return ModelPick(name, modality, reason, stain)
    label = MODALITY_LABELS[modality]
    raise ModelNotFoundError(f"no model for {label} images is installed (looked for "
                             f"{', '.join(n for n, _ in prefs)}); give a model by name or path")
