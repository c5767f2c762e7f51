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
evaluated through ``Model.predict`` once it runs such packages, until then with
:func:`segloop_train.volumes.predict_volume` (same normalization, same slice-major context,
Gaussian-blended 3D windows of the package's tile).  The package records ``dims``,
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

Checkpoints: ``<out>.ckpt/latest`` names the newest ``step-NNNNNNN/`` folder, which holds
``weights.safetensors``, ``best.safetensors`` (best evaluated weights so far),
``checkpoint.json`` (architecture, config, history ...) and ``state.pt`` (optimizer,
scheduler, RNG and step as plain tensors and dicts, saved with ``torch.save`` and read back
only with ``torch.load(..., weights_only=True)``).  Each is written to a temporary folder
and renamed into place, so a kill leaves the previous checkpoint intact.  The folder is
removed once the package is written, unless ``keep_checkpoint=True``.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import re
import shutil
import tempfile
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from segloop.core import metrics as M
from segloop.core.models import build
from segloop.core.normalize import Normalizer, output_channels, spec_from_dict
from segloop.core.package import ModelPackage, ModelSpec, save_package
from segloop.core.postprocess import InstanceParams
from segloop.core.predict import Model, load_model
from segloop.errors import ModelPackageError, SegloopError, TrainingFolderError
from segloop_train.augment import AugmentConfig, AugmentedPatchSampler
from segloop_train.data import Sample, reviewed_targets
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
from segloop_train.folders import LoadedFolders, SkippedSampleWarning, check_classes, load_folders
from segloop_train.losses import dice_ce_loss
from segloop_train.precision import (
    PRECISIONS,
    SLOW_BF16,
    PrecisionChoice,
    autocast,
    choose_precision,
    grad_scaler,
)
from segloop_train.volumes import VolumePatchSampler, model_predicts_volumes, predict_volume

__all__ = [
    "FinetuneConfig",
    "FinetuneResult",
    "FinetuneWarning",
    "PeerFailedError",
    "TrainingError",
    "TrainingDivergedError",
    "TrainingOutOfMemoryError",
    "bump_version",
    "evaluate_samples",
    "finetune",
    "fit_patch",
    "fit_patch_3d",
    "checkpoint_dir",
]

CKPT_FORMAT = "segloop-train-checkpoint"
CKPT_VERSION = 1
_STEP_DIR = re.compile(r"^step-(\d+)$")
# What happened in the forward pass of a step (agreed over the ranks of a distributed run).
_OK, _NONFINITE, _OOM, _FAILED = 0, 1, 2, 3

Progress = Callable[[dict], None]


class FinetuneWarning(UserWarning):
    """Something about a fine-tuning run the user should know (patch reduced, no val samples ...)."""


class TrainingError(SegloopError, RuntimeError):
    """Training could not go on; the message says what happened and what to do."""


class TrainingDivergedError(TrainingError, FloatingPointError):
    """The loss or the gradients became NaN / inf; the last good checkpoint was kept."""


class TrainingOutOfMemoryError(TrainingError, MemoryError):
    """Out of memory even with a batch of 1."""


# --------------------------------------------------------------------------- config / result


@dataclass(frozen=True)
class FinetuneConfig:
    """Everything that decides the result of a run (saved in the package and the checkpoint).

    ``patch`` is the size actually used (after :func:`fit_patch`; a ``(pz, py, px)`` tuple for
    3D models, :func:`fit_patch_3d`); ``batch`` the batch asked
    for, per process (an out-of-memory retry halves it, recorded in the history);
    ``world_size`` the number of processes (each step trains on ``world_size * batch``
    patches); ``precision`` the one chosen (:func:`segloop_train.precision.choose_precision`).
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
    schema_version: int = 1

    def to_dict(self) -> dict:
        d = asdict(self)
        d["class_weights"] = list(self.class_weights) if self.class_weights else None
        if isinstance(self.patch, tuple):
            d["patch"] = list(self.patch)
        return d


#: Config keys a resumed run must share with its checkpoint.
_RESUME_KEYS = ("steps", "batch", "patch", "lr", "weight_decay", "class_weights", "seed", "grad_clip",
                "augment", "normalization", "steps_per_epoch", "world_size", "dims", "context_slices")
#: Values of keys that checkpoints written before the key existed did not record.
_RESUME_DEFAULTS = {"world_size": 1, "dims": 2, "context_slices": 1}


@dataclass
class FinetuneResult:
    """What :func:`finetune` did.

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


# --------------------------------------------------------------------------- small helpers


def bump_version(version: str) -> str:
    """Next minor version: ``1.0.0 -> 1.1.0``, ``2.3 -> 2.4.0``; other strings get ``.1`` appended."""
    m = re.fullmatch(r"v?(\d+)\.(\d+)(?:\.(\d+))?", str(version).strip())
    if m:
        return f"{int(m.group(1))}.{int(m.group(2)) + 1}.0"
    return f"{version}.1"


def checkpoint_dir(out: str | os.PathLike) -> Path:
    """Where a run writing ``out`` keeps its checkpoints: ``<out>.ckpt`` next to it."""
    out = Path(out)
    return out.with_name(out.name + ".ckpt")


def _is_cancelled(cancel) -> bool:
    if cancel is None:
        return False
    return bool(cancel()) if callable(cancel) else bool(cancel.is_set())


def _is_oom(e: BaseException) -> bool:
    oom = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", ())
    return isinstance(e, oom) or (isinstance(e, RuntimeError) and (
        "out of memory" in str(e).lower() or "can't allocate memory" in str(e).lower()))


def _check_out(out: Path, ckpt: Path, *, resume: bool) -> None:
    """Refuse an existing or unwritable ``out`` before any work is done."""
    if out.exists():
        raise ModelPackageError(f"{out} already exists; packages are never overwritten, choose a new --out")
    for parent in (out.parent, ckpt.parent):
        try:
            parent.mkdir(parents=True, exist_ok=True)
            probe = Path(tempfile.mkdtemp(prefix=".segloop-write-test-", dir=parent))
            probe.rmdir()
        except OSError as e:
            raise ModelPackageError(
                f"cannot write the new package to {out}: {parent} is not a writable folder "
                f"({e.strerror or e}); choose an --out in a folder you can write to") from None
    latest = ckpt / "latest"
    if not resume and latest.exists():
        raise ModelPackageError(
            f"{ckpt} holds a checkpoint of an earlier run; pass --resume to continue it, or delete "
            f"{ckpt} to start again")


def fit_patch(patch: int, sizes: Sequence[tuple[int, int]], divisor: int) -> tuple[int, str | None]:
    """The patch side to train with, and a warning if it differs from the one asked for.

    The patch is rounded down to a multiple of the network's ``divisor``.  When it is larger
    than the largest training sample (its shorter side), it is **reduced** to the largest
    multiple of ``divisor`` that fits that sample (at least ``divisor``).  Samples smaller
    than the patch are **padded**; padded pixels are ignored by the loss.

    Parameters
    ----------
    patch : int
    sizes : sequence of (H, W)
        Spatial sizes of the training samples.
    divisor : int
        The network's size divisor (``2 ** depth`` for a U-Net).
    """
    if int(patch) < 1:
        raise ValueError(f"patch must be a positive number of pixels, got {patch}")
    divisor = max(1, int(divisor))
    fits = max(min(s) for s in sizes)
    want = max(divisor, int(patch) // divisor * divisor)
    if want > fits:
        new = max(divisor, fits // divisor * divisor)
        why = (f"patch {patch} is larger than the largest training sample ({fits} px on its shorter side); "
               f"using {new}, the largest multiple of the network's divisor {divisor} that fits"
               + (" (samples smaller than that are padded; padding is ignored by the loss)" if new > min(
                   min(s) for s in sizes) else ""))
        return new, why
    if want != patch:
        return want, f"patch {patch} is not a multiple of the network's divisor {divisor}; using {want}"
    return want, None


def fit_patch_3d(patch: int | Sequence[int], sizes: Sequence[tuple[int, int, int]], divisor: int
                 ) -> tuple[tuple[int, int, int], str | None]:
    """The 3D patch ``(pz, py, px)`` to train with, and a warning if it differs from the one asked for.

    Each axis as in :func:`fit_patch`: rounded down to a multiple of ``divisor`` (at least
    ``divisor``) and reduced to the largest multiple of ``divisor`` that fits the largest
    training volume along that axis.  Volumes smaller than the patch are padded; padding is
    ignored by the loss.

    Parameters
    ----------
    patch : int or (int, int, int)
        An int means a cube.
    sizes : sequence of (Z, Y, X)
        Spatial sizes of the training volumes.
    divisor : int
        The network's size divisor.
    """
    want = (int(patch),) * 3 if np.isscalar(patch) else tuple(int(v) for v in patch)
    if len(want) != 3 or min(want) < 1:
        raise ValueError(f"a 3D patch is three positive sizes (pz, py, px), got {patch!r}")
    divisor = max(1, int(divisor))
    fits = [max(int(s[a]) for s in sizes) for a in range(3)]
    got = []
    for w, f in zip(want, fits, strict=True):
        g = max(divisor, w // divisor * divisor)
        if g > f:
            g = max(divisor, f // divisor * divisor)
        got.append(g)
    got_t = (got[0], got[1], got[2])
    if got_t == want:
        return got_t, None
    return got_t, (f"patch {list(want)} does not fit the training volumes (largest {fits}) or the network's "
                   f"divisor {divisor}; using {list(got_t)} (volumes smaller than that are padded; padding is "
                   "ignored by the loss)")


def _patch_shape(patch: int | tuple[int, ...], dims: int) -> tuple[int, ...]:
    return tuple(patch) if isinstance(patch, tuple) else (int(patch),) * dims


def _drop_alpha(image: np.ndarray, in_channels_raw: int | None, *, spatial: int = 2) -> np.ndarray:
    """RGBA -> RGB and grey + alpha -> grey, for images with ``spatial`` axes plus a channel axis."""
    if image.ndim == spatial + 1 and image.shape[-1] == 4 and in_channels_raw in (3, None):
        return image[..., :3]
    if image.ndim == spatial + 1 and image.shape[-1] == 2 and in_channels_raw == 1:
        return image[..., :1]
    return image


def _raw_channels(spec: ModelSpec, norm: dict) -> int:
    """Image channels the model reads (before normalization; one slice for 2.5D models)."""
    return 3 if norm.get("kind") == "hematoxylin" else spec.in_channels // max(1, spec.context_slices)


def _is_volume_spec(spec: ModelSpec) -> bool:
    return spec.dims == 3 or spec.context_slices > 1


# --------------------------------------------------------------------------- evaluation


def _restrict_objects(lab: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Keep the objects of ``lab`` with at least half their pixels inside ``mask``."""
    if mask.all():
        return lab
    lab = np.asarray(lab)
    n = int(lab.max()) + 1
    total = np.bincount(lab.ravel(), minlength=n)
    inside = np.bincount(lab[mask].ravel(), minlength=n)
    keep = inside * 2 >= total
    keep[0] = False
    return np.where(keep[lab], lab, 0)


_AP_THRESHOLDS = (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)


class VolumePredictor:
    """Labels of whole volumes from a 2.5D / 3D package: ``Model.predict`` when it can, else a plain forward pass.

    ``segloop.core.predict.Model`` runs 2.5D and 3D packages once it has its ``z_range``
    option (:func:`segloop_train.volumes.model_predicts_volumes`); until then this runs
    :func:`segloop_train.volumes.predict_volume` with the same normalization (fitted on the
    whole volume), the same slice-major context and the package's tile and overlap.  In that
    fallback an instance model's objects are the connected components of its interior class
    grown into the boundary class (``grow_px``), an approximation of the 2D post-processing.

    Parameters
    ----------
    package : ModelPackage or Model
    device : str
    """

    def __init__(self, package: ModelPackage | Model, *, device: str = "cpu"):
        self.through_model = model_predicts_volumes()
        if isinstance(package, Model):
            self.model, package = package, package.package
        else:
            self.model = Model(package, device=device, precision="fp32") if self.through_model else None
        self.spec = package.spec
        self.device = device
        self.network = None if self.through_model else package.build_network()

    def __call__(self, volume: np.ndarray, *, normalization: dict | None = None, batch_size: int = 8) -> np.ndarray:
        """``(Z, Y, X)`` labels of ``volume`` ``(Z, Y, X[, C])``."""
        spec = self.spec
        if self.through_model:
            return self.model.predict(volume, normalization=normalization, batch_size=batch_size).labels
        norm = normalization or spec.normalization
        vol = _drop_alpha(np.asarray(volume), _raw_channels(spec, norm), spatial=3)
        ca = -1 if vol.ndim == 4 else None
        nz = Normalizer.fit(norm, vol, channel_axis=ca)
        tile = spec.tile.get("size", 256)
        classes = predict_volume(self.network, vol, nz, dims=spec.dims, context_slices=spec.context_slices,
                                 tile=tile if spec.dims == 3 else None, overlap=float(spec.tile.get("overlap", 0.25)),
                                 batch_size=batch_size if spec.dims == 2 else 2, device=self.device)
        if spec.task != "instance":
            return classes
        from scipy import ndimage as ndi
        from skimage.segmentation import expand_labels

        pp = InstanceParams.from_dict(spec.postprocess)
        ids, _ = ndi.label(classes == pp.interior_class)
        grown = expand_labels(ids, distance=pp.grow_px)
        return np.where((classes > 0) & (grown > 0), grown, ids).astype(np.uint32)


def evaluate_samples(model: Model | ModelPackage, samples: Sequence[Sample], *, normalization: dict | None = None,
                     batch_size: int = 8, device: str = "cpu") -> dict[str, float]:
    """Held-out metrics of ``model`` on ``samples``, predicted through ``Model.predict``.

    Counts are pooled over all samples (micro averages), so small or empty samples do not
    dominate.  Only reviewed pixels (voxels) count; for instance metrics an object (true or
    predicted) counts when at least half of it is reviewed.

    Parameters
    ----------
    model : Model or ModelPackage
        A 2.5D or 3D package (``context_slices > 1`` or ``dims == 3``) may be given as a
        ``ModelPackage``: its volumes are predicted by :class:`VolumePredictor`.
    samples : sequence of Sample
        2D samples, or volumes (``meta["volume"]``, as :func:`segloop_train.folders.load_folders`
        reads them for 2.5D / 3D models); ``labels`` are object ids (instance) or class ids
        (semantic).
    normalization : dict, optional
        Override the model's normalization (e.g. hematoxylin for a fluorescence model).
    device : str
        For a ``ModelPackage``.

    Returns
    -------
    dict
        ``dice``, ``jaccard``, ``pixel_accuracy`` (foreground vs background for instance
        models, class ids for semantic ones); instance: ``f1@0.5``, ``precision@0.5``,
        ``recall@0.5``, ``ap@0.5:0.95``; semantic with 2+ foreground classes: ``dice:<class>``
        and ``jaccard:<class>``.  Empty when ``samples`` is empty.
    """
    if not samples:
        return {}
    if not isinstance(model, Model) and not _is_volume_spec(model.spec):
        model = Model(model, device=device, precision="fp32")
    vp = VolumePredictor(model, device=device) if _is_volume_spec(model.spec) else None
    spec = model.spec
    k = spec.n_classes
    inter = np.zeros(k, np.int64)
    t_sum = np.zeros(k, np.int64)
    p_sum = np.zeros(k, np.int64)
    correct = total = 0
    counts = {th: [0, 0, 0] for th in _AP_THRESHOLDS}
    for s in samples:
        if vp is not None:
            volume = s.meta.get("volume") or np.asarray(s.labels).ndim == 3
            img = s.image if volume else np.asarray(s.image)[None]
            pred = vp(img, normalization=normalization, batch_size=batch_size)
            pred = pred if volume else pred[0]
        else:
            pred = model.predict(s.image, normalization=normalization, batch_size=batch_size).labels
        truth = np.asarray(s.labels)
        mask = np.ones(truth.shape, bool) if s.reviewed is None else np.asarray(s.reviewed) > 0
        if spec.task == "instance":
            t, p = (truth != 0)[mask], (pred != 0)[mask]
            inter[1] += int((t & p).sum())
            t_sum[1] += int(t.sum())
            p_sum[1] += int(p.sum())
            correct += int((t == p).sum())
            total += int(mask.sum())
            tr, pr = _restrict_objects(truth, mask), _restrict_objects(pred, mask)
            for th in _AP_THRESHOLDS:
                r = M.match_instances(tr, pr, iou=th)
                c = counts[th]
                c[0] += r["tp"]
                c[1] += r["fp"]
                c[2] += r["fn"]
        else:
            t, p = truth[mask].astype(np.int64), pred[mask].astype(np.int64)
            correct += int((t == p).sum())
            total += int(mask.sum())
            for c in range(1, k):
                tc, pc = t == c, p == c
                inter[c] += int((tc & pc).sum())
                t_sum[c] += int(tc.sum())
                p_sum[c] += int(pc.sum())

    def dice_of(c):
        d = t_sum[c] + p_sum[c]
        return 1.0 if d == 0 else 2 * inter[c] / d

    def jac_of(c):
        u = t_sum[c] + p_sum[c] - inter[c]
        return 1.0 if u == 0 else inter[c] / u

    out: dict[str, float] = {}
    if spec.task == "instance":
        out["dice"], out["jaccard"] = float(dice_of(1)), float(jac_of(1))
        out["pixel_accuracy"] = correct / total if total else 1.0
        tp, fp, fn = counts[0.5]
        out["f1@0.5"] = 1.0 if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)
        out["precision@0.5"] = tp / (tp + fp) if tp + fp else (1.0 if fn == 0 else 0.0)
        out["recall@0.5"] = tp / (tp + fn) if tp + fn else 1.0
        out["ap@0.5:0.95"] = float(np.mean([1.0 if sum(c) == 0 else c[0] / sum(c) for c in counts.values()]))
    else:
        present = [c for c in range(1, k) if t_sum[c] + p_sum[c] > 0] or list(range(1, k))
        out["dice"] = float(np.mean([dice_of(c) for c in present]))
        out["jaccard"] = float(np.mean([jac_of(c) for c in present]))
        out["pixel_accuracy"] = correct / total if total else 1.0
        if k > 2:
            for c in range(1, k):
                out[f"dice:{spec.classes[c]}"] = float(dice_of(c))
                out[f"jaccard:{spec.classes[c]}"] = float(jac_of(c))
    return {key: float(v) for key, v in out.items()}


def _score_key(task: str) -> str:
    return "f1@0.5" if task == "instance" else "dice"


# --------------------------------------------------------------------------- checkpoints


def _state_copy(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").clone().contiguous() for k, v in net.state_dict().items()}


def _fsync_write(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _save_checkpoint(ckpt: Path, *, meta: dict, weights: dict[str, torch.Tensor],
                     best: dict[str, torch.Tensor] | None, state: dict) -> Path:
    """Write ``ckpt/step-NNNNNNN`` atomically, point ``latest`` at it, drop older ones."""
    from safetensors.torch import save as st_save

    ckpt.mkdir(parents=True, exist_ok=True)
    name = f"step-{meta['step']:07d}"
    tmp = ckpt / f".tmp-{uuid.uuid4().hex}"
    tmp.mkdir()
    try:
        _fsync_write(tmp / "weights.safetensors", st_save(weights, metadata={"format": CKPT_FORMAT}))
        if best is not None:
            _fsync_write(tmp / "best.safetensors", st_save(best, metadata={"format": CKPT_FORMAT}))
        with open(tmp / "state.pt", "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        _fsync_write(tmp / "checkpoint.json", (json.dumps(meta, indent=1) + "\n").encode())
        dest = ckpt / name
        if dest.exists():                      # left by a run killed before it updated `latest`
            shutil.rmtree(dest)
        os.replace(tmp, dest)
        ptr = ckpt / f".latest-{uuid.uuid4().hex}"
        _fsync_write(ptr, name.encode())
        os.replace(ptr, ckpt / "latest")
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    for p in ckpt.iterdir():
        if p.name != name and (_STEP_DIR.match(p.name) or p.name.startswith((".tmp-", ".latest-"))):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    return ckpt / name


def _load_checkpoint(ckpt: Path) -> tuple[dict, dict[str, torch.Tensor], dict[str, torch.Tensor] | None, dict]:
    """(meta, weights, best weights or None, trainer state) of the newest checkpoint in ``ckpt``."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    latest = ckpt / "latest"
    if not latest.is_file():
        raise ModelPackageError(
            f"nothing to resume: no checkpoint in {ckpt}; run without --resume to start a new run")
    step_dir = ckpt / latest.read_text().strip()
    try:
        meta = json.loads((step_dir / "checkpoint.json").read_text())
        if meta.get("format") != CKPT_FORMAT or meta.get("format_version") != CKPT_VERSION:
            raise ValueError(f"format {meta.get('format')!r} version {meta.get('format_version')!r}")
        weights = load_file(step_dir / "weights.safetensors")
        best_path = step_dir / "best.safetensors"
        best = load_file(best_path) if best_path.is_file() else None
        state = torch.load(step_dir / "state.pt", map_location="cpu", weights_only=True)
    except (OSError, ValueError, SafetensorError, RuntimeError) as e:
        raise ModelPackageError(f"checkpoint {step_dir} cannot be read ({type(e).__name__}: {e}); delete "
                                f"{ckpt} and start again") from None
    return meta, weights, best, state


def _arch_of(spec: ModelSpec) -> dict:
    return {"architecture": spec.architecture, "architecture_kwargs": spec.architecture_kwargs,
            "dims": spec.dims, "in_channels": spec.in_channels, "classes": list(spec.classes),
            "context_slices": spec.context_slices}


#: Values of model keys that checkpoints written before the key existed did not record.
_ARCH_DEFAULTS = {"context_slices": 1}


def _check_resume(meta: dict, ckpt: Path, spec: ModelSpec, config: FinetuneConfig, fingerprints: list[str],
                  parent_sha: str | None) -> None:
    have, want = {**_ARCH_DEFAULTS, **meta.get("model", {})}, _arch_of(spec)
    if have != want:
        diffs = [f"{k} {have.get(k)!r} (this run: {want[k]!r})" for k in want if have.get(k) != want[k]]
        raise ModelPackageError(
            f"checkpoint {ckpt} was made for another network: {'; '.join(diffs)}. Resume with the same "
            f"--from / --arch as the run that wrote it, or delete {ckpt} to start again")
    cfg = meta.get("config", {})
    new = json.loads(json.dumps(config.to_dict()))
    diffs = [f"{k} {cfg.get(k, _RESUME_DEFAULTS.get(k))!r} (now {new[k]!r})" for k in _RESUME_KEYS
             if cfg.get(k, _RESUME_DEFAULTS.get(k)) != new[k]]
    if "world_size" in [d.split()[0] for d in diffs]:
        diffs.append(f"resume with torchrun --nproc_per_node {cfg.get('world_size', 1)} (or without torchrun "
                     "when that is 1)")
    if diffs:
        raise ModelPackageError(
            f"checkpoint {ckpt} was made with other settings: {'; '.join(diffs)}. Resume with the same "
            f"settings, or delete {ckpt} to start again")
    if meta.get("fingerprints") != fingerprints:
        raise ModelPackageError(
            f"the training data changed since checkpoint {ckpt} was written (folder fingerprints differ); "
            f"resume on the same folders, or delete {ckpt} to start again")
    if meta.get("parent_sha256") != parent_sha:
        raise ModelPackageError(f"checkpoint {ckpt} was made from another parent model; resume with the same "
                                f"--from, or delete {ckpt} to start again")


# --------------------------------------------------------------------------- the run


class FolderInfoView:
    """The folders' classes and task shaped like a FolderInfo, for :func:`check_classes`."""

    def __init__(self, loaded: LoadedFolders):
        self.classes, self.task = loaded.classes, loaded.task


def _resolve_parent(parent: str | os.PathLike) -> ModelPackage:
    return load_model(parent, device="cpu", precision="fp32").package


def _scratch_spec(*, arch: str, arch_kwargs: dict | None, loaded: LoadedFolders, classes: Sequence[str] | None,
                  task: str | None, normalization: dict | None, name: str, version: str | None, dims: int = 2,
                  context_slices: int = 1) -> ModelSpec:
    task = task or loaded.task
    fclasses = tuple(classes) if classes else loaded.classes
    if task == "instance":
        if fclasses[-1] == "boundary" and len(fclasses) >= 3:
            fclasses = fclasses[:-1]
        if len(fclasses) != 2:
            raise TrainingFolderError(
                f"instance models segment one object class; got classes {list(fclasses)}. Give "
                "background and one object class (e.g. --classes background,nucleus)")
        model_classes = (*fclasses, "boundary")
        post = InstanceParams().to_dict()
    else:
        model_classes, post = fclasses, {}
    img = loaded.train[0].image
    spatial = 3 if loaded.volumes else 2
    raw_c = img.shape[-1] if img.ndim == spatial + 1 else 1
    norm = normalization or {"kind": "percentile"}
    norm = spec_from_dict(norm).to_dict()
    if norm["kind"] == "hematoxylin":
        raw_c = 3
    elif raw_c == 4:
        raw_c = 3
    in_c = output_channels(spec_from_dict(norm), raw_c) * int(context_slices)
    modality = sorted(loaded.modalities)[0] if len(loaded.modalities) == 1 else ""
    kind = "3D" if dims == 3 else f"2.5D ({context_slices} slices)" if context_slices > 1 else "2D"
    spec = ModelSpec(name=name, version=version or "0.1.0", architecture=arch,
                     architecture_kwargs=dict(arch_kwargs or {}), dims=dims, in_channels=in_c,
                     classes=tuple(model_classes), task=task, postprocess=post, normalization=norm,
                     tile={"size": 256, "overlap": 0.25}, modality=modality, context_slices=int(context_slices),
                     description=f"{kind} {task} segmentation trained from scratch with segloop-train")
    spec.validate(source="from-scratch model")
    return spec


def samples_spacing(samples: Sequence[Sample]) -> tuple[float, ...] | None:
    """The spacing all volume samples were exported with (``meta["spacing"]``, ZYX), or None.

    None when any volume has no spacing or they differ (2D samples made volumes are not
    counted).  Never guessed.
    """
    found = {tuple(float(v) for v in s.meta["spacing"]) if s.meta.get("spacing") else None
             for s in samples if s.meta.get("volume") and not s.meta.get("from_2d")}
    if len(found) != 1:
        return None
    only = found.pop()
    return only if only is not None and len(only) == 3 else None


def _volume_spec_fields(spec: ModelSpec, loaded: LoadedFolders, patch_used, *, scratch: bool) -> ModelSpec:
    """A 2.5D / 3D spec with the tile a from-scratch 3D run trained with and the data's spacing."""
    tile = dict(spec.tile)
    if scratch and spec.dims == 3:
        tile = {"size": [int(v) for v in patch_used], "overlap": float(tile.get("overlap", 0.25))}
    spacing = samples_spacing([*loaded.train, *loaded.val])
    return replace(spec, tile=tile, spacing=spacing if spacing is not None else spec.spacing)


def _prepare(samples: Sequence[Sample], spec: ModelSpec, norm: dict) -> tuple[list, list, list, list]:
    """Raw images, fitted normalizers, targets and modalities of training samples.

    Volumes (2.5D / 3D models) are normalized with statistics of the whole volume; a 2.5D
    model's targets are computed slice by slice.
    """
    raw_c = _raw_channels(spec, norm)
    k = spec.context_slices
    images, normalizers, targets, modalities = [], [], [], []
    for s in samples:
        spatial = np.asarray(s.labels).ndim
        img = _drop_alpha(np.asarray(s.image), raw_c, spatial=spatial)
        ca = -1 if img.ndim == spatial + 1 else None
        try:
            nz = Normalizer.fit(norm, img, channel_axis=ca)
        except SegloopError as e:
            raise TrainingFolderError(f"sample {s.source}: {e}") from None
        if nz.out_channels * k != spec.in_channels:
            have = img.shape[-1] if ca is not None else 1
            per = f" per slice x {k} slices" if k > 1 else ""
            raise TrainingFolderError(
                f"sample {s.source} has {have} channel(s); normalization {norm['kind']!r} makes "
                f"{nz.out_channels} of them{per} but {spec.name} takes {spec.in_channels}. Export images with "
                f"{raw_c} channel(s), or choose another normalization (e.g. hematoxylin for RGB tissue)")
        images.append(img)
        normalizers.append(nz)
        targets.append(reviewed_targets(s, spec.task, per_slice=spec.dims == 2 and spatial == 3))
        modalities.append(str(s.meta.get("modality", "")))
    return images, normalizers, targets, modalities


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
    ctx = DistContext()
    if distributed_requested():                 # torchrun: join the process group first
        from segloop.core.engines import resolve_device

        ctx, kw["device"] = from_env(resolve_device(device))
    try:
        return _finetune(ctx, **kw)
    finally:
        ctx.close()


def _finetune(ctx: DistContext, folders, *, parent, out, steps, epochs, lr, batch, patch, device, seed, resume,
              eval_every, checkpoint_every, patience, version, name, arch, arch_kwargs, classes, task,
              normalization, dims, context_slices, augment, weight_decay, class_weights, grad_clip, onnx,
              keep_checkpoint, precision, command, progress, cancel) -> FinetuneResult:
    """The body of :func:`finetune` in one process (rank ``ctx.rank`` of ``ctx.world_size``)."""
    t_start = time.perf_counter()
    augment = augment or AugmentConfig()
    main = ctx.is_main
    emit = (progress or (lambda ev: None)) if main else (lambda ev: None)

    def note(msg: str) -> None:
        if not main:
            return
        warnings.warn(msg, FinetuneWarning, stacklevel=4)
        emit({"event": "warning", "message": msg})

    # Every rank prepares the run; with several ranks, the errors of any of them are agreed on
    # below (ctx.agree) so that all stop together instead of waiting for each other.
    setup_error: BaseException | None = None
    choice: PrecisionChoice | None = None
    resume_state: dict | None = None
    history: list[dict] = []
    parent_metrics: dict[str, float] = {}
    best: dict[str, Any] | None = None            # {"step", "epoch", "score", "metrics"}
    best_state: dict[str, torch.Tensor] | None = None
    bad_evals = 0
    seconds_before = 0.0
    try:
        # ---- arguments and output location first: fail before any work
        out = Path(out)
        if (parent is None) == (arch is None):
            raise ModelPackageError("give either a parent model to fine-tune (--from) or an architecture to train "
                                    "from scratch (--arch), not both and not neither")
        if steps is not None and epochs is not None:
            raise ValueError("give steps or epochs, not both")
        for label, v in (("steps", steps), ("epochs", epochs), ("batch", batch), ("eval_every", eval_every),
                         ("checkpoint_every", checkpoint_every)):
            if v is not None and int(v) < 1:
                raise ValueError(f"{label} must be at least 1, got {v}")
        if not (math.isfinite(lr) and lr > 0):
            raise ValueError(f"lr must be a positive number, got {lr}")
        if patience is not None and int(patience) < 1:
            raise ValueError(f"patience must be at least 1 evaluation (or None), got {patience}")
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
        if dims is not None and (isinstance(dims, bool) or dims not in (2, 3)):
            raise ValueError(f"dims must be 2 or 3, got {dims!r}")
        if context_slices is not None and (isinstance(context_slices, bool) or not isinstance(context_slices, int)
                                           or context_slices < 1 or context_slices % 2 == 0):
            raise ValueError(f"context_slices must be an odd number >= 1 (1, 3, 5 ...), got {context_slices!r}")
        if (context_slices or 1) > 1 and dims == 3:
            raise ValueError("context_slices > 1 (2.5D) is for 2D networks; a 3D network (dims 3) sees the "
                             "neighbouring slices itself: give one or the other")
        ckpt = Path(resume) if isinstance(resume, str | os.PathLike) else checkpoint_dir(out)
        if main:                                  # only rank 0 writes
            _check_out(out, ckpt, resume=bool(resume))
        if isinstance(normalization, str):
            normalization = json.loads(normalization) if normalization.strip().startswith("{") \
                else {"kind": normalization.strip()}
        from segloop.core.engines import resolve_device

        dev = resolve_device(device)

        # ---- parent / spec and data
        parent_pkg: ModelPackage | None = None
        with warnings.catch_warnings():
            if not main:                          # rank 0 reports skipped samples
                warnings.simplefilter("ignore", SkippedSampleWarning)
            if parent is not None:
                if classes is not None or task is not None or arch_kwargs is not None:
                    raise ModelPackageError("classes, task and arch_kwargs come from the parent model; give them "
                                            "only when training from scratch (--arch)")
                parent_pkg = _resolve_parent(parent)
                ps = parent_pkg.spec
                if (dims is not None and dims != ps.dims) or (context_slices is not None
                                                              and context_slices != ps.context_slices):
                    raise ModelPackageError(
                        f"{ps.name} is a {ps.dims}D model with context_slices {ps.context_slices}; dims and "
                        "context_slices come from the parent model: give them only when training from scratch "
                        "(--arch)")
                norm = spec_from_dict(normalization).to_dict() if normalization else dict(ps.normalization)
                if normalization and output_channels(spec_from_dict(norm), _raw_channels(ps, norm)) \
                        * ps.context_slices != ps.in_channels:
                    raise ModelPackageError(f"normalization {norm['kind']!r} does not give the {ps.in_channels} "
                                            f"input channel(s) {ps.name} takes")
                loaded = load_folders(folders, spec=ps, volumes=_is_volume_spec(ps))
                mods = loaded.modalities - {"other", ""}
                modality = mods.pop() if len(mods) == 1 else ps.modality
                spec = replace(ps, name=name or ps.name, version=version or bump_version(ps.version),
                               parent={"name": ps.name, "version": ps.version, "sha256": ps.sha256},
                               training=None, sha256="", onnx_sha256=None, normalization=norm,
                               weights_dtype="float32", modality=modality,
                               description=(f"{ps.description} Fine-tuned with segloop-train on "
                                            f"{modality or 'new'} data.").strip())
            else:
                dims, context_slices = int(dims or 2), int(context_slices or 1)
                loaded = load_folders(folders, volumes=dims == 3 or context_slices > 1)
                spec = _scratch_spec(arch=arch, arch_kwargs=arch_kwargs, loaded=loaded, classes=classes, task=task,
                                     normalization=normalization, name=name or out.stem, version=version,
                                     dims=dims, context_slices=context_slices)
                check_classes(FolderInfoView(loaded), spec, folder=", ".join(str(f.path) for f in loaded.folders))
                norm = spec.normalization
        for msg in loaded.warnings:
            emit({"event": "warning", "message": msg})
        if not loaded.val:
            note("no val samples: the new weights cannot be compared with the parent; the package holds the last "
                 "weights and records improved = null. Export some samples with split 'val'")

        try:
            net = build(spec.architecture, spec.in_channels, spec.n_classes, dims=spec.dims,
                        **spec.architecture_kwargs)
        except TypeError as e:
            raise ModelPackageError(f"architecture {spec.architecture!r} does not take {spec.architecture_kwargs}: "
                                    f"{e}") from None
        if parent_pkg is not None:
            net.load_state_dict(parent_pkg.state_dict)
        divisor = int(getattr(net, "divisor", 1))
        sizes = [tuple(s.labels.shape) for s in loaded.train]
        if spec.dims == 3:
            patch_used, why = fit_patch_3d(patch, sizes, divisor)
        else:
            if not np.isscalar(patch):
                raise ValueError(f"a 2D / 2.5D model trains on square patches: give one patch side, not {patch!r}")
            patch_used, why = fit_patch(int(patch), [sz[-2:] for sz in sizes], divisor)
        if why:
            note(why)
        if loaded.volumes:
            spec = _volume_spec_fields(spec, loaded, patch_used, scratch=parent_pkg is None)
        images, normalizers, targets, modalities = _prepare(loaded.train, spec, norm)
        reviewed_px = sum(int(np.count_nonzero(t != 255)) for t in targets)
        patch_px = math.prod(_patch_shape(patch_used, spec.dims))
        # An epoch draws about as many pixels as the samples hold, over all ranks together.
        spe = max(1, math.ceil(reviewed_px / (batch * ctx.world_size * patch_px)))
        total = int(steps) if steps is not None else int(epochs) * spe if epochs is not None else 500
        if eval_every is None:
            eval_every = max(spe, math.ceil(total / 20))
        if checkpoint_every is None:
            checkpoint_every = spe
        if class_weights == "auto":
            class_weights = (1.0, 1.0, 2.0) if spec.task == "instance" and spec.n_classes == 3 else None
        if main:                                  # measured once, on rank 0, and sent to the others
            choice = choose_precision(precision, dev, net, in_channels=spec.in_channels, batch=int(batch),
                                      patch=_patch_shape(patch_used, spec.dims))
            if SLOW_BF16 in choice.reason:
                note(f"--precision bf16: {SLOW_BF16}")
        config = FinetuneConfig(
            steps=total, steps_per_epoch=spe, batch=int(batch), patch=patch_used, lr=float(lr),
            weight_decay=float(weight_decay),
            class_weights=tuple(map(float, class_weights)) if class_weights else None,
            eval_every=int(eval_every), checkpoint_every=int(checkpoint_every),
            patience=None if patience is None else int(patience), seed=int(seed), grad_clip=float(grad_clip),
            augment=augment.to_dict(), normalization=norm, world_size=ctx.world_size,
            precision=choice.precision if choice is not None else "fp32", dims=spec.dims,
            context_slices=spec.context_slices)
        if loaded.volumes:
            sampler = VolumePatchSampler(images, normalizers, targets, modalities, patch=patch_used, dims=spec.dims,
                                         context_slices=spec.context_slices, config=augment)
        else:
            sampler = AugmentedPatchSampler(images, normalizers, targets, modalities, patch=patch_used,
                                            config=augment)
        fingerprints = [f.fingerprint for f in loaded.folders]
        parent_sha = parent_pkg.spec.sha256 if parent_pkg is not None else None

        # ---- optimizer, schedule, resume
        net.to(dev)
        opt = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        # one-cycle warm-up over 10% of the steps, at least 2 steps (OneCycleLR divides by the phase length)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.lr, total_steps=max(config.steps, 4),
                                                    pct_start=max(0.1, 2.5 / max(config.steps, 4)))
        cw = torch.tensor(config.class_weights, dtype=torch.float32, device=dev) if config.class_weights else None
        key = _score_key(spec.task)
        if resume and main:                       # rank 0 reads and checks the checkpoint, sends the state
            meta, weights, best_w, resume_state = _load_checkpoint(ckpt)
            _check_resume(meta, ckpt, spec, config, fingerprints, parent_sha)
            try:
                net.load_state_dict(weights)
            except RuntimeError as e:
                raise ModelPackageError(f"checkpoint {ckpt} does not fit {spec.architecture!r}: "
                                        f"{str(e).splitlines()[0]}; delete {ckpt} to start again") from None
            history, parent_metrics = meta["history"], meta["parent_metrics"]
            best, bad_evals = meta["best"], int(meta["bad_evals"])
            best_state = best_w
            seconds_before = float(meta.get("seconds", 0.0))
            have = json.loads(json.dumps(meta.get("config", {}))).get("precision")
            if have and have != config.precision:
                note(f"the checkpoint was trained in {have}; this run goes on in {config.precision} "
                     f"({choice.reason})")
        elif main and not resume and parent_pkg is not None and loaded.val:
            pm = parent_pkg if _is_volume_spec(parent_pkg.spec) else Model(parent_pkg, device=dev, precision="fp32")
            parent_metrics = evaluate_samples(pm, loaded.val, normalization=norm, device=dev)
            del pm
    except Exception as e:
        if not ctx.enabled:
            raise
        setup_error = e
    ctx.agree(setup_error, "while preparing the run")
    if ctx.enabled:
        sent = ctx.broadcast({"precision": choice.to_dict() if choice else None, "resume": resume_state})
        choice, resume_state = PrecisionChoice(**sent["precision"]), sent["resume"]
        config = replace(config, precision=choice.precision)
    start, cur_batch, resumed_from = 0, config.batch, None
    if resume_state is not None:
        opt.load_state_dict(resume_state["optimizer"])
        sched.load_state_dict(resume_state["scheduler"])
        torch.set_rng_state(resume_state["rng"]["torch"])
        start = resumed_from = int(resume_state["step"])
        cur_batch = int(resume_state.get("batch", config.batch))
    scaler = grad_scaler(dev, config.precision)
    if scaler is not None and resume_state is not None and resume_state.get("scaler"):
        scaler.load_state_dict(resume_state["scaler"])
    model = wrap_ddp(net, ctx, dev)               # DDP averages the gradients over the ranks
    debug = debug_batches(ctx)

    emit({"event": "start", "steps": config.steps, "epochs": math.ceil(config.steps / spe),
          "steps_per_epoch": spe, "batch": cur_batch, "patch": patch_used, "device": dev,
          "train": len(loaded.train), "val": len(loaded.val), "parent_metrics": parent_metrics,
          "resumed_from": resumed_from, "out": str(out), "checkpoint": str(ckpt),
          "world_size": ctx.world_size, "effective_batch": ctx.world_size * cur_batch,
          "precision": config.precision, "precision_reason": choice.reason})

    def checkpoint(step: int) -> Path:
        meta = {"format": CKPT_FORMAT, "format_version": CKPT_VERSION, "step": step,
                "epoch": math.ceil(step / spe), "model": _arch_of(spec), "config": config.to_dict(),
                "fingerprints": fingerprints, "parent_sha256": parent_sha, "history": history,
                "parent_metrics": parent_metrics, "best": best, "bad_evals": bad_evals,
                "seconds": seconds_before + time.perf_counter() - t_start, "torch": torch.__version__}
        state = {"optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                 "rng": {"torch": torch.get_rng_state(), "seed": config.seed}, "step": step,
                 "batch": cur_batch}
        if scaler is not None:
            state["scaler"] = scaler.state_dict()
        p = _save_checkpoint(ckpt, meta=meta, weights=_state_copy(net), best=best_state, state=state)
        emit({"event": "checkpoint", "step": step, "path": str(p)})
        return p

    def evaluate_now(step: int) -> dict[str, float]:
        nonlocal best, best_state, bad_evals
        net.eval()
        state = _state_copy(net)
        pkg = ModelPackage(spec, state)
        m = evaluate_samples(pkg if _is_volume_spec(spec) else Model(pkg, device=dev, precision="fp32"), loaded.val,
                             normalization=norm, device=dev) if loaded.val else {}
        recent = [h["loss"] for h in step_losses[-config.eval_every:]]
        entry = {"step": step, "epoch": math.ceil(step / spe), "loss": float(np.mean(recent)) if recent else None,
                 **m, "batch": cur_batch, "seconds": round(seconds_before + time.perf_counter() - t_start, 1)}
        history.append(entry)
        score = m.get(key)
        improved_now = score is not None and (best is None or score > best["score"])
        if improved_now:
            best = {"step": step, "epoch": entry["epoch"], "score": score, "metrics": m}
            best_state = state
            bad_evals = 0
        elif score is not None:
            bad_evals += 1
        emit({"event": "eval", "step": step, "epoch": entry["epoch"], "metrics": m, "best": improved_now,
              "best_step": best["step"] if best else None})
        return m

    def quiet_peer(err: BaseException) -> PeerFailedError:
        """What a rank > 0 raises for an error all ranks agreed on (rank 0 reports it)."""
        return PeerFailedError(str(err), ranks=[0], quiet=True)

    # ---- the loop
    # Before each step the ranks agree on a stop code (a no-op with one process): an error on
    # rank 0 (in evaluation or a checkpoint), early stopping (rank 0), or a cancel on any rank.
    step_losses: list[dict] = []
    stopped = "completed"
    step = start
    last_ckpt = start if resume else None
    early = False
    pending_error: BaseException | None = None
    while True:
        code = ERROR if pending_error is not None else EARLY if early else GO
        if code == GO and step < config.steps and _is_cancelled(cancel):
            code = CANCEL
        code = ctx.max_code(code)
        if code == ERROR:
            if pending_error is not None:
                raise pending_error
            raise PeerFailedError(f"stopped at step {step}: rank 0 of this distributed run failed", ranks=[0],
                                  quiet=True)
        if code == EARLY:
            stopped = "early_stopping"
            break
        if step >= config.steps:
            break
        if code == CANCEL:
            stopped = "cancelled"
            break
        step += 1
        epoch = math.ceil(step / spe)
        net.train()
        while True:
            rng = np.random.default_rng(step_entropy(config.seed, step, ctx.rank))
            torch.manual_seed(step_torch_seed(config.seed, step, ctx.rank))
            status, err, lv = _OK, None, float("nan")
            try:
                x, y = sampler.batch(cur_batch, rng)
            except Exception as e:
                if not ctx.enabled:
                    raise
                status, err = _FAILED, e
            if status == _OK:
                if debug is not None:
                    debug(step, x, y)
                try:
                    xt, yt = torch.from_numpy(x).to(dev), torch.from_numpy(y).to(dev)
                    with autocast(dev, config.precision):
                        logits = model(xt)
                    loss = dice_ce_loss(logits.float(), yt, class_weights=cw)
                    lv = float(loss.detach())
                    if not math.isfinite(lv):
                        status = _NONFINITE
                except (RuntimeError, MemoryError) as e:
                    if _is_oom(e):
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
                e = _diverged(step, epoch, "loss", lv if not math.isfinite(lv) else float("nan"), last_ckpt, ckpt,
                              config.lr)
                raise e if main else quiet_peer(e)
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
                        e = _diverged(step, epoch, "gradient norm", gnorm, last_ckpt, ckpt, config.lr)
                        raise e if main else quiet_peer(e)
                    if scaler is not None:        # skips the step when the fp16 gradients overflowed
                        scaler.step(opt)
                        scaler.update()
                    else:
                        opt.step()
                    break
                except (TrainingDivergedError, PeerFailedError):
                    raise
                except (RuntimeError, MemoryError) as e:
                    if ctx.enabled or not _is_oom(e):  # no agreement is possible inside DDP's backward
                        raise
                    status = _OOM
            # out of memory: every rank halves its batch and tries the step again
            opt.zero_grad(set_to_none=True)
            logits = loss = xt = yt = None
            if dev.startswith("cuda"):
                torch.cuda.empty_cache()
            if cur_batch == 1:
                e = TrainingOutOfMemoryError(
                    f"out of memory on {dev} with a batch of 1 patch of {patch_used} px at step {step}; use "
                    f"a smaller --patch, or --device cpu")
                raise (e if main else quiet_peer(e)) from None
            cur_batch = max(1, cur_batch // 2)
            note(f"out of memory on {dev} at step {step}; retrying with batch {cur_batch}")
        sched.step()
        step_losses.append({"step": step, "loss": lv})
        try:
            emit({"event": "step", "step": step, "steps": config.steps, "epoch": epoch, "loss": lv,
                  "lr": float(sched.get_last_lr()[0]), "batch": cur_batch})
            if main and (step % config.eval_every == 0 or step == config.steps):
                evaluate_now(step)
                early = config.patience is not None and bad_evals >= config.patience
            if step % config.checkpoint_every == 0 or step == config.steps or early:
                if main:
                    checkpoint(step)
                last_ckpt = step
            if early:
                note(f"early stopping at step {step}: {config.patience} evaluations without a better {key}")
        except Exception as e:
            if not ctx.enabled:
                raise
            pending_error = e                     # raised once every rank has agreed to stop

    # ---- the package (rank 0; the others wait for its outcome)
    def finish() -> FinetuneResult:
        nonlocal best_state
        last = last_ckpt
        if stopped == "cancelled":
            if step > (last or 0):
                checkpoint(step)
                last = step
            if best_state is None:
                msg = (f"cancelled at step {step} before any evaluation: no package written; the checkpoint in "
                       f"{ckpt} can be resumed")
                emit({"event": "cancelled", "package": None, "message": msg, "step": step})
                return FinetuneResult(None, None, {}, parent_metrics, None, "cancelled", history, msg, ckpt,
                                      seconds_before + time.perf_counter() - t_start)
        if best_state is None:              # no val samples: the last weights
            best_state = _state_copy(net)
        metrics = dict(best["metrics"]) if best else {}
        improved = (metrics[key] > parent_metrics[key]) if (key in metrics and key in parent_metrics) else None
        seconds = seconds_before + time.perf_counter() - t_start
        training = {
            "folders": [f.to_dict() for f in loaded.folders],
            "sample_counts": {"train": len(loaded.train), "val": len(loaded.val)},
            "config": config.to_dict(),
            "history": history,
            "best": ({"step": best["step"], "epoch": best["epoch"], **best["metrics"]} if best else {}),
            "parent_metrics": parent_metrics,
            "metrics": metrics,
            "improved": improved,
            "stopped": stopped,
            "steps_done": step,
            "resumed_from": resumed_from,
            "device": dev,
            "precision": choice.to_dict(),
            "world_size": ctx.world_size,
            "batch_per_process": cur_batch,
            "effective_batch": ctx.world_size * cur_batch,
            "distributed": ({"backend": ctx.backend, "world_size": ctx.world_size,
                             "sampling": "rank r draws the patches of step i from default_rng([seed, i, r]); "
                                         "DDP averages the gradients"} if ctx.enabled else None),
            "command": command or _api_command(folders, parent, out, config),
            "seconds": round(seconds, 1),
            "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "torch": torch.__version__,
            "segloop_train": "finetune v1",
            "dims": spec.dims,
            "context_slices": spec.context_slices,
            "evaluated_with": ("Model.predict" if not _is_volume_spec(spec) or model_predicts_volumes()
                               else "segloop_train.volumes.predict_volume"),
        }
        onnx_bytes, onnx_note = None, "not asked for (onnx=False / --no-onnx)"
        if onnx:
            onnx_bytes, onnx_note = _export_onnx(spec, best_state)
            if onnx_note:
                note(onnx_note)
        training["onnx"] = {"exported": onnx_bytes is not None, "reason": onnx_note}
        new_spec = replace(spec, training=training)
        card = _card(new_spec, parent_metrics, metrics, improved)
        written = save_package(out, new_spec, best_state, onnx_bytes=onnx_bytes, card=card)
        if not keep_checkpoint and stopped != "cancelled":
            shutil.rmtree(ckpt, ignore_errors=True)
            kept = None
        else:
            kept = ckpt
        verdict = ("better than" if improved else "not better than") if improved is not None \
            else "not compared with"
        msg = (f"wrote {out} ({new_spec.name} {new_spec.version}); on {len(loaded.val)} val image(s) it is "
               f"{verdict} its parent" if parent_pkg is not None else f"wrote {out} ({new_spec.name} "
                                                                       f"{new_spec.version})")
        if stopped == "cancelled":
            msg = f"cancelled at step {step}; " + msg + f" (best weights, from step {best['step']})"
            emit({"event": "cancelled", "package": str(out), "message": msg, "step": step,
                  "metrics": metrics, "parent_metrics": parent_metrics, "improved": improved})
        else:
            emit({"event": "done", "package": str(out), "metrics": metrics, "parent_metrics": parent_metrics,
                  "improved": improved, "stopped": stopped, "seconds": round(seconds, 1), "message": msg})
        return FinetuneResult(out, written, metrics, parent_metrics, improved, stopped, history, msg, kept,
                              seconds)

    if not ctx.enabled:
        return finish()
    result: FinetuneResult | None = None
    final_error: BaseException | None = None
    outcome: dict | None = None
    if main:
        try:
            result = finish()
            outcome = {"result": _result_to_dict(result)}
        except Exception as e:
            final_error = e
            outcome = {"error": f"{type(e).__name__}: {e}"}
    outcome = ctx.broadcast(outcome)
    if final_error is not None:
        raise final_error
    if "error" in outcome:
        raise PeerFailedError(f"rank 0 failed while writing the package: {outcome['error']}", ranks=[0], quiet=True)
    return result if main else _result_from_dict(outcome["result"])


def _result_to_dict(r: FinetuneResult) -> dict:
    """Plain JSON types only (sent to the other ranks; see DistContext.broadcast)."""
    d = {"package": None if r.package is None else str(r.package),
         "spec": None if r.spec is None else r.spec.to_dict(), "metrics": r.metrics,
         "parent_metrics": r.parent_metrics, "improved": r.improved, "stopped": r.stopped, "history": r.history,
         "message": r.message, "checkpoint": None if r.checkpoint is None else str(r.checkpoint),
         "seconds": float(r.seconds)}
    return json.loads(json.dumps(d, default=str))


def _result_from_dict(d: dict) -> FinetuneResult:
    return FinetuneResult(
        None if d["package"] is None else Path(d["package"]),
        None if d["spec"] is None else ModelSpec.from_dict(d["spec"], source="rank 0's result"),
        d["metrics"], d["parent_metrics"], d["improved"], d["stopped"], d["history"], d["message"],
        None if d["checkpoint"] is None else Path(d["checkpoint"]), d["seconds"])


def _diverged(step, epoch, what, value, last_ckpt, ckpt, lr) -> TrainingDivergedError:
    kept = (f"the last good checkpoint (step {last_ckpt}) is kept in {ckpt}" if last_ckpt
            else "no checkpoint had been written yet")
    return TrainingDivergedError(
        f"training stopped: the {what} became {value} at step {step} (epoch {epoch}); {kept}. Lower the "
        f"learning rate (now {lr:g}) and start again, or check the images for extreme values")


def _api_command(folders, parent, out, config: FinetuneConfig) -> str:
    fs = [str(folders)] if isinstance(folders, str | os.PathLike) else [str(f) for f in folders]
    extra = (f", dims={config.dims}" if config.dims != 2 else "") + (
        f", context_slices={config.context_slices}" if config.context_slices != 1 else "")
    return (f"segloop_train.finetune({fs!r}, parent={None if parent is None else str(parent)!r}, "
            f"out={str(out)!r}, steps={config.steps}, lr={config.lr}, batch={config.batch}, "
            f"patch={config.patch}, seed={config.seed}{extra})")


def _export_onnx(spec: ModelSpec, state: dict[str, torch.Tensor]) -> tuple[bytes | None, str | None]:
    """ONNX bytes checked against torch, or None and a note saying why not."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return None, "onnx / onnxruntime are not installed: no model.onnx written (pip install 'napari-segloop[onnx]')"
    from segloop.core.engines import OnnxPredictor, TorchPredictor, export_onnx

    net = ModelPackage(spec, state).build_network()
    size = spec.tile.get("size", 256)
    tile = tuple(int(v) for v in size) if isinstance(size, list | tuple) else (int(size),) * spec.dims
    try:
        data = export_onnx(net, in_channels=spec.in_channels, tile=tile, dims=spec.dims)
        ref = np.random.default_rng(0).standard_normal((1, spec.in_channels, *tile)).astype(np.float32)
        diff = float(np.abs(OnnxPredictor(data, device="cpu")(ref)
                            - TorchPredictor(net, device="cpu", precision="fp32")(ref)).max())
    except Exception as e:  # the exporter raises many types; the package is still useful without ONNX
        return None, (f"ONNX export of this {spec.dims}D network failed ({type(e).__name__}: "
                      f"{str(e).splitlines()[0] if str(e) else ''}); no model.onnx written, the torch engine runs it")
    if diff > 1e-3:
        return None, f"ONNX export disagrees with torch (max |dp| = {diff:.1e}); no model.onnx written"
    return data, None


def _card(spec: ModelSpec, parent_metrics: dict, metrics: dict, improved: bool | None) -> str:
    t = spec.training or {}
    lines = [f"# {spec.name} v{spec.version}", ""]
    if spec.parent:
        lines.append(f"Fine-tuned from **{spec.parent['name']} v{spec.parent['version']}** "
                     f"(weights sha256 {spec.parent['sha256'][:12]}...) with segloop-train.")
    else:
        lines.append(f"Trained from scratch ({spec.architecture}) with segloop-train.")
    lines += ["", "## Data", ""]
    for f in t.get("folders", []):
        lines.append(f"- `{f['path']}` (fingerprint {f['fingerprint'][:12]}...): samples {f['samples']}"
                     + (f", {len(f['skipped'])} skipped" if f["skipped"] else ""))
    kind = ("3D" if spec.dims == 3 else f"2.5D ({spec.context_slices} neighbouring slices as channels)"
            if spec.context_slices > 1 else "2D")
    size = spec.tile.get("size")
    lines += ["", "## Network", "", f"- {kind} `{spec.architecture}` {spec.architecture_kwargs}, "
              f"{spec.in_channels} input channel(s), classes {list(spec.classes)}",
              f"- tile {size}, spacing {list(spec.spacing) if spec.spacing else 'not recorded (unknown)'}"]
    onnx_rec = t.get("onnx") or {}
    if onnx_rec and not onnx_rec.get("exported"):
        lines.append(f"- no model.onnx: {onnx_rec.get('reason')}")
    lines += ["", "## Held-out (val) metrics", ""]
    keys = [k for k in metrics if ":" not in k] or [k for k in parent_metrics if ":" not in k]
    if keys:
        lines.append("| model | " + " | ".join(keys) + " |")
        lines.append("|---|" + "---|" * len(keys))
        if parent_metrics:
            lines.append("| parent | " + " | ".join(f"{parent_metrics.get(k, float('nan')):.3f}" for k in keys) + " |")
        lines.append("| this | " + " | ".join(f"{metrics.get(k, float('nan')):.3f}" for k in keys) + " |")
        per_class = [c for c in spec.classes[1:] if f"dice:{c}" in metrics or f"dice:{c}" in parent_metrics]
        if per_class:
            lines += ["", "Per class (Dice / Jaccard):", "", "| model | " + " | ".join(per_class) + " |",
                      "|---|" + "---|" * len(per_class)]
            rows = ([("parent", parent_metrics)] if parent_metrics else []) + [("this", metrics)]
            for who, m in rows:
                lines.append(f"| {who} | " + " | ".join(
                    f"{m.get(f'dice:{c}', float('nan')):.3f} / {m.get(f'jaccard:{c}', float('nan')):.3f}"
                    for c in per_class) + " |")
        lines.append("")
        lines.append(f"Improved over the parent: {improved}.")
        if t.get("evaluated_with") and t["evaluated_with"] != "Model.predict":
            lines.append(f"Evaluated with {t['evaluated_with']} (this segloop's Model.predict does not run "
                         f"{kind} packages yet).")
    else:
        lines.append("No val samples: not evaluated.")
    lines += ["", "## Reproduce", "", f"`{t.get('command', '')}`", ""]
    return "\n".join(lines)
