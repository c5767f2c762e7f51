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
    1. the current model segments every pool image with uncertainty
       (:func:`segloop.core.uncertainty.estimate_uncertainty`); the images are cut into
       regions (:func:`segloop.core.active.region_grid`) and scored
       (:func:`segloop.core.active.score_regions`); the ``strategy`` picks ``budget`` regions
       that were not corrected before (diversity also gets
       :func:`segloop.core.active.region_features`);
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

Outputs in ``out``: ``loop.json`` (the configuration), ``loop.csv`` (one row per round,
rewritten after every round), ``loop.png`` (quality vs corrected area; matplotlib when it is
installed, else a plain Pillow drawing), ``models/round-NN/`` (the package of each round) and,
unless ``folder`` is given elsewhere, ``training-folder/`` with the exported samples and the
:class:`segloop.core.active.ActiveLearningState` (every region corrected so far, marked reviewed).

Deterministic: the regions of round ``r`` are drawn with ``SeedSequence([seed, r])``, the
network's initialization and every training step are seeded, and inference runs in fp32, so a
rerun with the same seed, data, device and number of torch threads gives the same regions and
the same figures.
"""

from __future__ import annotations

import csv
import json
import math
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

from segloop.errors import (
    ActiveLearningError,
    Cancelled,
    InvalidImageError,
    InvalidLabelsError,
    ModelPackageError,
)

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

#: Strategies the loop runs (:data:`segloop.core.active.STRATEGIES`).
LOOP_STRATEGIES = ("random", "uncertainty", "diversity")

#: Columns every row has, in CSV order; the held-out metrics follow, then :data:`_TAIL`.
_HEAD = ("round", "strategy", "regions_selected", "regions_total", "corrected_area", "corrected_fraction",
         "changed_pixels", "mean_uncertainty")
_TAIL = ("model_version", "model", "select_seconds", "train_seconds", "eval_seconds", "seconds")

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
        A spec of :mod:`segloop.core.normalize`; default percentile.
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


def quality_key(task: str) -> str:
    """The held-out metric the loop plots: instance F1 at IoU 0.5, or mean Dice for semantic models."""
    return "f1@0.5" if task == "instance" else "dice"


# --------------------------------------------------------------------------- inputs


def _is_cancelled(cancel) -> bool:
    if cancel is None:
        return False
    return bool(cancel()) if callable(cancel) else bool(cancel.is_set())


def _named(arrays, what: str) -> dict[str, np.ndarray]:
    """``{id: array}`` from a mapping or a sequence (ids ``image-000`` ...)."""
    if isinstance(arrays, np.ndarray):
        raise InvalidImageError(f"{what}: give a list of arrays (or a {{name: array}} mapping), not one array")
    if isinstance(arrays, Mapping):
        items = [(str(k), v) for k, v in arrays.items()]
    else:
        items = [(f"image-{i:03d}", v) for i, v in enumerate(arrays)]
    return {k: np.asarray(v) for k, v in items}


def _pair(images, truth, what: str) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Check images against their ground truth; typed errors naming the first mismatch."""
    imgs, gts = _named(images, f"{what} images"), _named(truth, f"{what} ground truth")
    if len(imgs) != len(gts):
        raise InvalidLabelsError(f"{len(imgs)} {what} image(s) but {len(gts)} ground-truth label image(s); give "
                                 "one ground truth per image, in the same order")
    if isinstance(images, Mapping) and isinstance(truth, Mapping) and set(imgs) != set(gts):
        raise InvalidLabelsError(f"{what} images and ground truth have different names: "
                                 f"{sorted(set(imgs) ^ set(gts))[:4]}")
    if not isinstance(truth, Mapping) or not isinstance(images, Mapping):
        gts = dict(zip(imgs, gts.values()))
    for name, img in imgs.items():
        gt = gts[name]
        if gt.dtype.kind not in "iub":
            raise InvalidLabelsError(f"{what} ground truth of {name!r} has dtype {gt.dtype}; labels must be integers "
                                     "(object ids or class ids)")
        if gt.ndim not in (2, 3):
            raise InvalidLabelsError(f"{what} ground truth of {name!r} has shape {gt.shape}; give (Y, X) or (Z, Y, X)")
        if gt.size and gt.min() < 0:
            raise InvalidLabelsError(f"{what} ground truth of {name!r} has negative labels")
        if img.ndim not in (gt.ndim, gt.ndim + 1) or tuple(img.shape[:gt.ndim]) != gt.shape:
            raise InvalidLabelsError(
                f"{what} image {name!r} has shape {img.shape} but its ground truth {gt.shape}; the ground truth must "
                "have the image's spatial shape (channels last in the image)")
    return imgs, {k: gts[k] for k in imgs}


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


