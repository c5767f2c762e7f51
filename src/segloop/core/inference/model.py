"""Segment an image with a model package: the library's main entry point.

``load_model(name_or_path)`` returns a :class:`Model`; ``model.predict(image)``
validates the image, fits the normalization once on a downsampled copy, runs
tiled inference through the chosen engine (2D tiles, 2.5D tiles with
neighbouring planes as channels, or 3D patches) and assembles labels band by
band: prepare (:meth:`Model.prepare`) -> tile (the one sliding window of
:mod:`segloop.core.inference.tiling`) -> assemble
(:class:`~segloop.core.inference.postprocess.LabelAssembly`) -> provenance.  ``model.predict_slice(volume, z)`` is the live path for one plane.
"""

from __future__ import annotations

import datetime as _dt
import os
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np

from segloop.core.formats.normalization import NormalizationSpec
from segloop.core.formats.package import ModelPackage, ModelSpec, load_package
from segloop.core.formats.registry import model_path
from segloop.core.inference.grid import WindowGrid, check_z_range
from segloop.core.inference.normalize import Normalizer
from segloop.core.inference.postprocess import InstanceParams, LabelAssembly, keep_largest_groups
from segloop.core.inference.prepare import (
    PreparedImage,
    drop_alpha,
    prepare_image,
    resolve_normalization,
    tile_shape,
    validate_image,
)
from segloop.core.inference.resolution import (
    BandRegridder,
    ResampledImage,
    RescalePlan,
    map_labels,
    pixel_size_record,
    plan_rescale,
)
from segloop.core.inference.tiling import BandSink, TiledStats, predict_tiled, predict_tiled_3d
from segloop.errors import (
    ArchitectureArgumentsError,
    EngineError,
    InvalidImageError,
    ModelPackageError,
    UnknownArchitectureError,
)

__all__ = ["Model", "SegmentationResult", "build_network", "check_architecture", "check_network_arguments",
           "load_model", "verify_package"]

Engine = Literal["torch", "onnx", "onnx-int8", "auto"]


def check_architecture(spec: ModelSpec, *, source: str = "spec") -> None:
    """Raise :class:`~segloop.errors.UnknownArchitectureError` unless this segloop has ``spec.architecture``.

    Formats are data and do not know the networks: a package with an unknown architecture
    loads, and is refused here, when its network is built.
    """
    from segloop.core.networks import available

    if spec.architecture not in available():
        raise UnknownArchitectureError(
            f"{source}: unknown architecture {spec.architecture!r}; this segloop knows "
            f"{', '.join(available())}. Upgrade napari-segloop or check the package")


def check_network_arguments(architecture: str, architecture_kwargs, *, dims: int = 2, in_channels: int = 1,
                            n_classes: int = 2, source: str = "spec") -> None:
    """Refuse an architecture and keyword arguments it cannot be built with, before anything is trained.

    The network is built on PyTorch's ``meta`` device: shapes only, no memory for the weights,
    so the check is quick whatever the size.

    Raises
    ------
    UnknownArchitectureError
        This segloop has no network called ``architecture``.
    ArchitectureArgumentsError
        ``architecture_kwargs`` is not a mapping, or the constructor refuses it (a wrong type or
        value, an unknown keyword, a network too large to describe); the message starts with
        ``source``.
    """
    import torch

    from segloop.core.networks import available, build

    if architecture not in available():
        raise UnknownArchitectureError(f"{source}: unknown architecture {architecture!r}; this segloop knows "
                                       f"{', '.join(available())}")
    if not isinstance(architecture_kwargs, dict) or not all(isinstance(k, str) for k in architecture_kwargs):
        raise ArchitectureArgumentsError(f"{source}: the architecture's arguments must be a JSON object such as "
                                         f"{{\"depth\": 4}}, got {architecture_kwargs!r}")
    try:
        with torch.device("meta"):
            build(architecture, int(in_channels), int(n_classes), dims=int(dims), **architecture_kwargs)
    except ArchitectureArgumentsError as e:
        raise ArchitectureArgumentsError(f"{source}: {e}") from None
    except RuntimeError as e:                         # e.g. sizes that overflow: a network far too large
        shown = ", ".join(f"{k}={v!r}" for k, v in architecture_kwargs.items())
        raise ArchitectureArgumentsError(f"{source}: architecture {architecture!r} with {shown} is too large to "
                                         f"build ({str(e).splitlines()[0]}); give smaller values") from None


