"""Train an interactive (click) model from training folders; write an ``interactive`` package.

>>> from segloop_train.interactive import train_interactive
>>> pkg = train_interactive(["corrections/"], out="click-unet", name="click-unet", steps=2000)
>>> import segloop; segloop.load_interactive(pkg).segment(image, positive=[(120, 80)])

What a run does:

1. checks ``out`` (it must not exist; ``resume=True`` may replace a package a cancelled run wrote);
2. reads each folder's ``train`` and ``val`` samples (:func:`segloop_train.folders.load_folders`;
   the ``test`` split is never read; corrupt samples are skipped with a warning).  Folders may
   mix instance and semantic labels, 2D images and volumes: an object is one instance on one
   plane, or one connected part of a class on one plane
   (:func:`segloop.core.editing.objects.label_objects`), kept when at least half of it was reviewed;
3. each step draws ``batch`` objects (a folder at random, then one of its objects) and simulates a
   person's prompt from the labels (:func:`initial_prompt`): a first click near the object's
   innermost point, sometimes (``box_p``) a jittered box with or without that click, sometimes
   (``negative_p``) negative clicks on a neighbour or the background.  Then, as in RITM (Sofiiuk
   et al. 2022), ``0..max_rounds`` rounds run the network without gradients, give its mask back
   as ``previous`` and add the next click a careful corrector would make
   (:func:`corrective_click`, i.e. :func:`~segloop.core.inference.click_eval.next_click`); the
   network is trained on the final prompt;
4. the inputs are exactly what inference builds (:func:`~segloop.core.inference.interactive.prompt_window`,
   :func:`~segloop.core.inference.interactive.read_window`,
   :func:`~segloop.core.inference.interactive.encode_prompt`, the image's normalization fitted
   once on the whole sample, as :func:`~segloop.core.inference.interactive.image_view` picks it),
   with the window's smallest side scaled by a random factor in ``scale_jitter``, flips / 90°
   rotations and a mild gain / offset on the image channels;
5. loss: binary cross-entropy + soft Dice on the object's mask resampled into the window; network
   pixels that depend on an unreviewed pixel, or that lie outside the image, weigh 0
   (:func:`window_target`);
6. every ``eval_every`` steps the weights are scored on up to ``val_objects`` objects of the
   ``val`` split with the simulated corrector of :func:`~segloop.core.inference.click_eval.click_trace`
   (NoC@85/90, mIoU after 1 and 3 clicks, ms per click; :func:`~segloop.core.inference.click_eval.summarize`);
   the best by NoC@85 (ties: mIoU@1) are kept;
7. checkpoints go to ``<out>.ckpt`` (:mod:`segloop_train.checkpoints`); a cancel writes the
   package from the best weights evaluated so far and keeps the checkpoint for ``resume``.

Step ``i`` draws its objects and prompts from ``default_rng([seed, i])``, so on CPU a resumed run
ends with the weights an uninterrupted one would have.
"""

from __future__ import annotations

import datetime as _dt
import math
import os
import threading
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from segloop.core._runtime import is_cancelled
from segloop.core.editing.objects import LabelObject
from segloop.core.formats.package import ModelPackage, ModelSpec, read_spec, save_package
from segloop.core.formats.prompt import PromptSpec
from segloop.core.inference.click_eval import summarize
from segloop.core.inference.interactive import (
    Prompt,
    Window,
    encode_prompt,
    keep_prompted,
    prompt_window,
    read_window,
    window_to_image,
)
from segloop.errors import ModelPackageError, TrainingFolderError
from segloop_train.interactive_data import (
    ClickSource,
    click_scores,
    draw_objects,
    image_channels_of,
    object_traces,
    read_click_data,
)
from segloop_train.interactive_prompts import (
    add_click,
    click_loss,
    corrective_click,
    initial_prompt,
    window_target,
)

__all__ = ["InteractiveConfig", "add_click", "click_loss", "click_scores", "corrective_click", "initial_prompt",
           "interactive_card", "train_interactive", "window_target"]

#: Default network: a small U-Net, fast enough for a click on a CPU.
DEFAULT_ARCH_KWARGS = {"base_width": 16, "depth": 4, "norm": "batch"}
DEFAULT_NORMALIZATION = {"kind": "percentile", "low": 1.0, "high": 99.8, "per_channel": True}
#: Config keys a resumed run may change.
_FREE_ON_RESUME = ("checkpoint_every",)

Progress = Callable[[dict], None]


