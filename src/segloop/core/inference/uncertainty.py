"""Per-pixel uncertainty of a segmentation: entropy, test-time augmentation, MC-dropout.

Three estimates, each a float32 map in [0, 1] with the spatial shape of the
labels (0 = certain):

``"entropy"``
    Normalized Shannon entropy of the blended class probabilities of the
    plain prediction, ``H(p) / log K``: how undecided the network is
    (:func:`segloop.core.inference.postprocess.entropy`, the one entropy).
``"tta"``
    Disagreement between test-time augmentations: the image is also
    predicted flipped in y, in x, in both (and, for ``tta_flips > 4``,
    transposed), each prediction is mapped back, and the spread of the class
    probabilities is measured (below).  3D models are flipped in-plane only.
``"mc_dropout"``
    The same spread over ``mc_samples`` stochastic passes with the network's
    dropout layers switched on (Gal & Ghahramani 2016); BatchNorm stays in
    eval mode.  Torch engine and a network with dropout only.

The spread of ``T`` probability vectors ``p_1 .. p_T`` (``K`` classes) is

    D = (mean_t ||p_t||^2 - ||mean_t p_t||^2) / (1 - 1/K)
      = sum_k Var_t(p_t[k]) / (1 - 1/K)

that is the variance of the probabilities summed over classes, scaled by its
largest possible value.  Why this one: (1) it is the *epistemic* part of the
quadratic (Gini / Brier) uncertainty decomposition ``Gini(mean p) = mean
Gini(p_t) + D * (1 - 1/K)``, the quadratic analogue of BALD's mutual
information, so it measures disagreement and not how soft every single
prediction is (that is what ``"entropy"`` shows); (2) it needs only running
sums of ``p`` and ``||p||^2``, so memory does not grow with ``T``; (3) it is
0 exactly when all predictions agree and 1 exactly when they are one-hot and
split evenly over all classes, whatever ``K`` - for two classes it is
``4 * Var(p_foreground)``.  The same statistic serves TTA and MC-dropout so
their maps are comparable.

Memory stays bounded: planes of a stack are processed in chunks (see
``max_chunk_bytes``), and probabilities reach this module band by band
through :meth:`Model.predict`'s ``probability_sink``; the outputs (labels and
one float32 map per method) are the only image-sized arrays.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from segloop.core._runtime import is_cancelled
from segloop.core.formats.pixel_size import check_pixel_size
from segloop.core.inference.grid import check_z_range
from segloop.core.inference.postprocess import entropy
from segloop.core.inference.resolution import pixel_size_record, plan_rescale
from segloop.errors import (
    Cancelled,
    UncertaintyError,
    UnsupportedUncertaintyError,
)

if TYPE_CHECKING:
    from segloop.core.inference.model import Model

__all__ = [
    "METHODS",
    "MAX_TTA_FLIPS",
    "UncertaintyResult",
    "disagreement_map",
    "estimate_uncertainty",
    "supports_mc_dropout",
]

METHODS = ("entropy", "tta", "mc_dropout")
Method = Literal["entropy", "tta", "mc_dropout"]

#: Augmentations available: identity, flip y, flip x, flip yx, then the same four transposed.
MAX_TTA_FLIPS = 8
_AUGMENTATIONS = ((False, False, False), (True, False, False), (False, True, False), (True, True, False),
                  (False, False, True), (True, False, True), (False, True, True), (True, True, True))

#: Working memory (accumulators) per chunk of planes; a plane always fits.
DEFAULT_CHUNK_BYTES = 512 * 2**20


# ---------------------------------------------------------------------------
# Maps from probabilities
# ---------------------------------------------------------------------------


def disagreement_map(samples: np.ndarray, *, axis: int = 1) -> np.ndarray:
    """Spread of several probability predictions of the same pixels, in [0, 1].

    ``(mean_t ||p_t||^2 - ||mean_t p_t||^2) / (1 - 1/K)``: the per-class
    variance over the samples summed over classes, scaled by its maximum (see
    the module docstring).  What ``"tta"`` and ``"mc_dropout"`` compute, here
    for samples already in memory.

    Parameters
    ----------
    samples : (T, K, ...) float ndarray
        ``T`` predictions (axis 0) of ``K`` class probabilities (``axis``).
    axis : int
        The class axis of ``samples`` (default 1).

    Returns
    -------
    (...) float32 ndarray
    """
    s = np.asarray(samples, dtype=np.float32)
    if s.ndim < 2:
        raise UncertaintyError(f"samples must be (T, K, ...), got shape {s.shape}")
    axis = axis if axis >= 0 else s.ndim + axis
    if axis == 0:
        raise UncertaintyError("axis 0 of samples holds the predictions; give the class axis (default 1)")
    k = s.shape[axis]
    if k < 2:
        return np.zeros(np.delete(s.shape, [0, axis]), np.float32)
    mean = s.mean(axis=0)
    d = (s * s).sum(axis=axis).mean(axis=0) - (mean * mean).sum(axis=axis - 1)
    d /= np.float32(1.0 - 1.0 / k)
    return np.clip(d, 0.0, 1.0, out=d)


class _Moments:
    """Running sums of ``p`` and ``||p||^2`` over passes, for :func:`disagreement_map` without the samples."""

    def __init__(self, k: int, shape: tuple[int, int, int]):
        self.k = k
        self.s1 = np.zeros((k,) + shape, np.float32)
        self.sq = np.zeros(shape, np.float32)
        self.n = 0

    def add(self, z: int, rows: slice, cols: slice, probs: np.ndarray) -> None:
        self.s1[:, z, rows, cols] += probs
        self.sq[z, rows, cols] += np.einsum("k...,k...->...", probs, probs)

    def finish(self, out: np.ndarray) -> None:
        """Write the disagreement into ``out`` (nz, H, W) float32."""
        if self.n < 2 or self.k < 2:
            out[...] = 0
            return
        mean = self.s1
        mean /= np.float32(self.n)
        d = self.sq / np.float32(self.n) - np.einsum("k...,k...->...", mean, mean)
        d /= np.float32(1.0 - 1.0 / self.k)
        np.clip(d, 0.0, 1.0, out=out)


# ---------------------------------------------------------------------------
# Augmentations
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Flip:
    """An in-plane flip (and optional y/x transpose) of the image, and its inverse on probability bands."""

    flip_y: bool
    flip_x: bool
    transpose: bool

    @property
    def identity(self) -> bool:
        return not (self.flip_y or self.flip_x or self.transpose)

    @property
    def name(self) -> str:
        parts = [n for n, on in (("flip-y", self.flip_y), ("flip-x", self.flip_x),
                                 ("transpose", self.transpose)) if on]
        return "+".join(parts) or "identity"

    def view(self, image, stack: bool):
        """The augmented image: a view for ndarrays, memmaps and dask arrays."""
        if self.identity:
            return image
        ya = 1 if stack else 0
        idx = [slice(None)] * len(image.shape)
        if self.flip_y:
            idx[ya] = slice(None, None, -1)
        if self.flip_x:
            idx[ya + 1] = slice(None, None, -1)
        view = image
        if self.flip_y or self.flip_x:
            try:
                view = image[tuple(idx)]
            except (TypeError, ValueError, IndexError):      # e.g. zarr: no negative steps
                view = np.asarray(image)[tuple(idx)]
        if self.transpose:
            view = np.swapaxes(view, ya, ya + 1)
        return view

    def to_original(self, y0: int, y1: int, probs: np.ndarray, height: int, width: int
                    ) -> tuple[slice, slice, np.ndarray]:
        """Map rows ``y0 .. y1`` of the augmented plane, ``probs (K, y1 - y0, W')``, back.

        Returns the rows and columns of the original ``height x width`` plane
        and the probabilities there (a view).
        """
        if self.transpose:           # augmented rows are columns of the flipped plane
            q = probs.transpose(0, 2, 1)
            r0, r1, c0, c1 = 0, height, y0, y1
        else:
            q = probs
            r0, r1, c0, c1 = y0, y1, 0, width
        if self.flip_y:
            q = q[:, ::-1]
            r0, r1 = height - r1, height - r0
        if self.flip_x:
            q = q[:, :, ::-1]
            c0, c1 = width - c1, width - c0
        return slice(r0, r1), slice(c0, c1), q


# ---------------------------------------------------------------------------
# MC-dropout
# ---------------------------------------------------------------------------


def _dropout_modules(network) -> list:
    from torch.nn.modules.dropout import _DropoutNd

    return [m for m in network.modules() if isinstance(m, _DropoutNd) and float(m.p) > 0]


def supports_mc_dropout(model: Model) -> bool:
    """True when ``model`` can give MC-dropout samples: torch engine and dropout > 0 in the network."""
    from segloop.core.inference.engines import TorchPredictor

    return isinstance(model.predictor, TorchPredictor) and bool(_dropout_modules(model.predictor.network))


def _require_mc_dropout(model: Model) -> None:
    from segloop.core.inference.engines import TorchPredictor

    name = model.spec.name
    if not isinstance(model.predictor, TorchPredictor):
        raise UnsupportedUncertaintyError(
            f"MC-dropout needs the torch engine; {name} runs on {model.engine_name!r}. Load it with "
            "engine='torch' (CLI: --engine torch), or use the 'entropy' or 'tta' methods")
    if not _dropout_modules(model.predictor.network):
        raise UnsupportedUncertaintyError(
            f"{name} has no dropout layers (architecture {model.spec.architecture!r}, dropout 0), so "
            "MC-dropout has nothing to sample; use 'entropy' or 'tta', or fine-tune a model with dropout > 0")


@contextlib.contextmanager
def _dropout_active(network) -> Iterator[None]:
    """Dropout layers in train mode (everything else, BatchNorm included, untouched); restored on exit."""
    modules = _dropout_modules(network)
    before = [m.training for m in modules]
    try:
        for m in modules:
            m.train(True)
        yield
    finally:
        for m, was in zip(modules, before):
            m.train(was)


@contextlib.contextmanager
def _seeded_torch(seed: int, device: str) -> Iterator[None]:
    """Seed torch's generators for the block, then give the caller's RNG state back."""
    import torch

    devices = []
    if device.startswith("cuda"):
        devices = [torch.device(device).index or 0]
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(int(seed))
        yield


# ---------------------------------------------------------------------------
# The estimate
# ---------------------------------------------------------------------------


@dataclass
class UncertaintyResult:
    """What :func:`estimate_uncertainty` returns.

    Attributes
    ----------
    labels : (H, W) or (Z', H, W) ndarray
        The plain (un-augmented, dropout off) prediction, as
        :meth:`Model.predict` returns it (``Z' = z1 - z0`` for a stack).
    maps : dict of str -> float32 ndarray
        Method name -> map in [0, 1] of the same shape as ``labels``, in the
        order the methods were asked for.
    n_objects : int
        Objects of the plain prediction (as ``SegmentationResult.n_objects``).
    provenance : dict
        The plain prediction's provenance plus ``"uncertainty"``: methods,
        augmentations, samples, seed.
    """

    labels: np.ndarray
    maps: dict[str, np.ndarray]
    n_objects: int = 0
    provenance: dict[str, Any] = field(default_factory=dict)

    def combined(self) -> np.ndarray:
        """Mean of the maps (float32 in [0, 1], the shape of ``labels``)."""
        if not self.maps:
            return np.zeros(self.labels.shape, np.float32)
        out = np.zeros(self.labels.shape, np.float32)
        for m in self.maps.values():
            out += m
        out /= np.float32(len(self.maps))
        return out


def _check_methods(methods) -> tuple[str, ...]:
    if isinstance(methods, str):
        methods = (methods,)
    seen: list[str] = []
    for m in methods:
        if m not in METHODS:
            raise UncertaintyError(f"unknown uncertainty method {m!r}; choose from {', '.join(METHODS)}")
        if m not in seen:
            seen.append(m)
    if not seen:
        raise UncertaintyError(f"give at least one uncertainty method ({', '.join(METHODS)})")
    return tuple(seen)


def _int_option(name: str, value, lo: int, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo or (
            hi is not None and value > hi):
        rng = f"{lo} .. {hi}" if hi is not None else f">= {lo}"
        raise UncertaintyError(f"{name} must be an integer {rng}, got {value!r}")
    return int(value)


def estimate_uncertainty(
    model: Model,
    image,
    *,
    methods: Sequence[Method] | Method = ("entropy",),
    tta_flips: int = 4,
    mc_samples: int = 8,
    channel_axis: int | None | Literal["auto"] = "auto",
    normalization=None,
    z_range: tuple[int, int] | None = None,
    seed: int = 0,
    tile: int | tuple[int, ...] | None = None,
    overlap: float | None = None,
    batch_size: int = 4,
    skip_background: bool | None = None,
    max_chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    pixel_size: float | tuple[float, float] | None = None,
    progress: Callable[[int, int], None] | None = None,
    cancel=None,
) -> UncertaintyResult:
    """Segment ``image`` and estimate per-pixel uncertainty by one or more methods.

    Parameters
    ----------
    model : Model
    image : array-like
        (H, W[, C]) or a stack / volume (Z, H, W[, C]), as for
        :meth:`Model.predict`.  Augmented views are taken with negative-step
        slicing (ndarray, memmap, dask); other array types are read whole.
    methods : sequence of {"entropy", "tta", "mc_dropout"}
        Which maps to compute (see the module docstring).
    tta_flips : int
        Augmentations for ``"tta"``, 2 .. 8: identity, flip y, flip x, flip yx
        (4, the default), then the same transposed.  Flips are in-plane (also
        for 3D models).
    mc_samples : int
        Stochastic passes for ``"mc_dropout"`` (>= 2).
    channel_axis, normalization, tile, overlap, batch_size, skip_background
        As for :meth:`Model.predict`.  The normalizer is fitted once, on the
        un-augmented image, and used for every pass.
    z_range : (z0, z1), optional
        Only planes ``z0 .. z1 - 1`` of a stack.
    seed : int
        Seeds the dropout masks (torch's global RNG state is restored after).
    max_chunk_bytes : int
        Working memory for the accumulators: stacks are processed this many
        bytes' worth of planes at a time (at least one plane; for 3D models at
        least one patch depth).  Chunk borders of 3D models see the same
        context as ``predict(..., z_range=chunk)``.
    pixel_size : float or (float, float), optional
        The image's µm per pixel, as for :meth:`Model.predict`: every pass runs at the model's
        pixel size and the maps come back on the image's grid.  Unknown (None) with a model
        that has one: one notice, and every pass runs at the image's own resolution.
    progress : callable, optional
        ``progress(done, total)``; ``total`` is 1000 per network pass over one
        chunk of planes, ``done / total`` the fraction finished.
    cancel : threading.Event or callable, optional
        Checked between batches of tiles; raises :class:`segloop.errors.Cancelled`.
        Dropout layers are back in eval mode however the call ends.

    Returns
    -------
    UncertaintyResult

    Raises
    ------
    UncertaintyError
        Unknown method, bad ``tta_flips`` / ``mc_samples``.
    UnsupportedUncertaintyError
        ``"mc_dropout"`` on an ONNX engine or a network without dropout.
    InvalidImageError, Cancelled
        As :meth:`Model.predict`.
    """
    methods = _check_methods(methods)
    flips = [_Flip(*a) for a in _AUGMENTATIONS[:_int_option("tta_flips", tta_flips, 2, MAX_TTA_FLIPS)]] \
        if "tta" in methods else [_Flip(False, False, False)]
    n_mc = _int_option("mc_samples", mc_samples, 2) if "mc_dropout" in methods else 0
    if n_mc:
        _require_mc_dropout(model)
    _int_option("max_chunk_bytes", max_chunk_bytes, 1)

    prep = model.prepare(image, channel_axis=channel_axis, normalization=normalization, tile=tile, remember=True)
    channel_axis, stack, normalizer, shape = prep.channel_axis, prep.stack, prep.normalizer, prep.spatial_shape
    asked_pixel_size = pixel_size
    if pixel_size is None and getattr(model.spec, "pixel_size", None) is not None:
        plan_rescale(model.spec, None, shape[-2:], stacklevel=2)     # the one notice for all the passes,
        pixel_size = model.spec.pixel_size                           # which then run at the image's resolution
    if pixel_size is not None:
        pixel_size = check_pixel_size(pixel_size, source="pixel_size")     # (y, x): swapped for transposed views
    dims = int(model.spec.dims)
    height, width = shape[-2:]
    z0, z1 = check_z_range(z_range, shape[0] if stack else 1, stack)
    k = int(model.spec.n_classes)

    # Chunks of planes: accumulators are (K + 1) float32 per plane and per moment set.
    n_sets = ("tta" in methods) + bool(n_mc)
    per_plane = height * width * 4 * max(1, (k + 1) * n_sets)
    chunk = max(1, min(z1 - z0, int(max_chunk_bytes) // per_plane))
    if dims == 3:
        chunk = max(chunk, min(z1 - z0, prep.tile[0]))
    chunks = [(c, min(c + chunk, z1)) for c in range(z0, z1, chunk)]
    passes_per_chunk = len(flips) + n_mc
    n_steps = len(chunks) * passes_per_chunk

    out_shape = ((z1 - z0,) if stack else ()) + (height, width)
    maps = {m: np.zeros(out_shape, np.float32) for m in methods}
    maps3 = {m: (a if stack else a[None]) for m, a in maps.items()}      # (nz, H, W) views
    labels: np.ndarray | None = None
    n_objects = 0
    provenance: dict[str, Any] = {}
    step = 0

    def run(view, sink, c0: int, c1: int, transposed: bool = False):
        nonlocal step
        if is_cancelled(cancel):
            raise Cancelled("uncertainty estimation was cancelled")
        base = step * 1000

        def inner(done, total):
            if progress is not None and total:
                progress(base + min(1000, 1000 * done // total), n_steps * 1000)

        res = model.predict(view, tile=tile, overlap=overlap, channel_axis=channel_axis, normalizer=normalizer,
                            batch_size=batch_size, skip_background=skip_background,
                            z_range=(c0, c1) if stack else None, probability_sink=sink,
                            pixel_size=pixel_size[::-1] if transposed and pixel_size is not None else pixel_size,
                            progress=inner, cancel=cancel)
        step += 1
        if progress is not None:
            progress(step * 1000, n_steps * 1000)
        return res

    mc_ctx = contextlib.ExitStack()
    with mc_ctx:
        if n_mc:
            mc_ctx.enter_context(_seeded_torch(seed, str(model.predictor.device)))
        for c0, c1 in chunks:
            nz = c1 - c0
            lz = c0 - z0
            tta = _Moments(k, (nz, height, width)) if "tta" in methods else None
            ent = maps3["entropy"][lz:lz + nz] if "entropy" in methods else None

            for flip in flips:
                view = flip.view(image, stack)

                def sink(z, y0, y1, probs, flip=flip, ent=ent, tta=tta):
                    if flip.identity and ent is not None:
                        ent[z, y0:y1] = entropy(probs)
                    if tta is not None:
                        rows, cols, q = flip.to_original(y0, y1, probs, height, width)
                        tta.add(z, rows, cols, q)

                res = run(view, sink, c0, c1, transposed=flip.transpose)
                if tta is not None:
                    tta.n += 1
                if flip.identity:                      # the plain prediction
                    n_objects += int(res.n_objects)
                    if not provenance:
                        provenance = dict(res.provenance)
                        if asked_pixel_size is None:
                            provenance["pixel_size"] = pixel_size_record(model.spec, None, None)
                    if not stack:
                        labels = res.labels
                    else:
                        if labels is None:
                            labels = np.zeros(out_shape, res.labels.dtype)
                        elif np.dtype(res.labels.dtype).itemsize > labels.dtype.itemsize:
                            labels = labels.astype(res.labels.dtype)
                        labels[lz:lz + nz] = res.labels
            if tta is not None:
                tta.finish(maps3["tta"][lz:lz + nz])
                del tta

            if n_mc:
                mc = _Moments(k, (nz, height, width))

                def mc_sink(z, y0, y1, probs, mc=mc):
                    mc.add(z, slice(y0, y1), slice(0, width), probs)

                with _dropout_active(model.predictor.network):
                    for _ in range(n_mc):
                        run(image, mc_sink, c0, c1)
                        mc.n += 1
                mc.finish(maps3["mc_dropout"][lz:lz + nz])
                del mc

    provenance["uncertainty"] = {
        "methods": list(methods),
        "augmentations": [f.name for f in flips] if "tta" in methods else None,
        "mc_samples": n_mc or None,
        "seed": int(seed) if n_mc else None,
        "z_range": [z0, z1] if stack else None,
        "chunk_planes": chunk if stack else None,
        "statistic": {"entropy": "H(p)/log K", "tta": "sum_k Var(p_k) / (1 - 1/K)",
                      "mc_dropout": "sum_k Var(p_k) / (1 - 1/K)"},
    }
    assert labels is not None
    return UncertaintyResult(labels, maps, n_objects, provenance)