# --------------------------------------------------------------------------- the oracle


def _fg(labels: np.ndarray, task: str) -> np.ndarray:
    return labels > 0 if task == "instance" else labels


def paste_truth(prediction: np.ndarray | None, truth: np.ndarray, mask: np.ndarray, task: str) -> np.ndarray:
    """The labels a person has after correcting ``mask``: ``truth`` there, ``prediction`` elsewhere.

    Instance ids of the truth are shifted above the prediction's so no pasted object shares an
    id with a predicted one.  ``prediction`` None: nothing outside ``mask`` (0).
    """
    truth = np.asarray(truth)
    if prediction is None:
        pred = np.zeros(truth.shape, np.uint32 if task == "instance" else np.uint8)
    else:
        pred = np.asarray(prediction)
    if task != "instance":
        return np.where(mask, truth, pred).astype(np.uint8)
    offset = int(pred.max()) if pred.size else 0
    pasted = np.where(truth > 0, truth.astype(np.int64) + offset, 0)
    out = np.where(mask, pasted, pred.astype(np.int64))
    return out.astype(np.uint16 if out.max() <= np.iinfo(np.uint16).max else np.uint32)


# --------------------------------------------------------------------------- curves


def area_to_reach(rows: Sequence[Mapping], target: float, *, metric: str, area: str = "corrected_area",
                  sustained: bool = False) -> tuple[float, bool]:
    """The corrected area at which a quality curve reaches ``target``.

    ``sustained=False``: where it *first* reaches it - linear interpolation between the last
    row below ``target`` and the first row at or above it.  ``sustained=True``: from where it
    *stays* at or above it in every later round - interpolation between the last row below
    ``target`` and the next one (a one-round spike followed by a fall does not count).  When
    the curve never reaches it (or ends below it): ``(area of the last row, False)``.

    Parameters
    ----------
    rows : sequence of dict
        Rows of :func:`run_loop` (or of ``loop.csv``), in round order.
    target : float
    metric : str
        Column holding the quality (``"f1@0.5"``, ``"dice"`` ...).
    area : str
        Column holding the cumulative corrected area.

    Returns
    -------
    (float, bool)
        The area, and whether the target was reached.
    """
    pts = [(float(r[area]), float(r[metric])) for r in rows
           if r.get(metric) not in (None, "") and math.isfinite(float(r[metric]))]
    if not pts:
        raise ValueError(f"no rows with a value for {metric!r}")
    if sustained:
        below = [i for i, (_, q) in enumerate(pts) if q < target]
        if not below:
            return pts[0][0], True
        i = below[-1]
        if i == len(pts) - 1:
            return pts[-1][0], False
        (a0, q0), (a1, q1) = pts[i], pts[i + 1]
        return a0 + (a1 - a0) * (target - q0) / (q1 - q0), True
    prev = None
    for a, q in pts:
        if q >= target:
            if prev is None or q == prev[1]:
                return a, True
            a0, q0 = prev
            return a0 + (a - a0) * (target - q0) / (q - q0), True
        prev = (a, q)
    return pts[-1][0], False