@dataclass(frozen=True)
class InteractiveConfig:
    """Settings of an interactive training run (recorded in the package; a resume must match them).

    Attributes
    ----------
    steps, batch : int
        Optimizer steps; objects per step.
    lr, weight_decay : float
        AdamW; the learning rate warms up linearly over the first 5 % of the steps, then follows a
        cosine to 5 % of ``lr``.
    eval_every, checkpoint_every : int
    val_objects : int
        At most this many ``val`` objects are scored (a fixed draw from ``seed``).
    max_clicks : int
        Clicks per object in the evaluation (NoC is capped there).
    context_slices : int
        Odd; > 1 stacks the neighbouring planes of a volume as channels (2.5D).
    classes : tuple of int or dict or None
        Semantic folders: the class ids that are objects (a dict maps a folder's name to its ids);
        None: every class but 0.
    max_rounds : int
        Simulated correction rounds before the trained one: uniform in ``0..max_rounds``.
    box_p, negative_p : float
        Probability of a box prompt; of 1-2 negative clicks in the first prompt.
    scale_jitter : (float, float)
        Range of the factor (log-uniform) on the window's smallest side.
    min_area : int
        Smaller objects (pixels on their plane) are left out.
    """

    steps: int = 2000
    batch: int = 16
    lr: float = 1e-3
    weight_decay: float = 1e-4
    seed: int = 0
    eval_every: int = 250
    checkpoint_every: int = 100
    val_objects: int = 150
    max_clicks: int = 10
    context_slices: int = 1
    classes: Any = None
    max_rounds: int = 3
    box_p: float = 0.25
    negative_p: float = 0.3
    scale_jitter: tuple[float, float] = (0.75, 1.33)
    min_area: int = 16
    grad_clip: float = 10.0
    schema_version: int = 1

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["scale_jitter"] = list(self.scale_jitter)
        if isinstance(self.classes, Mapping):
            d["classes"] = {str(k): [int(v) for v in vs] for k, vs in self.classes.items()}
        elif self.classes is not None:
            d["classes"] = [int(v) for v in self.classes]
        return d

    def validate(self) -> None:
        for name, lo in (("steps", 1), ("batch", 1), ("eval_every", 1), ("checkpoint_every", 1),
                         ("val_objects", 0), ("max_clicks", 1), ("max_rounds", 0), ("min_area", 1)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ModelPackageError(f"{name} must be a whole number >= {lo}, got {v!r}")
        k = self.context_slices
        if isinstance(k, bool) or not isinstance(k, int) or k < 1 or k % 2 == 0:
            raise ModelPackageError(f"context_slices must be an odd whole number >= 1, got {k!r}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ModelPackageError(f"lr must be a positive number, got {self.lr!r}")
        lo, hi = self.scale_jitter
        if not 0.1 <= lo <= hi <= 10:
            raise ModelPackageError(f"scale_jitter must be (low, high) with 0.1 <= low <= high <= 10, "
                                    f"got {self.scale_jitter!r}")
        for name in ("box_p", "negative_p"):
            if not 0.0 <= float(getattr(self, name)) <= 1.0:
                raise ModelPackageError(f"{name} must be a probability in [0, 1], got {getattr(self, name)!r}")


# --------------------------------------------------------------------------- episodes


@dataclass
class _Episode:
    """One object's simulated session in one training step."""

    src: ClickSource
    obj: LabelObject
    gt: np.ndarray
    reviewed: np.ndarray
    prompt: Prompt
    min_side: float
    rounds: int


def _episode(src: ClickSource, obj: LabelObject, rng: np.random.Generator, config: InteractiveConfig,
             pspec: PromptSpec, spec_px: float | None) -> _Episode:
    gt = obj.mask(src.labels)
    rev = src.plane(src.reviewed, obj.z)
    lab = src.plane(src.labels, obj.z)
    prompt = initial_prompt(gt, rng, reviewed=rev, labels=lab, box_p=config.box_p, negative_p=config.negative_p)
    lo, hi = config.scale_jitter
    factor = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
    min_side = float(pspec.crop) * factor
    if spec_px is not None and src.pixel_size is not None:
        min_side *= spec_px / src.pixel_size
    rounds = int(rng.integers(0, config.max_rounds + 1))
    return _Episode(src, obj, gt, rev, prompt, min_side, rounds)


def _inputs(eps: Sequence[_Episode], pspec: PromptSpec, context_slices: int) -> tuple[np.ndarray, list[Window]]:
    xs, windows = [], []
    for ep in eps:
        win = prompt_window(ep.prompt, pspec, min_side=ep.min_side)
        img = read_window(ep.src.image, win, ep.src.normalizer(), channel_axis=ep.src.channel_axis, z=ep.obj.z,
                          context_slices=context_slices)
        xs.append(np.concatenate([img, encode_prompt(ep.prompt, win, pspec)], axis=0))
        windows.append(win)
    return np.stack(xs), windows


def _augment(x: np.ndarray, t: np.ndarray, w: np.ndarray, rng: np.random.Generator, image_channels: int):
    """Flips / 90° rotations of input, target and weights together; gain and offset on the image."""
    k = int(rng.integers(4))
    x, t, w = (np.rot90(a, k, axes=(-2, -1)) for a in (x, t, w))
    if rng.random() < 0.5:
        x, t, w = (a[..., ::-1] for a in (x, t, w))
    x = np.array(x, np.float32)
    x[:image_channels] = x[:image_channels] * rng.uniform(0.9, 1.1) + rng.uniform(-0.05, 0.05)
    return x, np.ascontiguousarray(t), np.ascontiguousarray(w)


# --------------------------------------------------------------------------- selection


def _better(m: dict, best: dict | None) -> bool:
    if best is None:
        return True
    a, b = m.get("noc@85", math.inf), best.get("noc@85", math.inf)
    return a < b or (a == b and m.get("miou@1", 0.0) > best.get("miou@1", 0.0))


# --------------------------------------------------------------------------- the run


def _lr_at(step: int, config: InteractiveConfig) -> float:
    warm = max(1, int(0.05 * config.steps))
    if step <= warm:
        return config.lr * step / warm
    t = (step - warm) / max(1, config.steps - warm)
    return config.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def _check_out(out: Path, ckpt: Path, resume: bool) -> bool:
    """Refuse a bad ``out`` before any work; True when ``out`` is a cancelled run's package to replace."""
    from segloop_train.checkpoints import check_out

    if out.exists():
        if not resume:
            raise ModelPackageError(f"{out} already exists; packages are never overwritten, choose a new --out "
                                    "(or pass --resume to finish the cancelled run that wrote it)")
        try:
            stopped = (read_spec(out).training or {}).get("stopped")
        except ModelPackageError:
            stopped = None
        if stopped != "cancelled" or not (ckpt / "latest").is_file():
            raise ModelPackageError(f"{out} already exists and is not the package of a cancelled run with a "
                                    f"checkpoint in {ckpt}; choose a new --out")
        return True
    check_out(out, ckpt, resume=resume)
    return False


def _arch_record(spec: ModelSpec) -> dict:
    from segloop_train.checkpoints import arch_of

    return {**arch_of(spec), "prompt": spec.prompt}


def interactive_card(spec: ModelSpec) -> str:
    """A short MODEL_CARD.md for a package written by :func:`train_interactive`."""
    t = spec.training or {}
    p = spec.prompt_spec
    lines = [f"# {spec.name} v{spec.version}", "", spec.description or "Interactive (click) segmentation model.", "",
             "## Use", "", "```python", "import segloop",
             f"model = segloop.load_interactive({spec.name!r})",
             "mask = model.segment(image, positive=[(y, x)], negative=[], box=None, previous=None)", "```", "",
             "## Network", "",
             f"- `{spec.architecture}` {spec.architecture_kwargs}, {spec.image_channels // spec.context_slices} "
             "image channel(s)"
             + (f" x {spec.context_slices} slices (2.5D)" if spec.context_slices > 1 else "")
             + f" + prompt maps {list(p.maps)}; window {p.crop} px, click radius {p.radius}, context {p.context}",
             f"- normalization `{spec.normalization}`; modality {spec.modality or 'not given'}; pixel size "
             + (f"{spec.pixel_size[0]} µm" if spec.pixel_size else "not recorded"), "", "## Data", ""]
    for f, n in zip(t.get("folders", []), t.get("objects", []), strict=False):
        lines.append(f"- `{f['path']}` (fingerprint {f['fingerprint'][:12]}..., {f['task']}): samples "
                     f"{f['samples']}, objects {n}")
    lines.append(f"- labels: {t.get('labels', 'not stated')}")
    m = t.get("metrics") or {}
    lines += ["", "## Validation (val split, simulated corrector)", ""]
    if m:
        lines += ["| objects | NoC@85 | NoC@90 | mIoU@1 | mIoU@3 | ms/click |", "|---|---|---|---|---|---|",
                  f"| {m.get('objects')} | {m.get('noc@85')} | {m.get('noc@90')} | {m.get('miou@1')} | "
                  f"{m.get('miou@3')} | {m.get('ms_per_click_median')} |"]
    else:
        lines.append("No val objects: not evaluated.")
    lines += ["", "## Reproduce", "", f"`{t.get('command', '')}`", ""]
    return "\n".join(lines)


def train_interactive(folders: str | os.PathLike | Sequence[str | os.PathLike], *, out: str | os.PathLike,
                      name: str, version: str = "1.0.0", arch: str = "unet", arch_kwargs: dict | None = None,
                      normalization: dict | str | None = None, modality: str = "", prompt: PromptSpec | None = None,
                      steps: int = 2000, batch: int = 16, lr: float = 1e-3, context_slices: int = 1,
                      classes: Sequence[int] | Mapping[str, Sequence[int]] | None = None,
                      image_channels: int | None = None, pixel_size: float | None = None, val_objects: int = 150,
                      max_clicks: int = 10, eval_every: int | None = None, checkpoint_every: int | None = None,
                      seed: int = 0, device: str = "auto", resume: bool = False, license: str = "",
                      description: str = "", label_source: str = "hand", min_area: int = 16,
                      command: str | None = None, config: InteractiveConfig | None = None,
                      parent: str | os.PathLike | None = None,
                      cancel: threading.Event | Callable[[], bool] | None = None,
                      progress: Progress | None = None) -> Path | None:
    """Train an interactive (click) model on training folders and write its package.

    Parameters
    ----------
    folders : path or sequence of paths
        Training folders v1 (instance or semantic; 2D images or volumes).  Their ``train``
        samples are trained on, their ``val`` samples pick the best weights; ``test`` is never read.
    out : path
        The new package folder (must not exist; see ``resume``).
    name, version : str
    arch : str
        A network of :func:`segloop.core.networks.available` (built with 2 outputs, ``dims=2``).
    arch_kwargs : dict, optional
        Default ``{"base_width": 16, "depth": 4, "norm": "batch"}``.
    normalization : dict or str, optional
        A normalization spec (or its kind); default percentile 1-99.8.  A one-channel model
        reads RGB samples through their hematoxylin channel (as inference does).
    modality : str
    prompt : PromptSpec, optional
        Maps, crop, click radius, context, threshold; default :class:`PromptSpec`.
    steps, batch, lr : int, int, float
    context_slices : int
        Odd; > 1: 2.5D (a 2D sample is then a one-plane volume).
    classes : sequence of int or {folder name: ids}, optional
        Semantic folders: the class ids that are objects (default all but background).
    image_channels : int, optional
        Image channels of the network; default from the samples (RGB counts as one).
    pixel_size : float, optional
        µm per pixel the model works at (recorded; a sample of known pixel size gets its window
        scaled to it, as :meth:`InteractiveModel.segment` does).  Default None (not recorded).
    val_objects, max_clicks : int
        Objects scored on the ``val`` split; clicks per object.
    eval_every, checkpoint_every : int, optional
        Default ``steps // 5`` (at most 500) and ``min(100, eval_every)``.
    seed : int
    device : {"auto", "cpu", "cuda", "cuda:N", "mps"}
    resume : bool
        Continue the checkpoint in ``<out>.ckpt`` (made with the same settings and data); a
        package the cancelled run wrote at ``out`` is replaced when it finishes.
    license, description : str
        Recorded in the package.
    label_source : {"hand", "automatic", "partly automatic"}
        Who drew the labels (recorded as ``training["labels"]``; the napari widget warns about
        automatic ones).
    min_area : int
        Objects smaller than this (pixels on their plane) are left out.
    command : str, optional
        The command line recorded.
    parent : str or path, optional
        A click model (name or package) to fine-tune: its network, weights, normalization,
        prompt, context slices and pixel size are used (``arch``, ``arch_kwargs``,
        ``normalization``, ``prompt``, ``context_slices``, ``image_channels`` and ``pixel_size``
        are then ignored), it is scored on the val objects before the first step (the package
        keeps its weights unless training beats them), and the package records it as ``parent``.
    config : InteractiveConfig, optional
        All run settings at once (``steps``, ``batch``, ``lr``, ``context_slices``, ``classes``,
        ``val_objects``, ``max_clicks``, ``eval_every``, ``checkpoint_every``, ``seed`` and
        ``min_area`` given here are then ignored).
    cancel : threading.Event or callable, optional
        Checked before each step: stop, write the package from the best weights evaluated so far
        (none when nothing was evaluated) and keep the checkpoint.
    progress : callable, optional
        Called with dicts: ``{"event": "start" | "step" | "eval" | "checkpoint" | "warning" |
        "done" | "cancelled", ...}``.  ``step`` carries ``loss``, ``seconds`` (the step),
        ``simulation_seconds`` (its no-gradient correction rounds) and ``data_seconds`` (drawing
        the prompts and reading the windows).

    Returns
    -------
    Path or None
        The package written (None: cancelled before any evaluation).

    Raises
    ------
    TrainingFolderError
        A folder missing or malformed, no objects to train on, class ids not in a folder.
    ModelPackageError
        ``out`` exists, a bad setting, a checkpoint of other settings or data.
    """
    parent_pkg = parent_package(parent) if parent is not None else None
    if parent_pkg is not None:
        ps = parent_pkg.spec
        arch, arch_kwargs, normalization, prompt = ps.architecture, dict(ps.architecture_kwargs), dict(
            ps.normalization), ps.prompt_spec
        context_slices = int(ps.context_slices)
        image_channels = ps.image_channels // context_slices
        pixel_size = float(ps.pixel_size[0]) if ps.pixel_size else None
        modality = modality or ps.modality
        if config is not None and config.context_slices != context_slices:
            config = replace(config, context_slices=context_slices)
    if config is None:
        eval_every = eval_every if eval_every is not None else max(1, min(500, steps // 5))
        config = InteractiveConfig(
            steps=steps, batch=batch, lr=lr, seed=seed, eval_every=eval_every,
            checkpoint_every=checkpoint_every if checkpoint_every is not None else min(100, eval_every),
            val_objects=val_objects, max_clicks=max_clicks, context_slices=context_slices, min_area=min_area,
            classes=None if classes is None else (dict(classes) if isinstance(classes, Mapping) else tuple(classes)))
    run = _ClickRun(folders, out=Path(out), config=config, resume=resume, progress=progress)
    run.setup(name=name, version=version, arch=arch, arch_kwargs=arch_kwargs, normalization=normalization,
              modality=modality, prompt=prompt, image_channels=image_channels, pixel_size=pixel_size,
              license=license, description=description, label_source=label_source, device=device,
              parent=parent_pkg)
    run.train(cancel)
    return run.write(command)


class _ClickRun:
    """One run of :func:`train_interactive`: :meth:`setup` (checks, data, network, resume),
    :meth:`train` (steps, evaluations, checkpoints), :meth:`write` (the package)."""

    def __init__(self, folders, *, out: Path, config: InteractiveConfig, resume: bool, progress: Progress | None):
        from segloop_train.checkpoints import checkpoint_dir

        self.t0 = time.perf_counter()
        self.emit = progress or (lambda ev: None)
        self.paths = [Path(folders)] if isinstance(folders, str | os.PathLike) else [Path(f) for f in folders]
        if not self.paths:
            raise TrainingFolderError("no training folder given; pass at least one folder exported by segloop")
        config.validate()
        self.config = config
        self.out = out
        self.ckpt = checkpoint_dir(out)
        self.resume = resume
        self.replace_out = _check_out(out, self.ckpt, resume)
        self.history: list[dict] = []
        self.best: dict | None = None
        self.best_state: dict | None = None
        self.step = 0
        self.resumed_from: int | None = None
        self.seconds_before = 0.0
        self.stopped = "finished"
        self.step_times: list[float] = []
        self.sim_times: list[float] = []

    # ------------------------------------------------------------------ setup

    def setup(self, *, name, version, arch, arch_kwargs, normalization, modality, prompt, image_channels,
              pixel_size, license, description, label_source, device, parent: ModelPackage | None = None) -> None:
        import torch

        from segloop.core.inference.engines import resolve_device
        from segloop.core.networks import build
        from segloop_train.folders import load_folders

        config = self.config
        if label_source not in ("hand", "automatic", "partly automatic"):
            raise ModelPackageError(f"label_source must be 'hand', 'automatic' or 'partly automatic', got "
                                    f"{label_source!r}")
        self.label_source = label_source
        self.pspec = prompt if prompt is not None else PromptSpec()
        self.pspec.validate()
        if isinstance(normalization, str):
            normalization = {"kind": normalization}
        norm = dict(normalization) if normalization else dict(DEFAULT_NORMALIZATION)
        kwargs = dict(DEFAULT_ARCH_KWARGS if arch_kwargs is None else arch_kwargs)
        px = None
        if pixel_size is not None:
            from segloop.core.formats.pixel_size import check_pixel_size

            px = check_pixel_size(pixel_size, source="pixel_size")
        with warnings.catch_warnings(record=True) as caught:      # skipped samples: shown as warning events
            warnings.simplefilter("always")
            loaded = [load_folders([p], volumes=True) for p in self.paths]
        for w in caught:
            self.emit({"event": "warning", "message": str(w.message)})
        self.image_channels = image_channels_of(loaded, image_channels)
        spec = ModelSpec(
            name=name, version=version, architecture=arch, architecture_kwargs=kwargs, dims=2,
            in_channels=self.image_channels * config.context_slices + len(self.pspec.maps),
            classes=("background", "object"), task="interactive", postprocess={}, normalization=norm,
            tile={"size": self.pspec.crop, "overlap": 0.0}, pixel_size=px, modality=modality,
            context_slices=config.context_slices, prompt=self.pspec.to_dict(), license=license,
            description=description)
        spec.validate(source=str(self.out))
        self.spec = spec
        self.spec_px = float(px[0]) if px else None
        self.data = read_click_data(self.paths, spec, loaded, classes=config.classes,
                                    context_slices=config.context_slices, min_area=config.min_area)
        for n in self.data.notes:
            self.emit({"event": "warning", "message": n})
        self.val_items = draw_objects(self.data.val, config.val_objects, config.seed)
        self.fingerprints = [f.fingerprint for f in self.data.folders]
        self.dev = resolve_device(device)
        torch.manual_seed(int(config.seed))            # the initial weights come from the seed too
        net = build(arch, spec.in_channels, 2, dims=2, **kwargs)
        if parent is not None:
            ps = parent.spec
            net.load_state_dict({k: v.float() for k, v in parent.state_dict.items()}, strict=True)
            self.spec = spec = replace(spec, parent={"name": ps.name, "version": ps.version, "sha256": ps.sha256})
        self.parent = parent
        net = net.to(self.dev)
        self.channels_last = self.dev != "mps"      # oneDNN's / tensor cores' fast layout
        self.net = net.to(memory_format=torch.channels_last) if self.channels_last else net
        self.opt = torch.optim.AdamW(self.net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        self.last_ckpt = None
        if self.resume:
            self._restore()

    def _restore(self) -> None:
        import torch

        from segloop_train.checkpoints import load_checkpoint

        ckpt = self.ckpt
        meta, weights, best_w, state = load_checkpoint(ckpt)
        if meta.get("kind") != "interactive":
            raise ModelPackageError(f"checkpoint {ckpt} is not an interactive run's; delete it to start again")
        if meta.get("model") != json_safe(_arch_record(self.spec)):
            raise ModelPackageError(f"checkpoint {ckpt} was made for another network or prompt "
                                    f"({meta.get('model')}); resume with the same settings, or delete {ckpt}")
        have, want = meta.get("config", {}), json_safe(self.config.to_dict())
        diffs = [f"{k} {have.get(k)!r} (now {want[k]!r})" for k in want
                 if k not in _FREE_ON_RESUME and have.get(k) != want[k]]
        if diffs:
            raise ModelPackageError(f"checkpoint {ckpt} was made with other settings: {'; '.join(diffs)}. Resume "
                                    f"with the same settings, or delete {ckpt} to start again")
        if meta.get("fingerprints") != self.fingerprints:
            raise ModelPackageError(f"the training data changed since checkpoint {ckpt} was written (folder "
                                    f"fingerprints differ); resume on the same folders, or delete {ckpt}")
        self.net.load_state_dict(weights)
        self.opt.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"])
        self.best_state = best_w
        self.history = list(meta.get("history", []))
        self.best = meta.get("best")
        self.step = self.resumed_from = self.last_ckpt = int(meta["step"])
        self.seconds_before = float(meta.get("seconds", 0.0))

    def seconds(self) -> float:
        return self.seconds_before + time.perf_counter() - self.t0

    # ------------------------------------------------------------------ checkpoints and evaluation

    def checkpoint(self) -> None:
        import torch

        from segloop_train.checkpoints import CKPT_FORMAT, CKPT_VERSION, save_checkpoint, state_copy

        meta = {"format": CKPT_FORMAT, "format_version": CKPT_VERSION, "kind": "interactive", "step": self.step,
                "model": json_safe(_arch_record(self.spec)), "config": json_safe(self.config.to_dict()),
                "fingerprints": self.fingerprints, "history": self.history, "best": self.best,
                "seconds": round(self.seconds(), 1)}
        state = {"optimizer": self.opt.state_dict(), "rng": torch.get_rng_state(), "step": self.step}
        p = save_checkpoint(self.ckpt, meta=meta, weights=state_copy(self.net), best=self.best_state, state=state)
        self.last_ckpt = self.step
        self.emit({"event": "checkpoint", "step": self.step, "path": str(p)})

    def evaluate(self) -> None:
        """Score the current weights on the val objects; keep them when best (NoC@85, then mIoU@1)."""
        from segloop.core.inference.interactive import InteractiveModel
        from segloop_train.checkpoints import state_copy

        if not self.val_items:
            return
        weights = state_copy(self.net)
        model = InteractiveModel(ModelPackage(self.spec, weights), device=self.dev, precision="fp32")
        t0 = time.perf_counter()
        m = summarize(object_traces(model, self.val_items, self.data.sources, max_clicks=self.config.max_clicks),
                      max_clicks=self.config.max_clicks)
        is_best = _better(m, self.best)
        if is_best:
            self.best, self.best_state = {"step": self.step, **m}, weights
        self.history.append({"step": self.step, **m, "seconds": round(time.perf_counter() - t0, 1)})
        self.emit({"event": "eval", "step": self.step, "metrics": m, "best": is_best, "best_step": self.best["step"]})

    # ------------------------------------------------------------------ the steps

    def train(self, cancel) -> None:
        config = self.config
        self.emit({"event": "start", "steps": config.steps, "batch": config.batch, "device": self.dev,
                   "train_objects": sum(len(t) for t in self.data.train), "val_objects": len(self.val_items),
                   "samples": len(self.data.sources), "resumed_from": self.resumed_from, "out": str(self.out),
                   "checkpoint": str(self.ckpt), "in_channels": self.spec.in_channels})
        if self.parent is not None and self.step == 0 and not self.history:
            self.evaluate()                 # step 0: the parent's score; its weights stay unless beaten
        while self.step < config.steps:
            if is_cancelled(cancel):
                self.stopped = "cancelled"
                return
            self.step += 1
            self.train_step()
            if self.step % config.eval_every == 0 or self.step == config.steps:
                self.evaluate()
            if self.step % config.checkpoint_every == 0 or self.step == config.steps:
                self.checkpoint()

    def _forward(self, x: np.ndarray):
        import torch

        xt = torch.from_numpy(x).to(self.dev)
        return self.net(xt.contiguous(memory_format=torch.channels_last) if self.channels_last else xt)

    def simulate(self, eps: list[_Episode]) -> None:
        """The RITM rounds: run the network without gradients, give its mask back as ``previous``,
        add the corrector's next click; each episode runs its own number of rounds (batched per round)."""
        import torch

        pspec, k = self.pspec, self.config.context_slices
        self.net.eval()
        try:
            for r in range(1, self.config.max_rounds + 1):
                active = [ep for ep in eps if ep.rounds >= r]
                if not active:
                    break
                x, wins = _inputs(active, pspec, k)
                with torch.inference_mode():
                    prob = torch.softmax(self._forward(x).float(), 1)[:, 1].cpu().numpy()
                for ep, win, p in zip(active, wins, prob, strict=True):
                    back, origin = window_to_image(p, win, ep.gt.shape)
                    mask = keep_prompted(back >= pspec.threshold, ep.prompt, origin)
                    pred = np.zeros(ep.gt.shape, bool)
                    pred[origin[0]:origin[0] + mask.shape[0], origin[1]:origin[1] + mask.shape[1]] = mask
                    click = corrective_click(ep.gt, pred, ep.reviewed)
                    if click is None:             # nothing left to correct: the mask goes back as it is
                        ep.prompt = replace(ep.prompt, previous=pred if pred.any() else None)
                        ep.rounds = r - 1
                    else:
                        ep.prompt = add_click(ep.prompt, click, pred)
        finally:
            self.net.train()

    def train_step(self) -> None:
        """One optimizer step on ``batch`` objects drawn for ``(seed, step)``."""
        import torch

        from segloop_train.config import TrainingDivergedError

        config, step, data = self.config, self.step, self.data
        t0 = time.perf_counter()
        rng = np.random.default_rng([int(config.seed), step])
        torch.manual_seed(int(config.seed) * 1_000_003 + step)
        folders = [i for i, t in enumerate(data.train) if t]
        eps = []
        for _ in range(config.batch):
            items = data.train[folders[int(rng.integers(len(folders)))]]
            si, obj = items[int(rng.integers(len(items)))]
            eps.append(_episode(data.sources[si], obj, rng, config, self.pspec, self.spec_px))
        t_sim = time.perf_counter()
        self.simulate(eps)
        t_data = t_sim - t0
        t_sim = time.perf_counter() - t_sim
        t1 = time.perf_counter()
        x, wins = _inputs(eps, self.pspec, config.context_slices)
        xs, ts, ws = [], [], []
        for ep, win, xi in zip(eps, wins, x, strict=True):
            t, w = window_target(ep.gt, ep.reviewed, win)
            xi, t, w = _augment(xi, t, w, rng, self.image_channels * config.context_slices)
            xs.append(xi)
            ts.append(t)
            ws.append(w)
        t_data += time.perf_counter() - t1
        lr = _lr_at(step, config)
        for g in self.opt.param_groups:
            g["lr"] = lr
        loss = click_loss(self._forward(np.stack(xs)).float(), torch.from_numpy(np.stack(ts)).to(self.dev),
                          torch.from_numpy(np.stack(ws)).to(self.dev))
        lv = float(loss.detach())
        if not math.isfinite(lv):
            raise TrainingDivergedError(
                f"the loss became {lv} at step {step}; lower the learning rate (now {config.lr}) and start again, "
                f"or resume the last checkpoint (step {self.last_ckpt}) with a lower one")
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.net.parameters(), config.grad_clip)
        self.opt.step()
        dt = time.perf_counter() - t0
        self.step_times.append(dt)
        self.sim_times.append(t_sim)
        self.emit({"event": "step", "step": step, "steps": config.steps, "loss": lv, "lr": lr,
                   "seconds": round(dt, 3), "simulation_seconds": round(t_sim, 3), "data_seconds": round(t_data, 3),
                   "rounds": [ep.rounds for ep in eps]})

    # ------------------------------------------------------------------ the package

    def record(self, command: str | None) -> dict:
        """The package's ``training`` record."""
        import torch

        config = self.config
        return {
            "kind": "interactive",
            "folders": [f.to_dict() for f in self.data.folders],
            "objects": self.data.object_counts,
            "config": json_safe(config.to_dict()),
            "simulation": (f"first click near the innermost point; box p={config.box_p} (+-10 %, with or without "
                           f"the click); negative clicks p={config.negative_p}; 0..{config.max_rounds} RITM rounds "
                           f"of next_click with the previous mask; window side x {list(config.scale_jitter)}; "
                           "flips, rot90, gain/offset"),
            "history": self.history,
            "best": self.best or {},
            "parent_metrics": ({k: v for k, v in self.history[0].items() if k not in ("step", "seconds")}
                               if self.parent is not None and self.history and self.history[0]["step"] == 0 else None),
            "metrics": {k: v for k, v in (self.best or {}).items() if k != "step"},
            "val_objects": len(self.val_items),
            "steps_done": self.step,
            "stopped": self.stopped,
            "resumed_from": self.resumed_from,
            "labels": {"hand": "hand-drawn"}.get(self.label_source, self.label_source),
            "label_source": self.label_source,
            "device": self.dev,
            "seconds": round(self.seconds(), 1),
            "seconds_per_step": round(float(np.median(self.step_times)), 3) if self.step_times else None,
            "simulation_seconds_per_step": round(float(np.median(self.sim_times)), 3) if self.sim_times else None,
            "command": command or (f"segloop_train.interactive.train_interactive({[str(p) for p in self.paths]!r}, "
                                   f"out={str(self.out)!r}, name={self.spec.name!r}, steps={config.steps}, "
                                   f"seed={config.seed})"),
            "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "torch": torch.__version__,
            "segloop_train": "interactive v1",
            "evaluated_with": "segloop.core.inference.click_eval.click_trace",
        }

    def write(self, command: str | None) -> Path | None:
        """Write the package from the best weights (the last ones without val objects)."""
        import shutil

        from segloop_train.checkpoints import state_copy

        out, ckpt, step = self.out, self.ckpt, self.step
        if self.stopped == "cancelled":
            if step > (self.last_ckpt or 0):
                self.checkpoint()
            if self.best_state is None:
                msg = (f"cancelled at step {step} before any evaluation: no package written; the checkpoint in "
                       f"{ckpt} can be resumed")
                self.emit({"event": "cancelled", "package": None, "message": msg, "step": step})
                return None
        elif self.best_state is None:
            self.best_state = state_copy(self.net)
        spec = replace(self.spec, training=self.record(command))
        save_package(out, spec, self.best_state, card=interactive_card(spec), overwrite=self.replace_out)
        best = self.best
        msg = f"wrote {out} ({spec.name} {spec.version})" + (
            f"; best val NoC@85 {best['noc@85']} at step {best['step']}" if best and "noc@85" in best else "")
        metrics = spec.training["metrics"]
        if self.stopped == "cancelled":
            self.emit({"event": "cancelled", "package": str(out), "step": step, "metrics": metrics,
                       "message": f"cancelled at step {step}; {msg}; --resume continues from the checkpoint in {ckpt}"})
        else:
            shutil.rmtree(ckpt, ignore_errors=True)
            self.emit({"event": "done", "package": str(out), "metrics": metrics, "message": msg,
                       "seconds": spec.training["seconds"]})
        return out


def parent_package(parent: str | os.PathLike) -> ModelPackage:
    """The package of a click model to fine-tune (name or path).

    Raises
    ------
    ModelNotFoundError
    ModelPackageError
        It is an automatic model (fine-tune those with ``segloop-train FOLDER --from``).
    """
    from segloop.core.formats.package import load_package
    from segloop.core.formats.registry import model_path

    pkg = load_package(model_path(parent))
    if pkg.spec.task != "interactive":
        raise ModelPackageError(f"{pkg.spec.name} is an automatic ({pkg.spec.task}) model, not a click model: "
                                f"fine-tune it with `segloop-train FOLDER... --from {parent}`")
    return pkg


def json_safe(obj: Any) -> Any:
    """Tuples as lists (what a JSON round trip gives), so records compare equal after a checkpoint."""
    if isinstance(obj, Mapping):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    return obj
