"""Fine-tune a model package on training folders; write a new, evaluated package (no Qt, no napari).

>>> from segloop_train import finetune
>>> res = finetune(["corrections/"], parent="nuclei-unet", out="nuclei-unet-v1.1", epochs=20)
>>> res.package, res.parent_metrics["f1@0.5"], res.metrics["f1@0.5"], res.improved

What a run does, in order:

1. checks that ``out`` can be written and does not exist (before anything else);
2. loads the parent (a name from :func:`segloop.list_models` or a package path): its
   architecture, weights, normalization and tile size are used; the folders must have its
   task and classes (:mod:`segloop_train.folders`);
3. reads the folders (corrupt samples skipped with a warning), fits each image's
   normalization on the whole image (as ``Model.predict`` does), and chooses the patch size
   (reduced to fit the samples, see :func:`fit_patch`);
4. evaluates the **parent** on the ``val`` samples once, through ``Model.predict``;
5. trains with Dice + cross-entropy, pixels with ``reviewed == 0`` ignored, on augmented
   patches (:mod:`segloop_train.augment`); every ``eval_every`` steps evaluates the new
   weights, keeps the best (instance F1 at IoU 0.5, or Dice for semantic models) and stops
   early after ``patience`` evaluations without improvement; every ``checkpoint_every``
   steps writes a checkpoint to ``<out>.ckpt/``;
6. writes a NEW package at ``out`` from the best weights: version bumped, ``parent``
   recorded, and a ``training`` record (folders with fingerprints and sample counts, config,
   history, best, parent_metrics, metrics, improved, command, seconds, torch); plus
   ``model.onnx`` when onnx and onnxruntime are installed (checked against torch).

2.5D and 3D: a parent (or ``arch`` with ``dims`` / ``context_slices``) with ``dims == 3`` or
``context_slices > 1`` trains on whole volumes (:mod:`segloop_train.volumes`): 2.5D patches
are ``(k * C, p, p)`` stacks of the ``k`` slices around a reviewed centre slice (the loss is
on the centre slice only), 3D patches are ``(C, pz, py, px)``.  Held-out volumes are
evaluated through ``Model.predict`` (the same normalization, slice-major context and
Gaussian-blended sliding window as inference).  The package records ``dims``,
``context_slices``, ``tile`` (3D: ``[pz, py, px]``) and the samples' ``spacing`` when they
all have the same one.

Reproducibility: the patches and dropout of step ``i`` come from generators seeded with
``(seed, i)``, and checkpoints hold weights, optimizer, scheduler and RNG state, so on CPU a
run resumed after being killed ends with the same weights as an uninterrupted one.

Precision (``precision="auto"``): fp16 autocast with a GradScaler on CUDA; bf16 autocast on a
CPU only where it has native bf16 and a measured training step is faster, else fp32
(:mod:`segloop_train.precision`); the choice and why are recorded in the package.

Several processes: under ``torchrun --nproc_per_node N`` the run is data-parallel
(DistributedDataParallel, NCCL on GPUs, gloo on CPUs).  Rank ``r`` draws the patches of step
``i`` from ``(seed, i, r)`` - different data on every rank, rank 0 the same as a
single-process run - and rank 0 alone evaluates, checkpoints and writes the package; the
package records ``world_size`` and the ``effective_batch`` (``world_size x batch``).  See
:mod:`segloop_train.distributed`.

Checkpoints (``<out>.ckpt/``, written atomically; :mod:`segloop_train.checkpoints`) are removed
once the package is written, unless ``keep_checkpoint=True``.  The options travel as one
:class:`FinetuneOptions` (:mod:`segloop_train.config`); the other parts are
:mod:`~segloop_train.preparation`, :mod:`~segloop_train.evaluate` and :mod:`~segloop_train.packaging`.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from segloop.core._runtime import is_cancelled
from segloop.core.formats.package import ModelPackage, save_package
from segloop.core.inference.model import Model
from segloop.core.networks import build
from segloop.errors import ModelPackageError
from segloop_train.augment import AugmentConfig, AugmentedPatchSampler
from segloop_train.checkpoints import (
    CKPT_FORMAT,
    CKPT_VERSION,
    arch_of,
    check_out,
    check_resume,
    checkpoint_dir,
    load_checkpoint,
    save_checkpoint,
    state_copy,
)
from segloop_train.config import (
    FinetuneConfig,
    FinetuneOptions,
    FinetuneResult,
    FinetuneWarning,
    Progress,
    TrainingDivergedError,
    TrainingError,
    TrainingOutOfMemoryError,
    diverged_error,
    share_result,
)
from segloop_train.distributed import (
    CANCEL,
    EARLY,
    ERROR,
    GO,
    DistContext,
    PeerFailedError,
    debug_batches,
    distributed_requested,
    from_env,
    step_entropy,
    step_torch_seed,
    wrap_ddp,
)
from segloop_train.evaluate import VolumePredictor, evaluate_samples, is_volume_spec, score_key
from segloop_train.folders import SkippedSampleWarning
from segloop_train.losses import dice_ce_loss
from segloop_train.memory import SCRATCH_SOURCE, check_training_memory, fit_training_patch
from segloop_train.packaging import api_command, export_onnx_checked, model_card, training_record
from segloop_train.precision import (
    SLOW_BF16,
    PrecisionChoice,
    autocast,
    choose_precision,
    grad_scaler,
    is_out_of_memory,
    on_resume,
)
from segloop_train.preparation import (
    bump_version,
    fit_patch,
    fit_patch_3d,
    load_spec_and_data,
    patch_shape,
    prepare_samples,
    samples_spacing,
    volume_spec_fields,
)
from segloop_train.volumes import VolumePatchSampler

__all__ = [
    "FinetuneConfig",
    "FinetuneOptions",
    "FinetuneResult",
    "FinetuneWarning",
    "PeerFailedError",
    "TrainingError",
    "TrainingDivergedError",
    "TrainingOutOfMemoryError",
    "VolumePredictor",
    "bump_version",
    "checkpoint_dir",
    "evaluate_samples",
    "finetune",
    "fit_patch",
    "fit_patch_3d",
    "run_finetune",
    "samples_spacing",
]

# What happened in the forward pass of a step (agreed over the ranks of a distributed run).
_OK, _NONFINITE, _OOM, _FAILED = 0, 1, 2, 3


def finetune(
    folders: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    parent: str | os.PathLike | None,
    out: str | os.PathLike,
    steps: int | None = None,
    epochs: int | None = None,
    lr: float = 5e-4,
    batch: int = 8,
    patch: int | Sequence[int] = 256,
    device: str = "auto",
    seed: int = 0,
    resume: bool | str | os.PathLike = False,
    eval_every: int | None = None,
    checkpoint_every: int | None = None,
    patience: int | None = None,
    version: str | None = None,
    name: str | None = None,
    arch: str | None = None,
    arch_kwargs: dict | None = None,
    classes: Sequence[str] | None = None,
    task: Literal["semantic", "instance"] | None = None,
    normalization: dict | str | None = None,
    dims: Literal[2, 3] | None = None,
    context_slices: int | None = None,
    augment: AugmentConfig | None = None,
    weight_decay: float = 1e-4,
    class_weights: Sequence[float] | Literal["auto"] | None = "auto",
    grad_clip: float = 10.0,
    onnx: bool = True,
    keep_checkpoint: bool = False,
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto",
    command: str | None = None,
    pixel_size: float | Sequence[float] | None = None,
    progress: Progress | None = None,
    cancel: threading.Event | Callable[[], bool] | None = None,
) -> FinetuneResult:
    """Fine-tune ``parent`` (or train ``arch`` from scratch) on training folders.

    Parameters
    ----------
    folders : path-like or sequence of path-like
        Training folders v1 with the parent's task and classes.
    parent : str, path-like or None
        A bundled / registered model name (:func:`segloop.list_models`) or a package path.
        None trains ``arch`` from scratch.
    out : path-like
        The new package folder (or ``.zip``); must not exist.
    steps, epochs : int, optional
        Length of the run, one or the other.  An epoch is as many steps as it takes to draw,
        in patches, as many pixels as the training samples hold (at least 1).  Default: 500
        steps.
    lr : float
        Peak learning rate of a one-cycle schedule (AdamW).
    batch : int
        Patches per step (and process).
    patch : int or (int, int, int)
        Patch side (2D and 2.5D), adapted by :func:`fit_patch`; for 3D models ``(pz, py, px)``
        (an int: a cube), adapted by :func:`fit_patch_3d`.
    device : {"auto", "cpu", "cuda", "cuda:N", "mps"}
        Out of memory halves the batch.  Under ``torchrun`` each process on CUDA uses
        ``cuda:LOCAL_RANK``.
    seed : int
    resume : bool or path-like
        Continue from the newest checkpoint in ``<out>.ckpt`` (True) or in the given folder.
    eval_every : int, optional
        Steps between evaluations; default one epoch, but at most 20 evaluations per run.
    checkpoint_every : int, optional
        Steps between checkpoints; default one epoch.
    patience : int, optional
        Stop after this many evaluations without a better score; None: never.
    version, name : str, optional
        Of the new package; default: the parent's version bumped (1.0.0 -> 1.1.0) and name.
    arch, arch_kwargs, classes, task, normalization
        From scratch: the architecture (``unet``, ``unet26``, ``segunet``, ``convnext_unet``)
        and its keyword arguments; classes / task default to the folders'; normalization to
        percentile.  With a parent only ``normalization`` may be given: it replaces the
        parent's (e.g. ``{"kind": "hematoxylin"}`` to adapt a fluorescence nuclei model to
        H&E / IHC) and must give the parent's number of input channels.
    dims, context_slices : int, optional
        From scratch: ``dims=3`` trains a 3D network on 3D patches; ``context_slices=k`` (odd,
        ``dims`` 2) a 2.5D network whose input is the ``k`` slices around each slice
        (:mod:`segloop_train.volumes`).  Default 2 and 1 (2D).  A parent brings its own.
    augment : AugmentConfig, optional
        Default: ``AugmentConfig()`` (all on, by modality).
    weight_decay, grad_clip : float
    class_weights : sequence of float, "auto" or None
        Cross-entropy class weights; "auto": boundary class x2 for instance models.
    onnx : bool
        Also export ``model.onnx`` (skipped, with a note, when onnx is not installed).
    keep_checkpoint : bool
        Keep ``<out>.ckpt`` after the package is written.
    precision : {"auto", "fp32", "bf16", "fp16"}
        "auto": fp16 autocast with a GradScaler on CUDA; on the CPU bf16 autocast only where
        the CPU has native bf16 and a measured training step is faster, else fp32
        (:func:`segloop_train.precision.choose_precision`).  Recorded in the package.
    command : str, optional
        The command line to record (the CLI passes its own).
    pixel_size : float or (float, float), optional
        µm per pixel of a new 2D model: samples of known spacing are resampled to it, and it is
        recorded.  A fine-tune keeps the parent's (:func:`segloop_train.preparation.load_spec_and_data`).
    progress : callable, optional
        Called with one dict per event: ``{"event": "start" | "step" | "eval" | "checkpoint" |
        "warning" | "done" | "cancelled", ...}``; see the CLI's ``--progress-json`` for keys.
    cancel : threading.Event or callable, optional
        Checked before every step.  When set, the run stops and writes the package from the
        best weights evaluated so far (nothing when none was evaluated); a checkpoint is
        written first, so the run can be resumed.

    Distributed
    -----------
    Started by ``torchrun --nproc_per_node N`` (``WORLD_SIZE > 1`` in the environment, or an
    initialized default process group), each process runs this function as one rank of a
    DistributedDataParallel run: rank ``r`` draws different patches at every step, rank 0
    alone evaluates, checkpoints, reports progress and writes the package, and a cancel or an
    error on any rank stops all of them (:mod:`segloop_train.distributed`).  Every rank
    returns the same result; ranks other than 0 raise :class:`PeerFailedError` when another
    rank failed.

    Returns
    -------
    FinetuneResult

    Raises
    ------
    ModelPackageError
        ``out`` exists or cannot be written; a bad parent; a checkpoint of another network,
        other settings or other data on ``resume``; nothing to resume.
    ModelNotFoundError
        No model of that name or path.
    TrainingFolderError
        Empty folders, no train samples, classes or task that differ from the parent's.
    TrainingDivergedError
        NaN / inf loss or gradients (the last good checkpoint is kept).
    TrainingOutOfMemoryError
        Out of memory even with a batch of 1.
    """
    kw = dict(locals())
    progress, cancel = kw.pop("progress"), kw.pop("cancel")
    return run_finetune(FinetuneOptions.from_kwargs(**kw), progress=progress, cancel=cancel)


def run_finetune(options: FinetuneOptions, *, progress: Progress | None = None,
                 cancel: threading.Event | Callable[[], bool] | None = None) -> FinetuneResult:
    """:func:`finetune` with its options in one :class:`FinetuneOptions` (what ``segloop-train`` calls).

    ``progress`` and ``cancel`` are those of :func:`finetune`; returns a :class:`FinetuneResult`.
    """
    ctx = DistContext()
    if distributed_requested():                 # torchrun: join the process group first
        from segloop.core.inference.engines import resolve_device

        ctx, device = from_env(resolve_device(options.device))
        options = replace(options, device=device)
    try:
        run = _Run(ctx, options, progress)
        run.setup()
        run.train(cancel)
        return run.result()
    finally:
        ctx.close()


class _Run:
    """One fine-tuning run in one process (rank ``ctx.rank`` of ``ctx.world_size``).

    :meth:`setup` loads the parent and the data, builds the network, resumes or evaluates the
    parent; :meth:`train` runs the steps (:meth:`train_step`, :meth:`evaluate`,
    :meth:`checkpoint`); :meth:`result` writes the package (:meth:`write_package`, rank 0)
    and returns what every rank returns.
    """

    def __init__(self, ctx: DistContext, options: FinetuneOptions, progress: Progress | None):
        self.t_start = time.perf_counter()
        self.ctx = ctx
        self.opts = options
        self.main = ctx.is_main
        self.emit: Progress = (progress or (lambda ev: None)) if self.main else (lambda ev: None)
        self.choice: PrecisionChoice | None = None
        self.resume_state: dict | None = None
        self.history: list[dict] = []
        self.parent_metrics: dict[str, float] = {}
        self.best: dict[str, Any] | None = None           # {"step", "epoch", "score", "metrics"}
        self.best_state: dict[str, torch.Tensor] | None = None
        self.bad_evals = 0
        self.seconds_before = 0.0
        self.parent_pkg: ModelPackage | None = None
        self.step_losses: list[dict] = []
        self.stopped = "completed"

    def note(self, msg: str) -> None:
        """A warning for the user (rank 0 only): a FinetuneWarning and a ``warning`` event."""
        if not self.main:
            return
        warnings.warn(msg, FinetuneWarning, stacklevel=3)
        self.emit({"event": "warning", "message": msg})

    def quiet_peer(self, err: BaseException) -> PeerFailedError:
        """What a rank > 0 raises for an error all ranks agreed on (rank 0 reports it)."""
        return PeerFailedError(str(err), ranks=[0], quiet=True)

    # ------------------------------------------------------------------ setup

    def setup(self) -> None:
        """Everything before the first step, on every rank.

        With several ranks the errors of any of them are agreed on (``ctx.agree``) so that
        all stop together instead of waiting for each other.
        """
        ctx = self.ctx
        setup_error: BaseException | None = None
        try:
            self._check_options()
            self._load_spec_and_data()
            self._build_network()
            self._prepare_training()
            self._resume_or_evaluate_parent()
        except Exception as e:
            if not ctx.enabled:
                raise
            setup_error = e
        ctx.agree(setup_error, "while preparing the run")
        if ctx.enabled:
            sent = ctx.broadcast({"precision": self.choice.to_dict() if self.choice else None,
                                  "resume": self.resume_state})
            self.choice, self.resume_state = PrecisionChoice(**sent["precision"]), sent["resume"]
            self.config = replace(self.config, precision=self.choice.precision)
        self._restore_trainer_state()

    def _check_options(self) -> None:
        """Arguments and output location first: fail before any work."""
        o = self.opts
        self.out = Path(o.out)
        o.validate()
        self.ckpt = Path(o.resume) if isinstance(o.resume, str | os.PathLike) else checkpoint_dir(self.out)
        if self.main:                             # only rank 0 writes
            check_out(self.out, self.ckpt, resume=bool(o.resume))
        self.normalization = o.normalization_dict()
        from segloop.core.inference.engines import resolve_device

        self.dev = resolve_device(o.device)

    def _load_spec_and_data(self) -> None:
        """The parent (or the from-scratch spec), the new package's spec and the training folders."""
        with warnings.catch_warnings():
            if not self.main:                     # rank 0 reports skipped samples
                warnings.simplefilter("ignore", SkippedSampleWarning)
            self.parent_pkg, self.spec, self.norm, self.loaded = load_spec_and_data(
                self.opts, normalization=self.normalization, out=self.out)
        for msg in self.loaded.warnings:
            self.emit({"event": "warning", "message": msg})
        if not self.loaded.val:
            self.note("no val samples: the new weights cannot be compared with the parent; the package holds the "
                      "last weights and records improved = null. Export some samples with split 'val'")

    def _build_network(self) -> None:
        """The network (the parent's weights loaded) and the patch size that fits it and the data."""
        spec, scratch = self.spec, self.parent_pkg is None
        source = SCRATCH_SOURCE if scratch else None
        # bounds, patch and the memory a step needs, all before anything is allocated
        patch_used, why = fit_training_patch(spec, self.opts.patch, [tuple(s.labels.shape) for s in self.loaded.train],
                                             source=source)
        check_training_memory(spec, patch_used, batch=self.opts.batch, device=self.dev, scratch=scratch, source=source)
        try:
            net = build(spec.architecture, spec.in_channels, spec.n_classes, dims=spec.dims,
                        **spec.architecture_kwargs)
        except TypeError as e:
            raise ModelPackageError(f"architecture {spec.architecture!r} does not take {spec.architecture_kwargs}: "
                                    f"{e}") from None
        if self.parent_pkg is not None:
            net.load_state_dict(self.parent_pkg.state_dict)
        if why:
            self.note(why)
        if self.loaded.volumes:
            self.spec = volume_spec_fields(spec, self.loaded, patch_used, scratch=self.parent_pkg is None)
        self.net, self.patch_used = net, patch_used

    def _prepare_training(self) -> None:
        """Training pixels, run length, precision, the resolved config, the sampler and the optimizer."""
        o, spec, ctx, loaded = self.opts, self.spec, self.ctx, self.loaded
        batch = o.batch
        data = prepare_samples(loaded.train, spec, self.norm)
        reviewed_px = sum(int(np.count_nonzero(t != 255)) for t in data.targets)
        patch_px = math.prod(patch_shape(self.patch_used, spec.dims))
        # An epoch draws about as many pixels as the samples hold, over all ranks together.
        spe = max(1, math.ceil(reviewed_px / (batch * ctx.world_size * patch_px)))
        total = int(o.steps) if o.steps is not None else int(o.epochs) * spe if o.epochs is not None else 500
        eval_every = o.eval_every if o.eval_every is not None else max(spe, math.ceil(total / 20))
        checkpoint_every = o.checkpoint_every if o.checkpoint_every is not None else spe
        class_weights = o.class_weights
        if class_weights == "auto":
            class_weights = (1.0, 1.0, 2.0) if spec.task == "instance" and spec.n_classes == 3 else None
        if self.main:                             # measured once, on rank 0, and sent to the others
            self.choice = choose_precision(o.precision, self.dev, self.net, in_channels=spec.in_channels,
                                           batch=int(batch), patch=patch_shape(self.patch_used, spec.dims))
            if SLOW_BF16 in self.choice.reason:
                self.note(f"--precision bf16: {SLOW_BF16}")
        augment = o.augment or AugmentConfig()
        self.spe = spe
        self.config = FinetuneConfig(
            steps=total, steps_per_epoch=spe, batch=int(batch), patch=self.patch_used, lr=float(o.lr),
            weight_decay=float(o.weight_decay),
            class_weights=tuple(map(float, class_weights)) if class_weights else None,
            eval_every=int(eval_every), checkpoint_every=int(checkpoint_every),
            patience=None if o.patience is None else int(o.patience), seed=int(o.seed), grad_clip=float(o.grad_clip),
            augment=augment.to_dict(), normalization=self.norm, world_size=ctx.world_size,
            precision=self.choice.precision if self.choice is not None else "fp32", dims=spec.dims,
            context_slices=spec.context_slices, pixel_size=loaded.pixel_size)
        if loaded.volumes:
            self.sampler = VolumePatchSampler(data.images, data.normalizers, data.targets, data.modalities,
                                              patch=self.patch_used, dims=spec.dims,
                                              context_slices=spec.context_slices, config=augment)
        else:
            self.sampler = AugmentedPatchSampler(data.images, data.normalizers, data.targets, data.modalities,
                                                 patch=self.patch_used, config=augment)
        self.fingerprints = [f.fingerprint for f in loaded.folders]
        self.parent_sha = self.parent_pkg.spec.sha256 if self.parent_pkg is not None else None
        config, dev = self.config, self.dev
        self.net.to(dev)
        self.opt = torch.optim.AdamW(self.net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        # one-cycle warm-up over 10% of the steps, at least 2 steps (OneCycleLR divides by the phase length)
        self.sched = torch.optim.lr_scheduler.OneCycleLR(self.opt, max_lr=config.lr,
                                                         total_steps=max(config.steps, 4),
                                                         pct_start=max(0.1, 2.5 / max(config.steps, 4)))
        self.cw = torch.tensor(config.class_weights, dtype=torch.float32, device=dev) if config.class_weights \
            else None
        self.key = score_key(spec.task)

    def _resume_or_evaluate_parent(self) -> None:
        """Rank 0 reads and checks the checkpoint (sent to the others later), or evaluates the parent once."""
        o, spec = self.opts, self.spec
        if o.resume and self.main:
            meta, weights, best_w, self.resume_state = load_checkpoint(self.ckpt)
            check_resume(meta, self.ckpt, spec, self.config, self.fingerprints, self.parent_sha)
            try:
                self.net.load_state_dict(weights)
            except RuntimeError as e:
                raise ModelPackageError(f"checkpoint {self.ckpt} does not fit {spec.architecture!r}: "
                                        f"{str(e).splitlines()[0]}; delete {self.ckpt} to start again") from None
            self.history, self.parent_metrics = meta["history"], meta["parent_metrics"]
            self.best, self.bad_evals, self.best_state = meta["best"], int(meta["bad_evals"]), best_w
            self.seconds_before = float(meta.get("seconds", 0.0))
            have = json.loads(json.dumps(meta.get("config", {}))).get("precision")
            self.choice = on_resume(have, self.choice, self.dev)            # rank 0 chose it in _prepare
            self.config = replace(self.config, precision=self.choice.precision)
            if have and have != self.config.precision:
                self.note(f"the checkpoint was trained in {have}; this run goes on in {self.config.precision} "
                          f"({self.choice.reason})")
        elif self.main and not o.resume and self.parent_pkg is not None and self.loaded.val:
            pkg = self.parent_pkg
            pm = pkg if is_volume_spec(pkg.spec) else Model(pkg, device=self.dev, precision="fp32")
            self.parent_metrics = evaluate_samples(pm, self.loaded.val, normalization=self.norm, device=self.dev)

    def _restore_trainer_state(self) -> None:
        """Optimizer, schedule, RNG, step and batch of a resumed run; the gradient scaler; DDP."""
        config, rs = self.config, self.resume_state
        self.start, self.cur_batch, self.resumed_from = 0, config.batch, None
        if rs is not None:
            self.opt.load_state_dict(rs["optimizer"])
            self.sched.load_state_dict(rs["scheduler"])
            torch.set_rng_state(rs["rng"]["torch"])
            self.start = self.resumed_from = int(rs["step"])
            self.cur_batch = int(rs.get("batch", config.batch))
        self.scaler = grad_scaler(self.dev, config.precision)
        if self.scaler is not None and rs is not None and rs.get("scaler"):
            self.scaler.load_state_dict(rs["scaler"])
        self.model = wrap_ddp(self.net, self.ctx, self.dev)    # DDP averages the gradients over the ranks
        self.debug = debug_batches(self.ctx)

    # ------------------------------------------------------------------ checkpoints and evaluation

    def seconds(self) -> float:
        return self.seconds_before + time.perf_counter() - self.t_start

    def checkpoint(self, step: int) -> Path:
        """Write the checkpoint of ``step`` (rank 0)."""
        config = self.config
        meta = {"format": CKPT_FORMAT, "format_version": CKPT_VERSION, "step": step,
                "epoch": math.ceil(step / self.spe), "model": arch_of(self.spec), "config": config.to_dict(),
                "fingerprints": self.fingerprints, "parent_sha256": self.parent_sha, "history": self.history,
                "parent_metrics": self.parent_metrics, "best": self.best, "bad_evals": self.bad_evals,
                "seconds": self.seconds(), "torch": torch.__version__}
        state = {"optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
                 "rng": {"torch": torch.get_rng_state(), "seed": config.seed}, "step": step,
                 "batch": self.cur_batch}
        if self.scaler is not None:
            state["scaler"] = self.scaler.state_dict()
        p = save_checkpoint(self.ckpt, meta=meta, weights=state_copy(self.net), best=self.best_state, state=state)
        self.emit({"event": "checkpoint", "step": step, "path": str(p)})
        return p

    def evaluate(self, step: int) -> dict[str, float]:
        """Held-out metrics of the current weights; keeps them when they are the best so far (rank 0)."""
        spec, dev, val = self.spec, self.dev, self.loaded.val
        self.net.eval()
        state = state_copy(self.net)
        pkg = ModelPackage(spec, state)
        m = evaluate_samples(pkg if is_volume_spec(spec) else Model(pkg, device=dev, precision="fp32"), val,
                             normalization=self.norm, device=dev) if val else {}
        recent = [h["loss"] for h in self.step_losses[-self.config.eval_every:]]
        entry = {"step": step, "epoch": math.ceil(step / self.spe),
                 "loss": float(np.mean(recent)) if recent else None,
                 **m, "batch": self.cur_batch, "seconds": round(self.seconds(), 1)}
        self.history.append(entry)
        score = m.get(self.key)
        improved_now = score is not None and (self.best is None or score > self.best["score"])
        if improved_now:
            self.best = {"step": step, "epoch": entry["epoch"], "score": score, "metrics": m}
            self.best_state = state
            self.bad_evals = 0
        elif score is not None:
            self.bad_evals += 1
        self.emit({"event": "eval", "step": step, "epoch": entry["epoch"], "metrics": m, "best": improved_now,
                   "best_step": self.best["step"] if self.best else None})
        return m

    # ------------------------------------------------------------------ the steps

    def train(self, cancel) -> None:
        """Run the steps until the end, early stopping or a cancel.

        Before each step the ranks agree on a stop code (a no-op with one process): an error
        on rank 0 (in evaluation or a checkpoint), early stopping (rank 0), or a cancel on any
        rank.
        """
        ctx, config = self.ctx, self.config
        self.emit({"event": "start", "steps": config.steps, "epochs": math.ceil(config.steps / self.spe),
                   "steps_per_epoch": self.spe, "batch": self.cur_batch, "patch": self.patch_used,
                   "device": self.dev, "train": len(self.loaded.train), "val": len(self.loaded.val),
                   "parent_metrics": self.parent_metrics, "resumed_from": self.resumed_from,
                   "out": str(self.out), "checkpoint": str(self.ckpt), "world_size": ctx.world_size,
                   "effective_batch": ctx.world_size * self.cur_batch, "precision": config.precision,
                   "precision_reason": self.choice.reason})
        step = self.start
        self.last_ckpt = self.start if self.opts.resume else None
        early = False
        pending_error: BaseException | None = None
        while True:
            code = ERROR if pending_error is not None else EARLY if early else GO
            if code == GO and step < config.steps and is_cancelled(cancel):
                code = CANCEL
            code = ctx.max_code(code)
            if code == ERROR:
                if pending_error is not None:
                    raise pending_error
                raise PeerFailedError(f"stopped at step {step}: rank 0 of this distributed run failed", ranks=[0],
                                      quiet=True)
            if code == EARLY:
                self.stopped = "early_stopping"
                break
            if step >= config.steps:
                break
            if code == CANCEL:
                self.stopped = "cancelled"
                break
            step += 1
            self.step = step
            epoch = math.ceil(step / self.spe)
            lv = self.train_step(step, epoch)
            self.sched.step()
            self.step_losses.append({"step": step, "loss": lv})
            try:
                self.emit({"event": "step", "step": step, "steps": config.steps, "epoch": epoch, "loss": lv,
                           "lr": float(self.sched.get_last_lr()[0]), "batch": self.cur_batch})
                if self.main and (step % config.eval_every == 0 or step == config.steps):
                    self.evaluate(step)
                    early = config.patience is not None and self.bad_evals >= config.patience
                if step % config.checkpoint_every == 0 or step == config.steps or early:
                    if self.main:
                        self.checkpoint(step)
                    self.last_ckpt = step
                if early:
                    self.note(f"early stopping at step {step}: {config.patience} evaluations without a better "
                              f"{self.key}")
            except Exception as e:
                if not ctx.enabled:
                    raise
                pending_error = e                 # raised once every rank has agreed to stop
        self.step = step

    def train_step(self, step: int, epoch: int) -> float:
        """One optimizer step on a batch drawn for ``(seed, step, rank)``; halves the batch when out of memory.

        Returns the loss (the mean over the ranks).
        """
        ctx, config, dev, net, opt, scaler = self.ctx, self.config, self.dev, self.net, self.opt, self.scaler
        main = self.main
        net.train()
        while True:
            rng = np.random.default_rng(step_entropy(config.seed, step, ctx.rank))
            torch.manual_seed(step_torch_seed(config.seed, step, ctx.rank))
            status, err, lv = _OK, None, float("nan")
            try:
                x, y = self.sampler.batch(self.cur_batch, rng)
            except Exception as e:
                if not ctx.enabled:
                    raise
                status, err = _FAILED, e
            if status == _OK:
                if self.debug is not None:
                    self.debug(step, x, y)
                try:
                    xt, yt = torch.from_numpy(x).to(dev), torch.from_numpy(y).to(dev)
                    with autocast(dev, config.precision):
                        logits = self.model(xt)
                    loss = dice_ce_loss(logits.float(), yt, class_weights=self.cw)
                    lv = float(loss.detach())
                    if not math.isfinite(lv):
                        status = _NONFINITE
                except (RuntimeError, MemoryError) as e:
                    if is_out_of_memory(e):
                        status = _OOM
                    elif not ctx.enabled:
                        raise
                    else:
                        status, err = _FAILED, e
                except Exception as e:
                    if not ctx.enabled:
                        raise
                    status, err = _FAILED, e
            if ctx.enabled:                       # every rank learns what happened on the others
                sums = ctx.sum([lv if status == _OK else 0.0, status == _NONFINITE, status == _OOM,
                                *(float(r == ctx.rank and status == _FAILED) for r in range(ctx.world_size))])
                failed = [r for r, v in enumerate(sums[3:]) if v > 0]
                if failed:
                    if err is not None:
                        raise err
                    raise PeerFailedError(f"stopped at step {step}: rank(s) {failed} of this distributed run "
                                          "failed", ranks=failed, quiet=0 in failed and not main)
                if sums[1] > 0:
                    status = _NONFINITE
                elif sums[2] > 0:
                    status = _OOM
                else:
                    lv = sums[0] / ctx.world_size  # the mean loss over the ranks
            if status == _NONFINITE:
                e = diverged_error(step, epoch, "loss", lv if not math.isfinite(lv) else float("nan"), self.last_ckpt,
                                   self.ckpt, config.lr)
                raise e if main else self.quiet_peer(e)
            if status == _OK:
                try:
                    opt.zero_grad(set_to_none=True)
                    if scaler is not None:
                        scaler.scale(loss).backward()
                        scaler.unscale_(opt)
                    else:
                        loss.backward()
                    gnorm = float(torch.nn.utils.clip_grad_norm_(net.parameters(), config.grad_clip))
                    if not math.isfinite(gnorm) and scaler is None:
                        e = diverged_error(step, epoch, "gradient norm", gnorm, self.last_ckpt, self.ckpt, config.lr)
                        raise e if main else self.quiet_peer(e)
                    if scaler is not None:        # skips the step when the fp16 gradients overflowed
                        scaler.step(opt)
                        scaler.update()
                    else:
                        opt.step()
                    return lv
                except (TrainingDivergedError, PeerFailedError):
                    raise
                except (RuntimeError, MemoryError) as e:
                    if ctx.enabled or not is_out_of_memory(e):  # no agreement is possible inside DDP's backward
                        raise
                    status = _OOM
            # out of memory: every rank halves its batch and tries the step again
            opt.zero_grad(set_to_none=True)
            logits = loss = xt = yt = None
            if dev.startswith("cuda"):
                torch.cuda.empty_cache()
            if self.cur_batch == 1:
                e = TrainingOutOfMemoryError(
                    f"out of memory on {dev} with a batch of 1 patch of {self.patch_used} px at step {step}; use "
                    f"a smaller --patch, or --device cpu")
                raise (e if main else self.quiet_peer(e)) from None
            self.cur_batch = max(1, self.cur_batch // 2)
            self.note(f"out of memory on {dev} at step {step}; retrying with batch {self.cur_batch}")

    # ------------------------------------------------------------------ the package

    def result(self) -> FinetuneResult:
        """The package (rank 0; the others wait for its outcome) and what every rank returns."""
        return share_result(self.ctx, self.write_package)

    def write_package(self) -> FinetuneResult:
        """Write the new package from the best weights (or the last ones without val samples)."""
        o, spec, ctx, loaded, step = self.opts, self.spec, self.ctx, self.loaded, self.step
        out, ckpt, stopped, parent_metrics, key = self.out, self.ckpt, self.stopped, self.parent_metrics, self.key
        if stopped == "cancelled":
            if step > (self.last_ckpt or 0):
                self.checkpoint(step)
            if self.best_state is None:
                msg = (f"cancelled at step {step} before any evaluation: no package written; the checkpoint in "
                       f"{ckpt} can be resumed")
                self.emit({"event": "cancelled", "package": None, "message": msg, "step": step})
                return FinetuneResult(None, None, {}, parent_metrics, None, "cancelled", self.history, msg, ckpt,
                                      self.seconds())
        if self.best_state is None:              # no val samples: the last weights
            self.best_state = state_copy(self.net)
        best = self.best
        metrics = dict(best["metrics"]) if best else {}
        improved = (metrics[key] > parent_metrics[key]) if (key in metrics and key in parent_metrics) else None
        seconds = self.seconds()
        training = training_record(
            loaded=loaded, config=self.config, history=self.history, best=best, parent_metrics=parent_metrics,
            metrics=metrics, improved=improved, stopped=stopped, steps_done=step, resumed_from=self.resumed_from,
            device=self.dev, precision=self.choice, ctx=ctx, batch=self.cur_batch,
            command=o.command or api_command(o.folders, o.parent, o.out, self.config), seconds=seconds, spec=spec)
        onnx_bytes, onnx_note = None, "not asked for (onnx=False / --no-onnx)"
        if o.onnx:
            onnx_bytes, onnx_note = export_onnx_checked(spec, self.best_state)
            if onnx_note:
                self.note(onnx_note)
        training["onnx"] = {"exported": onnx_bytes is not None, "reason": onnx_note}
        new_spec = replace(spec, training=training)
        card = model_card(new_spec, parent_metrics, metrics, improved)
        written = save_package(out, new_spec, self.best_state, onnx_bytes=onnx_bytes, card=card)
        if not o.keep_checkpoint and stopped != "cancelled":
            shutil.rmtree(ckpt, ignore_errors=True)
            kept = None
        else:
            kept = ckpt
        verdict = ("better than" if improved else "not better than") if improved is not None \
            else "not compared with"
        msg = (f"wrote {out} ({new_spec.name} {new_spec.version}); on {len(loaded.val)} val image(s) it is "
               f"{verdict} its parent" if self.parent_pkg is not None else f"wrote {out} ({new_spec.name} "
                                                                            f"{new_spec.version})")
        if stopped == "cancelled":
            msg = f"cancelled at step {step}; " + msg + f" (best weights, from step {best['step']})"
            self.emit({"event": "cancelled", "package": str(out), "message": msg, "step": step,
                       "metrics": metrics, "parent_metrics": parent_metrics, "improved": improved})
        else:
            self.emit({"event": "done", "package": str(out), "metrics": metrics, "parent_metrics": parent_metrics,
                       "improved": improved, "stopped": stopped, "seconds": round(seconds, 1), "message": msg})
        return FinetuneResult(out, written, metrics, parent_metrics, improved, stopped, self.history, msg, kept,
                              seconds)
