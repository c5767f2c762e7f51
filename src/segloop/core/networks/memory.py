"""How much memory a network needs, estimated before anything is allocated, and how much there is.

The estimate (:func:`estimate_memory`) is a documented, deliberately simple upper-bound-ish
formula, in bytes of float32::

    weights      = 4 * parameters * copies
    activations  = 4 * activation_elements * batch * padded_voxels * ACTIVATION_MARGIN
    total        = weights + activations

- ``parameters`` (parameters + buffers) are counted on a network built on torch's ``meta``
  device: exact, and nothing is allocated (the settings' bounds are checked first,
  :mod:`segloop.core.networks.limits`).
- ``copies``: 4 when training (weights, gradients and AdamW's two moments); 1 when only the
  network is built (a package's weights already in memory are not counted again).
- ``activation_elements`` is the network's closed-form count of the feature maps alive at the
  peak, per input voxel and sample (``SegmentationNet.activation_elements``; training: what
  autograd keeps for the backward pass; inference: skips plus the finest decoder step).
- ``padded_voxels``: the patch / tile rounded up to multiples of the network's divisor
  (``2**depth``), as the network pads it.
- ``ACTIVATION_MARGIN`` (1.5) covers the backward pass's transient gradients, the CPU
  convolutions' workspaces and allocator slack.  Measured on a CPU (peak resident memory of
  one forward + loss + backward + AdamW step, or of an inference batch), the estimate came
  within 0.8-1.4x of the peak for every architecture, 2D and 3D; tests/test_arch_limits.py
  keeps it within 3x.
- Mixed precision (bf16 / fp16 autocast) needs less; the estimate assumes float32.

What is available (:func:`available_memory`): on CUDA the device's free memory; elsewhere the
smallest of ``MemAvailable`` (``/proc/meminfo``; psutil or ``sysconf`` on other systems), the
room left under a cgroup memory limit (containers) and under the process's address-space
limit (``ulimit -v``).  The environment variable ``SEGLOOP_AVAILABLE_MEMORY`` (bytes, or with a
unit: ``16GB``, ``512MB``) replaces the measured figure, for machines with swap or an estimate
known to be too cautious.  When nothing can be measured, nothing is refused.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from segloop.errors import ArchitectureArgumentsError, NetworkTooLargeError

from .limits import check_arguments
from .registry import constructor

__all__ = ["ACTIVATION_MARGIN", "AVAILABLE_MEMORY_ENV", "MemoryEstimate", "NetworkFacts", "available_memory",
           "check_memory", "estimate_memory", "format_bytes", "network_facts"]

#: Bytes per activation / weight element (float32).
BYTES = 4
#: Factor on the counted activations: backward transients, convolution workspaces, allocator slack.
ACTIVATION_MARGIN = 1.5
#: Weight-sized buffers of a training step: weights, gradients, AdamW's exp_avg and exp_avg_sq.
TRAINING_WEIGHT_COPIES = 4
#: Environment variable that replaces the measured available memory (``16GB``, ``512MB``, bytes).
AVAILABLE_MEMORY_ENV = "SEGLOOP_AVAILABLE_MEMORY"


@dataclass(frozen=True)
class NetworkFacts:
    """What a network built on the ``meta`` device tells without allocating.

    Attributes
    ----------
    parameters : int
        Parameters plus buffers (elements).
    divisor : int
        Spatial sizes the network takes unpadded are multiples of it (``2**depth``).
    train_elements, infer_elements : float or None
        ``activation_elements(training=True / False)``; None when the network does not say.
    """

    parameters: int
    divisor: int
    train_elements: float | None
    infer_elements: float | None


@dataclass(frozen=True)
class MemoryEstimate:
    """The memory a network needs for one piece of work (see the module docstring for the formula).

    Attributes
    ----------
    architecture : str
    settings : str
        Its keyword arguments in words (``"depth 8, base_width 512"``).
    parameters : int
    weights_bytes : int
    activations_bytes : int or None
        None when there is no shape or the architecture has no activation count.
    per_sample_bytes : float or None
        ``activations_bytes / batch``.
    shape : tuple of int or None
        The padded patch / tile.
    batch : int
    training : bool
    """

    architecture: str
    settings: str
    parameters: int
    weights_bytes: int
    activations_bytes: int | None
    per_sample_bytes: float | None
    shape: tuple[int, ...] | None
    batch: int
    training: bool

    @property
    def total_bytes(self) -> int:
        """Weights plus activations."""
        return self.weights_bytes + (self.activations_bytes or 0)

    def work(self) -> str:
        """What the figure is for: ``"train on 256x256 patches at batch 8"``."""
        if self.shape is None or self.activations_bytes is None:
            return "hold its weights"
        size = "x".join(str(s) for s in self.shape)
        if self.training:
            return f"train on {size} patches at batch {self.batch}"
        return f"predict {size} tiles at batch {self.batch}"


def format_bytes(n: float) -> str:
    """``21.3 GB``, ``812 GB``, ``1.2 TB``: three significant digits, decimal units."""
    n = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if abs(n) < 999.5 or unit == "PB":
            return f"{n:.3g} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000.0
    return f"{n:.3g} EB"  # pragma: no cover


def _settings(kwargs: Mapping[str, Any]) -> str:
    shown = ", ".join(f"{k} {v}" for k, v in kwargs.items())
    return shown or "its default settings"


def _facts_of(name: str, in_channels: int, out_channels: int, dims: int | None, kwargs: dict
              ) -> NetworkFacts | str | None:
    """Build ``name`` on the meta device: its facts, the constructor's complaint (a str), or None."""
    import torch

    if dims is not None:
        kwargs = {**kwargs, "dims": dims}
    try:
        with torch.device("meta"):
            net = constructor(name)(in_channels, out_channels, **kwargs)
    except (TypeError, ValueError) as e:                 # e.g. an unknown keyword, norm "btach"
        return str(e)
    except Exception:  # noqa: BLE001 - a constructor that cannot run on "meta": no estimate here; the real
        return None       # build that follows raises the same error to the user, unswallowed
    count = sum(p.numel() for p in net.parameters()) + sum(b.numel() for b in net.buffers())
    elements = getattr(net, "activation_elements", None)
    train = infer = None
    if callable(elements):
        train, infer = elements(training=True), elements(training=False)
    return NetworkFacts(int(count), int(getattr(net, "divisor", 1) or 1),
                        None if train is None else float(train), None if infer is None else float(infer))


