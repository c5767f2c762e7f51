"""Segment an image with a model package: the library's main entry point.

``load_model(name_or_path)`` returns a :class:`Model`; ``model.predict(image)``
validates the image, fits the normalization once on a downsampled copy, runs
tiled inference through the chosen engine and assembles labels band by band.
"""

from __future__ import annotations

import datetime as _dt
import os
import warnings
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
from segloop.core.tiling import TiledStats, predict_tiled
from segloop.errors import EngineError, InvalidImageError, ModelNotFoundError

__all__ = ["Model", "SegmentationResult", "list_models", "load_model", "model_dirs", "validate_image"]

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
    known = _discover()
    key = str(name_or_path)
    if key in known:
        path = known[key]
    else:
        path = Path(name_or_path).expanduser()
        if not path.exists():
            raise ModelNotFoundError(
                f"no model named or at {key!r}; known models: {', '.join(sorted(known)) or 'none'}")
    return Model(load_package(path), device=device, engine=engine, precision=precision)


@dataclass
class SegmentationResult:
    """The output of :meth:`Model.predict`.

    Attributes
    ----------
    labels : (H, W) or (Z, H, W) ndarray
        uint16 instance ids (uint32 beyond 65,535 objects) or class ids (uint8).
    uncertainty : same shape as labels, float16, or None
        Normalized entropy of the blended probabilities (0 certain, 1 uniform).
    n_objects : int
        Instances found (instance models) or distinct non-background classes.
    tiles_predicted, tiles_skipped : int
        Tiles the network ran on / skipped as background.
    provenance : dict
        Model name, version, sha256, parameters, engine, time: JSON-able.
    """

    labels: np.ndarray
    uncertainty: np.ndarray | None
    n_objects: int
    tiles_predicted: int
    tiles_skipped: int
    provenance: dict[str, Any] = field(default_factory=dict)


