"""What a fine-tuning run is asked to do, what it resolved that to, and what it did.

:class:`FinetuneOptions` holds ``segloop-train``'s options (what a person or a program asked
for) in one frozen object: the CLI builds it from its arguments, :func:`segloop_train.finetune`
from its keywords, and it is passed down whole.  :class:`FinetuneConfig` is the resolved
configuration (steps counted, patch fitted, precision chosen) that decides the result; it is
saved in the package's ``training`` record and in every checkpoint.  :class:`FinetuneResult`
is what a run returns.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from segloop.core.formats.package import ModelSpec
from segloop.errors import SegloopError
from segloop_train.augment import PHOTOMETRIC_KEYS, AugmentConfig
from segloop_train.distributed import DistContext, PeerFailedError
from segloop_train.precision import PRECISIONS

__all__ = [
    "FinetuneConfig",
    "FinetuneOptions",
    "FinetuneResult",
    "FinetuneWarning",
    "Progress",
    "RESUME_AUGMENT_DEFAULTS",
    "RESUME_DEFAULTS",
    "RESUME_KEYS",
    "TrainingDivergedError",
    "TrainingError",
    "TrainingOutOfMemoryError",
    "diverged_error",
    "result_from_dict",
    "result_to_dict",
    "resume_value",
    "share_result",
]

#: Called with one dict per event (``{"event": "start" | "step" | "eval" | ...}``).
Progress = Callable[[dict], None]


class FinetuneWarning(UserWarning):
    """Something about a fine-tuning run the user should know (patch reduced, no val samples ...)."""


class TrainingError(SegloopError, RuntimeError):
    """Training could not go on; the message says what happened and what to do."""


class TrainingDivergedError(TrainingError, FloatingPointError):
    """The loss or the gradients became NaN / inf; the last good checkpoint was kept."""


class TrainingOutOfMemoryError(TrainingError, MemoryError):
    """Out of memory even with a batch of 1."""


def diverged_error(step: int, epoch: int, what: str, value: float, last_ckpt: int | None, ckpt: Path,
                   lr: float) -> TrainingDivergedError:
    """The error of a run whose loss or gradient norm became ``value`` (NaN / inf) at ``step``."""
    kept = (f"the last good checkpoint (step {last_ckpt}) is kept in {ckpt}" if last_ckpt
            else "no checkpoint had been written yet")
    return TrainingDivergedError(
        f"training stopped: the {what} became {value} at step {step} (epoch {epoch}); {kept}. Lower the "
        f"learning rate (now {lr:g}) and start again, or check the images for extreme values")


# --------------------------------------------------------------------------- the options asked for


@dataclass(frozen=True)
class FinetuneOptions:
    """``segloop-train``'s options: everything a run is asked to do, in one frozen object.

    The fields are the keyword arguments of :func:`segloop_train.finetune` (see there for
    their meaning and defaults); the progress callback and the cancel token are not options
    and travel beside it.  Build it with :meth:`from_kwargs` (any iterable of folders, a
    sequence of classes ...) or directly; :meth:`validate` checks the values (it is called by
    the run, before any work, after ``out`` is known).

    Attributes
    ----------
    folders : tuple of path-like
    parent : str, path-like or None
        The model to fine-tune; None trains ``arch`` from scratch.
    out : path-like
    steps, epochs : int or None
    lr : float
    batch : int
    patch : int or (int, int, int)
    device : str
    seed : int
    resume : bool or path-like
    eval_every, checkpoint_every, patience : int or None
    version, name : str or None
    arch : str or None
    arch_kwargs : dict or None
    classes : tuple of str or None
    task : {"semantic", "instance"} or None
    normalization : dict, str or None
        A spec, its JSON text or just a kind (``"hematoxylin"``); see :meth:`normalization_dict`.
    dims, context_slices : int or None
    augment : AugmentConfig or None
    weight_decay, grad_clip : float
    class_weights : tuple of float, "auto" or None
    onnx, keep_checkpoint : bool
    precision : {"auto", "fp32", "bf16", "fp16"}
    pixel_size : (float, float) or None
        µm per pixel ``(y, x)`` the new 2D model works at: samples whose ``spacing`` is known are
        resampled to it, and it is recorded in the package.  From scratch only when the
        folders' resolution is to be fixed; a fine-tune keeps the parent's (this may only
        repeat it, or give one to a parent that has none).  None: the parent's, or none.
    command : str or None
        The command line recorded in the package (the CLI passes its own).
    schema_version : int
    """

    folders: tuple[str | os.PathLike, ...]
    parent: str | os.PathLike | None
    out: str | os.PathLike
    steps: int | None = None
    epochs: int | None = None
    lr: float = 5e-4
    batch: int = 8
    patch: int | tuple[int, ...] = 256
    device: str = "auto"
    seed: int = 0
    resume: bool | str | os.PathLike = False
    eval_every: int | None = None
    checkpoint_every: int | None = None
    patience: int | None = None
    version: str | None = None
    name: str | None = None
    arch: str | None = None
    arch_kwargs: dict | None = None
    classes: tuple[str, ...] | None = None
    task: Literal["semantic", "instance"] | None = None
    normalization: dict | str | None = None
    dims: Literal[2, 3] | None = None
    context_slices: int | None = None
    augment: AugmentConfig | None = None
    weight_decay: float = 1e-4
    class_weights: tuple[float, ...] | Literal["auto"] | None = "auto"
    grad_clip: float = 10.0
    onnx: bool = True
    keep_checkpoint: bool = False
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    command: str | None = None
    pixel_size: tuple[float, float] | None = None
    schema_version: int = 1

    @classmethod
    def from_kwargs(cls, folders: str | os.PathLike | Sequence[str | os.PathLike], **kw) -> FinetuneOptions:
        """Options from :func:`segloop_train.finetune`'s arguments (sequences made tuples)."""
        fs = (folders,) if isinstance(folders, str | os.PathLike) else tuple(folders)
        if kw.get("classes") is not None:
            kw["classes"] = tuple(kw["classes"])
        if kw.get("class_weights") not in (None, "auto"):
            kw["class_weights"] = tuple(kw["class_weights"])
        if kw.get("patch") is not None and not isinstance(kw["patch"], int | str) and hasattr(kw["patch"], "__len__"):
            kw["patch"] = tuple(kw["patch"])
        if kw.get("pixel_size") is not None:
            from segloop.core.formats.pixel_size import check_pixel_size

            kw["pixel_size"] = check_pixel_size(kw["pixel_size"], source="pixel_size (--pixel-size)")
        return cls(folders=fs, **kw)

    def normalization_dict(self) -> dict | None:
        """``normalization`` as a dict: JSON text parsed, a bare kind made ``{"kind": ...}``."""
        n = self.normalization
        if isinstance(n, str):
            return json.loads(n) if n.strip().startswith("{") else {"kind": n.strip()}
        return n

    def validate(self) -> None:
        """Refuse contradictory or out-of-range options with a message that says what to give.

        Raises
        ------
        ModelPackageError
            Both or neither of ``parent`` and ``arch``.
        ArchitectureArgumentsError
            ``arch_kwargs`` is not a JSON object, or a setting is out of the architecture's bounds
            (:mod:`segloop.core.networks.limits`).
        ValueError
            Anything else.
        """
        from segloop.errors import ModelPackageError

        if (self.parent is None) == (self.arch is None):
            raise ModelPackageError("give either a parent model to fine-tune (--from) or an architecture to train "
                                    "from scratch (--arch), not both and not neither")
        # messages name the option and its segloop-train flag: "steps (--steps)"
        if self.steps is not None and self.epochs is not None:
            raise ValueError("give steps (--steps) or epochs (--epochs), not both")
        for label in ("steps", "epochs", "batch", "eval_every", "checkpoint_every"):
            v = getattr(self, label)
            if v is not None and int(v) < 1:
                raise ValueError(f"{label} ({_flag(label)}) must be at least 1, got {v}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr (--lr) must be a positive number, got {self.lr}")
        if self.patience is not None and int(self.patience) < 1:
            raise ValueError(f"patience (--patience) must be at least 1 evaluation (or None), got {self.patience}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision (--precision) {self.precision!r}; use one of {', '.join(PRECISIONS)}")
        dims, k = self.dims, self.context_slices
        if dims is not None and (isinstance(dims, bool) or dims not in (2, 3)):
            raise ValueError(f"dims (--dims) must be 2 or 3, got {dims!r}")
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1 or k % 2 == 0):
            raise ValueError(f"context_slices (--context-slices) must be an odd number >= 1 (1, 3, 5 ...), got {k!r}")
        if self.arch_kwargs is not None and not isinstance(self.arch_kwargs, dict):
            from segloop.errors import ArchitectureArgumentsError

            raise ArchitectureArgumentsError(f"arch_kwargs (--arch-kwargs) must be a JSON object such as "
                                             f"{{\"depth\": 4}}, got {self.arch_kwargs!r}")
        if self.arch is not None and self.arch_kwargs:    # bounds, before any folder is read
            from segloop.core.networks import available, check_arguments

            if self.arch in available():
                check_arguments(self.arch, self.arch_kwargs, source="arch_kwargs (--arch-kwargs)")
        if (k or 1) > 1 and dims == 3:
            raise ValueError("context_slices > 1 (2.5D) is for 2D networks; a 3D network (dims 3) sees the "
                             "neighbouring slices itself: give one or the other")
        if self.pixel_size is not None:
            from segloop.core.formats.pixel_size import check_pixel_size

            check_pixel_size(self.pixel_size, source="pixel_size (--pixel-size)")
            if dims == 3 or (k or 1) > 1:
                raise ValueError("pixel_size (--pixel-size) is for 2D models; 2.5D and 3D models record the "
                                 "voxel spacing of their volumes")


