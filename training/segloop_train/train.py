"""The training loop: samples in, a model package v1 out.

This is the seed of the fine-tuning module: it trains from scratch or from a
parent package on :class:`~segloop_train.data.Sample` lists, evaluates on
held-out samples through the same ``Model.predict`` path users run, and
writes a package recording data, parameters and metrics.
"""

from __future__ import annotations

import datetime as _dt
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from segloop.core.formats.package import ModelPackage, ModelSpec, save_package
from segloop.core.inference.model import Model
from segloop.core.networks import build
from segloop.errors import Cancelled
from segloop_train.data import IGNORE, PatchSampler, Sample, instance_targets, normalize_sample
from segloop_train.evaluate import evaluate_samples
from segloop_train.losses import dice_ce_loss

__all__ = ["TrainConfig", "TrainProgress", "train", "evaluate"]


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one run (saved in the package's ``training`` record)."""

    steps: int = 2000
    batch: int = 8
    patch: int = 256
    lr: float = 2e-3
    weight_decay: float = 1e-4
    class_weights: tuple[float, ...] | None = (1.0, 1.0, 2.0)
    eval_every: int = 250
    seed: int = 0
    threads: int | None = None
    schema_version: int = 1


@dataclass
class TrainProgress:
    step: int
    steps: int
    loss: float
    metrics: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0


def _targets(sample: Sample, task: str) -> np.ndarray:
    t = instance_targets(sample.labels) if task == "instance" else np.asarray(sample.labels, np.uint8)
    if sample.reviewed is not None:
        t = np.where(np.asarray(sample.reviewed) > 0, t, IGNORE).astype(np.uint8)
    return t


#: The metrics :func:`evaluate` reports (and the bundled model cards show), in this order.
_REPORTED = {"instance": ("dice", "jaccard", "f1@0.5", "ap@0.5:0.95"),
             "semantic": ("dice", "jaccard", "pixel_accuracy")}


def evaluate(model: Model, samples: list[Sample]) -> dict[str, float]:
    """Per-image mean metrics of ``model`` on ``samples`` (through ``Model.predict``).

    :func:`segloop_train.evaluate.evaluate_samples` with ``average="image"`` (each image's
    metrics, then their mean: what the bundled nuclei model cards report), keeping Dice,
    Jaccard, instance F1@0.5 and AP@0.5:0.95 (instance models) or Dice, Jaccard and pixel
    accuracy (semantic models).
    """
    m = evaluate_samples(model, samples, average="image")
    return {k: m[k] for k in _REPORTED.get(model.spec.task, _REPORTED["semantic"]) if k in m}


def train(spec: ModelSpec, train_samples: list[Sample], val_samples: list[Sample], config: TrainConfig = TrainConfig(),
          *, init_state: dict[str, Any] | None = None, progress: Callable[[TrainProgress], None] | None = None,
          cancel=None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Train a network described by ``spec``.

    Returns
    -------
    state_dict : dict
        The best weights by held-out instance F1 (or Dice for semantic models).
    record : dict
        Config, per-evaluation history, best metrics, sample sources.
    """
    torch.manual_seed(config.seed)
    if config.threads:
        torch.set_num_threads(config.threads)
    net = build(spec.architecture, spec.in_channels, spec.n_classes, dims=spec.dims, **spec.architecture_kwargs)
    if init_state is not None:
        net.load_state_dict(init_state)
    images = [normalize_sample(s, spec.normalization) for s in train_samples]
    targets = [_targets(s, spec.task) for s in train_samples]
    sampler = PatchSampler(images, targets, patch=config.patch, seed=config.seed)
    opt = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.lr, total_steps=config.steps, pct_start=0.1)
    cw = torch.tensor(config.class_weights, dtype=torch.float32) if config.class_weights else None
    key = "f1@0.5" if spec.task == "instance" else "dice"
    best, best_state, history = -math.inf, None, []
    t0 = time.perf_counter()
    losses: list[float] = []
    for step in range(1, config.steps + 1):
        if cancel is not None and (cancel() if callable(cancel) else cancel.is_set()):
            raise Cancelled(f"training cancelled at step {step}")
        net.train()
        x, y = sampler.batch(config.batch)
        logits = net(torch.from_numpy(x))
        loss = dice_ce_loss(logits, torch.from_numpy(y), class_weights=cw)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        if step % config.eval_every == 0 or step == config.steps:
            net.eval()
            state = {k: v.detach().clone() for k, v in net.state_dict().items()}
            m = evaluate(Model(ModelPackage(spec, state), device="cpu", precision="fp32"), val_samples) \
                if val_samples else {}
            entry = {"step": step, "loss": float(np.mean(losses[-config.eval_every:])), **m,
                     "seconds": round(time.perf_counter() - t0, 1)}
            history.append(entry)
            score = m.get(key, -entry["loss"])
            if score > best:
                best, best_state = score, state
            if progress is not None:
                progress(TrainProgress(step, config.steps, entry["loss"], m, entry["seconds"]))
    record = {
        "config": {k: getattr(config, k) for k in config.__dataclass_fields__},
        "history": history,
        "best": max(history, key=lambda e: e.get(key, -e["loss"])) if history else {},
        "train_sources": sorted({s.source for s in train_samples}),
        "val_sources": sorted({s.source for s in val_samples}),
        "sample_counts": {"train": len(train_samples), "val": len(val_samples)},
        "seconds": round(time.perf_counter() - t0, 1),
        "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
        "torch": torch.__version__,
    }
    return best_state, record


def train_and_save(out: str | Path, spec: ModelSpec, train_samples: list[Sample], val_samples: list[Sample],
                   config: TrainConfig = TrainConfig(), *, card: str | None = None,
                   weights_dtype: str = "float16", **kw) -> ModelSpec:
    """:func:`train`, then write the package (never over an existing one)."""
    state, record = train(spec, train_samples, val_samples, config, **kw)
    spec = replace(spec, training={k: record[k] for k in ("config", "best", "sample_counts", "train_sources",
                                                          "val_sources", "seconds", "finished", "command", "torch")})
    if card:
        card = card.format(metrics=_metrics_table(record["best"]), record=record)
    return save_package(out, spec, state, weights_dtype=weights_dtype, card=card)


def _metrics_table(best: dict) -> str:
    keys = [k for k in best if k not in ("step", "seconds")]
    head = "| " + " | ".join(keys) + " |\n|" + "---|" * len(keys) + "\n"
    return head + "| " + " | ".join(f"{best[k]:.3f}" for k in keys) + " |"