@functools.lru_cache(maxsize=128)
def _cached_facts(name: str, in_channels: int, out_channels: int, dims: int | None, kwargs_json: str
                  ) -> NetworkFacts | str | None:
    return _facts_of(name, in_channels, out_channels, dims, json.loads(kwargs_json))


def network_facts(name: str, in_channels: int, out_channels: int, *, dims: int | None, kwargs: Mapping[str, Any],
                  source: str | None = None) -> NetworkFacts | None:
    """Parameters, divisor and activation counts of a network, without allocating it.

    The settings' bounds are checked first (:func:`~segloop.core.networks.limits.check_arguments`),
    then the network is built on torch's ``meta`` device (cached per settings).

    Parameters
    ----------
    name : str
    in_channels, out_channels : int
    dims : {2, 3} or None
        None: the constructor's default.
    kwargs : mapping
        The architecture's keyword arguments (without ``dims``).
    source : str, optional
        Where the settings came from, the start of error messages.

    Returns
    -------
    NetworkFacts or None
        None when the constructor cannot run on the meta device (nothing can be estimated).

    Raises
    ------
    UnknownArchitectureError, ArchitectureArgumentsError
    """
    check_arguments(name, kwargs, source=source)
    try:
        key = json.dumps(dict(kwargs), sort_keys=True, allow_nan=False)
    except (TypeError, ValueError):                      # numpy numbers ...: not cached
        key = None
    if key is None or not isinstance(in_channels, int) or not isinstance(out_channels, int):
        facts = _facts_of(name, in_channels, out_channels, dims, dict(kwargs))
    else:
        facts = _cached_facts(name, in_channels, out_channels, dims, key)
    if isinstance(facts, str):
        shown = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
        prefix = f"{source}: " if source else ""
        raise ArchitectureArgumentsError(f"{prefix}architecture {name!r} cannot be built with {shown}: {facts}")
    return facts