def _flag(option: str) -> str:
    """The ``segloop-train`` flag of an option: ``eval_every`` -> ``--eval-every``."""
    return "--" + option.replace("_", "-")


# --------------------------------------------------------------------------- the resolved config


@dataclass(frozen=True)
class FinetuneConfig:
    """Everything that decides the result of a run (saved in the package and the checkpoint).

    ``patch`` is the size actually used (after :func:`segloop_train.finetune.fit_patch`; a
    ``(pz, py, px)`` tuple for 3D models, :func:`segloop_train.finetune.fit_patch_3d`);
    ``batch`` the batch asked for, per process (an out-of-memory retry halves it, recorded in
    the history); ``world_size`` the number of processes (each step trains on
    ``world_size * batch`` patches); ``precision`` the one chosen
    (:func:`segloop_train.precision.choose_precision`); ``pixel_size`` the µm per pixel the
    samples were resampled to (None: each at its own resolution).
    """

    steps: int
    steps_per_epoch: int
    batch: int
    patch: int | tuple[int, ...]
    lr: float
    weight_decay: float
    class_weights: tuple[float, ...] | None
    eval_every: int
    checkpoint_every: int
    patience: int | None
    seed: int
    grad_clip: float
    augment: dict
    normalization: dict
    world_size: int = 1
    precision: str = "fp32"
    dims: int = 2
    context_slices: int = 1
    pixel_size: tuple[float, float] | None = None
    schema_version: int = 1

    def to_dict(self) -> dict:
        d = asdict(self)
        d["class_weights"] = list(self.class_weights) if self.class_weights else None
        d["pixel_size"] = list(self.pixel_size) if self.pixel_size else None
        if isinstance(self.patch, tuple):
            d["patch"] = list(self.patch)
        return d


