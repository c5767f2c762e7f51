"""Voxel spacing: bring a volume to the spacing a model was trained at, and its labels back.

A 2.5D or 3D package that records ``spec.spacing`` (``(dz, dy, dx)`` mm) was trained on volumes
resampled to it.  :meth:`segloop.core.inference.model.Model.predict` with ``spacing=`` (the
scan's own, from its DICOM / NIfTI / NRRD geometry) resamples the scan to the model's spacing
(:func:`resample_to_spacing`: linear for intensities), runs there, and maps the labels back to
the scan's grid by nearest neighbour (:func:`resize_labels`), so a 1 mm and a 5 mm scan both
meet the network at the scale it learnt.  Within 5 % on every axis nothing is resampled.

This is what nnU-Net does (its "target spacing"), minus its separate handling of anisotropic
axes; MONAI's ``Spacingd`` is the transform form of the same idea.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from segloop.errors import InvalidImageError

__all__ = ["SPACING_TOLERANCE", "check_spacing", "checked_volume_spacing", "needs_resampling", "predict_at_spacing", "resample_to_spacing",
           "resize_labels", "target_shape"]

#: Relative difference per axis below which a scan runs at its own spacing.
SPACING_TOLERANCE = 0.05


def check_spacing(spacing, *, what: str = "spacing") -> tuple[float, float, float]:
    """Three positive finite numbers ``(dz, dy, dx)`` in mm, or :class:`InvalidImageError`."""
    try:
        sp = tuple(float(s) for s in spacing)
    except (TypeError, ValueError):
        raise InvalidImageError(f"{what} must be three numbers (dz, dy, dx) in mm, got {spacing!r}") from None
    if len(sp) != 3 or not all(np.isfinite(s) and 0 < s < 1000 for s in sp):
        raise InvalidImageError(f"{what} must be three positive numbers (dz, dy, dx) in mm, got {list(sp)}")
    return sp  # type: ignore[return-value]


def needs_resampling(image_spacing, model_spacing) -> bool:
    """True when some axis differs by more than :data:`SPACING_TOLERANCE`."""
    a, b = np.asarray(image_spacing, float), np.asarray(model_spacing, float)
    return bool(np.any(np.abs(a / b - 1.0) > SPACING_TOLERANCE))


def target_shape(shape: Sequence[int], from_spacing, to_spacing) -> tuple[int, ...]:
    """The spatial shape of ``shape`` at ``from_spacing`` when resampled to ``to_spacing`` (same extent)."""
    return tuple(max(1, int(round(n * f / t))) for n, f, t in zip(shape, from_spacing, to_spacing))


def _nearest_index(n_src: int, n_dst: int) -> np.ndarray:
    """Source index of each destination voxel centre (pixel areas aligned, as ``grid_mode=True``)."""
    return np.clip(np.floor((np.arange(n_dst) + 0.5) * n_src / n_dst).astype(np.int64), 0, n_src - 1)


def resize_labels(labels: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Labels (or any mask) resized to ``shape`` by nearest neighbour; ids and dtype kept."""
    labels = np.asarray(labels)
    if tuple(labels.shape) == tuple(shape):
        return labels
    idx = np.ix_(*[_nearest_index(a, b) for a, b in zip(labels.shape, shape)])
    return labels[idx]


def _source_coords(n_src: int, n_dst: int) -> np.ndarray:
    """Source coordinate of each destination voxel centre (areas aligned, as ``grid_mode=True``), clamped
    to the source's first and last voxel (edge values repeated, as ``mode="nearest"``)."""
    return np.clip((np.arange(n_dst) + 0.5) * n_src / n_dst - 0.5, 0.0, n_src - 1.0)


