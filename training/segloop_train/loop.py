"""The active-learning loop without a screen: an oracle corrects the regions a strategy picks.

>>> from segloop_train.loop import ScratchModel, run_loop
>>> res = run_loop(pool_images, pool_truth, heldout=(test_images, test_truth), out="al-run",
...                strategy="uncertainty", rounds=5, budget=8, region_size=64,
...                parent=ScratchModel(classes=("background", "nucleus"), task="instance"), steps=100)
>>> res.rows[-1]["corrected_area"], res.rows[-1]["f1@0.5"]

The loop simulates a person working through the loop of DESIGN.md (Segment -> Proofread ->
Export -> Fine-tune -> Compare -> Next) with the ground truth standing in for the person
(the "oracle"):

Round 0 (the starting point, the same for every strategy)
    ``initial`` regions are drawn **at random** (seeded by ``seed`` only, so random,
    uncertainty and diversity runs with the same seed start from the same regions), the
    oracle corrects them and the starting model ``M0`` is trained from ``parent`` for
    ``initial_steps``.  With a parent package and ``initial=0`` round 0 just evaluates the
    parent, which is then ``M0`` (corrected area 0).  ``start`` reuses the round 0 of an
    earlier run (its ``M0``) instead of training it again.
Rounds 1 .. ``rounds``
    1. the current model segments every pool image with uncertainty, the images are cut into
       regions and scored, and the ``strategy`` picks ``budget`` regions that were not corrected
       before (diversity also gets encoder features) - the one active-learning pipeline,
       :func:`segloop.core.learning.pipeline.rank_regions`, that the napari widget runs too;
    2. the oracle copies the ground truth into the picked regions; its record counts the
       pixels whose class (instance models: object vs background) it had to change;
    3. every image whose corrections grew is exported to the training folder as one
       full-image sample (``split="train"``) that **replaces** the image's previous sample:
       labels = the current model's prediction with the ground truth pasted into every
       region corrected so far, ``reviewed`` = the union of those regions.  So the folder is
       at any time what a person would have exported, and training sees only corrected
       pixels (``reviewed == 0`` is ignored by the loss);
    4. a new model is trained by :func:`segloop_train.finetune` **from M0 on all
       corrections so far** (see below), for ``steps`` steps;
    5. it is evaluated on the held-out images (:func:`segloop_train.finetune.evaluate_samples`:
       Dice, Jaccard, instance F1 at IoU 0.5 and AP for instance models, mean and per-class
       Dice / Jaccard for semantic ones), and a row is recorded.

Held-out images are never written to the training folder, and nothing is selected with
them: fine-tuning runs without a ``val`` split and keeps its last weights (no checkpoint is
picked on held-out data).

Why every round fine-tunes M0, not the previous round's model: the model after a round is
then a function of the corrected set alone (given M0 and the seed), not of the path that led
there, so two strategies compared at the same corrected area differ only in *which* pixels
were corrected - not in how many fine-tuning rounds the weights went through.  Every round
costs the same number of steps, the errors of an early model are not carried forward (no
drift, no forgetting), and it is what a person does with the plugin: fine-tune the model they
started from on their whole training folder.  M0 is shared by every strategy (same seed
regions, same seeded initialization), so all curves start from the same point.

Why round 0 may train longer (``initial_steps``): a network trained from scratch for a few
steps is uncertain everywhere - after 120 steps on 8 BBBC007 tiles the normalized entropy on
plain background was 0.46 (the trained ``nuclei-unet``: 0.01) - and then uncertainty cannot
rank regions.  Later rounds fine-tune an already confident M0, which needs far fewer steps.

Why this module is long: :func:`run_loop` and the steps of a round read top to bottom here.
Each step of a round is a function here (:func:`_select_regions`, :func:`_correct_regions`,
:func:`_export_corrections`, :func:`_train_round`, :func:`_evaluate_round`); the CSV and the
curves are :mod:`segloop_train.loop_report`, the command line ``segloop-train loop``
:mod:`segloop_train.loop_cli`.

Outputs in ``out``: ``loop.json`` (the configuration), ``loop.csv`` (one row per round,
rewritten after every round), ``loop.png`` (quality vs corrected area; matplotlib when it is
installed, else a plain Pillow drawing), ``models/round-NN/`` (the package of each round) and,
unless ``folder`` is given elsewhere, ``training-folder/`` with the exported samples and the
:class:`segloop.core.learning.state.ActiveLearningState` (every region corrected so far, marked reviewed).

Deterministic: the regions of round ``r`` are drawn with ``SeedSequence([seed, r])``, the
network's initialization and every training step are seeded, and inference runs in fp32, so a
rerun with the same seed, data, device and number of torch threads gives the same regions and
the same figures.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from segloop.core._runtime import is_cancelled
from segloop.core.learning.pipeline import rank_regions
from segloop.core.learning.regions import REGION_KINDS, Region, region_grid
from segloop.core.learning.state import ActiveLearningState, model_info
from segloop.core.learning.strategies import Strategy, get_strategy
from segloop.errors import (
    ActiveLearningError,
    Cancelled,
    InvalidLabelsError,
    ModelPackageError,
)
from segloop_train.loop_oracle import (
    changed_pixels,
    check_pool,
    fix_match,
    object_clicks,
    object_fixes,
    paste_truth,
)
from segloop_train.loop_report import area_to_reach, plot_curves, quality_key, write_csv
from segloop_train.loop_setup import (
    check_loop_options,
    check_scratch_model,
    entries_before,
    remove_new_entries,
)
from segloop_train.memory import check_loop_memory

__all__ = [
    "LOOP_STRATEGIES",
    "LoopConfig",
    "LoopResult",
    "ScratchModel",
    "area_to_reach",
    "paste_truth",
    "plot_curves",
    "quality_key",
    "run_loop",
    "write_csv",
]

#: Strategies the loop runs (:data:`segloop.core.learning.strategies.STRATEGIES`).
LOOP_STRATEGIES = ("random", "uncertainty", "diversity")

Progress = Callable[[dict], None]


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class ScratchModel:
    """A network trained from scratch (instead of a parent package), described by its constructor.

    Attributes
    ----------
    architecture : str
        Registry key (``unet``, ``unet26``, ``segunet``, ``convnext_unet``).
    architecture_kwargs : dict
        Its keyword arguments.
    classes : tuple of str
        The training folder's classes, index 0 = background.  Instance models: background
        and ONE object class (the model adds ``boundary``).
    task : {"instance", "semantic"}
    dims : {2, 3}
    context_slices : int
        Odd; > 1 makes a 2.5D network (that many neighbouring planes as channels).
    normalization : dict, optional
        A spec of :mod:`segloop.core.formats.normalization`; default percentile.
    modality : str
        Of the training folder (chooses the augmentation: ``CT`` intensity jitter ...).
    name : str
        Base name of the packages (``<name>-al-<strategy>``).
    """

    architecture: str = "unet"
    architecture_kwargs: dict = field(default_factory=lambda: {"depth": 3, "base_width": 16, "norm": "batch"})
    classes: tuple[str, ...] = ("background", "object")
    task: Literal["instance", "semantic"] = "instance"
    dims: int = 2
    context_slices: int = 1
    normalization: dict | None = None
    modality: str = "other"
    name: str = "scratch"
    schema_version: int = 1

    def to_dict(self) -> dict:
        d = asdict(self)
        d["classes"] = list(self.classes)
        return d


@dataclass(frozen=True)
class LoopConfig:
    """Everything that decides a loop's result (saved as ``loop.json``)."""

    strategy: str
    rounds: int
    budget: int
    initial: int
    region_size: int
    region_kind: str
    parent: str | dict
    steps: int
    initial_steps: int
    batch: int
    patch: int | tuple[int, ...]
    lr: float
    seed: int
    methods: tuple[str, ...]
    score: str
    device: str
    precision: str
    finetune_kwargs: dict
    images: tuple[str, ...]
    heldout: tuple[str, ...]
    start: str | None = None
    folder: str = ""
    click_model: str | None = None
    schema_version: int = 1

    def to_dict(self) -> dict:
        d = asdict(self)
        for k in ("methods", "images", "heldout"):
            d[k] = list(d[k])
        if isinstance(self.patch, tuple):
            d["patch"] = list(self.patch)
        return d