#: Config keys a resumed run must share with its checkpoint.
RESUME_KEYS = ("steps", "batch", "patch", "lr", "weight_decay", "class_weights", "seed", "grad_clip",
               "augment", "normalization", "steps_per_epoch", "world_size", "dims", "context_slices", "pixel_size")
#: Values of keys that checkpoints written before the key existed did not record.
RESUME_DEFAULTS = {"world_size": 1, "dims": 2, "context_slices": 1, "pixel_size": None}
#: ``augment`` keys that checkpoints written before them did not record (the RGB photometric
#: steps), read as today's defaults.  Those steps run only on RGB histology, so for every other
#: modality a resumed run draws exactly the patches of the uninterrupted one.  An RGB histology
#: run checkpointed before them resumes WITH them (its patches from the resume on differ from
#: what the older code would have drawn): the older checkpoint cannot say which modality it
#: trained on, and refusing every older checkpoint would stop fluorescence and CT runs that
#: are not affected at all.
RESUME_AUGMENT_DEFAULTS = {k: AugmentConfig().to_dict()[k] for k in PHOTOMETRIC_KEYS}


def resume_value(key: str, recorded: dict):
    """What a checkpoint's recorded config means today for ``key`` (a :data:`RESUME_KEYS` entry).

    Keys the checkpoint predates take :data:`RESUME_DEFAULTS`; an ``augment`` dict that
    predates some of its keys takes :data:`RESUME_AUGMENT_DEFAULTS` for them, so an older
    checkpoint compares equal to the run it implies.
    """
    value = recorded.get(key, RESUME_DEFAULTS.get(key))
    if key == "augment" and isinstance(value, dict):
        value = {**RESUME_AUGMENT_DEFAULTS, **value}
    return value