def _resample_planes(volume, shape: Sequence[int], planes: tuple[int, int], *, channels_last: bool) -> np.ndarray:
    """Planes ``planes[0] .. planes[1] - 1`` of ``volume`` (Z, Y, X[, C]) resampled (linear) to the spatial
    ``shape``, as float32.  Each output plane depends only on its own position: a slab of planes is
    exactly the same planes of the whole resampled volume (what ``z_range`` relies on).  Only the source
    planes needed are read."""
    from scipy import ndimage as ndi

    depth, ny, nx = (int(n) for n in volume.shape[:3])
    zs = _source_coords(depth, int(shape[0]))[planes[0]:planes[1]]
    lo = np.floor(zs).astype(np.int64)
    hi = np.minimum(lo + 1, depth - 1)
    w = (zs - lo).astype(np.float32)
    a, b = int(lo.min()), int(hi.max()) + 1
    src = np.asarray(volume[a:b], dtype=np.float32)
    inplane = (int(shape[1]) / ny, int(shape[2]) / nx)
    out = np.empty((len(zs), int(shape[1]), int(shape[2]), *src.shape[3:]), np.float32)
    for i, (below, above, f) in enumerate(zip(lo - a, hi - a, w)):
        plane = src[below] * (1.0 - f) + src[above] * f if f > 0 else src[below]
        if channels_last and plane.ndim == 3:
            for c in range(plane.shape[2]):
                out[i, ..., c] = _zoom2d(ndi, plane[..., c], inplane, out.shape[1:3])
        else:
            out[i] = _zoom2d(ndi, plane, inplane, out.shape[1:3])
    return out


def _zoom2d(ndi, plane: np.ndarray, zoom, shape) -> np.ndarray:
    if tuple(plane.shape) == tuple(shape):
        return plane
    return ndi.zoom(plane, zoom, order=1, grid_mode=True, mode="nearest")


def resample_to_spacing(volume: np.ndarray, from_spacing, to_spacing, *, order: int = 1,
                        channels_last: bool = False) -> np.ndarray:
    """A ``(Z, Y, X[, C])`` volume at ``from_spacing`` resampled to ``to_spacing`` (mm).

    ``order=1``: linear along z, then bilinear in each plane, on float32 (intensities);
    ``order=0``: nearest neighbour, dtype kept (labels, masks).  Voxel areas are aligned (the
    first and last voxels' outer faces stay where they were), so resampling there and back keeps
    objects in place.

    Parameters
    ----------
    volume : (Z, Y, X) or (Z, Y, X, C) array-like
    from_spacing, to_spacing : (dz, dy, dx)
        mm.
    order : {0, 1}
    channels_last : bool
        A 4D ``volume`` has channels on its last axis (each resampled alone).

    Returns
    -------
    ndarray
        Spatial shape :func:`target_shape`; float32 (``order=1``) or ``volume``'s dtype.
    """
    from_spacing, to_spacing = check_spacing(from_spacing), check_spacing(to_spacing, what="model spacing")
    if order not in (0, 1):
        raise InvalidImageError(f"order must be 0 (nearest) or 1 (linear), got {order!r}")
    vol = np.asarray(volume)
    if vol.ndim != 3 + int(bool(channels_last)):
        raise InvalidImageError(f"expected a (Z, Y, X{', C' if channels_last else ''}) volume, got shape {vol.shape}")
    spatial = vol.shape[:3]
    shape = target_shape(spatial, from_spacing, to_spacing)
    if order == 0:
        idx = np.ix_(*[_nearest_index(a, b) for a, b in zip(spatial, shape)], *([np.arange(vol.shape[3])]
                                                                                 if vol.ndim == 4 else []))
        return vol[idx]
    return _resample_planes(vol, shape, (0, shape[0]), channels_last=bool(channels_last))