@dataclass
class LoopResult:
    """What :func:`run_loop` did.

    Attributes
    ----------
    rows : list of dict
        One per finished round (see the CSV columns in :func:`run_loop`).
    selected : list of list of Region
        The regions corrected in each finished round (round 0 first).
    metric : str
        The quality the curves show: ``"f1@0.5"`` (instance) or ``"dice"`` (semantic).
    out, folder, csv : Path
    plot : Path or None
        None when nothing was evaluated (no held-out images) or no round finished.
    models : list of Path
        The package of each finished round.
    stopped : {"completed", "cancelled", "exhausted"}
        ``"exhausted"``: every region was corrected before the last round.
    config : LoopConfig
    messages : list of str
        Warnings worth reading (from fine-tuning, plotting ...).
    seconds : float
    """

    rows: list[dict]
    selected: list[list]
    metric: str
    out: Path
    folder: Path
    csv: Path
    plot: Path | None
    models: list[Path]
    stopped: str
    config: LoopConfig
    messages: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def corrected(self) -> list:
        """Every region corrected, in the order they were picked."""
        return [r for rnd in self.selected for r in rnd]


# --------------------------------------------------------------------------- helpers


def _slug(name: str, taken: set[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._-")[:100] or "image"
    out, i = base, 1
    while out.casefold() in taken:
        i += 1
        out = f"{base}-{i}"
    taken.add(out.casefold())
    return out


def _axes(image: np.ndarray, spatial: int) -> str:
    return "ZYX"[-spatial:] + ("C" if image.ndim == spatial + 1 else "")


def _round_seed(seed: int, r: int) -> int:
    return int(np.random.SeedSequence([int(seed), int(r)]).generate_state(1)[0])


# --------------------------------------------------------------------------- the loop


def load_model_path(name_or_path) -> str:
    """The package path of a bundled name or a path (what rounds >= 1 fine-tune when round 0 trained nothing)."""
    from segloop.core.formats.registry import model_path

    return str(model_path(name_or_path))


#: Settings that decide round 0 (M0): a ``start`` run must share them.
_START_KEYS = ("images", "seed", "initial", "initial_steps", "region_size", "region_kind", "parent", "batch",
               "patch", "lr", "precision", "finetune_kwargs")


def _check_start(start: Path, config: LoopConfig) -> list[str]:
    """The round-0 region keys of an earlier run, after checking it made M0 as this run would."""
    try:
        have = json.loads((start / "loop.json").read_text())
    except (OSError, ValueError) as e:
        raise ActiveLearningError(f"start {start} is not the output folder of a loop run ({e})") from None
    want = json.loads(json.dumps(config.to_dict(), default=str))
    diffs = [f"{k} {have.get(k)!r} (this run: {want[k]!r})" for k in _START_KEYS if have.get(k) != want[k]]
    if diffs:
        raise ActiveLearningError(f"start {start} was made with other settings: {'; '.join(diffs)}; its round 0 "
                                  "cannot be reused")
    state = ActiveLearningState.load(have.get("folder") or start / "training-folder")
    if state is None or not (start / "models" / "round-00").is_dir():
        raise ActiveLearningError(f"start {start} has no finished round 0 (models/round-00 and the training "
                                  "folder's state); run it first")
    return [r.key for r in state.queue[: config.initial]]



def run_loop(
    images: Sequence | Mapping[str, Any],
    ground_truth: Sequence | Mapping[str, Any],
    *,
    out: str | os.PathLike,
    parent: str | os.PathLike | ScratchModel,
    heldout: tuple[Sequence | Mapping, Sequence | Mapping] | None = None,
    folder: str | os.PathLike | None = None,
    strategy: str = "uncertainty",
    rounds: int = 5,
    budget: int = 8,
    initial: int | None = None,
    region_size: int = 64,
    region_kind: Literal["tile", "slice", "subvolume"] = "tile",
    steps: int = 100,
    initial_steps: int | None = None,
    batch: int = 8,
    patch: int | Sequence[int] = 64,
    lr: float = 2e-3,
    seed: int = 0,
    methods: Sequence[str] = ("entropy",),
    score: Literal["mean", "boundary", "mean+boundary"] = "mean",
    device: str = "cpu",
    precision: Literal["fp32", "auto", "bf16", "fp16"] = "fp32",
    finetune_kwargs: Mapping[str, Any] | None = None,
    sources: Mapping[str, str] | None = None,
    start: str | os.PathLike | None = None,
    click_model: str | os.PathLike | None = None,
    progress: Progress | None = None,
    cancel: threading.Event | Callable[[], bool] | None = None,
) -> LoopResult:
    """Run the active-learning loop with ground truth as the oracle (see the module docstring).

    Parameters
    ----------
    images : sequence or mapping of ndarray
        The pool: (Y, X[, C]) images or (Z, Y, X[, C]) volumes; a mapping gives their ids
        (else ``image-000`` ...).
    ground_truth : sequence or mapping of integer ndarray
        Labels with each image's spatial shape: object ids (instance models) or class ids
        (semantic).  Never shown to the model except inside corrected regions.
    out : path-like
        A new or empty folder for ``loop.json``, ``loop.csv``, ``loop.png``, ``models/`` and
        (by default) the training folder.  A run that fails or is cancelled before its first
        round finished removes what it wrote there (and in ``folder``), so it can run again.
    parent : str, path-like or ScratchModel
        The model every round starts from: a package name / path, or a network trained from
        scratch.
    heldout : (images, ground_truth), optional
        Evaluated after every round, never exported or selected from.  Without it the rows
        have no quality and no plot is drawn.
    folder : path-like, optional
        A new or empty training folder (default ``out / "training-folder"``).
    strategy : {"random", "uncertainty", "diversity"}
    rounds : int
        Active-learning rounds after round 0.
    budget : int
        Regions corrected per round.
    initial : int, optional
        Regions drawn at random for round 0 (default ``budget``; must be > 0 for a
        :class:`ScratchModel`).
    region_size : int
        Tile side in pixels (see :func:`segloop.core.learning.regions.region_grid`).
    region_kind : {"tile", "slice", "subvolume"}
    steps : int
        Fine-tuning steps of rounds 1 .. ``rounds`` (each fine-tunes M0).
    initial_steps : int, optional
        Steps of round 0 (training M0 from ``parent``); default ``steps``.
    batch, patch, lr
        Of each round's :func:`segloop_train.finetune`.
    seed : int
    methods : sequence of str
        Uncertainty methods (``entropy``, ``tta``, ``mc_dropout``); their mean scores the regions.
    score : {"mean", "boundary", "mean+boundary"}
        Region score (:func:`segloop.core.learning.regions.score_regions`).
    device : str
    precision : str
        Of training (fp32 by default: reproducible); inference always runs in fp32.
    finetune_kwargs : mapping, optional
        More keyword arguments of :func:`segloop_train.finetune` (``augment``,
        ``class_weights`` ...).
    sources : mapping of str -> str, optional
        Image id -> source path, recorded in the exported samples (default: the id).
    start : path-like, optional
        The ``out`` folder of an earlier run on the same pool with the same ``parent``,
        ``seed``, ``initial``, ``initial_steps``, regions, batch, patch and lr (typically with
        another strategy): its round-0 model is copied and reused as M0 instead of being
        trained again.  Refused when those settings or the round-0 regions differ.
    click_model : str or path-like, optional
        A click model (``task: "interactive"``, e.g. ``nuclei-click-unet``): the rows gain
        ``clicks``, the effort in clicks of correcting the picked regions with it
        (:func:`segloop_train.loop_oracle.object_clicks`).
    progress : callable, optional
        Called with dicts: ``{"event": "round_start" | "selected" | "exported" | "finetune" |
        "round" | "warning" | "done" | "cancelled", "round": r, ...}``; ``"round"`` carries the
        ``row``, ``"finetune"`` the fine-tuning event under ``"train"``.
    cancel : threading.Event or callable, optional
        Checked between steps of a round and inside fine-tuning; a cancelled loop returns the
        finished rounds (``stopped="cancelled"``).

    Returns
    -------
    LoopResult
        Row columns: ``round``, ``strategy``, ``regions_selected`` (this round),
        ``regions_total``, ``corrected_area`` (pixels / voxels, cumulative),
        ``corrected_fraction`` (of the pool), ``changed_pixels`` (cumulative pixels the oracle
        had to change: class differs from the prediction; instance models: object vs
        background), ``object_fixes`` (cumulative objects a person re-draws or deletes: those
        not matched at IoU 0.85 plus the false positives, at least one click each with a click
        model; :func:`segloop_train.loop_oracle.object_fixes`), ``clicks`` (with ``click_model``:
        cumulative clicks of those fixes, NoC@85 per object plus one per false positive),
        ``mean_uncertainty`` (mean of
        this round's picks; NaN without a model),
        the held-out metrics, ``model_version``, ``model``, ``select_seconds``,
        ``train_seconds``, ``eval_seconds``, ``seconds``.

    Raises
    ------
    InvalidImageError, InvalidLabelsError
        Mismatched counts or shapes of images and ground truth, non-integer labels.
    ActiveLearningError
        Unknown strategy or region kind, a bad budget.
    TrainingFolderError
        ``folder`` is not new or empty.
    ModelPackageError, ModelNotFoundError
        ``out`` is not new or empty; a bad parent.
    """
    t_start = time.perf_counter()
    emit = progress or (lambda ev: None)

    # ---- arguments (checked before anything is written)
    strat = get_strategy(strategy)
    if region_kind not in REGION_KINDS:
        raise ActiveLearningError(f"unknown region kind {region_kind!r}; choose from {', '.join(REGION_KINDS)}")
    initial_steps = int(steps if initial_steps is None else initial_steps)
    for label, v, lo in (("rounds", rounds, 0), ("budget", budget, 1), ("region_size", region_size, 1),
                         ("steps", steps, 1), ("initial_steps", initial_steps, 1)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
            raise ActiveLearningError(f"{label} (--{label.replace('_', '-')}) must be an integer >= {lo}, got {v!r}")
    initial = budget if initial is None else initial
    check_loop_options(initial=initial, batch=batch, patch=patch, lr=lr, methods=tuple(methods), score=score)
    initial = int(initial)
    if isinstance(parent, ScratchModel) and initial == 0:
        raise ActiveLearningError("a model trained from scratch needs initial > 0 regions to start from; give "
                                  "initial (--initial) or a parent model")
    if isinstance(parent, ScratchModel):
        check_scratch_model(parent)
    pool, truth, ho_imgs, ho_truth = check_pool(images, ground_truth, heldout)
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(not n.startswith(".") for n in os.listdir(out))):
        raise ModelPackageError(f"{out} exists and is not an empty folder; the loop writes models and results "
                                "there and never overwrites them: choose a new --out")
    folder = Path(folder) if folder is not None else out / "training-folder"
    parent_model, task, fclasses, modality, base_name, parent_desc = _open_parent(parent, device)
    clicker = _open_clicker(click_model, device) if click_model is not None else None
    _check_classes(task, fclasses, truth, ho_truth)
    check_loop_memory(parent, parent_model, fclasses, task, pool, truth, patch=patch, batch=batch, device=device)
    config = LoopConfig(
        strategy=strat.name, rounds=int(rounds), budget=int(budget), initial=initial, region_size=int(region_size),
        region_kind=str(region_kind), parent=parent_desc, steps=int(steps), initial_steps=initial_steps,
        batch=int(batch),
        patch=tuple(int(p) for p in patch) if not np.isscalar(patch) else int(patch), lr=float(lr), seed=int(seed),
        methods=tuple(methods), score=str(score), device=str(device), precision=str(precision),
        finetune_kwargs=dict(finetune_kwargs or {}), images=tuple(pool), heldout=tuple(ho_imgs),
        start=None if start is None else str(Path(start)), folder=str(folder),
        click_model=None if click_model is None else str(click_model))
    start_keys = _check_start(Path(start), config) if start is not None else None

    # A run that fails or is cancelled before its first round finished keeps nothing: what it
    # wrote is removed, so the same command can run again.
    before = entries_before(out, folder)
    run, status = None, "completed"
    try:
        run = _open_run(config, pool, truth, ho_imgs, ho_truth, parent=parent, parent_model=parent_model, task=task,
                        classes=fclasses, modality=modality, base_name=base_name, parent_desc=parent_desc,
                        strategy=strat, out=out, folder=folder, sources=sources or {}, start_keys=start_keys,
                        emit=emit, cancel=cancel, t_start=t_start)
        run.clicker = clicker
        for r in range(int(rounds) + 1):
            status = "cancelled" if is_cancelled(cancel) else _run_round(run, r)
            if status is not None:
                break
        status = status or "completed"
    except BaseException:
        if run is None or not run.rows:
            remove_new_entries(before)
        raise
    if not run.rows:
        remove_new_entries(before)
    return _finish(run, status)


# --------------------------------------------------------------------------- setting up


def _open_parent(parent, device: str):
    """``(model or None, task, folder classes, modality, base name, description)`` of the parent."""
    from segloop.core.inference.model import load_model
    from segloop_train.folders import object_classes

    if isinstance(parent, ScratchModel):
        task, fclasses, modality = parent.task, tuple(parent.classes), parent.modality
        if task == "instance" and len(fclasses) == 3 and fclasses[-1] == "boundary":
            fclasses = fclasses[:2]
        return None, task, fclasses, modality, parent.name, parent.to_dict()
    model = load_model(parent, device=device, precision="fp32")
    ps = model.spec
    task, modality = ps.task, (ps.modality or "other")
    fclasses = (ps.classes[0], *object_classes(ps)) if task == "instance" else tuple(ps.classes)
    return model, task, fclasses, modality, ps.name, str(parent)


def _open_clicker(click_model, device: str):
    """The InteractiveModel of ``click_model``; a wrong name or an automatic model is refused (before
    anything is written)."""
    from segloop.core.formats.package import load_package
    from segloop.core.formats.registry import model_path
    from segloop.core.inference.interactive import InteractiveModel

    package = load_package(model_path(click_model))
    if package.spec.task != "interactive":
        raise ModelPackageError(f"click_model (--click-model) {click_model} is an automatic ({package.spec.task}) "
                                "model; give a click model (task 'interactive', e.g. nuclei-click-unet)")
    return InteractiveModel(package, device=device)


def _check_classes(task: str, fclasses: tuple[str, ...], truth: Mapping, ho_truth: Mapping) -> None:
    if task not in ("instance", "semantic"):
        raise ActiveLearningError(f"task must be 'instance' or 'semantic', got {task!r}")
    if task == "semantic":
        k = len(fclasses)
        for what, gts in (("pool", truth), ("held-out", ho_truth)):
            for name, gt in gts.items():
                if gt.size and int(gt.max()) >= k:
                    raise InvalidLabelsError(f"{what} ground truth of {name!r} has class id {int(gt.max())} but the "
                                             f"model has {k} classes {list(fclasses)}; give class ids 0 .. {k - 1}")


@dataclass
class _Run:
    """What the steps of one loop run share: its inputs, the bookkeeping so far and the current model."""

    config: LoopConfig
    pool: dict[str, np.ndarray]
    truth: dict[str, np.ndarray]
    heldout: list                           # segloop_train.data.Sample, evaluated every round
    parent: Any                             # as given to run_loop
    parent_desc: str | dict
    strategy: Strategy
    task: str
    classes: tuple[str, ...]
    base_name: str
    metric: str
    out: Path
    folder: Path
    training_folder: Any                    # TrainingFolder
    sources: Mapping[str, str]
    start_keys: list[str] | None
    emit: Progress
    cancel: Any
    t_start: float
    messages: list[str] = field(default_factory=list)
    sample_ids: dict[str, str] = field(default_factory=dict)
    grids: dict[str, list] = field(default_factory=dict)
    corrected: dict[str, np.ndarray] = field(default_factory=dict)
    done_keys: list[str] = field(default_factory=list)
    all_selected: list[Region] = field(default_factory=list)
    selected_rounds: list[list[Region]] = field(default_factory=list)
    rows: list[dict] = field(default_factory=list)
    models: list[Path] = field(default_factory=list)
    changed_total: int = 0
    fixes_total: int = 0
    clicker: Any = None                     # the InteractiveModel of click_model
    clicks_total: int = 0
    click_norms: dict[str, Any] = field(default_factory=dict)
    model: Any = None                       # the current Model (None before a scratch round 0)
    model_path: Path | None = None
    m0_path: Path | None = None

    @property
    def scratch(self) -> bool:
        return isinstance(self.parent, ScratchModel)

    @property
    def csv_path(self) -> Path:
        return self.out / "loop.csv"

    @property
    def spatial_dims(self) -> int:
        return next(iter(self.truth.values())).ndim

    def warn(self, message: str) -> None:
        self.messages.append(message)
        self.emit({"event": "warning", "message": message})


def _open_run(config: LoopConfig, pool, truth, ho_imgs, ho_truth, *, parent, parent_model, task, classes, modality,
              base_name, parent_desc, strategy, out: Path, folder: Path, sources, start_keys, emit, cancel,
              t_start) -> _Run:
    """Create ``out`` and the training folder, write ``loop.json``; the bookkeeping of round 0."""
    from segloop.core.formats.trainfolder import TrainingFolder
    from segloop_train.data import Sample

    out.mkdir(parents=True, exist_ok=True)                # nothing is written before the checks of run_loop
    tf = TrainingFolder.create(folder, classes=classes, task=task, modality=modality)
    (out / "loop.json").write_text(json.dumps(config.to_dict(), indent=1, default=str) + "\n")
    heldout = [Sample(img, ho_truth[n], None, source=n, meta={"volume": True} if ho_truth[n].ndim == 3 else {})
               for n, img in ho_imgs.items()]
    run = _Run(config, pool, truth, heldout, parent, parent_desc, strategy, task, tuple(classes), base_name,
               quality_key(task), out, folder, tf, sources, start_keys, emit, cancel, t_start,
               model=parent_model, m0_path=None if isinstance(parent, ScratchModel) else Path(load_model_path(parent)))
    if not heldout:
        run.warn("no held-out images: rounds are not evaluated and no plot is drawn")
    taken: set[str] = set()
    run.sample_ids = {n: _slug(n, taken) for n in pool}
    run.grids = {n: region_grid(truth[n].shape, config.region_size, kind=config.region_kind) for n in pool}
    run.corrected = {n: np.zeros(truth[n].shape, bool) for n in pool}
    return run


# --------------------------------------------------------------------------- one round


def _run_round(run: _Run, r: int) -> str | None:
    """Round ``r``: select, correct, export, train, evaluate.  None when it finished, else why the loop stops."""
    t_round = time.perf_counter()
    run.emit({"event": "round_start", "round": r, "rounds": run.config.rounds})
    rseed = _round_seed(run.config.seed, r)
    try:
        picked, predictions = _select_regions(run, r, run.config.initial if r == 0 else run.config.budget, rseed)
    except Cancelled:
        return "cancelled"
    if r > 0 and not picked:
        run.warn(f"every region was corrected before round {r}: stopped")
        return "exhausted"
    select_s = time.perf_counter() - t_round
    run.emit({"event": "selected", "round": r, "regions": [p.key for p in picked]})
    touched = _correct_regions(run, picked, predictions)
    _export_corrections(run, r, touched, predictions)
    train_s = _train_round(run, r, picked)
    if train_s is None:
        return "cancelled"
    _evaluate_round(run, r, picked, bool(predictions), select_s=select_s, train_s=train_s, t_round=t_round)
    return None


def _select_regions(run: _Run, r: int, k: int, rseed: int) -> tuple[list[Region], dict[str, np.ndarray]]:
    """Step 1: the regions to correct, and the current model's prediction of every pool image.

    Round 0 draws at random (the same start for every strategy); later rounds rank with the
    strategy.  Without a model (a scratch round 0) the regions are not scored.

    Raises
    ------
    Cancelled
    """
    strat = run.strategy if r > 0 else get_strategy("random")
    if run.model is None or k == 0:
        candidates = [Region(n, box) for n in run.pool for box in run.grids[n]]
        return strat.select(candidates, k, exclude=run.done_keys, seed=rseed), {}
    c = run.config
    ranking = rank_regions(run.model, run.pool, size=c.region_size, kind=c.region_kind, methods=c.methods,
                           strategy=strat, k=k, exclude=run.done_keys, seed=rseed, score=c.score, keep_labels=True,
                           cancel=run.cancel)
    return ranking.selected, {n: s.labels for n, s in ranking.images.items()}


def _correct_regions(run: _Run, picked: list[Region], predictions: Mapping[str, np.ndarray]
                     ) -> dict[str, list[Region]]:
    """Step 2, the oracle: the picked regions become corrected; counts the pixels it had to change."""
    touched: dict[str, list[Region]] = {}
    changed = 0
    for reg in picked:
        n = reg.image
        sl = reg.slices
        pred = predictions.get(n)
        pred_r, truth_r = None if pred is None else pred[sl], run.truth[n][sl]
        changed += changed_pixels(pred_r, truth_r, run.task)
        match = fix_match(pred_r, truth_r, run.task)        # once, for both effort counts
        run.fixes_total += object_fixes(pred_r, truth_r, run.task, match=match)
        if run.clicker is not None:
            image = run.pool[n]
            if n not in run.click_norms:        # fitted once per image, as the Proofread click mode does
                ca = -1 if image.ndim == run.truth[n].ndim + 1 else None
                run.click_norms[n] = run.clicker.normalizer_for(image, channel_axis=ca)
            run.clicks_total += object_clicks(pred, run.truth[n], sl, image=image, clicker=run.clicker,
                                              task=run.task, normalizer=run.click_norms[n], match=match)
        run.corrected[n][sl] = True
        touched.setdefault(n, []).append(reg)
    run.changed_total += changed
    run.done_keys += [p.key for p in picked]
    run.all_selected += picked
    run.selected_rounds.append(list(picked))
    return touched


def _export_corrections(run: _Run, r: int, touched: Mapping[str, list[Region]],
                        predictions: Mapping[str, np.ndarray]) -> None:
    """Step 3: every touched image is (re)exported as one sample: truth in corrected regions, reviewed mask."""
    info = None if run.model is None else model_info(run.model)
    name = run.strategy.name if r else "random start"
    for n in run.pool:                          # in pool order: the folder is written the same way every run
        if n not in touched:
            continue
        corrected = run.corrected[n]
        labels = paste_truth(predictions.get(n), run.truth[n], corrected, run.task)
        run.training_folder.add_sample(
            run.pool[n], labels, corrected.astype(np.uint8), axes=_axes(run.pool[n], run.spatial_dims),
            source=run.sources.get(n, n), model=info, split="train", sample_id=run.sample_ids[n], replace=True,
            corrections={"regions_corrected": int(sum(reg.image == n for reg in run.all_selected)),
                         "pixels_reviewed": int(corrected.sum())},
            extra={"active_learning": {"round": r, "strategy": name,
                                       "regions": [reg.key for reg in run.all_selected if reg.image == n]}})
    run.emit({"event": "exported", "round": r, "images": sorted(touched)})


def _train_round(run: _Run, r: int, picked: list[Region]) -> float | None:
    """Step 4: round 0 trains M0 from the parent (or reuses ``start``'s); later rounds fine-tune M0
    on everything corrected so far.  Seconds spent, or None when cancelled."""
    from segloop.core.inference.model import load_model

    c = run.config
    models_dir = run.out / "models"
    if r == 0 and run.start_keys is not None:
        if [p.key for p in picked] != run.start_keys:
            raise ActiveLearningError(f"start {c.start}: its round-0 regions differ from this run's; run both "
                                      "with the same pool, seed and initial regions")
        models_dir.mkdir(exist_ok=True)
        run.model_path = run.m0_path = models_dir / "round-00"
        shutil.copytree(Path(c.start) / "models" / "round-00", run.model_path)
        run.models.append(run.model_path)
        run.model = load_model(run.model_path, device=c.device, precision="fp32")
        return 0.0
    if not picked:
        return 0.0
    if is_cancelled(run.cancel):
        return None
    import torch

    from segloop_train.finetune import FinetuneWarning, finetune

    models_dir.mkdir(exist_ok=True)
    kw = _finetune_kwargs(run, r)

    def relay(ev: dict) -> None:
        if ev.get("event") == "warning" and "no val samples" not in ev.get("message", ""):
            msg = f"round {r}: {ev['message']}"
            if msg not in run.messages:
                run.messages.append(msg)
        run.emit({"event": "finetune", "round": r, "train": ev})

    t0 = time.perf_counter()
    with warnings.catch_warnings(), torch.random.fork_rng(devices=[]):
        warnings.simplefilter("ignore", FinetuneWarning)
        torch.manual_seed(c.seed)               # the same initialization in every round (scratch)
        res = finetune(run.folder, progress=relay, cancel=run.cancel, out=models_dir / f"round-{r:02d}", **kw)
    train_s = time.perf_counter() - t0
    if res.stopped == "cancelled" or res.package is None:
        return None
    run.model_path = Path(res.package)
    run.models.append(run.model_path)
    run.model = load_model(run.model_path, device=c.device, precision="fp32")
    if r == 0:
        run.m0_path = run.model_path
    return train_s


def _finetune_kwargs(run: _Run, r: int) -> dict[str, Any]:
    """Keyword arguments of :func:`segloop_train.finetune` for round ``r`` (from M0, else the parent)."""
    c = run.config
    kw: dict[str, Any] = dict(steps=c.steps if r else c.initial_steps, batch=c.batch, patch=c.patch, lr=c.lr,
                              seed=c.seed, device=c.device, precision=c.precision, onnx=False,
                              eval_every=c.steps, checkpoint_every=c.steps,
                              name=f"{run.base_name}-al-{run.strategy.name}", version=f"0.{r}.0",
                              command=f"segloop_train.loop.run_loop round {r} ({run.strategy.name}, seed {c.seed})")
    if run.m0_path is not None:
        kw.update(parent=run.m0_path)
    elif run.scratch:
        p = run.parent
        kw.update(parent=None, arch=p.architecture, arch_kwargs=dict(p.architecture_kwargs),
                  classes=list(run.classes), task=run.task, normalization=p.normalization, dims=p.dims,
                  context_slices=p.context_slices)
    else:
        kw.update(parent=run.parent)
    kw.update(c.finetune_kwargs)
    return kw


def _evaluate_round(run: _Run, r: int, picked: list[Region], scored: bool, *, select_s: float, train_s: float,
                    t_round: float) -> None:
    """Step 5: held-out metrics; the round's row (CSV rewritten) and the state saved in the folder."""
    from segloop_train.finetune import evaluate_samples

    c = run.config
    t0 = time.perf_counter()
    metrics = evaluate_samples(run.model, run.heldout, device=c.device) if run.heldout else {}
    eval_s = time.perf_counter() - t0
    area = int(sum(int(m.sum()) for m in run.corrected.values()))
    pool_px = int(sum(g.size for g in run.truth.values()))
    unc = [p.mean_uncertainty for p in picked] if scored else []
    model = run.model
    row = {"round": r, "strategy": run.strategy.name, "regions_selected": len(picked),
           "regions_total": len(run.all_selected), "corrected_area": area, "corrected_fraction": area / pool_px,
           "changed_pixels": run.changed_total, "object_fixes": run.fixes_total,
           **({"clicks": run.clicks_total} if run.clicker is not None else {}),
           "mean_uncertainty": float(np.mean(unc)) if unc else float("nan"),
           **metrics, "model_version": model.spec.version if model is not None else "",
           "model": str(run.model_path) if run.model_path is not None else str(
               run.parent_desc if not run.scratch else ""),
           "select_seconds": round(select_s, 2), "train_seconds": round(train_s, 2),
           "eval_seconds": round(eval_s, 2), "seconds": round(time.perf_counter() - t_round, 2)}
    run.rows.append(row)
    write_csv(run.rows, run.csv_path)
    state = ActiveLearningState(strategy=run.strategy.name, region_size=c.region_size, region_kind=c.region_kind,
                                budget=c.budget, queue=list(run.all_selected), reviewed=list(run.done_keys),
                                cursor=len(run.all_selected),
                                model=None if model is None else {**model_info(model), "path": str(run.model_path)})
    state.save(run.folder)
    run.emit({"event": "round", "round": r, "row": row})


def _finish(run: _Run, status: str) -> LoopResult:
    """The result; the CSV and the plot of the finished rounds."""
    plot_path = None
    if run.rows:
        write_csv(run.rows, run.csv_path)
        if run.heldout:
            c = run.config
            try:
                plot_path = plot_curves({run.strategy.name: run.rows}, run.out / "loop.png", metric=run.metric,
                                        title=f"{run.base_name}: {run.strategy.name}, {c.budget} regions of "
                                              f"{c.region_size} px per round")
            except (OSError, ValueError) as e:
                run.messages.append(f"no plot: {e}")
    result = LoopResult(run.rows, run.selected_rounds, run.metric, run.out, run.folder, run.csv_path, plot_path,
                        run.models, status, run.config, run.messages, time.perf_counter() - run.t_start)
    run.emit({"event": "cancelled" if status == "cancelled" else "done", "rows": len(run.rows), "stopped": status,
              "csv": str(run.csv_path), "plot": None if plot_path is None else str(plot_path)})
    return result