# --------------------------------------------------------------------------- the result


@dataclass
class FinetuneResult:
    """What :func:`segloop_train.finetune` did.

    Attributes
    ----------
    package : Path or None
        The new package (None when cancelled before any evaluation).
    spec : ModelSpec or None
        Its spec as written.
    metrics, parent_metrics : dict
        Best held-out metrics of the new weights / of the parent ({} when there is no val
        sample or no parent).
    improved : bool or None
        New score > parent score (instance F1@0.5 or Dice); None without val samples or parent.
    stopped : {"completed", "early_stopping", "cancelled"}
    history : list of dict
        One entry per evaluation: step, epoch, loss, metrics, seconds.
    message : str
        One sentence for the user.
    checkpoint : Path or None
        The checkpoint folder, if it was kept.
    seconds : float
    """

    package: Path | None
    spec: ModelSpec | None
    metrics: dict[str, float]
    parent_metrics: dict[str, float]
    improved: bool | None
    stopped: str
    history: list[dict] = field(default_factory=list)
    message: str = ""
    checkpoint: Path | None = None
    seconds: float = 0.0


def result_to_dict(r: FinetuneResult) -> dict:
    """Plain JSON types only (sent to the other ranks; see DistContext.broadcast)."""
    d = {"package": None if r.package is None else str(r.package),
         "spec": None if r.spec is None else r.spec.to_dict(), "metrics": r.metrics,
         "parent_metrics": r.parent_metrics, "improved": r.improved, "stopped": r.stopped, "history": r.history,
         "message": r.message, "checkpoint": None if r.checkpoint is None else str(r.checkpoint),
         "seconds": float(r.seconds)}
    return json.loads(json.dumps(d, default=str))


def result_from_dict(d: dict) -> FinetuneResult:
    """The inverse of :func:`result_to_dict`."""
    return FinetuneResult(
        None if d["package"] is None else Path(d["package"]),
        None if d["spec"] is None else ModelSpec.from_dict(d["spec"], source="rank 0's result"),
        d["metrics"], d["parent_metrics"], d["improved"], d["stopped"], d["history"], d["message"],
        None if d["checkpoint"] is None else Path(d["checkpoint"]), d["seconds"])


def share_result(ctx: DistContext, make: Callable[[], FinetuneResult]) -> FinetuneResult:
    """``make()`` on rank 0 (it writes the package); every rank returns its result or fails with it."""
    if not ctx.enabled:
        return make()
    result: FinetuneResult | None = None
    final_error: BaseException | None = None
    outcome: dict | None = None
    if ctx.is_main:
        try:
            result = make()
            outcome = {"result": result_to_dict(result)}
        except Exception as e:
            final_error = e
            outcome = {"error": f"{type(e).__name__}: {e}"}
    outcome = ctx.broadcast(outcome)
    if final_error is not None:
        raise final_error
    if "error" in outcome:
        raise PeerFailedError(f"rank 0 failed while writing the package: {outcome['error']}", ranks=[0],
                              quiet=True)
    return result if ctx.is_main else result_from_dict(outcome["result"])