def estimate_memory(name: str, in_channels: int, out_channels: int, *, dims: int | None,
                    kwargs: Mapping[str, Any], shape: Sequence[int] | None = None, batch: int = 1,
                    training: bool = False, weight_copies: int | None = None,
                    source: str | None = None) -> MemoryEstimate | None:
    """The memory network ``name`` needs for a training step or an inference batch (module docstring).

    Parameters
    ----------
    name, in_channels, out_channels, dims, kwargs, source
        As :func:`network_facts`.
    shape : sequence of int, optional
        Patch (training) or tile (inference) size, one per spatial axis; None: weights only.
    batch : int
        Patches / tiles per step.
    training : bool
        A training step (weights x 4, autograd's activations) or inference.
    weight_copies : int, optional
        Override the number of weight-sized buffers (default 4 training, else 1).

    Returns
    -------
    MemoryEstimate or None
        None when nothing can be estimated (see :func:`network_facts`).
    """
    facts = network_facts(name, in_channels, out_channels, dims=dims, kwargs=kwargs, source=source)
    if facts is None:
        return None
    copies = weight_copies if weight_copies is not None else TRAINING_WEIGHT_COPIES if training else 1
    padded = None
    activations = per_sample = None
    elements = facts.train_elements if training else facts.infer_elements
    if shape is not None:
        d = facts.divisor
        padded = tuple(-(-int(s) // d) * d for s in shape)
        if elements is not None:
            per_sample = elements * BYTES * math.prod(padded) * ACTIVATION_MARGIN
            activations = int(math.ceil(per_sample * int(batch)))
    return MemoryEstimate(name, _settings(kwargs), facts.parameters, facts.parameters * BYTES * copies,
                          activations, per_sample, padded, int(batch), bool(training))


# --------------------------------------------------------------------------- available memory


_UNITS = {"": 1, "b": 1, "k": 1e3, "kb": 1e3, "m": 1e6, "mb": 1e6, "g": 1e9, "gb": 1e9, "t": 1e12, "tb": 1e12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def _parse_bytes(text: str) -> int:
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", text)
    if not m or m.group(2).lower() not in _UNITS:
        raise ArchitectureArgumentsError(f"{AVAILABLE_MEMORY_ENV}={text!r} is not an amount of memory; give e.g. "
                                         "16GB, 512MB or a number of bytes")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def _meminfo_available() -> int | None:
    text = _read("/proc/meminfo")
    if text:
        m = re.search(r"^MemAvailable:\s+(\d+)\s*kB", text, re.M)
        if m:
            return int(m.group(1)) * 1024
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except (ImportError, OSError, AttributeError):      # no psutil, or it cannot read this OS
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return None


def _cgroup_room() -> int | None:
    """Bytes left under this process's cgroup memory limit (v2, else v1), or None without a limit."""
    rel = ""
    text = _read("/proc/self/cgroup") or ""
    for line in text.splitlines():
        if line.startswith("0::"):
            rel = line[3:].strip()
    for base in {f"/sys/fs/cgroup{rel}".rstrip("/"), "/sys/fs/cgroup"}:
        limit, used = _read(f"{base}/memory.max"), _read(f"{base}/memory.current")
        if limit and used and limit.strip().isdigit() and used.strip().isdigit():
            return max(0, int(limit) - int(used))
    limit = _read("/sys/fs/cgroup/memory/memory.limit_in_bytes")
    used = _read("/sys/fs/cgroup/memory/memory.usage_in_bytes")
    if limit and used and limit.strip().isdigit() and used.strip().isdigit() and int(limit) < 2**60:
        return max(0, int(limit) - int(used))
    return None


def _address_space_room() -> int | None:
    """Bytes left under ``RLIMIT_AS`` (``ulimit -v``), or None without a limit."""
    try:
        import resource
    except ImportError:                                    # Windows
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY or soft <= 0:
        return None
    status = _read("/proc/self/status") or ""
    m = re.search(r"^VmSize:\s+(\d+)\s*kB", status, re.M)
    used = int(m.group(1)) * 1024 if m else 0
    return max(0, int(soft) - used)


def available_memory(device: Any = "cpu") -> tuple[int | None, str]:
    """Bytes available for a network on ``device``, and who has them (for messages).

    Parameters
    ----------
    device : str or torch.device
        ``"cpu"``, ``"mps"`` (unified memory: the host's), ``"cuda"``, ``"cuda:N"``; ``"auto"``
        is CUDA when available, else the host.

    Returns
    -------
    (int or None, str)
        None when it cannot be measured; the str is the subject of the message ("this
        machine has", "cuda:0 has" ...).
    """
    env = os.environ.get(AVAILABLE_MEMORY_ENV, "").strip()
    if env:
        return _parse_bytes(env), f"{AVAILABLE_MEMORY_ENV} says"
    dev = str(device)
    if dev.startswith("cuda") or dev == "auto":
        try:
            import torch

            if torch.cuda.is_available():
                index = torch.device(dev if dev != "auto" else "cuda").index
                index = torch.cuda.current_device() if index is None else index
                cached = torch.cuda.memory_reserved(index) - torch.cuda.memory_allocated(index)
                # free on the device plus what torch's caching allocator holds but does not use
                return int(torch.cuda.mem_get_info(index)[0] + max(0, cached)), f"cuda:{index} has"
        except (RuntimeError, AssertionError, ValueError):  # a broken CUDA setup: no figure here; the
            return None, f"{dev} has"                      # run itself then reports the CUDA error
        if dev != "auto":
            return None, f"{dev} has"
    found = [(room, who) for room, who in ((_meminfo_available(), "this machine has"),
                                           (_cgroup_room(), "this container has"),
                                           (_address_space_room(), "this process (ulimit -v) has"))
             if room is not None]
    if not found:
        return None, "this machine has"
    return min(found)


def check_memory(estimate: MemoryEstimate, *, device: Any = "cpu", source: str | None, advice: str,
                 batch_flag: str | None = None, include_weights: bool = True, processes: int = 1) -> int | None:
    """Refuse work whose estimate is above the memory available on ``device``.

    Parameters
    ----------
    estimate : MemoryEstimate
    device : str or torch.device
        Where the work runs (see :func:`available_memory`).
    source : str or None
        The start of the message (``"--arch-kwargs"``, a package, a model name); None: the
        message starts with the architecture.
    advice : str
        What to lower, in the caller's words (``"lower depth / base_width (--arch-kwargs),
        --patch or --batch"``).
    batch_flag : str, optional
        How the caller names the batch (``"--batch"``): the message then says which batch
        would fit, if one would.
    include_weights : bool
        Count the weights (False when they are already in memory, e.g. at predict time).
    processes : int
        Processes sharing the memory (data-parallel training on one machine's CPUs).

    Returns
    -------
    int or None
        The bytes available (None: not measured, nothing refused).

    Raises
    ------
    NetworkTooLargeError
        The estimate is above what is available.
    """
    available, who = available_memory(device)
    fixed = estimate.weights_bytes if include_weights else 0
    need = (fixed + (estimate.activations_bytes or 0)) * max(1, int(processes))
    if available is None or need <= available:
        return available
    parts = []
    if include_weights and estimate.activations_bytes:
        parts.append(f"weights {format_bytes(estimate.weights_bytes)}"
                     + (" with gradients and optimizer state" if estimate.training else ""))
    if estimate.activations_bytes:
        parts.append(f"activations {format_bytes(estimate.activations_bytes)}")
    hint = ""
    if batch_flag and estimate.per_sample_bytes and estimate.batch > 1:
        fits = int((available / max(1, int(processes)) - fixed) // estimate.per_sample_bytes)
        if 1 <= fits < estimate.batch:
            hint = f" ({batch_flag} {fits} would fit)"
    procs = f" in {processes} processes" if processes > 1 else ""
    shown = f" ({', '.join(parts)})" if parts else ""
    where = f"{source}: " if source else ""
    raise NetworkTooLargeError(
        f"{where}{estimate.architecture} with {estimate.settings} needs about {format_bytes(need)} to "
        f"{estimate.work()}{procs}{shown}; {who} {format_bytes(available)} available: {advice}{hint}")