def write_csv(rows: Sequence[Mapping], path: str | os.PathLike) -> Path:
    """Rows as CSV (the columns of :func:`run_loop`, metrics in the order they first appear)."""
    path = Path(path)
    metrics: list[str] = []
    for r in rows:
        metrics += [k for k in r if k not in _HEAD and k not in _TAIL and k not in metrics]
    cols = [*_HEAD, *metrics, *_TAIL]
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: _csv_value(r.get(k)) for k in cols})
    os.replace(tmp, path)
    return path


def _csv_value(v):
    if isinstance(v, float):
        return "" if not math.isfinite(v) else f"{v:.6g}"
    return "" if v is None else v


def plot_curves(curves: Mapping[str, Sequence[Mapping]], path: str | os.PathLike, *, metric: str,
                title: str = "", x: Literal["fraction", "area"] = "fraction", target: float | None = None) -> Path:
    """Quality vs corrected area, one line per curve, written as a PNG.

    Parameters
    ----------
    curves : mapping of str -> rows
        Label -> rows of :func:`run_loop` (e.g. ``{"random": res_a.rows, "uncertainty": res_b.rows}``).
    path : path-like
        The PNG to write.
    metric : str
        The row key on the y axis.
    title : str
    x : {"fraction", "area"}
        Corrected area as a percentage of the pool, or in pixels (voxels).
    target : float, optional
        Draw a dotted horizontal line at this quality (e.g. random's final quality).

    Uses matplotlib (Agg, no pyplot state) when it is installed, else Pillow.
    """
    path = Path(path)
    xkey = "corrected_fraction" if x == "fraction" else "corrected_area"
    series = []
    for label, rows in curves.items():
        pts = [(float(r[xkey]) * (100.0 if x == "fraction" else 1.0), float(r[metric])) for r in rows
               if r.get(metric) not in (None, "") and math.isfinite(float(r[metric]))]
        if pts:
            series.append((str(label), pts))
    if not series:
        raise ValueError(f"nothing to plot: no rows have {metric!r}")
    xlabel = "corrected area (% of the pool)" if x == "fraction" else "corrected area (pixels)"
    ylabel = f"held-out {metric}"
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return _plot_pillow(series, path, xlabel=xlabel, ylabel=ylabel, title=title, target=target)
    fig = Figure(figsize=(6.4, 4.2), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for label, pts in series:
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=4, label=label)
    if target is not None:
        ax.axhline(target, ls=":", color="0.4", lw=1)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    return path


_COLOURS = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189))


def _plot_pillow(series, path: Path, *, xlabel: str, ylabel: str, title: str, target: float | None) -> Path:
    """A plain line plot with Pillow (a dependency of scikit-image), for installs without matplotlib."""
    from PIL import Image, ImageDraw, ImageFont

    w, h, left, right, top, bottom = 700, 460, 70, 20, 40, 60
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    try:
        font = ImageFont.load_default(size=13)
    except TypeError:                          # Pillow < 10.1
        font = ImageFont.load_default()
    xs = [p[0] for _, pts in series for p in pts]
    ys = [p[1] for _, pts in series for p in pts] + ([target] if target is not None else [])
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    x1 = x1 if x1 > x0 else x0 + 1
    pad = (y1 - y0) * 0.05 or 0.01
    y0, y1 = y0 - pad, y1 + pad

    def px(x, y):
        return (left + (x - x0) / (x1 - x0) * (w - left - right), top + (y1 - y) / (y1 - y0) * (h - top - bottom))

    d.rectangle([left, top, w - right, h - bottom], outline="black")
    for i in range(6):
        xv, yv = x0 + (x1 - x0) * i / 5, y0 + (y1 - y0) * i / 5
        gx, gy = px(xv, yv)
        d.line([gx, top, gx, h - bottom], fill=(225, 225, 225))
        d.line([left, gy, w - right, gy], fill=(225, 225, 225))
        d.text((gx, h - bottom + 6), f"{xv:.3g}", fill="black", font=font, anchor="mt")
        d.text((left - 6, gy), f"{yv:.3f}", fill="black", font=font, anchor="rm")
    if target is not None:
        ty = px(x0, target)[1]
        for sx in range(left, w - right, 8):
            d.line([sx, ty, sx + 3, ty], fill=(100, 100, 100))
    for i, (label, pts) in enumerate(series):
        c = _COLOURS[i % len(_COLOURS)]
        xy = [px(*p) for p in pts]
        if len(xy) > 1:
            d.line(xy, fill=c, width=2)
        for cx, cy in xy:
            d.ellipse([cx - 3, cy - 3, cx + 3, cy + 3], fill=c)
        d.text((w - right - 150, h - bottom - 20 - 18 * (len(series) - 1 - i)), f"- {label}", fill=c, font=font)
    d.text(((left + w - right) / 2, h - 22), xlabel, fill="black", font=font, anchor="mt")
    d.text((8, top - 22), ylabel, fill="black", font=font)
    if title:
        d.text((w / 2, 8), title, fill="black", font=font, anchor="mt")
    img.save(path)
    return path


