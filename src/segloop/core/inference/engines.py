"""Inference engines behind one Predictor interface.

A predictor is a callable ``(B, C, th, tw) float32 ndarray -> (B, K, th, tw)
float32 probabilities`` (3D networks: ``(B, C, pz, py, px)``).  Two engines:

* :class:`TorchPredictor` - ``device="auto"`` picks CUDA, then MPS, then CPU.
  On CPU, bfloat16 autocast is used only where the CPU has native bf16
  (AVX-512 BF16 / AMX), a quick measurement shows it faster than fp32, and its
  output on a reference batch agrees with fp32; on AVX2-only CPUs bf16 is ~100x
  slower, so it is never assumed.  The choice is cached per machine, torch
  version, network and tile shape.  The engine runs a private copy of the
  network in channels-last layout (``channels_last_3d`` for 3D), with
  BatchNorm folded into the convs and, on CPU, instance norms computed on the
  channels-last view (:func:`swap_instance_norms`).  On CUDA: fp16 autocast;
  on out-of-memory the batch is halved and retried, then the engine falls
  back to CPU.
* :class:`OnnxPredictor` - ONNX Runtime (CUDA provider when present), with
  optional dynamic int8 quantization validated against fp32.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import platform
import threading
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from segloop.core._runtime import atomic_write_text, cache_dir
from segloop.errors import EngineError, OnnxUnavailableError

__all__ = [
    "Precision",
    "EngineChoice",
    "TorchPredictor",
    "OnnxPredictor",
    "resolve_device",
    "cpu_has_native_bf16",
    "export_onnx",
    "fold_conv_batchnorm",
    "swap_instance_norms",
    "cache_dir",
    "thread_budget",
]

log = logging.getLogger(__name__)

Precision = Literal["auto", "fp32", "bf16", "fp16"]

#: Largest allowed mean |p_bf16 - p_fp32| on the reference batch, and the
#: least fraction of pixels whose argmax must agree.
BF16_MEAN_ABS_TOL = 2e-2
BF16_MIN_AGREEMENT = 0.99
INT8_MIN_AGREEMENT = 0.99


_budget_lock = threading.Lock()
_budget_users = 0
_budget_saved: int | None = None


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


@contextmanager
def thread_budget(reserve: int = 1):
    """Run torch's CPU work on all usable cores but ``reserve`` (at least one thread).

    For inference started from an interactive program (the napari widgets): the event loop
    keeps a core, so the window stays responsive while a worker thread segments.  torch's
    thread count is process-wide, so nested or concurrent uses share one budget: the first
    to enter sets it, the last to leave restores the previous count.
    """
    global _budget_users, _budget_saved
    import torch

    with _budget_lock:
        if _budget_users == 0:
            _budget_saved = torch.get_num_threads()
            torch.set_num_threads(max(1, min(_budget_saved, _usable_cores() - int(reserve))))
        _budget_users += 1
    try:
        yield torch.get_num_threads()
    finally:
        with _budget_lock:
            _budget_users -= 1
            if _budget_users == 0 and _budget_saved is not None:
                torch.set_num_threads(_budget_saved)
                _budget_saved = None


def resolve_device(device: str = "auto") -> str:
    """``"auto"`` -> ``"cuda"``, ``"mps"`` or ``"cpu"``, by availability."""
    import torch

    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return "mps"
        return "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise EngineError(f"device {device!r} requested but CUDA is not available; use device='auto' or 'cpu'")
    if device == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise EngineError("device 'mps' requested but MPS is not available; use device='auto' or 'cpu'")
    if device not in ("cpu", "mps") and not device.startswith("cuda"):
        raise EngineError(f"unknown device {device!r}; use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'")
    return device


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_has_native_bf16() -> bool:
    """True when the CPU executes bf16 matmuls natively (AVX-512 BF16 or AMX)."""
    import torch

    flags = _cpu_flags()
    if flags:
        return bool({"avx512_bf16", "amx_bf16"} & flags)
    # macOS / Windows: trust torch's own capability report.
    cap = str(getattr(torch.backends.cpu, "get_cpu_capability", lambda: "")()).upper()
    return "AMX" in cap or platform.machine() == "arm64"


def cpu_id() -> str:
    """A key for this CPU (model name and flags that matter), used to cache measured choices."""
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return name


@dataclass(frozen=True)
class EngineChoice:
    """What the engine decided and why (shown in provenance and ``segloop info``)."""

    device: str
    precision: str
    reason: str
    fp32_ms: float | None = None
    other_ms: float | None = None

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def network_key(network, tile_shape) -> str:
    import torch

    h = hashlib.sha256()
    h.update(type(network).__name__.encode())
    for k, v in network.state_dict().items():
        h.update(k.encode())
        h.update(str(tuple(v.shape)).encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())   # fine-tuned weights: own verdict
    h.update(str(tuple(tile_shape)).encode())
    h.update(torch.__version__.encode())
    h.update(cpu_id().encode())
    return h.hexdigest()[:24]


def read_choice_cache(key: str) -> dict | None:
    """A cached engine/precision choice for ``key`` (None if absent or unreadable)."""
    p = cache_dir() / "engine-choice.json"
    try:
        data = json.loads(p.read_text())
    except (OSError, ValueError):
        return None
    value = data.get(key) if isinstance(data, dict) else None
    return value if isinstance(value, dict) else None


def write_choice_cache(key: str, value: dict) -> None:
    """Remember a measured choice under ``key`` (best effort; a read-only cache is ignored)."""
    p = cache_dir() / "engine-choice.json"
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        try:
            data = json.loads(p.read_text())
        except (OSError, ValueError):
            data = {}
        if not isinstance(data, dict):
            data = {}
        data[key] = value
        atomic_write_text(p, json.dumps(data, indent=1), durable=False)
    except OSError as e:  # a read-only home must not stop inference
        log.info("could not cache engine choice: %s", e)


class TorchPredictor:
    """Run a torch network on batches of tiles and return softmax probabilities.

    Parameters
    ----------
    network : torch.nn.Module
        Returns logits ``(B, K, ...)``.
    device : {"auto", "cpu", "cuda", "cuda:N", "mps"}
    precision : {"auto", "fp32", "bf16", "fp16"}
        ``"auto"``: CUDA -> fp16 autocast; CPU -> bf16 only when
        :meth:`calibrate` measured it faster and equivalent, else fp32.
    channels_last : bool
        Use the channels-last memory format (``channels_last_3d`` for 3D
        networks) on CPU/CUDA.
    """

    def __init__(self, network, *, device: str = "auto", precision: Precision = "auto",
                 channels_last: bool = True, fold_batchnorm: bool = True):
        import copy

        import torch

        self.device = resolve_device(device)
        # A private copy: layout changes and folding must not touch the caller's network.
        net = copy.deepcopy(network).eval()
        self.folded = fold_batchnorm and fold_conv_batchnorm(net) > 0
        self.network = net.to(self.device)
        dims = getattr(network, "dims", 2)
        self.channels_last = channels_last and dims in (2, 3)
        # channels-last (2D) / channels-last-3d: oneDNN's fast conv layout on CPU
        # (measured 1.6-2.5x for 3D U-Nets on AVX2), tensor cores' layout on CUDA.
        self._memory_format = torch.channels_last_3d if dims == 3 else torch.channels_last
        self.swapped_instance_norms = 0
        if self.channels_last:
            self.network = self.network.to(memory_format=self._memory_format)
            if self.device == "cpu":
                self.swapped_instance_norms = swap_instance_norms(self.network)
        self.requested_precision = precision
        if precision == "auto":
            self.precision = "fp16" if self.device.startswith("cuda") else "fp32"
        else:
            self.precision = precision
        if self.precision == "bf16" and self.device == "cpu" and not cpu_has_native_bf16():
            warnings.warn("bf16 requested on a CPU without native bf16: this can be ~100x slower than fp32",
                          stacklevel=2)
        self.choice = EngineChoice(self.device, self.precision, "default for device")
        self.max_batch: int | None = None
        self._calibrated = False

    # -- precision choice ---------------------------------------------------
    def calibrate(self, tile_shape: tuple[int, int], *, in_channels: int, batch: int = 2,
                  use_cache: bool = True) -> EngineChoice:
        """Pick fp32 or bf16 on CPU by capability plus a quick measurement.

        Runs once per (machine, torch, network, tile shape); the result is
        cached in :func:`cache_dir`.  Does nothing unless the precision was
        ``"auto"`` and the device is the CPU.
        """
        if self._calibrated or self.requested_precision != "auto" or self.device != "cpu":
            self._calibrated = True
            return self.choice
        self._calibrated = True
        if not cpu_has_native_bf16():
            self.choice = EngineChoice("cpu", "fp32", "CPU has no native bf16 (AVX-512 BF16/AMX): fp32")
            self.precision = "fp32"
            return self.choice
        key = network_key(self.network, tile_shape)
        cached = read_choice_cache(key) if use_cache else None
        if cached:
            self.choice = EngineChoice(**cached)
            self.precision = self.choice.precision
            return self.choice
        rng = np.random.default_rng(0)
        ref = rng.standard_normal((batch, in_channels, *tile_shape)).astype(np.float32)
        self.precision = "fp32"
        self._run(ref)                      # warm-up
        t0 = time.perf_counter()
        p32 = self._run(ref)
        t32 = (time.perf_counter() - t0) * 1e3
        self.precision = "bf16"
        self._run(ref)
        t0 = time.perf_counter()
        p16 = self._run(ref)
        t16 = (time.perf_counter() - t0) * 1e3
        mean_abs = float(np.abs(p16 - p32).mean())
        agree = float((p16.argmax(1) == p32.argmax(1)).mean())
        if mean_abs > BF16_MEAN_ABS_TOL or agree < BF16_MIN_AGREEMENT:
            prec, why = "fp32", f"bf16 differs from fp32 (mean |dp| {mean_abs:.3g}, agreement {agree:.4f})"
        elif t16 < 0.8 * t32:
            prec, why = "bf16", f"bf16 {t32 / t16:.1f}x faster than fp32 and within tolerance"
        else:
            prec, why = "fp32", f"bf16 not faster ({t16:.0f} ms vs {t32:.0f} ms)"
        self.precision = prec
        self.choice = EngineChoice("cpu", prec, why, round(t32, 2), round(t16, 2))
        if use_cache:
            write_choice_cache(key, self.choice.to_dict())
        return self.choice

    # -- running --------------------------------------------------------------
    def _run(self, batch: np.ndarray) -> np.ndarray:
        import torch

        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.device)
        if self.channels_last and x.ndim in (4, 5):
            x = x.contiguous(memory_format=torch.channels_last if x.ndim == 4 else torch.channels_last_3d)
        with torch.inference_mode():
            if self.precision == "bf16":
                with torch.autocast(device_type=self.device.split(":")[0], dtype=torch.bfloat16):
                    logits = self.network(x)
            elif self.precision == "fp16" and self.device != "cpu":
                with torch.autocast(device_type=self.device.split(":")[0], dtype=torch.float16):
                    logits = self.network(x)
            else:
                logits = self.network(x)
            probs = torch.softmax(logits.float(), dim=1)
        return probs.cpu().numpy()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """``(B, C, *spatial)`` float32 -> ``(B, K, *spatial)`` float32 probabilities."""
        import torch

        if not self._calibrated and self.requested_precision == "auto":
            self.calibrate(tuple(batch.shape[2:]), in_channels=batch.shape[1])
        if self.max_batch is not None and len(batch) > self.max_batch:
            parts = [self(batch[i:i + self.max_batch]) for i in range(0, len(batch), self.max_batch)]
            return np.concatenate(parts)
        try:
            return self._run(batch)
        except torch.cuda.OutOfMemoryError:
            if not self.device.startswith("cuda"):
                raise
            torch.cuda.empty_cache()
            if len(batch) > 1:
                self.max_batch = max(1, len(batch) // 2)
                warnings.warn(f"CUDA out of memory: batch reduced to {self.max_batch}", stacklevel=2)
                return self(batch)
            warnings.warn("CUDA out of memory even with one tile: falling back to CPU", stacklevel=2)
            self.device = "cpu"
            self.network = self.network.to("cpu")
            self.precision = "fp32"
            self.choice = EngineChoice("cpu", "fp32", "fell back to CPU after CUDA out-of-memory")
            return self._run(batch)


def fold_conv_batchnorm(network) -> int:
    """Fold every BatchNorm that directly follows a conv (in a Sequential) into it.

    Inference only (the network must be in eval mode); returns how many pairs
    were folded.  The result is numerically the same network (checked in
    tests to 1e-5) and saves the BatchNorm pass, ~10-15% of CPU time for
    U-Nets.
    """
    import torch
    from torch import nn
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    if network.training:
        raise EngineError("fold_conv_batchnorm needs a network in eval mode")
    pairs = {(nn.Conv2d, nn.BatchNorm2d), (nn.Conv3d, nn.BatchNorm3d)}
    n = 0
    with torch.no_grad():
        for module in network.modules():
            if not isinstance(module, nn.Sequential):
                continue
            names = list(module._modules)
            for a, b in zip(names, names[1:]):
                conv, bn = module._modules[a], module._modules[b]
                if (type(conv), type(bn)) in pairs and bn.track_running_stats:
                    module._modules[a] = fuse_conv_bn_eval(conv, bn)
                    module._modules[b] = nn.Identity()
                    n += 1
    return n


@functools.cache
def _channels_last_instance_norm_class():
    import torch
    from torch import nn

    class ChannelsLastInstanceNorm(nn.Module):
        """Affine instance norm computed on the channels-last view ``(N, S, C)`` (inference only).

        torch's native instance norm copies a channels-last input to
        contiguous and back (measured ~2.5x slower than on contiguous input,
        ~40% of a 3D U-Net's time on CPU); here the per-(N, C) statistics are
        a reduction over the outer axis of the channels-last memory, and the
        output stays channels-last.  Same result to ~1e-6.
        """

        def __init__(self, src):
            super().__init__()
            self.weight, self.bias, self.eps = src.weight, src.bias, float(src.eps)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            n, c = x.shape[:2]
            xp = x.permute(0, *range(2, x.dim()), 1)          # (N, *S, C): a view when channels-last
            flat = xp.reshape(n, -1, c)
            var, mean = torch.var_mean(flat, dim=1, unbiased=False, keepdim=True)
            scale = torch.rsqrt(var + self.eps) * self.weight
            y = torch.addcmul(self.bias - mean * scale, flat, scale)
            return y.view(xp.shape).permute(0, x.dim() - 1, *range(1, x.dim() - 1))

    return ChannelsLastInstanceNorm


def swap_instance_norms(network) -> int:
    """Replace affine, statistics-free InstanceNorm2d/3d by a channels-last-friendly equivalent.

    For the engine's private copy of a network run in channels-last layout on
    CPU (eval mode: instance norms always use the input's own statistics, so
    nothing is lost).  Returns how many modules were replaced.
    """
    from torch import nn

    if network.training:
        raise EngineError("swap_instance_norms needs a network in eval mode")
    cls = _channels_last_instance_norm_class()
    n = 0
    for module in list(network.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, (nn.InstanceNorm2d, nn.InstanceNorm3d)) and child.affine \
                    and not child.track_running_stats:
                setattr(module, name, cls(child))
                n += 1
    return n


def _require_onnxruntime():
    try:
        import onnxruntime as ort
    except ImportError:
        raise OnnxUnavailableError(
            "the ONNX engine needs onnxruntime: pip install 'napari-segloop[onnx]'") from None
    return ort


def export_onnx(network, *, in_channels: int, tile: int | tuple[int, ...], dims: int = 2,
                opset: int = 17) -> bytes:
    """Export ``network`` to ONNX and return the bytes.

    Batch and spatial axes are dynamic.  The graph is the network's
    ``forward_padded`` (spatial sizes must be multiples of its ``divisor``,
    stored in the model's metadata as ``segloop.divisor``);
    :class:`OnnxPredictor` pads other sizes and crops back, and applies softmax
    to the logits.  The caller's network is not modified.
    """
    import copy
    import io

    import torch

    try:
        import onnx
    except ImportError:
        raise OnnxUnavailableError("ONNX export needs onnx: pip install 'napari-segloop[onnx]'") from None
    tile_shape = (tile,) * dims if isinstance(tile, int) else tuple(tile)
    net = copy.deepcopy(network).eval().to("cpu").to(memory_format=torch.contiguous_format)
    divisor = int(getattr(net, "divisor", 1))
    tile_shape = tuple(max(divisor, -(-t // divisor) * divisor) for t in tile_shape)

    class _Padded(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner.forward_padded(x) if hasattr(self.inner, "forward_padded") else self.inner(x)

    x = torch.zeros((1, in_channels, *tile_shape), dtype=torch.float32)
    axes = {0: "batch", **{2 + i: f"s{i}" for i in range(dims)}}
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_Padded(net), x, buf, dynamo=False, opset_version=opset, input_names=["input"],
                          output_names=["logits"], dynamic_axes={"input": axes, "logits": axes})
    model = onnx.load_model_from_string(buf.getvalue())
    onnx.helper.set_model_props(model, {"segloop.divisor": str(divisor), "segloop.dims": str(dims)})
    return model.SerializeToString()


class OnnxPredictor:
    """ONNX Runtime predictor on the same tiles as :class:`TorchPredictor`.

    Parameters
    ----------
    onnx_bytes : bytes
        The serialized model (from the package's ``model.onnx``).
    device : {"auto", "cpu", "cuda"}
        ``"auto"`` uses the CUDA execution provider when onnxruntime has it.
    quantize : {"none", "int8"}
        Static int8 (QDQ, per-channel weights) calibrated on the **first
        batch** this predictor sees (tiles of the user's own image), and kept
        only if its labels agree with fp32 on that batch for at least 99% of
        pixels; otherwise fp32 is used, with a warning.  (Dynamic int8 is not
        offered: on AVX2 CPUs it is several times slower than fp32.)
    threads : int, optional
        Intra-op threads (default: onnxruntime's choice).
    """

    def __init__(self, onnx_bytes: bytes, *, device: str = "auto", quantize: Literal["none", "int8"] = "none",
                 threads: int | None = None):
        ort = _require_onnxruntime()
        self._fp32_bytes = onnx_bytes
        self.quantize = quantize
        avail = ort.get_available_providers()
        if (device == "auto" or device.startswith("cuda")) and "CUDAExecutionProvider" in avail:
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        elif device.startswith("cuda"):
            raise EngineError("onnxruntime has no CUDA execution provider here; install onnxruntime-gpu or use CPU")
        else:
            providers = ["CPUExecutionProvider"]
        self.providers = providers
        self.threads = threads
        self._fp32_session = self.session = self._session(onnx_bytes)
        props = self.session.get_modelmeta().custom_metadata_map
        self.divisor = int(props.get("segloop.divisor", 1))
        self._pending_int8 = quantize == "int8"
        self.device = "cuda" if providers[0].startswith("CUDA") else "cpu"
        self.agreement: float | None = None
        self.choice = EngineChoice(self.device, "fp32", f"onnxruntime {ort.__version__} ({providers[0]})")

    def _session(self, model: bytes):
        ort = _require_onnxruntime()
        so = ort.SessionOptions()
        if self.threads:
            so.intra_op_num_threads = self.threads
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        return ort.InferenceSession(model, sess_options=so, providers=self.providers)

    @staticmethod
    def _static_int8(onnx_bytes: bytes, calibration: np.ndarray) -> bytes:
        import tempfile

        from onnxruntime.quantization import (
            CalibrationDataReader,
            QuantFormat,
            QuantType,
            quantize_static,
        )
        from onnxruntime.quantization.shape_inference import quant_pre_process

        class _Reader(CalibrationDataReader):
            def __init__(self):
                self._it = iter([{"input": t[None]} for t in np.ascontiguousarray(calibration, np.float32)])

            def get_next(self):
                return next(self._it, None)

        with tempfile.TemporaryDirectory() as d:
            src, pre, dst = Path(d, "fp32.onnx"), Path(d, "pre.onnx"), Path(d, "int8.onnx")
            src.write_bytes(onnx_bytes)
            quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
            quantize_static(str(pre), str(dst), _Reader(), quant_format=QuantFormat.QDQ,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True)
            return dst.read_bytes()

    def _quantize_on(self, batch: np.ndarray) -> None:
        ort = _require_onnxruntime()
        self._pending_int8 = False
        # Calibrate on half of the first batch and validate on the other half
        # (tiles the calibration never saw), or on the tile itself if only one.
        calib, check = (batch[::2], batch[1::2]) if len(batch) > 1 else (batch, batch)
        q = self._static_int8(self._fp32_bytes, calib)
        self.session = self._session(q)
        agree = self.validate_against(check, raise_below=False)
        if agree < INT8_MIN_AGREEMENT:
            self.session = self._fp32_session
            warnings.warn(f"int8 quantization changed {100 * (1 - agree):.1f}% of labels on the first batch; "
                          "using fp32", stacklevel=3)
            self.choice = EngineChoice(self.device, "fp32",
                                       f"int8 rejected (label agreement {agree:.4f} < {INT8_MIN_AGREEMENT})")
        else:
            self.choice = EngineChoice(self.device, "int8",
                                       f"onnxruntime {ort.__version__} static int8, label agreement {agree:.4f}")

    def validate_against(self, reference: np.ndarray, *, raise_below: bool = True) -> float:
        """Argmax agreement of the current session with fp32 on ``reference``.

        Raises :class:`EngineError` below 99% agreement when ``raise_below``.
        """
        if self._pending_int8:
            self._quantize_on(reference)
        if self.session is self._fp32_session:
            self.agreement = 1.0
            return 1.0
        ref = self._run(self._fp32_session, reference)
        agree = float((self._run(self.session, reference).argmax(1) == ref.argmax(1)).mean())
        self.agreement = agree
        if raise_below and agree < INT8_MIN_AGREEMENT:
            raise EngineError(
                f"int8 quantization changes {100 * (1 - agree):.1f}% of labels on the reference batch "
                f"(allowed {100 * (1 - INT8_MIN_AGREEMENT):.0f}%); use quantize='none'")
        return agree

    def _run(self, session, batch: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        spatial = batch.shape[2:]
        m = self.divisor
        pads = [(-n) % m for n in spatial]
        if any(pads):   # the graph needs multiples of the divisor: reflect-pad, crop back
            mode = "reflect" if all(p < n for p, n in zip(pads, spatial)) else "edge"
            batch = np.pad(batch, [(0, 0), (0, 0)] + [(0, p) for p in pads], mode=mode)
        logits = session.run(None, {"input": batch})[0]
        if any(pads):
            logits = logits[(slice(None), slice(None)) + tuple(slice(0, n) for n in spatial)]
        logits = logits - logits.max(axis=1, keepdims=True)
        e = np.exp(logits)
        return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """``(B, C, *spatial)`` float32 -> ``(B, K, *spatial)`` float32 probabilities."""
        if self._pending_int8:
            self._quantize_on(batch)
        return self._run(self.session, batch)