def _required_channels(spec: ModelSpec, norm_spec) -> int:
    return 3 if norm_spec.kind == "hematoxylin" else spec.in_channels


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

    Attributes
    ----------
    network : torch.nn.Module
    spec : ModelSpec
    package : ModelPackage
    predictor : callable
        The engine: ``(B, C, th, tw) -> (B, K, th, tw)`` probabilities.
    """

    def __init__(self, package: ModelPackage, *, device: str = "auto", engine: Engine = "torch",
                 precision: str = "auto"):
        from segloop.core.engines import OnnxPredictor, TorchPredictor

        self.package = package
        self.spec = package.spec
        self.network = package.build_network()
        self.engine_name = engine
        if self.spec.dims != 2:
            raise EngineError(
                f"{self.spec.name} is a 3D model; this version of segloop runs 2D models "
                "(per slice on stacks). 3D patch inference arrives with the CT-stack work")
        tile = int(self.spec.tile.get("size", 256))
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

    def _export_onnx(self, tile: int) -> bytes:
        from segloop.core.engines import export_onnx

        return export_onnx(self.network, in_channels=self.spec.in_channels, tile=tile, dims=self.spec.dims)

    def _pick_engine(self, device, precision, tile):
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
        key = "engine:" + _network_key(self.network, (tile, tile)) + ":" + torch_pred.device
        cached = read_choice_cache(key)
        if cached and cached.get("engine") in ("torch", "onnx"):
            self.engine_name = cached["engine"]
        else:
            ref = np.random.default_rng(0).standard_normal((2, self.spec.in_channels, tile, tile)).astype(np.float32)
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

    def predict(
        self,
        image,
        *,
        tile: int | None = None,
        overlap: float | None = None,
        channel_axis: int | None | Literal["auto"] = "auto",
        normalization: dict | _norm.Percentile | None = None,
        batch_size: int = 4,
        skip_background: bool | None = None,
        uncertainty: bool = False,
        out: np.ndarray | None = None,
        progress=None,
        cancel=None,
    ) -> SegmentationResult:
        """Segment ``image``.

        Parameters
        ----------
        image : array-like
            (H, W), (H, W, C), (Z, H, W) or (Z, H, W, C); numpy array, memmap
            or anything with ``shape``, ``dtype`` and basic slicing.
        tile, overlap : optional
            Default from the package (``spec.tile``).
        channel_axis : None, -1 or "auto"
        normalization : dict or spec, optional
            Override the package's normalization (e.g. ``{"kind": "hematoxylin"}``
            to run a fluorescence nuclei model on H&E/IHC).
        batch_size : int
            Tiles per engine call.
        skip_background : bool, optional
            Skip tiles with no tissue (RGB only).  Default: on for RGB input.
        uncertainty : bool
            Also return per-pixel entropy (float16, image-sized).
        out : ndarray, optional
            Preallocated uint16/uint32 label array (e.g. a memmap) of the
            output shape, used as working memory: its contents are undefined
            if ``predict`` raises (cancelled, bad input).  Never pass data a
            person drew.  ``result.labels`` is ``out`` unless more than 65,535
            objects are found in a plane and ``out`` is uint16 (then a new
            uint32 array, with a warning).
        progress : callable, optional
            ``progress(done, total)`` in tiles.
        cancel : threading.Event or callable, optional
            Checked between batches; raises :class:`segloop.errors.Cancelled`.

        Returns
        -------
        SegmentationResult
        """
        started = _dt.datetime.now(_dt.timezone.utc)
        norm_spec = _norm.spec_from_dict(normalization if isinstance(normalization, dict) else
                                         normalization.to_dict()) if normalization is not None else \
            _norm.spec_from_dict(self.spec.normalization)
        channels = _required_channels(self.spec, norm_spec)
        if _norm.output_channels(norm_spec, channels) != self.spec.in_channels:
            raise InvalidImageError(
                f"normalization {norm_spec.kind!r} gives {_norm.output_channels(norm_spec, channels)} "
                f"channel(s) but {self.spec.name} takes {self.spec.in_channels}")
        channel_axis, stack = validate_image(image, channels=channels, channel_axis=channel_axis)
        image = _drop_alpha(image, channel_axis, channels)
        if np.dtype(image.dtype) == np.bool_:
            image = np.asarray(image, dtype=np.uint8)
        normalizer = _norm.Normalizer.fit(norm_spec, image, channel_axis=channel_axis)
        tile = int(self.spec.tile.get("size", 256) if tile is None else tile)
        overlap = float(self.spec.tile.get("overlap", 0.25) if overlap is None else overlap)
        if tile < 8:
            raise InvalidImageError(f"tile must be at least 8 pixels, got {tile}")
        if not 0 <= overlap <= 0.9:
            raise InvalidImageError(f"overlap must be a fraction of the tile in [0, 0.9], got {overlap}")
        if int(batch_size) < 1:
            raise InvalidImageError(f"batch_size must be at least 1, got {batch_size}")
        if skip_background is None:
            skip_background = channel_axis is not None and image.shape[-1] >= 3
        shape = tuple(image.shape[: 3 if stack else 2])
        n_z = shape[0] if stack else 1
        plane_shape = shape[-2:]

        if out is not None and (tuple(out.shape) != shape or np.dtype(out.dtype) not in (
                (np.uint16, np.uint32) if self.spec.task == "instance" else (np.uint8, np.uint16, np.uint32))):
            raise InvalidImageError(f"out must be a uint16/uint32 array of shape {shape}, got "
                                    f"{np.dtype(out.dtype)} {tuple(out.shape)}")
        if self.spec.task == "instance":
            params = InstanceParams.from_dict(self.spec.postprocess)
            labels = out if out is not None else np.zeros(shape, np.uint16)
            state = {"z": None, "asm": None, "n": 0}

            def finish_plane():
                nonlocal labels
                asm = state["asm"]
                if asm is None:
                    return
                res = asm.finish()
                if res.dtype != labels.dtype:   # > 65,535 objects in this plane: widen once
                    warnings.warn(f"{asm.n_objects} objects: labels widened to uint32"
                                  + (" (a new array, not `out`)" if out is not None else ""), stacklevel=3)
                    if stack:
                        labels = labels.astype(np.uint32)
                        labels[state["z"]] = res
                    else:
                        labels = res
                state["n"] += asm.n_objects

            def label_sink(z, y0, y1, probs):
                if state["z"] != z:
                    finish_plane()
                    state["z"] = z
                    state["asm"] = InstanceAssembler(plane_shape, params, out=labels[z] if stack else labels)
                state["asm"](z, y0, y1, probs)
        else:
            labels = out if out is not None else np.zeros(shape, np.uint8 if self.spec.n_classes < 256 else np.uint16)
            label_sink = SemanticAssembler(labels)
            finish_plane = None

        unc = np.zeros(shape, np.float16) if uncertainty else None
        unc_sink = EntropySink(unc) if uncertainty else None

        def sink(z, y0, y1, probs):
            label_sink(z, y0, y1, probs)
            if unc_sink is not None:
                unc_sink(z, y0, y1, probs)

        stats: TiledStats = predict_tiled(
            self.predictor, image, tile=tile, overlap=overlap, channel_axis=channel_axis,
            normalize=normalizer, n_classes=self.spec.n_classes, batch_size=batch_size,
            multiple=self.divisor, skip_background=bool(skip_background), sink=sink,
            progress=progress, cancel=cancel)
        if finish_plane is not None:
            finish_plane()
            n_objects = state["n"]
        else:
            n_objects = int(sum(1 for c in range(1, self.spec.n_classes) if (labels == c).any()))
        engine = getattr(self.predictor, "choice", None)
        prov = {
            "model": {"name": self.spec.name, "version": self.spec.version, "sha256": self.spec.sha256,
                      "architecture": self.spec.architecture, "path": str(self.package.path or ""),
                      "classes": list(self.spec.classes), "task": self.spec.task,
                      "modality": getattr(self.spec, "modality", None)},
            "parameters": {"tile": tile, "overlap": overlap, "batch_size": batch_size,
                           "skip_background": bool(skip_background), "channel_axis": channel_axis,
                           "normalization": norm_spec.to_dict(), "normalization_stats": normalizer.stats,
                           "postprocess": dict(self.spec.postprocess)},
            "engine": {"name": self.engine_name, **(engine.to_dict() if engine is not None else {})},
            "image_shape": list(image.shape),
            "started": started.isoformat(timespec="seconds"),
            "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "n_planes": n_z,
        }
        return SegmentationResult(labels, unc, n_objects, stats.predicted_tiles, stats.skipped_tiles, prov)
