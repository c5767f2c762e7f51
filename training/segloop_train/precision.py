"""The numeric precision a training run uses (``--precision auto|fp32|bf16|fp16``); no Qt, no napari.

``auto`` (the default):

* **CUDA** - fp16 autocast with a :class:`torch.amp.GradScaler` (AMP);
* **CPU** - bfloat16 autocast only when the CPU executes bf16 natively (AVX-512 BF16 or AMX,
  :func:`segloop.core.inference.engines.cpu_has_native_bf16`, the check the inference engine uses) **and**
  one measured training step (forward + backward, this network, this patch size) is at least
  1.25x faster than in fp32; otherwise fp32.  On AVX2-only CPUs bf16 is emulated and far
  slower, so it is never assumed.  The measurement runs once per (CPU, torch version,
  network shape, input channels, batch, patch) and is cached next to the inference engine's
  choices (:func:`segloop.core._runtime.cache_dir`);
* **MPS** - fp32.

The choice and why are recorded in the package's training record (``precision``).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import numbers
import time
from dataclasses import dataclass

import torch

__all__ = ["PrecisionChoice", "autocast", "choose_precision", "grad_scaler", "is_out_of_memory", "on_resume"]

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
#: bf16 must make a training step at least this much faster (t_bf16 < SPEEDUP * t_fp32).
SPEEDUP = 0.8

#: Said when bf16 is asked for on a CPU that would emulate it.
SLOW_BF16 = "this CPU has no native bf16 (AVX-512 BF16 / AMX): expect training many times slower than in fp32"

_MEMO: dict[str, dict] = {}


@dataclass(frozen=True)
class PrecisionChoice:
    """What a run trains in and why (recorded in the package)."""

    precision: str                  # "fp32" | "bf16" | "fp16"
    reason: str
    requested: str = "auto"
    fp32_ms: float | None = None
    bf16_ms: float | None = None

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _dev_type(device: str) -> str:
    return device.split(":")[0]


def autocast(device: str, precision: str):
    """The autocast context of a forward pass in ``precision`` (a no-op for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(_dev_type(device), dtype=dtype)


def grad_scaler(device: str, precision: str):
    """A GradScaler for fp16 on CUDA, else None."""
    if precision == "fp16" and _dev_type(device) == "cuda":
        return torch.amp.GradScaler("cuda")
    return None


def _shape(patch: int | tuple[int, ...]) -> tuple[int, ...]:
    """A patch side (square 2D patch) or a patch shape -> the spatial shape."""
    return (int(patch),) * 2 if isinstance(patch, numbers.Integral) else tuple(int(v) for v in patch)


def _cache_key(net: torch.nn.Module, in_channels: int, batch: int, patch: int | tuple[int, ...]) -> str:
    from segloop.core.inference.engines import cpu_id as _cpu_id

    h = hashlib.sha256(b"segloop-train-precision-v1")
    h.update(type(net).__name__.encode())
    for k, v in net.state_dict().items():
        h.update(f"{k}{tuple(v.shape)}{v.dtype}".encode())
    shape = _shape(patch)
    # the thread count changes which is faster (one thread measured bf16 ahead where two did not)
    h.update(f"{in_channels}|{batch}|{shape[0] if len(set(shape)) == 1 and len(shape) == 2 else shape}|"
             f"{torch.__version__}|{_cpu_id()}|threads={torch.get_num_threads()}".encode())
    return "train-" + h.hexdigest()[:24]


def measure_step_ms(net: torch.nn.Module, *, in_channels: int, batch: int, patch: int | tuple[int, ...],
                    repeats: int = 2) -> tuple[float, float, bool]:
    """Milliseconds of one CPU training step (forward + loss + backward) in fp32 and in bf16 autocast.

    Runs on a copy of ``net`` (its weights and BatchNorm statistics are not touched).  Returns
    ``(fp32_ms, bf16_ms, bf16_loss_finite)``; each time is the best of ``repeats`` after a
    warm-up step.
    """
    from segloop_train.losses import dice_ce_loss

    net = copy.deepcopy(net).to("cpu").train()
    g = torch.Generator().manual_seed(0)
    shape = _shape(patch)
    x = torch.randn((batch, in_channels, *shape), generator=g)
    with torch.no_grad():
        k = net(x[:1]).shape[1]
    y = torch.randint(0, k, (batch, *shape), generator=g)

    def step(bf16: bool) -> float:
        net.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = net(x)
        loss = dice_ce_loss(logits.float(), y)
        loss.backward()
        return float(loss.detach())

    times = {}
    finite = True
    for bf16 in (False, True):
        lv = step(bf16)                             # warm-up
        best = float("inf")
        for _ in range(max(1, repeats)):
            t0 = time.perf_counter()
            lv = step(bf16)
            best = min(best, (time.perf_counter() - t0) * 1e3)
        times[bf16] = best
        if bf16:
            finite = bool(torch.isfinite(torch.tensor(lv)))
    return times[False], times[True], finite


def on_resume(have: str | None, choice: PrecisionChoice, device: str) -> PrecisionChoice:
    """The precision a resumed run goes on in: the checkpoint's (``have``) when ``auto`` chose another.

    A resumed run should continue as it began, and ``auto`` is about speed, which a new
    measurement may judge differently from the first (another load, another thread count).  So
    with ``auto`` the checkpoint's precision is kept where it runs well here: fp32 always, bf16 on
    a CPU with native bf16 or a GPU that has it, fp16 on CUDA.  An explicit ``--precision`` is
    obeyed.
    """
    if not have or have == choice.precision or choice.requested != "auto":
        return choice
    dev = _dev_type(device)
    if have == "bf16":
        if dev == "cuda":
            usable = torch.cuda.is_bf16_supported()
        else:
            from segloop.core.inference.engines import cpu_has_native_bf16

            usable = dev == "cpu" and cpu_has_native_bf16()
    else:
        usable = have == "fp32" or (have == "fp16" and dev == "cuda")
    if not usable:
        return choice
    return PrecisionChoice(have, f"resumed: the checkpoint was trained in {have}, which auto keeps so the run goes "
                                 f"on as it began (a new choice would be {choice.precision}: {choice.reason})",
                           "auto", choice.fp32_ms, choice.bf16_ms)


def choose_precision(requested: str, device: str, net: torch.nn.Module | None = None, *, in_channels: int = 1,
                     batch: int = 2, patch: int | tuple[int, ...] = 64, use_cache: bool = True) -> PrecisionChoice:
    """Decide the training precision; see the module's docstring.

    Parameters
    ----------
    requested : {"auto", "fp32", "bf16", "fp16"}
    device : str
        The resolved device (``cpu``, ``cuda``, ``cuda:N``, ``mps``).
    net : torch.nn.Module, optional
        The network to train; needed only for the CPU measurement.
    in_channels, batch : int
        Shape of a training batch (the measurement uses at most 2 patches).
    patch : int or tuple of int
        Patch side (square 2D patches) or the patch's spatial shape (e.g. ``(pz, py, px)``).
    use_cache : bool
        Read / write the cached decision (and the in-process memo).

    Raises
    ------
    ValueError
        An unknown precision, fp16 off CUDA, bf16 on a GPU without bf16 or on MPS.
    """
    if requested not in PRECISIONS:
        raise ValueError(f"unknown precision {requested!r}; use one of {', '.join(PRECISIONS)}")
    dev = _dev_type(device)
    if requested == "fp32":
        return PrecisionChoice("fp32", "asked for (--precision fp32)", requested)
    if requested == "fp16":
        if dev != "cuda":
            raise ValueError(f"fp16 training needs CUDA (autocast with a GradScaler), not {device}; use fp32, or "
                             "bf16 on a CPU with native bf16")
        return PrecisionChoice("fp16", "asked for (--precision fp16): fp16 autocast with a GradScaler", requested)
    if requested == "bf16":
        if dev == "cuda" and not torch.cuda.is_bf16_supported():
            raise ValueError(f"{device} does not support bf16; use --precision fp16 or fp32")
        if dev == "mps":
            raise ValueError("bf16 training is not offered on MPS; use --precision fp32")
        if dev == "cpu":
            from segloop.core.inference.engines import cpu_has_native_bf16

            if not cpu_has_native_bf16():
                return PrecisionChoice("bf16", f"asked for (--precision bf16): bf16 autocast; {SLOW_BF16}", requested)
        return PrecisionChoice("bf16", "asked for (--precision bf16): bf16 autocast", requested)
    # ---- auto
    if dev == "cuda":
        return PrecisionChoice("fp16", "CUDA: fp16 autocast with a GradScaler (AMP)")
    if dev != "cpu":
        return PrecisionChoice("fp32", f"{dev}: fp32")
    from segloop.core.inference.engines import cpu_has_native_bf16

    if not cpu_has_native_bf16():
        return PrecisionChoice("fp32", "CPU has no native bf16 (AVX-512 BF16 / AMX): fp32; bf16 would be emulated "
                               "and slower, so it was not tried")
    if net is None:
        return PrecisionChoice("fp32", "CPU has native bf16 but no network was given to measure: fp32")
    b = max(1, min(int(batch), 2))
    key = _cache_key(net, in_channels, b, patch)
    if use_cache:
        hit = _MEMO.get(key)
        if hit is None:
            from segloop.core.inference.engines import read_choice_cache as _read_cache

            hit = _read_cache(key)
        if hit:
            try:
                choice = PrecisionChoice(**hit)
            except TypeError:
                choice = None
            if choice is not None and choice.precision in ("fp32", "bf16"):
                _MEMO[key] = choice.to_dict()
                return choice
    t32, t16, finite = measure_step_ms(net, in_channels=in_channels, batch=b, patch=patch)
    if not finite:
        prec, why = "fp32", "CPU has native bf16 but the measured bf16 step gave a non-finite loss: fp32"
    elif t16 < SPEEDUP * t32:
        prec, why = "bf16", f"CPU has native bf16 and a measured training step is {t32 / t16:.1f}x faster in bf16"
    else:
        prec, why = "fp32", (f"CPU has native bf16 but a measured training step is not faster in bf16 "
                             f"({t16:.0f} ms vs {t32:.0f} ms in fp32)")
    choice = PrecisionChoice(prec, why, "auto", round(t32, 2), round(t16, 2))
    if use_cache:
        from segloop.core.inference.engines import write_choice_cache as _write_cache

        _MEMO[key] = choice.to_dict()
        _write_cache(key, choice.to_dict())
    return choice


def is_out_of_memory(e: BaseException) -> bool:
    """Whether ``e`` says a device (CUDA) or the host ran out of memory."""
    oom = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", ())
    return isinstance(e, oom) or (isinstance(e, RuntimeError) and (
        "out of memory" in str(e).lower() or "can't allocate memory" in str(e).lower()))