def build_network(package: ModelPackage):
    """The package's ``torch.nn.Module`` with its weights loaded, in eval mode, on CPU.

    Raises
    ------
    UnknownArchitectureError
        This segloop has no network of ``package.spec.architecture``.
    ModelPackageError
        The weights do not fit the architecture and its ``architecture_kwargs``.
    """
    from segloop.core.networks import build

    s = package.spec
    check_architecture(s, source=str(package.path or "package"))
    try:
        net = build(s.architecture, s.in_channels, s.n_classes, dims=s.dims, **s.architecture_kwargs)
    except ArchitectureArgumentsError as e:       # name the package whose architecture_kwargs these are
        raise type(e)(f"{package.path or 'package'}: architecture_kwargs: {e}; fix or replace "   # keeps NetworkTooLargeError
                      "the package") from None
    try:
        net.load_state_dict(package.state_dict, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[0]
        raise ModelPackageError(
            f"weights in {package.path or 'package'} do not fit architecture {s.architecture!r} "
            f"with {s.architecture_kwargs}: {first}") from None
    return net.eval()


def verify_package(path: str | os.PathLike) -> ModelSpec:
    """Load fully (hashes, schema, weights fit the architecture); return the spec."""
    package = load_package(path, verify=True)
    build_network(package)
    return package.spec


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
        Model name, version, sha256, parameters, engine, time, and ``pixel_size`` (the image's
        and the model's µm/px, whether it was resampled, the scale and the grid run): JSON-able.
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


@dataclass(frozen=True)
class _TilingPlan:
    """:meth:`Model.predict`'s checked tiling options (internal).

    Attributes
    ----------
    shape : (H, W) or (Z, H, W)
        Spatial shape of the prepared image.
    z_range : (z0, z1)
        Planes predicted; ``(0, 1)`` for a 2D image.
    overlap : float
    batch_size : int
    skip_background : bool
    grid : WindowGrid or None
        The 3D patch grid (3D models), else None (2D tiles are laid per plane).
    """

    shape: tuple[int, ...]
    z_range: tuple[int, int]
    overlap: float
    batch_size: int
    skip_background: bool
    grid: WindowGrid | None


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
        from segloop.core.inference.engines import OnnxPredictor, TorchPredictor

        self.package, self.spec = package, package.spec
        if self.spec.task == "interactive":
            raise ModelPackageError(f"{self.spec.name} is an interactive (click) model: use segloop.load_interactive"
                                    f"({self.spec.name!r}) or the Proofread widget's click mode, not Segment")
        if self.spec.task == "instance":              # bad post-processing values fail here, not at the first image
            InstanceParams.from_dict(self.spec.postprocess)
        self.network = build_network(package)
        self.engine_name = engine
        self._normalizers: OrderedDict[tuple, tuple[Any, Normalizer]] = OrderedDict()
        tile = self.tile_shape(None)
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

    def segment(self, *args, **kwargs):     # clicks and boxes need an interactive model
        raise ModelPackageError(f"{self.spec.name} is an automatic ({self.spec.task}) model and takes no clicks; use "
                                "predict(image), or segloop.load_interactive(...) with an interactive model")
    def tile_shape(self, tile=None) -> tuple[int, ...]:
        """Tile (2D) or patch (3D) size: ``tile`` or the package's (see :func:`tile_shape`)."""
        return tile_shape(self.spec, tile)

    def _export_onnx(self, tile: tuple[int, ...]) -> bytes:
        from segloop.core.inference.engines import export_onnx

        return export_onnx(self.network, in_channels=self.spec.in_channels, tile=tile, dims=self.spec.dims)

    def _pick_engine(self, device, precision, tile: tuple[int, ...]):
        """Time torch vs ONNX Runtime on one reference batch; keep the faster (cached)."""
        import time

        from segloop.core.inference.engines import (
            OnnxPredictor,
            TorchPredictor,
            network_key,
            read_choice_cache,
            write_choice_cache,
        )

        torch_pred = TorchPredictor(self.network, device=device, precision=precision)
        try:
            onnx_pred = OnnxPredictor(self.package.onnx_bytes or self._export_onnx(tile), device=device)
        except ImportError:
            self.engine_name = "torch"
            return torch_pred
        key = "engine:" + network_key(self.network, tile) + ":" + torch_pred.device
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
    def _norm_spec(self, normalization, normalizer) -> tuple[NormalizationSpec, int, int]:
        """(spec, raw image channels needed, normalized channels per plane)."""
        return resolve_normalization(self.spec, normalization, normalizer)

    def prepare(self, image, *, channel_axis: int | None | Literal["auto"] = "auto",
                normalization: dict | NormalizationSpec | None = None, normalizer: Normalizer | None = None,
                tile: int | tuple[int, ...] | None = None, remember: bool = False) -> PreparedImage:
        """Check ``image`` against this model and fit its normalizer: the one preparation step.

        Parameters
        ----------
        image : array-like
            (H, W), (H, W, C), (Z, H, W) or (Z, H, W, C), channels last.
        channel_axis : None, -1 or "auto"
        normalization : dict or spec, optional
            Override of the package's normalization (e.g. ``{"kind": "hematoxylin"}``).
        normalizer : Normalizer, optional
            An already fitted normalizer, used instead of fitting one.
        tile : int or tuple of int, optional
            Tile / patch size; default from the package.
        remember : bool
            Fit through :meth:`normalizer_for`, which remembers the normalizer
            of this array for the next call (live slices, uncertainty passes).

        Returns
        -------
        PreparedImage

        Raises
        ------
        InvalidImageError
            Wrong dtype, axes or channels; a single plane for a 3D model; a
            normalizer fitted on other data; a bad tile.
        """
        if normalizer is None and remember:
            normalizer = self.normalizer_for(image, channel_axis=channel_axis, normalization=normalization)
            normalization = None
        return prepare_image(self.spec, image, channel_axis=channel_axis, normalization=normalization,
                             normalizer=normalizer, tile=tile)

    def normalizer_for(self, volume, *, channel_axis: int | None | Literal["auto"] = "auto",
                       normalization: dict | NormalizationSpec | None = None) -> Normalizer:
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
        image = drop_alpha(volume, channel_axis, channels)
        key = (id(volume), tuple(volume.shape), np.dtype(volume.dtype).str, channel_axis,
               json.dumps(norm_spec.to_dict(), sort_keys=True))
        hit = self._normalizers.get(key)
        if hit is not None and hit[0]() is volume:
            self._normalizers.move_to_end(key)
            return hit[1]
        if np.dtype(image.dtype) == np.bool_:
            image = np.asarray(image, dtype=np.uint8)
        normalizer = Normalizer.fit(norm_spec, image, channel_axis=channel_axis)
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
        normalization: dict | NormalizationSpec | None = None,
        normalizer: Normalizer | None = None,
        batch_size: int = 4,
        skip_background: bool | None = None,
        uncertainty: bool = False,
        z_range: tuple[int, int] | None = None,
        out: np.ndarray | None = None,
        probabilities: bool = False,
        probability_sink=None,
        pixel_size: float | tuple[float, float] | None = None,
        spacing: tuple[float, float, float] | None = None,
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
            :mod:`segloop.core.inference.uncertainty` sees probabilities without an
            image-sized array per class.
        pixel_size : float or (float, float), optional
            The image's µm per pixel, ``(y, x)``.  When the model records the pixel size it was
            trained at (``spec.pixel_size``) and this differs from it by more than 5 %, the image
            is read resampled to the model's pixel size (tile by tile, no copy), and labels
            (nearest neighbour, ids kept), uncertainty and probabilities (bilinear) come back on
            the image's grid; tiles and ``tile`` are then in the model's pixels.  None: unknown,
            the image runs at its own resolution, with one
            :class:`~segloop.core.inference.resolution.PixelSizeWarning` if the model has a pixel
            size.  ``provenance["pixel_size"]`` records both, the scale factor and the grid run.
        spacing : (dz, dy, dx), optional
            A volume's voxel spacing (mm).  If the model's ``spec.spacing`` differs by > 5 % on an
            axis, the volume (with ``z_range``: a slab around it) is predicted resampled to it and
            labels / uncertainty come back on the volume's grid (:mod:`~segloop.core.inference.spacing`;
            ``provenance["spacing"]``).  Not with ``probabilities``, ``probability_sink``, ``pixel_size``.
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

        Raises
        ------
        InvalidPixelSizeError
            ``pixel_size`` is not one or two positive numbers, or is more than 16 times the
            model's or less than a 16th of it.
        """
        if spacing is not None:
            from segloop.core.inference.spacing import checked_volume_spacing, predict_at_spacing

            spacing, resample = checked_volume_spacing(self, image, spacing, channel_axis=channel_axis,
                                                       normalization=normalization, normalizer=normalizer)
            if resample:
                return predict_at_spacing(
                    self, image, spacing, tile=tile, overlap=overlap, channel_axis=channel_axis,
                    normalization=normalization, normalizer=normalizer, batch_size=batch_size,
                    skip_background=skip_background, uncertainty=uncertainty, z_range=z_range, out=out,
                    probabilities=probabilities, probability_sink=probability_sink, pixel_size=pixel_size,
                    progress=progress, cancel=cancel)
        started = _dt.datetime.now(_dt.timezone.utc)
        prep = self.prepare(image, channel_axis=channel_axis, normalization=normalization, normalizer=normalizer,
                            tile=tile)
        rescale = plan_rescale(self.spec, pixel_size, prep.spatial_shape[-2:], stacklevel=2)
        if rescale is not None:
            return self._predict_rescaled(prep, rescale, started, overlap=overlap, batch_size=batch_size,
                                          skip_background=skip_background, uncertainty=uncertainty, z_range=z_range,
                                          out=out, probabilities=probabilities, probability_sink=probability_sink,
                                          progress=progress, cancel=cancel)
        plan = self._plan(prep, overlap=overlap, batch_size=batch_size, skip_background=skip_background,
                          z_range=z_range)
        instance = self.spec.task == "instance"
        assembly = LabelAssembly(plan.shape, z_range=plan.z_range, task=self.spec.task, n_classes=self.spec.n_classes,
                                 params=InstanceParams.from_dict(self.spec.postprocess) if instance else None,
                                 out=out, uncertainty=uncertainty, probabilities=probabilities,
                                 probability_sink=probability_sink, keep_largest=keep_largest_groups(self.spec))
        stats = self._tile(prep, plan, sink=assembly, progress=progress, cancel=cancel)
        labels, n_objects = assembly.finish()
        prov = self._provenance(prep, plan, started)
        prov["pixel_size"] = pixel_size_record(self.spec, pixel_size, None)
        if spacing is not None and self.spec.spacing is not None:
            prov["spacing"] = {"image": list(spacing), "model": list(self.spec.spacing), "resampled": False}
        return SegmentationResult(labels, assembly.uncertainty, n_objects, stats.predicted_tiles, stats.skipped_tiles,
                                  prov, probabilities=assembly.probabilities)

    def _predict_rescaled(self, prep: PreparedImage, rescale: RescalePlan, started: _dt.datetime, *, overlap,
                          batch_size, skip_background, uncertainty, z_range, out, probabilities, probability_sink,
                          progress, cancel) -> SegmentationResult:
        """:meth:`predict` on the model's pixel grid; results mapped back (:mod:`~segloop.core.inference.resolution`).

        Labels are assembled on the model's grid (in memory, or in an unlinked temporary file
        beside ``out`` when that is a file-backed memmap) and written onto the image's grid band
        by band; probabilities go back through a :class:`BandRegridder` as they are blended.
        """
        shape = prep.spatial_shape
        ok = (np.uint16, np.uint32) if self.spec.task == "instance" else (np.uint8, np.uint16, np.uint32)
        if out is not None and (tuple(out.shape) != shape or np.dtype(out.dtype) not in ok):
            raise InvalidImageError(f"out must be a uint16/uint32 array of the full shape {shape}, got "
                                    f"{np.dtype(out.dtype)} {tuple(out.shape)}")
        view = ResampledImage(prep.image, rescale.model_shape, stack=prep.stack, channel_axis=prep.channel_axis)
        mprep = replace(prep, image=view, spatial_shape=shape[:-2] + rescale.model_shape)
        plan = self._plan(mprep, overlap=overlap, batch_size=batch_size, skip_background=skip_background,
                          z_range=z_range)
        instance = self.spec.task == "instance"
        on_grid = LabelAssembly(plan.shape, z_range=plan.z_range, task=self.spec.task, n_classes=self.spec.n_classes,
                                params=InstanceParams.from_dict(self.spec.postprocess) if instance else None,
                                out=_scratch_labels(out, plan.shape))
        back = None
        sinks: list = [on_grid]
        if uncertainty or probabilities or probability_sink is not None:
            back = LabelAssembly(shape, z_range=plan.z_range, task=self.spec.task, n_classes=self.spec.n_classes,
                                 uncertainty=uncertainty, probabilities=probabilities,
                                 probability_sink=probability_sink, labels=False)
            sinks.append(BandRegridder(back, model_shape=rescale.model_shape, image_shape=rescale.image_shape))

        def sink(z, y0, y1, probs):
            for s in sinks:
                s(z, y0, y1, probs)

        stats = self._tile(mprep, plan, sink=sink, progress=progress, cancel=cancel)
        on_grid.finish()
        labels, n_objects = self._labels_to_image(on_grid.target, prep, plan, out)
        prov = self._provenance(prep, plan, started)
        prov["pixel_size"] = pixel_size_record(self.spec, rescale.image_pixel_size, rescale)
        return SegmentationResult(labels, back.uncertainty if back else None, n_objects, stats.predicted_tiles,
                                  stats.skipped_tiles, prov, probabilities=back.probabilities if back else None)

    def _labels_to_image(self, src: np.ndarray, prep: PreparedImage, plan: _TilingPlan, out: np.ndarray | None
                         ) -> tuple[np.ndarray, int]:
        """The model-grid labels of the predicted planes, ``src``, on the image's grid; and the objects left.

        Into ``out`` when given (a new uint32 array, with a warning, if its uint16 cannot hold the ids).
        """
        z0, z1 = plan.z_range
        part = ((z1 - z0,) if prep.stack else ()) + tuple(prep.spatial_shape[-2:])
        labels = out
        if out is not None and int(src.max(initial=0)) > np.iinfo(out.dtype).max:
            warnings.warn(f"{int(src.max())} labels: widened to uint32 (a new array, not `out`)", stacklevel=4)
            labels = np.zeros(out.shape, np.uint32)
        elif out is None:
            labels = np.zeros(part, src.dtype)
        target = labels[z0:z1] if (prep.stack and labels.shape != part) else labels
        planes = zip(src, target) if prep.stack else [(src, target)]
        present = [map_labels(s, t) for s, t in planes]
        if self.spec.task == "instance":
            return labels, int(sum(int(p[1:].sum()) for p in present))
        return labels, len({i for p in present for i in np.flatnonzero(p) if i > 0})

    def _plan(self, prep: PreparedImage, *, overlap: float | None, batch_size: int, skip_background: bool | None,
              z_range: tuple[int, int] | None) -> _TilingPlan:
        """Check :meth:`predict`'s tiling options against ``prep`` and resolve their defaults."""
        dims = int(self.spec.dims)
        overlap = float(self.spec.tile.get("overlap", 0.25) if overlap is None else overlap)
        if not 0 <= overlap <= 0.9:
            raise InvalidImageError(f"overlap (--overlap) must be a fraction of the tile in [0, 0.9], got {overlap}")
        if int(batch_size) < 1:
            raise InvalidImageError(f"batch_size (--batch) must be at least 1, got {batch_size}")
        if skip_background is None:
            skip_background = dims == 2 and prep.channel_axis is not None and prep.image.shape[-1] >= 3
        shape = prep.spatial_shape
        z0, z1 = check_z_range(z_range, shape[0] if prep.stack else 1, prep.stack)
        grid = None
        if dims == 3:
            grid = WindowGrid.build(shape, window=prep.tile, overlap=overlap, multiple=self.divisor, span=(z0, z1))
        self._check_memory(grid.window if grid is not None else prep.tile, shape[-len(prep.tile):], batch_size)
        return _TilingPlan(shape, (z0, z1), overlap, batch_size, bool(skip_background) and dims == 2, grid)

    def _check_memory(self, tile: tuple[int, ...], extent: tuple[int, ...], batch_size: int) -> None:
        """Refuse tiles x batch whose activations would not fit in the predictor's device memory.

        The tile is shrunk to the image and rounded up to the divisor as the sliding window does;
        the estimate is :func:`segloop.core.networks.check_network`'s (nothing is allocated).

        Raises
        ------
        NetworkTooLargeError
        """
        from segloop.core.networks import check_network

        s, d = self.spec, max(1, int(self.divisor))
        window = tuple(min(-(-int(t) // d) * d, -(-int(n) // d) * d) for t, n in zip(tile, extent, strict=True))
        check_network(s.architecture, s.in_channels, s.n_classes, dims=s.dims, kwargs=s.architecture_kwargs,
                      shape=window, batch=int(batch_size), device=getattr(self.predictor, "device", "cpu"),
                      source=s.name, advice="lower the tile (--tile) or the batch (--batch)", batch_flag="--batch",
                      include_weights=False)

    def _tile(self, prep: PreparedImage, plan: _TilingPlan, *, sink: BandSink, progress, cancel) -> TiledStats:
        """Run the sliding window (2D / 2.5D tiles or 3D patches) and hand every finished band to ``sink``."""
        common = dict(channel_axis=prep.channel_axis, normalize=prep.normalizer, n_classes=self.spec.n_classes,
                      batch_size=plan.batch_size, sink=sink, progress=progress, cancel=cancel)
        if plan.grid is not None:
            if self.spec.task == "instance":
                warnings.warn(f"{self.spec.name} is a 3D instance model: instances are labelled plane by plane "
                              "(3D instance labelling is not implemented)", stacklevel=3)
            return predict_tiled_3d(self.predictor, prep.image, grid=plan.grid, **common)
        return predict_tiled(self.predictor, prep.image, tile=prep.tile, overlap=plan.overlap, multiple=self.divisor,
                             skip_background=plan.skip_background, context_slices=int(self.spec.context_slices),
                             z_range=plan.z_range if prep.stack else None, **common)

    def _provenance(self, prep: PreparedImage, plan: _TilingPlan, started: _dt.datetime) -> dict[str, Any]:
        """What ran, on what, with which parameters: JSON-able, for ``SegmentationResult.provenance``."""
        dims = int(self.spec.dims)
        tile_shape = prep.tile
        z0, z1 = plan.z_range
        extra: dict[str, Any] = {}
        if self.spec.task == "instance":
            extra["instance_labeling"] = ("per-plane (3D instance labelling not implemented)" if dims == 3
                                          else "per-plane")
        if plan.grid is not None:
            extra["patch"] = list(plan.grid.window)
            extra["patches"] = len(plan.grid)
        engine = getattr(self.predictor, "choice", None)
        return {
            "model": {"name": self.spec.name, "version": self.spec.version, "sha256": self.spec.sha256,
                      "architecture": self.spec.architecture, "path": str(self.package.path or ""),
                      "classes": list(self.spec.classes), "task": self.spec.task,
                      "modality": getattr(self.spec, "modality", None), "dims": dims,
                      "context_slices": int(self.spec.context_slices)},
            "parameters": {"tile": tile_shape[0] if dims == 2 and len(set(tile_shape)) == 1 else list(tile_shape),
                           "overlap": plan.overlap, "batch_size": plan.batch_size,
                           "skip_background": plan.skip_background, "channel_axis": prep.channel_axis,
                           "z_range": [z0, z1] if prep.stack else None,
                           "normalization": prep.norm_spec.to_dict(), "normalization_stats": prep.normalizer.stats,
                           "postprocess": dict(self.spec.postprocess), **extra},
            "engine": {"name": self.engine_name, **(engine.to_dict() if engine is not None else {})},
            "image_shape": list(prep.image.shape),
            "started": started.isoformat(timespec="seconds"),
            "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "n_planes": z1 - z0,
        }

    def predict_slice(
        self,
        volume,
        z: int,
        *,
        channel_axis: int | None | Literal["auto"] = "auto",
        normalization: dict | NormalizationSpec | None = None,
        normalizer: Normalizer | None = None,
        tile: int | tuple[int, ...] | None = None,
        overlap: float | None = None,
        batch_size: int = 4,
        uncertainty: bool = False,
        pixel_size: float | tuple[float, float] | None = None,
        spacing: tuple[float, float, float] | None = None,
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
        pixel_size : float or (float, float), optional
            The volume's µm per pixel in Y and X, as for :meth:`predict`.
        spacing : (dz, dy, dx), optional
            The volume's voxel spacing in mm, as for :meth:`predict` (only the slab around ``z``
            is resampled).
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
                           pixel_size=pixel_size, spacing=spacing, progress=progress, cancel=cancel)
        if res.labels.ndim == 3:
            res.labels = res.labels[0]
            if res.uncertainty is not None:
                res.uncertainty = res.uncertainty[0]
        return res


def _scratch_labels(out, shape: tuple[int, ...]) -> np.ndarray | None:
    """Working labels of ``shape`` in an unlinked temporary file beside ``out`` when ``out`` is a
    file-backed memmap (an image too big for memory: its resampled labels are too); else None."""
    filename = getattr(out, "filename", None)
    if out is None or not filename:
        return None
    import tempfile

    dtype = np.dtype(out.dtype)
    with tempfile.TemporaryFile(dir=os.path.dirname(os.fspath(filename))) as f:
        f.truncate(int(np.prod(shape)) * dtype.itemsize)           # sparse: untouched pages cost nothing
        return np.memmap(f, dtype=dtype, mode="r+", shape=tuple(shape))
