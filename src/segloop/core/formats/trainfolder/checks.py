"""Training folder v1: checks of what a caller passes to ``add_sample``, and sample ids.

Each check returns the cleaned value or raises the typed error whose message says what to fix
(:class:`~segloop.errors.InvalidImageError`, :class:`~segloop.errors.InvalidLabelsError`,
:class:`~segloop.errors.TrainingFolderError`).
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from collections.abc import Mapping
from typing import Any

import numpy as np

from segloop.core.formats.trainfolder.schema import SAMPLE_ID_RE, FolderInfo
from segloop.errors import InvalidImageError, InvalidLabelsError, TrainingFolderError

__all__ = [
    "array_sha256",
    "check_image",
    "check_labels",
    "check_reviewed",
    "check_sample_id",
    "int_pairs",
    "jsonable",
    "model_summary",
    "slug",
    "val_draw",
]

_WINDOWS_RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(1, 10)),
                     *(f"lpt{i}" for i in range(1, 10))}


def _normalize_axes(axes: str, ndim: int) -> str:
    if not isinstance(axes, str):
        raise InvalidImageError(f"axes must be a string such as 'YX', 'YXC', 'ZYX' or 'ZYXC', got {axes!r}")
    ax = axes.upper().replace("S", "C")
    if ax not in ("YX", "YXC", "ZYX", "ZYXC"):
        raise InvalidImageError(f"axes {axes!r} not supported; use 'YX', 'YXC', 'ZYX' or 'ZYXC' (channels last)")
    if len(ax) != ndim:
        raise InvalidImageError(f"axes {axes!r} has {len(ax)} letters but the image has {ndim} dimensions; "
                                "give one letter per dimension")
    return ax


def check_image(image: Any, axes: str) -> tuple[np.ndarray, str]:
    try:
        img = np.asarray(image)
    except (TypeError, ValueError) as e:
        raise InvalidImageError(f"image cannot be read as an array ({e})") from None
    ax = _normalize_axes(axes, img.ndim)
    if img.size == 0:
        raise InvalidImageError(f"image is empty (shape {img.shape}); export a region with pixels in it")
    if img.dtype == bool:
        img = img.astype(np.uint8)
    if img.dtype.kind not in "uif":
        raise InvalidImageError(f"image dtype {img.dtype} cannot be exported; use an integer or float image")
    if not img.dtype.isnative:
        img = img.astype(img.dtype.newbyteorder("="))
    if img.dtype.kind == "f":
        bad = int(np.count_nonzero(~np.isfinite(img)))
        if bad:
            raise InvalidImageError(f"image has {bad} NaN or infinite pixel(s); replace them (e.g. np.nan_to_num) "
                                    "before exporting")
    return img, ax


def _label_dtype(max_value: int, task: str) -> np.dtype:
    if task == "semantic" and max_value < 256:
        return np.dtype(np.uint8)
    if max_value <= 65535:
        return np.dtype(np.uint16)
    return np.dtype(np.uint32)


def check_labels(labels: Any, spatial: tuple[int, ...], image_shape: tuple[int, ...], info: FolderInfo
                  ) -> np.ndarray:
    lab = np.asarray(labels)
    if lab.shape != spatial:
        raise InvalidLabelsError(f"labels shape {lab.shape} does not match the image's spatial shape {spatial} "
                                 f"(image shape {image_shape}); export labels and image of the same region")
    if lab.size == 0:
        raise InvalidLabelsError("labels are empty; export a region with pixels in it")
    if lab.dtype == bool:
        lab = lab.astype(np.uint8)
    if lab.dtype.kind == "f":
        raise InvalidLabelsError(f"labels have float dtype {lab.dtype}; labels must be integer ids: save them as "
                                 "uint8/uint16/uint32 (from an array: .astype(np.uint16), after checking the values "
                                 "are whole numbers)")
    if lab.dtype.kind not in "ui":
        raise InvalidLabelsError(f"labels dtype {lab.dtype} is not an integer type")
    lo, hi = int(lab.min()), int(lab.max())
    if lo < 0:
        raise InvalidLabelsError(f"labels contain negative values (min {lo}); labels must be >= 0 (0 = background)")
    if info.task == "semantic" and hi >= len(info.classes):
        raise InvalidLabelsError(
            f"label value {hi} is not a class of this folder: it has {len(info.classes)} classes "
            f"(0..{len(info.classes) - 1}: {', '.join(info.classes)}); fix the labels or use a folder with these "
            "classes")
    if hi > np.iinfo(np.uint32).max:
        raise InvalidLabelsError(f"label id {hi} does not fit uint32; relabel the objects sequentially "
                                 "(skimage.segmentation.relabel_sequential)")
    dt = _label_dtype(hi, info.task)
    return lab if lab.dtype == dt else lab.astype(dt)


def check_reviewed(reviewed: Any, shape: tuple[int, ...]) -> np.ndarray:
    """A fresh uint8 0/1 copy (never a view of the caller's array)."""
    if reviewed is None:
        return np.ones(shape, np.uint8)
    rev = np.asarray(reviewed)
    if rev.shape != shape:
        raise InvalidLabelsError(f"reviewed mask shape {rev.shape} does not match the labels shape {shape}")
    if rev.dtype != bool:
        if rev.dtype.kind not in "ui":
            raise InvalidLabelsError(f"reviewed mask must be bool or uint8 0/1, got dtype {rev.dtype}")
        if rev.size and (int(rev.min()) < 0 or int(rev.max()) > 1):
            raise InvalidLabelsError("reviewed mask must hold only 0 (not reviewed) and 1 (reviewed)")
    return np.array(rev, dtype=np.uint8, copy=True)


def check_sample_id(sample_id: str) -> str:
    if (not isinstance(sample_id, str) or not SAMPLE_ID_RE.match(sample_id) or sample_id.startswith(".")
            or len(sample_id) > 120 or sample_id.split(".")[0].lower() in _WINDOWS_RESERVED):
        raise TrainingFolderError(
            f"sample id {sample_id!r} is not valid: use ASCII letters, digits, '.', '_' and '-' (not starting "
            "with '.', at most 120 characters), or leave sample_id=None (no --id) to get one")
    return sample_id


def int_pairs(value: Any, what: str) -> list[list[int]]:
    try:
        pairs = [[int(a), int(b)] for a, b in value]
    except (TypeError, ValueError):
        raise TrainingFolderError(f"{what} must be a list of [start, stop] pairs, got {value!r}") from None
    if any(a < 0 or b <= a for a, b in pairs):
        raise TrainingFolderError(f"{what} {pairs} must have 0 <= start < stop on every axis")
    return pairs


def model_summary(model: Any) -> dict | None:
    if model is None:
        return None
    get = model.get if isinstance(model, Mapping) else (lambda k: getattr(model, k, None))
    out = {k: get(k) for k in ("name", "version", "sha256")}
    if not out["name"]:
        raise TrainingFolderError(f"model must name the predicting model: a dict with 'name', 'version', "
                                  f"'sha256' (or a ModelSpec), got {model!r}")
    return {k: (None if v is None else str(v)) for k, v in out.items()}


def jsonable(value: Any, what: str) -> Any:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise TrainingFolderError(f"{what} must be a dict (JSON-able), got {type(value).__name__}")
    try:
        return json.loads(json.dumps(dict(value), allow_nan=False))
    except (TypeError, ValueError) as e:
        raise TrainingFolderError(f"{what} cannot be stored as JSON ({e}); use plain numbers, strings, lists "
                                  "and dicts") from None


def slug(source: Any) -> str:
    """An ASCII id stem from a source path: 'Gewebe ü 1.ome.tif' -> 'gewebe-u-1'."""
    if source is None:
        return "sample"
    name = re.split(r"[\\/]", str(source).rstrip("\\/"))[-1]
    low = name.lower()
    for suffix in (".ome.tiff", ".ome.tif", ".nii.gz"):
        if low.endswith(suffix):
            name = name[: -len(suffix)]
            break
    else:
        if "." in name[1:]:
            name = name.rsplit(".", 1)[0]
    s = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii")
    s = re.sub(r"[^A-Za-z0-9._-]+", "-", s)
    s = re.sub(r"-{2,}", "-", s).strip(".-_")[:40].rstrip(".-_").lower()
    return s or "sample"


def array_sha256(a: np.ndarray) -> str:
    h = hashlib.sha256(f"{a.dtype.str}{a.shape}".encode())
    h.update(memoryview(np.ascontiguousarray(a)).cast("B"))
    return h.hexdigest()


def val_draw(identity: str) -> float:
    return int(hashlib.sha256(identity.encode("utf-8", "surrogatepass")).hexdigest()[:8], 16) / 2**32