def checked_volume_spacing(model, image, spacing, *, channel_axis, normalization, normalizer
                           ) -> tuple[tuple[float, float, float], bool]:
    """``(spacing, resample)`` for ``model.predict(image, spacing=...)``: the spacing checked, and
    whether the volume must be resampled to ``model.spec.spacing``.

    Raises
    ------
    InvalidImageError
        Bad spacing, or ``image`` is a single plane (a 2D image has no slice spacing).
    """
    from segloop.core.inference.prepare import validate_image

    spacing = check_spacing(spacing)
    _, channels, _ = model._norm_spec(normalization, normalizer)
    if not validate_image(image, channels=channels, channel_axis=channel_axis)[1]:
        raise InvalidImageError(f"spacing= is for volumes (Z, Y, X[, C]); got an image of shape "
                                f"{tuple(image.shape)} (a single plane has no slice spacing): leave "
                                "spacing out, or give pixel_size")
    return spacing, model.spec.spacing is not None and needs_resampling(spacing, model.spec.spacing)


def predict_at_spacing(model, image, spacing, *, z_range, out, probabilities, probability_sink, pixel_size,
                       normalizer, channel_axis, normalization, uncertainty, **kw):
    """``model.predict(image, spacing=...)`` of a volume resampled to ``model.spec.spacing``; labels and
    uncertainty mapped back by nearest neighbour.  Called by :meth:`Model.predict
    <segloop.core.inference.model.Model.predict>` (see its ``spacing``); other keywords are passed on.

    The volume is resampled on one grid, the model's, whatever ``z_range``: with ``z_range`` only the
    model planes that map back onto it (plus a 2.5D model's context, or half a 3D patch) are made
    and predicted, so a 2.5D model's planes equal those of the whole prediction.
    """
    from dataclasses import replace

    if probabilities or probability_sink is not None or pixel_size is not None:
        raise InvalidImageError("spacing= resamples the volume: it cannot be combined with probabilities, "
                                "probability_sink or pixel_size")
    spatial = tuple(int(n) for n in image.shape[:3])
    depth = spatial[0]
    z0, z1 = (0, depth) if z_range is None else (int(z_range[0]), int(z_range[1]))
    if not 0 <= z0 < z1 <= depth:
        raise InvalidImageError(f"z_range {z_range} is outside the volume's {depth} planes")
    if out is not None and tuple(out.shape) != spatial:
        raise InvalidImageError(f"out must have the volume's full shape {spatial}, got {tuple(out.shape)}")
    if normalizer is None:          # fitted on the whole volume at its own spacing, as without resampling
        normalizer = model.normalizer_for(image, channel_axis=channel_axis, normalization=normalization)
    grid = target_shape(spatial, spacing, model.spec.spacing)
    back = _nearest_index(grid[0], depth)                  # the model plane of each image plane
    m0, m1 = int(back[z0]), int(back[z1 - 1]) + 1
    if model.spec.dims == 2:
        reach = max(int(model.spec.context_slices or 1), 1) // 2
    else:
        reach = model.tile_shape()[0] // 2 + 1
    c0, c1 = max(0, m0 - reach), min(grid[0], m1 + reach)
    chan_last = len(image.shape) == 4          # Model.predict checked: a stack, channels last if 4D
    small = _resample_planes(image, grid, (c0, c1), channels_last=chan_last)
    inner = None if (m0 - c0, m1 - c0) == (0, c1 - c0) else (m0 - c0, m1 - c0)
    res = model.predict(small, channel_axis=-1 if chan_last else None, normalizer=normalizer,
                        normalization=normalization, uncertainty=uncertainty, z_range=inner, **kw)
    planes = back[z0:z1] - m0
    full = resize_labels(res.labels[planes], (z1 - z0, *spatial[1:]))
    unc = None if res.uncertainty is None else resize_labels(res.uncertainty[planes], (z1 - z0, *spatial[1:]))
    if out is not None:
        out[z0:z1] = full
        full = out
    prov = dict(res.provenance)
    params = dict(prov.get("parameters") or {})
    params["z_range"] = [z0, z1]
    prov.update(parameters=params, n_planes=z1 - z0, image_shape=list(image.shape))
    prov["spacing"] = {"image": list(spacing), "model": list(model.spec.spacing), "resampled": True,
                       "model_grid": list(grid), "model_planes_run": [c0, c1]}
    return replace(res, labels=full, uncertainty=unc, provenance=prov)
