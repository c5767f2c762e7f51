"""Per-class scores of a label volume against a reference, in physical units (no Qt, no napari).

:func:`volume_scores` gives, per class (and per group of classes, e.g. BraTS *whole tumour* =
necrosis + edema + non-enhancing + enhancing): Dice, the 95th percentile Hausdorff distance in
mm (symmetric, between the two surfaces, as in the BraTS and MSD evaluations), and the volume of
the prediction and the reference in mL.  Spacing is honoured everywhere, so a 1 mm and a 5 mm
scan are scored in the same units.

Conventions for empty masks (as in MONAI's ``compute_hausdorff_distance`` and the MSD):
both empty -> Dice 1, HD95 0; one empty -> Dice 0, HD95 ``inf``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from segloop.errors import InvalidLabelsError

__all__ = ["hd95", "surface_distances", "volume_scores"]


def _surface(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage as ndi

    return mask & ~ndi.binary_erosion(mask, structure=ndi.generate_binary_structure(mask.ndim, 1),
                                      border_value=0)


def surface_distances(a: np.ndarray, b: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """Distances (mm) from every surface voxel of ``a`` to the surface of ``b``, and back (concatenated)."""
    from scipy import ndimage as ndi

    a, b = np.asarray(a, bool), np.asarray(b, bool)
    # crop to where either mask is, with a margin: the distance transform is the costly part
    both = a | b
    idx = np.argwhere(both)
    lo = np.maximum(idx.min(0) - 2, 0)
    hi = np.minimum(idx.max(0) + 3, both.shape)
    sl = tuple(slice(int(x), int(y)) for x, y in zip(lo, hi))
    a, b = a[sl], b[sl]
    sa, sb = _surface(a), _surface(b)
    da = ndi.distance_transform_edt(~sb, sampling=spacing)
    db = ndi.distance_transform_edt(~sa, sampling=spacing)
    return np.concatenate([da[sa], db[sb]])


def hd95(truth: np.ndarray, pred: np.ndarray, spacing: Sequence[float]) -> float:
    """The 95th percentile of the symmetric surface distances (mm); 0 if both empty, inf if one is."""
    t, p = np.asarray(truth, bool), np.asarray(pred, bool)
    if not t.any() and not p.any():
        return 0.0
    if not t.any() or not p.any():
        return float("inf")
    return float(np.percentile(surface_distances(t, p, spacing), 95))


def volume_scores(truth: np.ndarray, pred: np.ndarray, spacing: Sequence[float], classes: Sequence[str], *,
                  groups: Mapping[str, Sequence[int]] | None = None, mask: np.ndarray | None = None) -> dict:
    """Dice, HD95 (mm) and volumes (mL) per class and per group of classes.

    Parameters
    ----------
    truth, pred : (Z, Y, X) integer arrays
        Class ids (0 background).
    spacing : (dz, dy, dx)
        mm per voxel.
    classes : sequence of str
        Names by id (``classes[0]`` is the background and is not scored).
    groups : mapping of str to sequence of int, optional
        Unions of classes scored as one (e.g. ``{"whole tumour": [1, 2, 3, 4]}``).
    mask : bool array, optional
        Voxels to score (others count for neither).

    Returns
    -------
    dict
        ``{name: {"dice", "hd95_mm", "volume_ml", "reference_ml", "volume_error_ml"}}``.
    """
    t, p = np.asarray(truth), np.asarray(pred)
    if t.shape != p.shape:
        raise InvalidLabelsError(f"truth {t.shape} and prediction {p.shape} differ in shape; score labels on the "
                                 "same grid")
    if mask is not None:
        m = np.asarray(mask, bool)
        t, p = np.where(m, t, 0), np.where(m, p, 0)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    wanted = {name: [i] for i, name in enumerate(classes) if i > 0}
    wanted.update({k: list(v) for k, v in (groups or {}).items()})
    out = {}
    for name, ids in wanted.items():
        a, b = np.isin(t, ids), np.isin(p, ids)
        na, nb = int(a.sum()), int(b.sum())
        inter = int(np.logical_and(a, b).sum())
        d = 1.0 if na + nb == 0 else 2.0 * inter / (na + nb)
        out[name] = {"dice": d, "hd95_mm": hd95(a, b, spacing), "volume_ml": nb * voxel_ml,
                     "reference_ml": na * voxel_ml, "volume_error_ml": (nb - na) * voxel_ml}
    return out
