"""Pooled encoder features of regions, for diversity sampling."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from segloop.core.learning.regions import Box, check_box, split_evenly
from segloop.errors import (
    ActiveLearningError,
    Cancelled,
)

if TYPE_CHECKING:
    from segloop.core.inference.model import Model


# ---------------------------------------------------------------------------
# Encoder features, for diversity
# ---------------------------------------------------------------------------


class _Stop(Exception):
    def __init__(self, value):
        self.value = value


def _deepest_encoder_module(network):
    """The module whose output is the network's deepest encoder features (the bottleneck)."""
    enc = getattr(network, "encoder", None)
    if enc is not None and hasattr(enc, "blocks"):
        return enc.blocks[-1]
    stages = getattr(network, "stages", None)
    if stages is not None and len(stages):
        return stages[-1]
    raise ActiveLearningError(
        f"{type(network).__name__} has no encoder segloop knows (an 'encoder' with 'blocks', or "
        "'stages'); use the 'uncertainty' or 'random' strategy, or pass your own features")


def region_features(model: Model, image, boxes: Sequence[Box], *, channel_axis="auto", normalization=None,
                    batch_size: int = 8, max_planes: int = 4, progress: Callable[[int, int], None] | None = None,
                    cancel=None) -> np.ndarray:
    """Pooled deepest-encoder features of each region, for diversity-aware selection.

    Every region's pixels are normalized as for prediction and run through the
    network's encoder only (forward stops at the bottleneck); the bottleneck
    activations are averaged over space.  Regions larger than the model's
    tile are cut into tile-sized pieces and the pieces' features averaged,
    weighted by size.  For 2D/2.5D models on a stack, up to ``max_planes``
    evenly spaced planes of a region are used (2.5D: each with its
    neighbouring planes as channels); 3D models see the region's sub-volume,
    widened in Z to at least one patch depth.

    Parameters
    ----------
    model : Model
    image : array-like
        As for :meth:`Model.predict`.
    boxes : sequence of Box
        Full-image coordinates.
    channel_axis, normalization
        As for :meth:`Model.predict`.
    batch_size : int
        Pieces per forward pass.
    max_planes : int
        Planes used per region for 2D/2.5D models on stacks.
    progress : callable(done, total), optional
        Called after each region with the number of regions done.
    cancel : threading.Event or callable, optional
        Checked before each region; when set, :class:`~segloop.errors.Cancelled` is raised.

    Returns
    -------
    (n, F) float32 ndarray
        ``F`` = channels of the bottleneck.
    """
    import torch

    from segloop.core.inference.engines import TorchPredictor
    prep = model.prepare(image, channel_axis=channel_axis, normalization=normalization, remember=True)
    img, stack, normalizer, spatial, tile = prep.image, prep.stack, prep.normalizer, prep.spatial_shape, prep.tile
    dims, ctx = int(model.spec.dims), int(model.spec.context_slices)
    if isinstance(model.predictor, TorchPredictor):
        net, device = model.predictor.network, model.predictor.device
    else:
        net, device = model.network, "cpu"
    target = _deepest_encoder_module(net)

    def norm2d(z: int | None, ys: slice, xs: slice) -> np.ndarray:
        raw = np.asarray(img[z, ys, xs] if z is not None else img[ys, xs])
        return np.asarray(normalizer(raw), dtype=np.float32)          # (C', h, w)

    def pieces(box: Box):
        """(weight, input (C, *S)) per piece of one box."""
        ys_all = split_evenly(box[-2][1] - box[-2][0], tile[-2])
        xs_all = split_evenly(box[-1][1] - box[-1][0], tile[-1])
        y_off, x_off = box[-2][0], box[-1][0]
        inplane = [(slice(y_off + a, y_off + b), slice(x_off + c, x_off + d)) for a, b in ys_all for c, d in xs_all]
        if dims == 3:
            nz = spatial[0]
            for za, zb in split_evenly(box[0][1] - box[0][0], tile[0]):
                za, zb = box[0][0] + za, box[0][0] + zb
                need = min(tile[0], nz)
                if zb - za < need:                              # widen to one patch depth, centred
                    za = max(0, min(nz - need, (za + zb - need) // 2))
                    zb = za + need
                for ys, xs in inplane:
                    raw = np.asarray(img[za:zb, ys, xs])
                    x = np.moveaxis(np.asarray(normalizer(raw), dtype=np.float32), 1, 0)   # (C', dz, h, w)
                    yield x[0].size, x
            return
        if stack:
            z0, z1 = box[0]
            planes = np.unique(np.linspace(z0, z1 - 1, num=min(max_planes, z1 - z0)).round().astype(int))
        else:
            planes = [None]
        half = ctx // 2
        for z in planes:
            for ys, xs in inplane:
                if ctx == 1:
                    x = norm2d(None if z is None else int(z), ys, xs)
                else:
                    x = np.concatenate([norm2d(None if z is None else int(np.clip(z + d, 0, spatial[0] - 1)), ys, xs)
                                        for d in range(-half, half + 1)], axis=0)
                yield x[0].size, x

    def hook(module, inputs, output):
        raise _Stop(output)

    sums: np.ndarray | None = None
    weights = np.zeros(len(boxes), np.float64)
    pending: list[tuple[int, float, np.ndarray]] = []

    def flush():
        nonlocal sums
        if not pending:
            return
        batch = torch.from_numpy(np.stack([p[2] for p in pending])).to(device)
        try:
            with torch.inference_mode():
                net(batch)
            raise ActiveLearningError("the network finished without reaching its encoder's last block")
        except _Stop as stop:
            feats = stop.value.float().mean(dim=tuple(range(2, stop.value.dim()))).cpu().numpy()
        if sums is None:
            sums = np.zeros((len(boxes), feats.shape[1]), np.float64)
        for (i, wgt, _), f in zip(pending, feats):
            sums[i] += wgt * f
            weights[i] += wgt
        pending.clear()

    from segloop.core._runtime import is_cancelled

    handle = target.register_forward_hook(hook)
    try:
        for i, box in enumerate(boxes):
            if is_cancelled(cancel):
                raise Cancelled("computing region features was cancelled")
            if progress is not None:
                progress(i, len(boxes))
            box = check_box(box)
            if len(box) != len(spatial) or any(b > n for (_, b), n in zip(box, spatial)):
                raise ActiveLearningError(f"box {box} does not fit an image of spatial shape {spatial}")
            for wgt, x in pieces(box):
                if pending and (x.shape != pending[0][2].shape or len(pending) >= batch_size):
                    flush()
                pending.append((i, float(wgt), x))
        flush()
        if progress is not None:
            progress(len(boxes), len(boxes))
    finally:
        handle.remove()
    if sums is None:
        return np.zeros((0, 0), np.float32)
    return (sums / np.maximum(weights, 1e-12)[:, None]).astype(np.float32)

