"""Segment an image with a model package: the library's main entry point.

``load_model(name_or_path)`` returns a :class:`Model`; ``model.predict(image)``
validates the image, fits the normalization once on a downsampled copy, runs
tiled inference through the chosen engine (2D tiles, 2.5D tiles with
neighbouring planes as channels, or 3D patches) and assembles labels band by
band.  ``model.predict_slice(volume, z)`` is the live path for one plane.
"""

from __future__ import annotations

import datetime as _dt
import os
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from segloop.core import normalize as _norm
from segloop.core.package import ModelPackage, ModelSpec, load_package
from segloop.core.postprocess import (
    EntropySink,
    InstanceAssembler,
    InstanceParams,
    SemanticAssembler,
)
from segloop.core.tiling import (
    PatchGrid,
    TiledStats,
    check_z_range,
    predict_tiled,
    predict_tiled_3d,
)
from segloop.errors import EngineError, InvalidImageError, ModelNotFoundError

__all__ = ["Model", "SegmentationResult", "list_models", "load_model", "model_dirs", "model_path", "validate_image"]

BUNDLED_DIR = Path(__file__).resolve().parent.parent / "models"
_registered: dict[str, Path] = {}

Engine = Literal["torch", "onnx", "onnx-int8", "auto"]


def model_dirs() -> list[Path]:
    """Folders searched for packages: bundled, then each entry of ``$SEGLOOP_MODEL_PATH``."""
    dirs = [BUNDLED_DIR]
    for d in os.environ.get("SEGLOOP_MODEL_PATH", "").split(os.pathsep):
        if d:
            dirs.append(Path(d).expanduser())
    return dirs