# --------------------------------------------------------------------------- the loop


def load_model_path(name_or_path) -> str:
    """The package path of a bundled name or a path (what rounds >= 1 fine-tune when round 0 trained nothing)."""
    from segloop.core.predict import model_path

    return str(model_path(name_or_path))


#: Settings that decide round 0 (M0): a ``start`` run must share them.
_START_KEYS = ("images", "seed", "initial", "initial_steps", "region_size", "region_kind", "parent", "batch",
               "patch", "lr", "precision", "finetune_kwargs")


def _check_start(start: Path, config: LoopConfig) -> list[str]:
    """The round-0 region keys of an earlier run, after checking it made M0 as this run would."""
    from segloop.core.active import ActiveLearningState

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
        (by default) the training folder.
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
        Tile side in pixels (see :func:`segloop.core.active.region_grid`).
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
        Region score (:func:`segloop.core.active.score_regions`).
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
        background), ``mean_uncertainty`` (mean of this round's picks; NaN without a model),
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
    import torch

    from segloop.core.active import (
        REGION_KINDS,
        ActiveLearningState,
        Region,
        get_strategy,
        model_info,
        region_features,
        region_grid,
        score_regions,
    )
    from segloop.core.predict import load_model
    from segloop.core.trainfolder import TrainingFolder
    from segloop.core.uncertainty import estimate_uncertainty
    from segloop_train.data import Sample
    from segloop_train.finetune import FinetuneWarning, evaluate_samples, finetune
    from segloop_train.folders import object_classes

    t_start = time.perf_counter()
    emit = progress or (lambda ev: None)
    messages: list[str] = []

    # ---- arguments
    strat = get_strategy(strategy)
    random_strat = get_strategy("random")
    if region_kind not in REGION_KINDS:
        raise ActiveLearningError(f"unknown region kind {region_kind!r}; choose from {', '.join(REGION_KINDS)}")
    initial_steps = int(steps if initial_steps is None else initial_steps)
    for label, v, lo in (("rounds", rounds, 0), ("budget", budget, 1), ("region_size", region_size, 1),
                         ("steps", steps, 1), ("initial_steps", initial_steps, 1)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
            raise ActiveLearningError(f"{label} must be an integer >= {lo}, got {v!r}")
    initial = int(budget if initial is None else initial)
    if initial < 0:
        raise ActiveLearningError(f"initial must be >= 0 regions, got {initial}")
    scratch = isinstance(parent, ScratchModel)
    if scratch and initial == 0:
        raise ActiveLearningError("a model trained from scratch needs initial > 0 regions to start from; give "
                                  "initial (--initial) or a parent model")
    pool, truth = _pair(images, ground_truth, "pool")
    if not pool:
        raise InvalidImageError("no pool images: give at least one image with its ground truth")
    ho_imgs, ho_truth = _pair(*heldout, "held-out") if heldout is not None else ({}, {})
    spatial = {len(g.shape) for g in truth.values()}
    if len(spatial) != 1:
        raise InvalidLabelsError("mix of 2D and 3D pool images; give all (Y, X) or all (Z, Y, X)")
    n_sp = spatial.pop()
    for name, img in pool.items():
        if np.issubdtype(img.dtype, np.floating) and not np.isfinite(img).all():
            raise InvalidImageError(f"pool image {name!r} has NaN or infinite values")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(not n.startswith(".") for n in os.listdir(out))):
        raise ModelPackageError(f"{out} exists and is not an empty folder; the loop writes models and results "
                                "there and never overwrites them: choose a new --out")
    folder = Path(folder) if folder is not None else out / "training-folder"

    # ---- the parent and the folder's classes
    if scratch:
        task, fclasses, modality = parent.task, tuple(parent.classes), parent.modality
        if task == "instance" and len(fclasses) == 3 and fclasses[-1] == "boundary":
            fclasses = fclasses[:2]
        base_name, parent_desc = parent.name, parent.to_dict()
        parent_model = None
    else:
        parent_model = load_model(parent, device=device, precision="fp32")
        ps = parent_model.spec
        task, modality = ps.task, (ps.modality or "other")
        fclasses = (ps.classes[0], *object_classes(ps)) if task == "instance" else tuple(ps.classes)
        base_name, parent_desc = ps.name, str(parent)
    if task not in ("instance", "semantic"):
        raise ActiveLearningError(f"task must be 'instance' or 'semantic', got {task!r}")
    if task == "semantic":
        k = len(fclasses)
        for what, gts in (("pool", truth), ("held-out", ho_truth)):
            for name, gt in gts.items():
                if gt.size and int(gt.max()) >= k:
                    raise InvalidLabelsError(f"{what} ground truth of {name!r} has class id {int(gt.max())} but the "
                                             f"model has {k} classes {list(fclasses)}; give class ids 0 .. {k - 1}")
    metric = quality_key(task)

    config = LoopConfig(
        strategy=strat.name, rounds=int(rounds), budget=int(budget), initial=initial, region_size=int(region_size),
        region_kind=str(region_kind), parent=parent_desc, steps=int(steps), initial_steps=initial_steps,
        batch=int(batch),
        patch=tuple(int(p) for p in patch) if not np.isscalar(patch) else int(patch), lr=float(lr), seed=int(seed),
        methods=tuple(methods), score=str(score), device=str(device), precision=str(precision),
        finetune_kwargs=dict(finetune_kwargs or {}), images=tuple(pool), heldout=tuple(ho_imgs),
        start=None if start is None else str(Path(start)), folder=str(folder))
    start_keys = _check_start(Path(start), config) if start is not None else None
    out.mkdir(parents=True, exist_ok=True)                # nothing is written before the checks above
    tf = TrainingFolder.create(folder, classes=fclasses, task=task, modality=modality)
    (out / "loop.json").write_text(json.dumps(config.to_dict(), indent=1, default=str) + "\n")
    csv_path = out / "loop.csv"
    models_dir = out / "models"
    heldout_samples = [Sample(img, ho_truth[n], None, source=n, meta={"volume": True} if ho_truth[n].ndim == 3 else {})
                       for n, img in ho_imgs.items()]
    if not heldout_samples:
        messages.append("no held-out images: rounds are not evaluated and no plot is drawn")
        emit({"event": "warning", "message": messages[-1]})

    # ---- per-image bookkeeping
    taken: set[str] = set()
    sample_ids = {n: _slug(n, taken) for n in pool}
    grids = {n: region_grid(truth[n].shape, int(region_size), kind=region_kind) for n in pool}
    corrected = {n: np.zeros(truth[n].shape, bool) for n in pool}
    pool_px = int(sum(g.size for g in truth.values()))
    done_keys: list[str] = []
    all_selected: list[Region] = []
    rows: list[dict] = []
    selected_rounds: list[list[Region]] = []
    models: list[Path] = []
    changed_total = 0
    model = parent_model
    model_path: Path | None = None
    m0_path: Path | None = None if scratch else Path(load_model_path(parent))
    stopped = "completed"
    plot_path: Path | None = None
    ft_kwargs = dict(finetune_kwargs or {})

    def finish(status: str) -> LoopResult:
        nonlocal plot_path
        if rows:
            write_csv(rows, csv_path)
            if heldout_samples:
                try:
                    plot_path = plot_curves({strat.name: rows}, out / "loop.png", metric=metric,
                                            title=f"{base_name}: {strat.name}, {budget} regions of {region_size} px "
                                                  "per round")
                except (OSError, ValueError) as e:
                    messages.append(f"no plot: {e}")
        result = LoopResult(rows, selected_rounds, metric, out, folder, csv_path, plot_path, models, status, config,
                            messages, time.perf_counter() - t_start)
        emit({"event": "cancelled" if status == "cancelled" else "done", "rows": len(rows), "stopped": status,
              "csv": str(csv_path), "plot": None if plot_path is None else str(plot_path)})
        return result

    for r in range(int(rounds) + 1):
        if _is_cancelled(cancel):
            return finish("cancelled")
        t_round = time.perf_counter()
        emit({"event": "round_start", "round": r, "rounds": int(rounds)})
        rseed = _round_seed(seed, r)
        k = initial if r == 0 else int(budget)

        # ---- 1. score and select
        predictions: dict[str, np.ndarray] = {}
        candidates: list[Region] = []
        feats: list[np.ndarray] = []
        if model is not None and k > 0:
            for n, img in pool.items():
                if _is_cancelled(cancel):
                    return finish("cancelled")
                try:
                    res = estimate_uncertainty(model, img, methods=tuple(methods), seed=rseed, cancel=cancel)
                    predictions[n] = np.asarray(res.labels)
                    candidates += score_regions(res.combined(), res.labels, grids[n], image=n, score=score)
                    if r > 0 and getattr(strat, "needs_features", False):
                        feats.append(region_features(model, img, grids[n], cancel=cancel))
                except Cancelled:
                    return finish("cancelled")
                del res
        else:
            candidates = [Region(n, box) for n in pool for box in grids[n]]
        if r == 0:                              # the same random start for every strategy
            picked = random_strat.select(candidates, k, exclude=done_keys, seed=rseed)
        else:
            features = np.concatenate(feats) if feats else None
            picked = strat.select(candidates, k, exclude=done_keys, features=features, seed=rseed)
        if r > 0 and not picked:
            messages.append(f"every region was corrected before round {r}: stopped")
            emit({"event": "warning", "message": messages[-1]})
            return finish("exhausted")
        select_s = time.perf_counter() - t_round
        emit({"event": "selected", "round": r, "regions": [p.key for p in picked]})

        # ---- 2. the oracle, 3. export
        touched: dict[str, list[Region]] = {}
        changed = 0
        for reg in picked:
            n = reg.image
            sl = reg.slices
            pred = predictions.get(n)
            gt = truth[n][sl]
            p = np.zeros(gt.shape, gt.dtype) if pred is None else pred[sl]
            changed += int(np.count_nonzero(_fg(p, task) != _fg(gt, task)))
            corrected[n][sl] = True
            touched.setdefault(n, []).append(reg)
        changed_total += changed
        done_keys += [p.key for p in picked]
        all_selected += picked
        selected_rounds.append(list(picked))
        info = None if model is None else model_info(model)
        for n in pool:                          # in pool order: the folder is written the same way every run
            if n not in touched:
                continue
            labels = paste_truth(predictions.get(n), truth[n], corrected[n], task)
            tf.add_sample(pool[n], labels, corrected[n].astype(np.uint8), axes=_axes(pool[n], n_sp),
                          source=(sources or {}).get(n, n), model=info, split="train", sample_id=sample_ids[n],
                          replace=True,
                          corrections={"regions_corrected": int(sum(reg.image == n for reg in all_selected)),
                                       "pixels_reviewed": int(corrected[n].sum())},
                          extra={"active_learning": {"round": r, "strategy": strat.name if r else "random start",
                                                     "regions": [reg.key for reg in all_selected if reg.image == n]}})
        emit({"event": "exported", "round": r, "images": sorted(touched)})

        # ---- 4. round 0: train M0 from the parent; later rounds: fine-tune M0 on everything corrected so far
        train_s = 0.0
        if r == 0 and start_keys is not None:
            if [p.key for p in picked] != start_keys:
                raise ActiveLearningError(f"start {start}: its round-0 regions differ from this run's; run both "
                                          "with the same pool, seed and initial regions")
            models_dir.mkdir(exist_ok=True)
            model_path = models_dir / "round-00"
            shutil.copytree(Path(start) / "models" / "round-00", model_path)
            models.append(model_path)
            model = load_model(model_path, device=device, precision="fp32")
            m0_path = model_path
        elif picked:
            if _is_cancelled(cancel):
                return finish("cancelled")
            models_dir.mkdir(exist_ok=True)
            pkg_out = models_dir / f"round-{r:02d}"
            kw: dict[str, Any] = dict(steps=int(steps if r else initial_steps), batch=int(batch), patch=config.patch,
                                      lr=float(lr),
                                      seed=int(seed), device=device, precision=precision, onnx=False,
                                      eval_every=int(steps), checkpoint_every=int(steps),
                                      name=f"{base_name}-al-{strat.name}", version=f"0.{r}.0",
                                      command=f"segloop_train.loop.run_loop round {r} ({strat.name}, seed {seed})")
            if m0_path is not None:
                kw.update(parent=m0_path)
            elif scratch:
                kw.update(parent=None, arch=parent.architecture, arch_kwargs=dict(parent.architecture_kwargs),
                          classes=list(fclasses), task=task, normalization=parent.normalization, dims=parent.dims,
                          context_slices=parent.context_slices)
            else:
                kw.update(parent=parent)
            kw.update(ft_kwargs)

            def relay(ev: dict, r=r) -> None:
                if ev.get("event") == "warning" and "no val samples" not in ev.get("message", ""):
                    msg = f"round {r}: {ev['message']}"
                    if msg not in messages:
                        messages.append(msg)
                emit({"event": "finetune", "round": r, "train": ev})

            t0 = time.perf_counter()
            with warnings.catch_warnings(), torch.random.fork_rng(devices=[]):
                warnings.simplefilter("ignore", FinetuneWarning)
                torch.manual_seed(int(seed))        # the same initialization in every round (scratch)
                res_ft = finetune(folder, progress=relay, cancel=cancel, out=pkg_out, **kw)
            train_s = time.perf_counter() - t0
            if res_ft.stopped == "cancelled" or res_ft.package is None:
                return finish("cancelled")
            model_path = Path(res_ft.package)
            models.append(model_path)
            model = load_model(model_path, device=device, precision="fp32")
            if r == 0:
                m0_path = model_path

        # ---- 5. evaluate on held-out images
        t0 = time.perf_counter()
        metrics = evaluate_samples(model, heldout_samples, device=device) if heldout_samples else {}
        eval_s = time.perf_counter() - t0
        area = int(sum(int(m.sum()) for m in corrected.values()))
        unc = [p.mean_uncertainty for p in picked] if predictions else []
        row = {"round": r, "strategy": strat.name, "regions_selected": len(picked),
               "regions_total": len(all_selected), "corrected_area": area, "corrected_fraction": area / pool_px,
               "changed_pixels": changed_total, "mean_uncertainty": float(np.mean(unc)) if unc else float("nan"),
               **metrics, "model_version": model.spec.version if model is not None else "",
               "model": str(model_path) if model_path is not None else str(parent_desc if not scratch else ""),
               "select_seconds": round(select_s, 2), "train_seconds": round(train_s, 2),
               "eval_seconds": round(eval_s, 2), "seconds": round(time.perf_counter() - t_round, 2)}
        rows.append(row)
        write_csv(rows, csv_path)
        state = ActiveLearningState(strategy=strat.name, region_size=int(region_size), region_kind=str(region_kind),
                                    budget=int(budget), queue=list(all_selected), reviewed=list(done_keys),
                                    cursor=len(all_selected),
                                    model=None if model is None else {**model_info(model), "path": str(model_path)})
        state.save(folder)
        emit({"event": "round", "round": r, "row": row})
    return finish(stopped)

