"""Many prompts at once: one object per point or box, painted into a label image.

Point annotations (a nucleus centroid per click, exported from napari or QuPath) and boxes (a
detector's output, a person's rough boxes) become instance masks with an interactive model.
Objects never overwrite pixels that already belong to another object, so labels a person drew
are kept; a prompt on an existing object is skipped and reported.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from segloop.core._runtime import is_cancelled
from segloop.errors import Cancelled, ImportLayoutError, InvalidLabelsError, InvalidPromptError

__all__ = ["PromptedObjects", "label_prompts", "read_points_csv"]


@dataclass
class PromptedObjects:
    """What :func:`label_prompts` did.

    Attributes
    ----------
    labels : ndarray
        The label image with the new objects (uint16, uint32 past 65,535 ids).
    objects : list of dict
        One per new object: ``label``, ``prompt`` (``point`` or ``box`` and its coordinates),
        ``pixels``, ``milliseconds``.
    skipped : list of dict
        Prompts that made no object: ``prompt`` and ``why`` (on an existing object, nothing
        found, covered by other objects).
    """

    labels: np.ndarray
    objects: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)


def read_points_csv(path: str | os.PathLike, *, ndim: int = 2) -> list[tuple[float, ...]]:
    """Points from a CSV file: napari's Points export (``axis-0, axis-1[, axis-2]``), or columns named
    ``y, x`` (``z, y, x`` for volumes; any order, any case), or ``centroid-0, centroid-1``
    (scikit-image ``regionprops_table``). Coordinates are pixels; other columns are ignored.

    Raises
    ------
    ImportLayoutError
        No such columns, a value that is not a number, an empty file.
    """
    path = os.fspath(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            sample = f.read(4096)
            f.seek(0)
            dialect = csv.Sniffer().sniff(sample, delimiters=",;\t") if sample.strip() else csv.excel
            rows = list(csv.DictReader(f, dialect=dialect))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise ImportLayoutError(f"{path}: cannot read the points ({e})") from None
    if not rows:
        raise ImportLayoutError(f"{path}: no points (an empty table)")
    names = {k.strip().lower(): k for k in rows[0] if k is not None}
    axes = "zyx"[-ndim:]
    for candidates in ([f"axis-{i}" for i in range(ndim)], [f"centroid-{i}" for i in range(ndim)], list(axes)):
        if all(c in names for c in candidates):
            cols = [names[c] for c in candidates]
            break
    else:
        raise ImportLayoutError(f"{path}: needs columns {', '.join(axes)} (or napari's axis-0..axis-{ndim - 1}); "
                                f"found {', '.join(names) or 'none'}")
    points = []
    for i, row in enumerate(rows, start=2):
        try:
            points.append(tuple(float(row[c]) for c in cols))
        except (TypeError, ValueError):
            raise ImportLayoutError(f"{path}, line {i}: {[row.get(c) for c in cols]} are not numbers") from None
    return points


def _labels_for(labels, shape: tuple[int, ...]) -> np.ndarray:
    if labels is None:
        return np.zeros(shape, np.uint16)
    out = np.array(labels)          # a copy: the caller's labels are never changed in place
    if out.shape != shape:
        raise InvalidLabelsError(f"labels have shape {out.shape}, the image {shape}; give labels of the same image")
    if out.dtype.kind not in "iu":
        raise InvalidLabelsError(f"labels must be integers (instance ids), got {out.dtype}")
    if out.dtype.kind == "i" and out.size and out.min() < 0:
        raise InvalidLabelsError("labels must not be negative")
    return out


def label_prompts(model, image, *, points: Sequence[Sequence[float]] = (), boxes: Sequence[Sequence[float]] = (),
                  labels=None, z: int | None = None, channel_axis: Any = "auto", pixel_size: float | None = None,
                  progress: Callable[[int, int], None] | None = None, cancel: Any = None) -> PromptedObjects:
    """One object per point and per box, added to ``labels`` (or to new labels).

    Parameters
    ----------
    model : InteractiveModel
    image : array-like
        What :meth:`~segloop.core.inference.interactive.InteractiveModel.segment_crop` takes.
    points : sequence of (y, x) or (z, y, x)
        Each is the one positive click of an object.
    boxes : sequence of (y0, x0, y1, x1)
        Each is the box of an object (on plane ``z`` of a volume).
    labels : integer array of the image's spatial shape, optional
        Existing labels; new objects take new ids and only paint background.
    progress : callable(done, total), optional
    cancel : threading.Event-like, optional

    Raises
    ------
    InvalidPromptError
        A point outside the image or a box of zero area (every prompt is checked first: nothing
        is segmented then).
    InvalidLabelsError
        ``labels`` of another shape or not integers.
    Cancelled
    """
    from segloop.core.inference.interactive import image_view

    view, ca, _, _ = image_view(model.spec, image, channel_axis=channel_axis, stain=model.stain)
    spatial = tuple(int(s) for s in (view.shape[:-1] if ca is not None else view.shape))
    norm = model.normalizer_for(image, channel_axis=channel_axis)
    out = _labels_for(labels, spatial)
    next_id = int(out.max()) + 1 if out.size else 1
    prompts = [("point", tuple(float(v) for v in p)) for p in points] + [("box", tuple(float(v) for v in b))
                                                                        for b in boxes]
    from segloop.core.inference.interactive import check_prompt

    for i, (kind, coords) in enumerate(prompts):     # all checked before any is run: no partial result
        try:
            check_prompt(spatial, positive=[coords] if kind == "point" else (),
                         box=coords if kind == "box" else None, z=z)
        except InvalidPromptError as e:
            raise InvalidPromptError(f"{kind} {i + 1} of {len(prompts)} {list(coords)}: {e}") from None
    result = PromptedObjects(out)
    for i, (kind, coords) in enumerate(prompts):
        if is_cancelled(cancel):
            raise Cancelled(f"cancelled after {len(result.objects)} of {len(prompts)} prompts; nothing was written")
        record = {"prompt": {kind: list(coords)}}
        if kind == "point" and _on_object(out, coords):
            result.skipped.append({**record, "why": "on an existing object"})
            continue
        crop = model.segment_crop(image, positive=[coords] if kind == "point" else (),
                                  box=coords if kind == "box" else None, z=z, normalizer=norm,
                                  channel_axis=channel_axis, pixel_size=pixel_size)
        region = tuple(slice(o, o + n) for o, n in zip(crop.offset[-2:], crop.mask.shape, strict=True))
        if len(crop.offset) == 3:
            region = (crop.offset[0], *region)
        free = crop.mask & (out[region] == 0)
        if not free.any():
            result.skipped.append({**record, "why": "nothing found" if not crop.mask.any() else "covered by other objects"})
            continue
        if next_id > np.iinfo(out.dtype).max:
            out = result.labels = out.astype(np.uint32)
        out[region][free] = next_id
        result.objects.append({"label": next_id, **record, "pixels": int(free.sum()),
                               "milliseconds": round(crop.milliseconds, 2)})
        next_id += 1
        if progress is not None:
            progress(i + 1, len(prompts))
    result.labels = out
    return result


def _on_object(labels: np.ndarray, coords: tuple[float, ...]) -> bool:
    idx = tuple(int(round(c)) for c in coords)
    if len(idx) != labels.ndim or any(not 0 <= v < n for v, n in zip(idx, labels.shape, strict=True)):
        return False
    return bool(labels[idx])