def _discover() -> dict[str, Path]:
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
    from segloop.core.engines import cache_dir

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

    The package is verified (sha256) first.  ``persist=True`` also remembers it
    for later sessions (``registered-models.json`` in the segloop cache folder;
    packages that no longer exist are skipped).
    """
    import json

    from segloop.core.package import read_spec

    load_package(path)                   # verified: a broken package is refused here, not at first use
    key = name or read_spec(path).name
    path = Path(path).resolve()
    _registered[key] = path
    if persist:
        saved = {**_saved_registrations(), key: str(path)}
        f = _registry_file()
        try:
            f.parent.mkdir(parents=True, exist_ok=True)
            tmp = f.with_name(f".{f.name}.tmp")
            tmp.write_text(json.dumps(saved, indent=1))
            os.replace(tmp, f)
        except OSError:
            pass                          # remembered for this session only
    return key


def list_models() -> list[str]:
    """Names of the bundled and registered model packages, sorted."""
    return sorted(_discover())


def load_model(name_or_path: str | os.PathLike, *, device: str = "auto", engine: Engine = "torch",
               precision: str = "auto") -> Model:
    """Load a model package by name (see :func:`list_models`) or path.

    Parameters
    ----------
    name_or_path : str or path-like
        A bundled/registered name such as ``"nuclei-unet"``, or a package
        folder / ``.zip``.
    device : {"auto", "cpu", "cuda", "cuda:N", "mps"}
    engine : {"torch", "onnx", "onnx-int8", "auto"}
        ``"auto"`` measures torch and ONNX Runtime (when the package has
        ``model.onnx`` and onnxruntime is installed) on one batch and keeps the
        faster.
    precision : {"auto", "fp32", "bf16", "fp16"}
        Torch engine only; ``"auto"`` decides by CPU capability + measurement.

    Raises
    ------
    ModelNotFoundError
        No such name and no such path; the message lists the known names.
    """
    return Model(load_package(model_path(name_or_path)), device=device, engine=engine, precision=precision)


def model_path(name_or_path: str | os.PathLike) -> Path:
    """The package folder / ``.zip`` of a bundled or registered name, or an existing path.

    Raises
    ------
    ModelNotFoundError
        No such name and no such path; the message lists the known names.
    """
    known = _discover()
    key = str(name_or_path)
    if key in known:
        return Path(known[key])
    path = Path(name_or_path).expanduser()
    if not path.exists():
        raise ModelNotFoundError(
            f"no model named or at {key!r}; known models: {', '.join(sorted(known)) or 'none'}")
    return path


@dataclass
class SegmentationResult:
    """The output of :meth:`Model.predict`.

    Attributes
    ----------
    labels : (H, W) or (Z, H, W) ndarray
        uint16 instance ids (uint32 beyond 65,535 objects) or class ids (uint8).
        With ``z_range=(z0, z1)``: ``(z1 - z0, H, W)``, or the full ``out``
        array when one was given.
    uncertainty : (H, W) or (z1 - z0, H, W) float16 ndarray, or None
        Normalized entropy of the blended probabilities (0 certain, 1
        uniform), for the predicted planes.
    n_objects : int
        Instances found (instance models) or distinct non-background classes.
    tiles_predicted, tiles_skipped : int
        Tiles (3D: patches) the network ran on / skipped as background.
    provenance : dict
        Model name, version, sha256, parameters, engine, time: JSON-able.
    probabilities : (K, H, W) or (K, z1 - z0, H, W) float16 ndarray, or None
        The blended class probabilities of the predicted planes, class axis
        first; only with ``predict(..., probabilities=True)``.
    """

    labels: np.ndarray
    uncertainty: np.ndarray | None
    n_objects: int
    tiles_predicted: int
    tiles_skipped: int
    provenance: dict[str, Any] = field(default_factory=dict)
    probabilities: np.ndarray | None = None


def _channels_per_plane(spec: ModelSpec) -> int:
    """Normalized channels of one plane: ``in_channels / context_slices`` (2.5D stacks k planes)."""
    return int(spec.in_channels) // int(spec.context_slices)


def validate_image(image, *, channels: int, channel_axis: int | None | Literal["auto"] = "auto"
                   ) -> tuple[int | None, bool]:
    """Check an image for a model needing ``channels`` input channels.

    Parameters
    ----------
    image : array-like
        (H, W), (H, W, C), (Z, H, W) or (Z, H, W, C).
    channels : int
        Raw channels the model needs (3 for RGB / hematoxylin models).
    channel_axis : None, -1 or "auto"

    Returns
    -------
    channel_axis : None or -1
    is_stack : bool

    Raises
    ------
    InvalidImageError
        With a message that says what is wrong and what to do.
    """
    shape = tuple(getattr(image, "shape", ()))
    dtype = np.dtype(getattr(image, "dtype", np.float64))
    if dtype.kind not in "biuf":
        raise InvalidImageError(
            f"image dtype {dtype} is not supported; give a numeric array (bool, int, uint or float)")
    if len(shape) < 2:
        raise InvalidImageError(f"image must be at least 2D (H, W), got shape {shape}")
    if any(s == 0 for s in shape):
        raise InvalidImageError(f"image is empty (shape {shape})")
    if channel_axis == "auto":
        last = shape[-1]
        if channels == 1:
            if len(shape) == 2:
                channel_axis = None
            elif len(shape) == 3 and last in (1, 2) and min(shape[:2]) > 2:
                channel_axis = -1              # (H, W, 1), or grey + alpha (H, W, 2)
            elif len(shape) == 3 and last in (3, 4) and min(shape[:2]) > 4:
                raise InvalidImageError(
                    f"image of shape {shape} looks RGB but the model takes 1 channel. For stained "
                    "tissue use hematoxylin normalization (CLI: --stain hematoxylin); for a "
                    "multichannel fluorescence image pick the nuclear channel")
            elif len(shape) == 3:
                channel_axis = None           # (Z, H, W) stack
            elif len(shape) == 4 and last in (1, 2):
                channel_axis = -1
            elif len(shape) == 4 and last in (3, 4):
                raise InvalidImageError(
                    f"image of shape {shape} looks like an RGB stack but the model takes 1 channel; use "
                    "hematoxylin normalization (--stain hematoxylin) or pick one channel")
            else:
                raise InvalidImageError(
                    f"image of shape {shape} has too many axes for a 1-channel 2D model; give (H, W) or (Z, H, W)")
        else:
            if last == channels or (channels == 3 and last == 4):
                channel_axis = -1
            elif shape[0] == channels and len(shape) == 3:
                raise InvalidImageError(
                    f"image of shape {shape} looks channels-first; the model needs channels last "
                    f"(H, W, {channels}): use np.moveaxis(image, 0, -1)")
            else:
                raise InvalidImageError(
                    f"model needs {channels} channels (last axis) but the image has shape {shape}")
    spatial = len(shape) - (0 if channel_axis is None else 1)
    if spatial not in (2, 3):
        raise InvalidImageError(
            f"image of shape {shape} with channel_axis={channel_axis} is {spatial}D; expected (H, W) "
            "or a stack (Z, H, W), channels last")
    if channel_axis is not None:
        have = shape[-1]
        if not (have == channels or (channels == 3 and have == 4) or (channels == 1 and have == 2)):
            raise InvalidImageError(f"model needs {channels} channels, the image has {have} (shape {shape})")
    return channel_axis, spatial == 3


def _drop_alpha(image, channel_axis, channels):
    """RGBA -> RGB and grey + alpha -> grey (a view, no copy)."""
    if channel_axis is not None and image.shape[-1] == channels + 1 and channels in (1, 3):
        return image[..., :channels]
    return image


class Model:
    """A loaded model: network, spec and engine, ready to segment images.

    2D models run tile by tile on an image or on every plane of a stack;
    2.5D models (``spec.context_slices = k > 1``) get the ``k`` neighbouring
    planes of each plane as channels; 3D models (``spec.dims == 3``) run 3D
    patches over a ``(Z, Y, X[, C])`` volume.  :meth:`predict` segments an
    image (or a range of planes of a stack); :meth:`predict_slice` is the fast
    path for one plane of a volume, with the volume's normalizer cached.

    Attributes
    ----------
    network : torch.nn.Module
    spec : ModelSpec
    package : ModelPackage
    predictor : callable
        The engine: ``(B, C, th, tw) -> (B, K, th, tw)`` probabilities
        (``(B, C, pz, py, px)`` for 3D models).
    """

    #: Volumes whose fitted normalizer :meth:`normalizer_for` remembers.
    NORMALIZER_CACHE_SIZE = 4

    def __init__(self, package: ModelPackage, *, device: str = "auto", engine: Engine = "torch",
                 precision: str = "auto"):
        from segloop.core.engines import OnnxPredictor, TorchPredictor

        self.package = package
        self.spec = package.spec
        self.network = package.build_network()
        self.engine_name = engine
        self._normalizers: OrderedDict[tuple, tuple[Any, _norm.Normalizer]] = OrderedDict()
        tile = self._tile_shape(None)
        if engine in ("onnx", "onnx-int8"):
            onnx_bytes = package.onnx_bytes or self._export_onnx(tile)
            self.predictor = OnnxPredictor(onnx_bytes, device=device,
                                           quantize="int8" if engine == "onnx-int8" else "none")
        elif engine == "torch":
            self.predictor = TorchPredictor(self.network, device=device, precision=precision)
        elif engine == "auto":
            self.predictor = self._pick_engine(device, precision, tile)
        else:
            raise EngineError(f"unknown engine {engine!r}; use 'torch', 'onnx', 'onnx-int8' or 'auto'")

    def _tile_shape(self, tile) -> tuple[int, ...]:
        """Tile (2D) or patch (3D) size: ``tile`` or the package's, one int per spatial axis."""
        dims = int(self.spec.dims)
        size = self.spec.tile.get("size", 256 if dims == 2 else 96) if tile is None else tile
        if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
            shape = (int(size),) * dims
        else:
            try:
                shape = tuple(int(v) for v in size)
            except (TypeError, ValueError):
                raise InvalidImageError(f"tile must be an int or {dims} ints, got {size!r}") from None
        if len(shape) != dims:
            raise InvalidImageError(f"tile {size!r} has {len(shape)} sizes; a {dims}D model needs an int or {dims} ints")
        if min(shape) < 8:
            raise InvalidImageError(f"tile must be at least 8 pixels in every axis, got {size!r}")
        return shape

    def _export_onnx(self, tile: tuple[int, ...]) -> bytes:
        from segloop.core.engines import export_onnx

        return export_onnx(self.network, in_channels=self.spec.in_channels, tile=tile, dims=self.spec.dims)

    def _pick_engine(self, device, precision, tile: tuple[int, ...]):
        """Time torch vs ONNX Runtime on one reference batch; keep the faster (cached)."""
        import time

        from segloop.core.engines import (
            OnnxPredictor,
            TorchPredictor,
            _network_key,
            read_choice_cache,
            write_choice_cache,
        )

        torch_pred = TorchPredictor(self.network, device=device, precision=precision)
        try:
            onnx_pred = OnnxPredictor(self.package.onnx_bytes or self._export_onnx(tile), device=device)
        except ImportError:
            self.engine_name = "torch"
            return torch_pred
        key = "engine:" + _network_key(self.network, tile) + ":" + torch_pred.device
        cached = read_choice_cache(key)
        if cached and cached.get("engine") in ("torch", "onnx"):
            self.engine_name = cached["engine"]
        else:
            n_ref = 2 if self.spec.dims == 2 else 1           # a 3D patch is already a big batch
            ref = np.random.default_rng(0).standard_normal(
                (n_ref, self.spec.in_channels, *tile)).astype(np.float32)
            times = {}
            for name, p in (("torch", torch_pred), ("onnx", onnx_pred)):
                p(ref)
                t0 = time.perf_counter()
                p(ref)
                times[name] = time.perf_counter() - t0
            self.engine_name = min(times, key=times.get)
            write_choice_cache(key, {"engine": self.engine_name, "ms": {k: round(v * 1e3, 2) for k, v in times.items()}})
        return torch_pred if self.engine_name == "torch" else onnx_pred

    @property
    def divisor(self) -> int:
        return int(getattr(self.network, "divisor", 1))

    # -- normalization --------------------------------------------------------
    def _norm_spec(self, normalization, normalizer) -> tuple[_norm.NormalizationSpec, int, int]:
        """(spec, raw image channels needed, normalized channels per plane)."""
        if normalizer is not None:
            if normalization is not None:
                raise InvalidImageError("give either normalization (a spec) or normalizer (fitted), not both")
            if not isinstance(normalizer, _norm.Normalizer):
                raise InvalidImageError(
                    f"normalizer must be a segloop.core.normalize.Normalizer, got {type(normalizer).__name__}")
            norm_spec = normalizer.spec
        elif normalization is not None:
            norm_spec = _norm.spec_from_dict(normalization if isinstance(normalization, dict)
                                             else normalization.to_dict())
        else:
            norm_spec = _norm.spec_from_dict(self.spec.normalization)
        per_plane = _channels_per_plane(self.spec)
        channels = 3 if norm_spec.kind == "hematoxylin" else per_plane
        if _norm.output_channels(norm_spec, channels) != per_plane:
            raise InvalidImageError(
                f"normalization {norm_spec.kind!r} gives {_norm.output_channels(norm_spec, channels)} "
                f"channel(s) but {self.spec.name} takes {per_plane}"
                + (f" per slice ({self.spec.in_channels} over {self.spec.context_slices} slices)"
                   if self.spec.context_slices > 1 else ""))
        return norm_spec, channels, per_plane

    def normalizer_for(self, volume, *, channel_axis: int | None | Literal["auto"] = "auto",
                       normalization: dict | _norm.NormalizationSpec | None = None) -> _norm.Normalizer:
        """The normalizer of ``volume``, fitted once and remembered.

        :meth:`predict_slice` uses this so that a slice request does not
        rescan the volume's percentiles.  The cache is keyed by the array's
        identity (``id`` plus a weak reference, so a new array that reuses the
        id is not mistaken for the old one), shape, dtype, channel axis and
        normalization spec; it holds the last :attr:`NORMALIZER_CACHE_SIZE`
        volumes.  It assumes ``volume`` is not modified in place: after such
        a change call :meth:`forget_normalizers`, or pass ``normalizer=``
        explicitly.  Arrays that cannot be weakly referenced are fitted anew
        each time (never cached).

        Parameters
        ----------
        volume : (Z, Y, X[, C]) or (Y, X[, C]) array-like
        channel_axis : None, -1 or "auto"
        normalization : dict or spec, optional
            Override of the package's normalization.

        Returns
        -------
        Normalizer
        """
        import json
        import weakref

        norm_spec, channels, _ = self._norm_spec(normalization, None)
        channel_axis, _ = validate_image(volume, channels=channels, channel_axis=channel_axis)
        image = _drop_alpha(volume, channel_axis, channels)
        key = (id(volume), tuple(volume.shape), np.dtype(volume.dtype).str, channel_axis,
               json.dumps(norm_spec.to_dict(), sort_keys=True))
        hit = self._normalizers.get(key)
        if hit is not None and hit[0]() is volume:
            self._normalizers.move_to_end(key)
            return hit[1]
        if np.dtype(image.dtype) == np.bool_:
            image = np.asarray(image, dtype=np.uint8)
        normalizer = _norm.Normalizer.fit(norm_spec, image, channel_axis=channel_axis)
        try:
            ref = weakref.ref(volume)
        except TypeError:
            return normalizer
        self._normalizers[key] = (ref, normalizer)
        while len(self._normalizers) > self.NORMALIZER_CACHE_SIZE:
            self._normalizers.popitem(last=False)
        return normalizer

    def forget_normalizers(self) -> None:
        """Drop every normalizer :meth:`normalizer_for` remembers."""
        self._normalizers.clear()

    # -- inference ------------------------------------------------------------
    def predict(
        self,
        image,
        *,
        tile: int | tuple[int, ...] | None = None,
        overlap: float | None = None,
        channel_axis: int | None | Literal["auto"] = "auto",
        normalization: dict | _norm.NormalizationSpec | None = None,
        normalizer: _norm.Normalizer | None = None,
        batch_size: int = 4,
        skip_background: bool | None = None,
        uncertainty: bool = False,
        z_range: tuple[int, int] | None = None,
        out: np.ndarray | None = None,
        probabilities: bool = False,
        probability_sink=None,
        progress=None,
        cancel=None,
    ) -> SegmentationResult:
        """Segment ``image``.

        Parameters
        ----------
        image : array-like
            (H, W), (H, W, C), (Z, H, W) or (Z, H, W, C); numpy array, memmap
            or anything with ``shape``, ``dtype`` and basic slicing.  3D
            models need a stack (Z, H, W[, C]); 2.5D models take a single
            plane as its own neighbours.
        tile : int or tuple of int, optional
            Tile size (2D / 2.5D) or patch size (3D: an int for a cube or
            ``(pz, py, px)``).  Default from the package (``spec.tile``).
        overlap : float, optional
            Fraction of the tile in [0, 0.9]; default from the package.
        channel_axis : None, -1 or "auto"
        normalization : dict or spec, optional
            Override the package's normalization (e.g. ``{"kind": "hematoxylin"}``
            to run a fluorescence nuclei model on H&E/IHC).
        normalizer : Normalizer, optional
            An already fitted normalizer (e.g. :meth:`normalizer_for`) used
            instead of fitting one on ``image``.
        batch_size : int
            Tiles (or 3D patches) per engine call.
        skip_background : bool, optional
            Skip tiles with no tissue (RGB 2D only).  Default: on for RGB input.
        uncertainty : bool
            Also return per-pixel entropy (float16) for the predicted planes.
        z_range : (z0, z1), optional
            Predict only planes ``z0 .. z1 - 1`` of a stack.  2.5D models
            still read the neighbours outside the range; 3D models run
            patches over the range plus about half a patch depth of context
            on each side.  The normalizer is fitted on the whole image.
            ``result.labels`` then has shape ``(z1 - z0, H, W)``, unless
            ``out`` is given.
        out : ndarray, optional
            Preallocated uint16/uint32 label array (e.g. a memmap) of the
            **full** output shape, used as working memory: its contents are
            undefined if ``predict`` raises (cancelled, bad input).  Never
            pass data a person drew.  With ``z_range`` only ``out[z0:z1]`` is
            written.  ``result.labels`` is ``out`` unless more than 65,535
            objects are found in a plane and ``out`` is uint16 (then a new
            uint32 array, with a warning).
        probabilities : bool
            Also return the blended class probabilities (float16,
            ``(K, H, W)`` or ``(K, z1 - z0, H, W)``) as
            ``result.probabilities``.  ``K`` times the label array's memory
            (and more): for large images prefer ``probability_sink``.
        probability_sink : callable, optional
            ``probability_sink(z, y0, y1, probs)`` receives every finished
            band of blended probabilities, ``probs (K, y1 - y0, W)`` float32,
            in order; ``z`` is the plane's index among the predicted planes
            (``z - z0``; 0 for a 2D image); 3D models send whole planes.
            ``probs`` is read-only for the sink and only valid during the
            call (copy what you keep).  This is how
            :mod:`segloop.core.uncertainty` sees probabilities without an
            image-sized array per class.
        progress : callable, optional
            ``progress(done, total)`` in tiles (3D: patches).
        cancel : threading.Event or callable, optional
            Checked between batches; raises :class:`segloop.errors.Cancelled`.

        Returns
        -------
        SegmentationResult
            ``labels``: (H, W) for a 2D image, (z1 - z0, H, W) for a stack
            (full shape when ``out`` is given); ``uncertainty`` covers the
            predicted planes only.  Instance models are labelled plane by
            plane, also 3D ones (ids restart in every plane; recorded in
            ``provenance["instance_labeling"]``).
        """
        started = _dt.datetime.now(_dt.timezone.utc)
        norm_spec, channels, _ = self._norm_spec(normalization, normalizer)
        channel_axis, stack = validate_image(image, channels=channels, channel_axis=channel_axis)
        dims = int(self.spec.dims)
        if dims == 3 and not stack:
            raise InvalidImageError(
                f"{self.spec.name} is a 3D model: give a volume (Z, Y, X) (channels last), "
                f"not a single plane of shape {tuple(image.shape)}")
        image = _drop_alpha(image, channel_axis, channels)
        if np.dtype(image.dtype) == np.bool_:
            image = np.asarray(image, dtype=np.uint8)
        if normalizer is None:
            normalizer = _norm.Normalizer.fit(norm_spec, image, channel_axis=channel_axis)
        elif normalizer.channel_axis != channel_axis or normalizer.in_channels != (
                image.shape[-1] if channel_axis is not None else 1):
            raise InvalidImageError(
                f"the normalizer was fitted on {normalizer.in_channels}-channel data (channel_axis="
                f"{normalizer.channel_axis}); this image has shape {tuple(image.shape)} (channel_axis="
                f"{channel_axis}). Fit it on this image (Model.normalizer_for)")
        tile_shape = self._tile_shape(tile)
        overlap = float(self.spec.tile.get("overlap", 0.25) if overlap is None else overlap)
        if not 0 <= overlap <= 0.9:
            raise InvalidImageError(f"overlap must be a fraction of the tile in [0, 0.9], got {overlap}")
        if int(batch_size) < 1:
            raise InvalidImageError(f"batch_size must be at least 1, got {batch_size}")
        if skip_background is None:
            skip_background = dims == 2 and channel_axis is not None and image.shape[-1] >= 3
        skip_background = bool(skip_background) and dims == 2
        shape = tuple(image.shape[: 3 if stack else 2])
        n_z = shape[0] if stack else 1
        plane_shape = shape[-2:]
        z0, z1 = check_z_range(z_range, n_z, stack)

        if out is not None and (tuple(out.shape) != shape or np.dtype(out.dtype) not in (
                (np.uint16, np.uint32) if self.spec.task == "instance" else (np.uint8, np.uint16, np.uint32))):
            raise InvalidImageError(f"out must be a uint16/uint32 array of the full shape {shape}, got "
                                    f"{np.dtype(out.dtype)} {tuple(out.shape)}")
        part_shape = ((z1 - z0,) + plane_shape) if stack else plane_shape
        # ``labels`` is what the result returns; ``target`` the planes written (z0 .. z1 - 1).
        instance = self.spec.task == "instance"
        if out is not None:
            labels = out
        else:
            labels = np.zeros(part_shape, np.uint16 if instance or self.spec.n_classes >= 256 else np.uint8)

        def target_of(arr):
            return arr[z0:z1] if (stack and arr.shape == shape) else arr

        target = target_of(labels)
        if instance:
            params = InstanceParams.from_dict(self.spec.postprocess)
            state = {"z": None, "asm": None, "n": 0}

            def finish_plane():
                nonlocal labels, target
                asm = state["asm"]
                if asm is None:
                    return
                res = asm.finish()
                if res.dtype != labels.dtype:   # > 65,535 objects in this plane: widen once
                    warnings.warn(f"{asm.n_objects} objects: labels widened to uint32"
                                  + (" (a new array, not `out`)" if out is not None else ""), stacklevel=3)
                    if stack:
                        labels = labels.astype(np.uint32)
                        target = target_of(labels)
                        target[state["z"]] = res
                    else:
                        labels = target = res
                state["n"] += asm.n_objects

            def label_sink(z, y0, y1, probs):
                if state["z"] != z:
                    finish_plane()
                    state["z"] = z
                    state["asm"] = InstanceAssembler(plane_shape, params, out=target[z] if stack else target)
                state["asm"](z, y0, y1, probs)
        else:
            label_sink = SemanticAssembler(target)
            finish_plane = None

        unc = np.zeros(part_shape, np.float16) if uncertainty else None
        unc_sink = EntropySink(unc) if uncertainty else None
        prob_out: np.ndarray | None = None

        def sink(z, y0, y1, probs):
            nonlocal prob_out
            local = z - z0                  # sinks see planes of the predicted range
            if probability_sink is not None:
                probability_sink(local, y0, y1, probs)
            if probabilities:
                if prob_out is None:
                    prob_out = np.zeros((probs.shape[0],) + part_shape, np.float16)
                (prob_out[:, local] if stack else prob_out)[:, y0:y1] = probs
            label_sink(local, y0, y1, probs)
            if unc_sink is not None:
                unc_sink(local, y0, y1, probs)

        extra: dict[str, Any] = {}
        if dims == 3:
            grid = PatchGrid.build(shape, patch=tile_shape, overlap=overlap, multiple=self.divisor,
                                   z_range=(z0, z1))
            if instance:
                warnings.warn(f"{self.spec.name} is a 3D instance model: instances are labelled plane by plane "
                              "(3D instance labelling is not implemented)", stacklevel=2)
                extra["instance_labeling"] = "per-plane (3D instance labelling not implemented)"
            stats: TiledStats = predict_tiled_3d(
                self.predictor, image, channel_axis=channel_axis, normalize=normalizer,
                n_classes=self.spec.n_classes, batch_size=batch_size, grid=grid, sink=sink,
                progress=progress, cancel=cancel)
            extra["patch"] = list(grid.patch)
            extra["patches"] = len(grid)
        else:
            if instance:
                extra["instance_labeling"] = "per-plane"
            stats = predict_tiled(
                self.predictor, image, tile=tile_shape, overlap=overlap, channel_axis=channel_axis,
                normalize=normalizer, n_classes=self.spec.n_classes, batch_size=batch_size,
                multiple=self.divisor, skip_background=skip_background, sink=sink,
                context_slices=int(self.spec.context_slices), z_range=(z0, z1) if stack else None,
                progress=progress, cancel=cancel)
        if finish_plane is not None:
            finish_plane()
            n_objects = state["n"]
        else:
            n_objects = int(sum(1 for c in range(1, self.spec.n_classes) if (target == c).any()))
        engine = getattr(self.predictor, "choice", None)
        prov = {
            "model": {"name": self.spec.name, "version": self.spec.version, "sha256": self.spec.sha256,
                      "architecture": self.spec.architecture, "path": str(self.package.path or ""),
                      "classes": list(self.spec.classes), "task": self.spec.task,
                      "modality": getattr(self.spec, "modality", None), "dims": dims,
                      "context_slices": int(self.spec.context_slices)},
            "parameters": {"tile": tile_shape[0] if dims == 2 and len(set(tile_shape)) == 1 else list(tile_shape),
                           "overlap": overlap, "batch_size": batch_size,
                           "skip_background": skip_background, "channel_axis": channel_axis,
                           "z_range": [z0, z1] if stack else None,
                           "normalization": norm_spec.to_dict(), "normalization_stats": normalizer.stats,
                           "postprocess": dict(self.spec.postprocess), **extra},
            "engine": {"name": self.engine_name, **(engine.to_dict() if engine is not None else {})},
            "image_shape": list(image.shape),
            "started": started.isoformat(timespec="seconds"),
            "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "n_planes": z1 - z0,
        }
        return SegmentationResult(labels, unc, n_objects, stats.predicted_tiles, stats.skipped_tiles, prov,
                                  probabilities=prob_out)

    def predict_slice(
        self,
        volume,
        z: int,
        *,
        channel_axis: int | None | Literal["auto"] = "auto",
        normalization: dict | _norm.NormalizationSpec | None = None,
        normalizer: _norm.Normalizer | None = None,
        tile: int | tuple[int, ...] | None = None,
        overlap: float | None = None,
        batch_size: int = 4,
        uncertainty: bool = False,
        progress=None,
        cancel=None,
    ) -> SegmentationResult:
        """Segment one plane ``z`` of ``volume``: the live per-slice fast path.

        The same computation as ``predict(volume, z_range=(z, z + 1))[0]``
        (2D / 2.5D models: the plane's tiles, with its neighbours as context
        for 2.5D; 3D models: one slab of patches around ``z``), but the
        volume's normalizer is fitted once and remembered (see
        :meth:`normalizer_for`), so repeated requests on the same volume do no
        percentile scan.  The engine was chosen when the model was loaded; no
        request measures or re-selects it.

        Parameters
        ----------
        volume : (Z, Y, X[, C]) array-like
            The whole stack (a 2D image is a stack of one plane).
        z : int
            The plane, ``0 <= z < Z``.
        channel_axis, normalization, tile, overlap, batch_size, uncertainty
            As for :meth:`predict`.
        normalizer : Normalizer, optional
            Use this instead of the cached one.
        progress : callable, optional
            ``progress(done, total)`` in tiles (3D: patches).
        cancel : threading.Event or callable, optional
            Checked between batches of tiles; raises :class:`segloop.errors.Cancelled`.

        Returns
        -------
        SegmentationResult
            ``labels`` (Y, X); ``provenance["parameters"]["z_range"]`` is
            ``[z, z + 1]``.
        """
        if normalizer is None:
            normalizer = self.normalizer_for(volume, channel_axis=channel_axis, normalization=normalization)
        elif normalization is not None:
            raise InvalidImageError("give either normalization (a spec) or normalizer (fitted), not both")
        if isinstance(z, bool) or not isinstance(z, (int, np.integer)):
            raise InvalidImageError(f"z must be a plane index (int), got {z!r}")
        res = self.predict(volume, tile=tile, overlap=overlap, channel_axis=channel_axis, normalizer=normalizer,
                           batch_size=batch_size, uncertainty=uncertainty, z_range=(int(z), int(z) + 1),
                           progress=progress, cancel=cancel)
        if res.labels.ndim == 3:
            res.labels = res.labels[0]
            if res.uncertainty is not None:
                res.uncertainty = res.uncertainty[0]
        return res
