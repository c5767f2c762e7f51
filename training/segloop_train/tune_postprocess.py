"""Choose an instance model's post-processing on validation images.

An instance model predicts background / interior / boundary probabilities; the labels come
from :class:`~segloop.core.inference.postprocess.InstanceParams`: interiors above
``seed_threshold`` seed objects, which grow (at most ``grow_px``) into pixels whose foreground
probability is above ``foreground_threshold``, and objects under ``min_size`` pixels go; with
``split_h`` > 0 a seed region with a neck becomes two objects (touching nuclei).  The
defaults (0.5 / 0.5 / 4 / 12) suit the model they were set for; a model fine-tuned on other
data (larger nuclei, thicker boundaries) can be several F1 points better with others.
StarDist and Cellpose tune their thresholds the same way, on validation images.

::

    segloop-train tune-postprocess MODEL --folder F [--folder F2 ...] [--split val] --out NEW [--version V]

:func:`tune_instance_params` predicts each image's probabilities once, then searches the
thresholds, then the seed splitting (``split_h``, with the seed threshold), then ``min_size`` and
``grow_px``, one after the other (coordinate search over a fixed grid, :data:`GRID`).  The objective is the mean over folders (sources) of
``(F1@0.5 + AJI) / 2`` pooled over each folder's images, so a source with many images does
not outvote the others, and splits and merges both count.  Only the given split is read (never
``test``).

Images whose pixel size differs from the model's are predicted resampled and their
probabilities mapped back to the image's grid, where the search runs; ``predict`` assembles
labels on the model's grid, so for them the tuned numbers are a close approximation.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

__all__ = ["GRID", "Tuning", "card_section", "collect_probabilities", "score_params", "tune_instance_params",
           "tune_package", "validation_samples", "write_tuned", "build_parser", "main"]

#: The values searched, stage by stage (thresholds jointly, split_h with the seed threshold, min_size, grow_px).
GRID: dict[str, tuple] = {
    "seed_threshold": (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9),
    "foreground_threshold": (0.2, 0.3, 0.4, 0.5, 0.6, 0.7),
    "min_size": (0, 6, 12, 24, 48, 96, 192),
    "grow_px": (2, 4, 8, 16),
    "split_h": (0.0, 0.5, 1.0, 2.0),
}


@dataclass(frozen=True)
class Tuning:
    """The result of :func:`tune_instance_params`.

    ``before`` / ``after``: per folder pooled ``f1@0.5`` and ``aji`` with the package's own and
    the chosen parameters, and ``objective`` (see the module); ``tried``: every combination
    scored, in order; ``grid``: the values searched.
    """

    params: object            # InstanceParams
    before: dict
    after: dict
    tried: list
    grid: dict = field(default_factory=lambda: dict(GRID))

    def to_dict(self) -> dict:
        return {"params": self.params.to_dict(), "objective": "mean over sources of (F1@0.5 + AJI) / 2",
                "before": self.before, "after": self.after, "combinations": len(self.tried),
                "grid": {k: list(v) for k, v in self.grid.items()}}


def collect_probabilities(model, samples: Sequence[tuple[np.ndarray, np.ndarray, tuple | None]],
                          cancel=None) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(probabilities float16 (K, H, W), true labels)`` of each ``(image, labels, pixel_size)``."""
    takes_px = "pixel_size" in inspect.signature(model.predict).parameters
    out = []
    with warnings.catch_warnings(record=True) as seen:       # one notice per kind, not one per image
        warnings.simplefilter("always")
        for image, labels, px in samples:
            kw = {"pixel_size": px} if (takes_px and px) else {}
            r = model.predict(np.asarray(image), probabilities=True, cancel=cancel, **kw)
            out.append((r.probabilities, np.asarray(labels)))
    for msg, cat in dict.fromkeys((str(w.message), w.category) for w in seen):
        warnings.warn(msg, cat, stacklevel=2)
    return out


def score_params(data: Mapping[str, Sequence[tuple[np.ndarray, np.ndarray]]], params) -> dict:
    """Pooled ``f1@0.5`` / ``aji`` per source and the objective, with ``params``."""
    from segloop.core.editing.metrics import instance_scores, pool_instance_scores
    from segloop.core.inference.postprocess import instances_from_probs

    per = {}
    for name, items in data.items():
        pooled = pool_instance_scores([instance_scores(truth, instances_from_probs(p.astype(np.float32), params))
                                       for p, truth in items])
        per[name] = {"f1@0.5": round(float(pooled["f1@0.5"]), 4), "aji": round(float(pooled["aji"]), 4)}
    objective = float(np.mean([(v["f1@0.5"] + v["aji"]) / 2 for v in per.values()])) if per else 0.0
    return {"sources": per, "objective": round(objective, 4)}


def tune_instance_params(data: Mapping[str, Sequence[tuple[np.ndarray, np.ndarray]]], base, *,
                         grid: Mapping[str, Sequence] | None = None,
                         progress: Callable[[int, int], None] | None = None) -> Tuning:
    """Search :data:`GRID` (or ``grid``) from ``base`` (InstanceParams) on ``{source: [(probs, truth)]}``.

    Stage 1 tries every (seed, foreground) pair, stage 2 every (``split_h`` > 0, seed) pair (a
    split seed region tolerates a lower seed threshold), stage 3 ``min_size``, stage 4
    ``grow_px``, each keeping the best so far; ``base`` itself is scored first and wins ties, so
    the result is never worse than ``base`` on these images.
    """
    if not data or not any(len(v) for v in data.values()):
        raise ValueError("no validation images to tune the post-processing on")
    g = {**GRID, **(grid or {})}
    stages = [[{"seed_threshold": s, "foreground_threshold": f} for s in g["seed_threshold"]
               for f in g["foreground_threshold"]],
              [{"split_h": float(h), "seed_threshold": s} for h in g["split_h"] if h for s in g["seed_threshold"]],
              [{"min_size": m} for m in g["min_size"]],
              [{"grow_px": k} for k in g["grow_px"]]]
    total = 1 + sum(len(s) for s in stages)
    before = score_params(data, base)
    best, best_score = base, before
    tried = [{"params": base.to_dict(), **before}]
    done = 1
    for stage in stages:
        anchor = best
        for change in stage:
            cand = replace(anchor, **change)
            done += 1
            if cand != anchor:                   # the anchor is scored already
                sc = score_params(data, cand)
                tried.append({"params": cand.to_dict(), **sc})
                if sc["objective"] > best_score["objective"]:
                    best, best_score = cand, sc
            if progress:
                progress(done, total)
    return Tuning(params=best, before=before, after=best_score, tried=tried, grid=g)


def validation_samples(folder: Path, splits: Sequence[str] = ("val",)):
    """``(image, labels, pixel_size)`` of a training folder's samples in ``splits``."""
    from segloop.core.formats.trainfolder import TrainingFolder

    if "test" in splits:
        raise ValueError("post-processing is tuned on validation images, never on the test split")
    tf = TrainingFolder.open(folder)
    for rec in tf.samples():
        if rec.split in splits:
            s = tf.read_sample(rec, verify=False)
            sp = rec.meta.get("spacing")
            yield np.asarray(s.image), np.asarray(s.labels), (tuple(sp) if sp else None)


def tune_package(package: Path, folders: Sequence[Path], *, splits: Sequence[str] = ("val",),
                 grid: Mapping[str, Sequence] | None = None, progress=None) -> Tuning:
    """Tune the post-processing of the instance package ``package`` on ``folders``' ``splits``
    (one source per folder).  The package is not changed: see :func:`write_tuned`."""
    from segloop import load_model
    from segloop.core.formats.registry import model_path
    from segloop.core.inference.postprocess import InstanceParams

    model = load_model(model_path(package), device="cpu")
    if model.spec.task != "instance":
        raise ValueError(f"{model.spec.name} is a {model.spec.task} model: only instance models have a "
                         "post-processing to tune")
    data = {}
    for f in folders:
        f = Path(f)
        data[f.name if f.name not in data else str(f)] = collect_probabilities(model, list(validation_samples(f, splits)))
    empty = [n for n, v in data.items() if not v]
    if empty:
        raise ValueError(f"no {'/'.join(splits)} images in {', '.join(empty)}")
    return tune_instance_params(data, InstanceParams.from_dict(model.spec.postprocess), grid=grid,
                                progress=progress)


def write_tuned(package: Path, out: Path, tuning: Tuning, *, version: str | None = None) -> None:
    """Copy ``package`` to ``out`` (weights, ONNX, card kept) with the tuned post-processing,
    recorded in ``training["postprocess_tuning"]`` and at the end of the card; ``version``: the
    copy's version (default: the package's)."""
    from segloop.core.formats.package import load_package, save_package
    from segloop.core.formats.registry import model_path

    pkg = load_package(model_path(package))
    training = dict(pkg.spec.training or {})
    training["postprocess_tuning"] = tuning.to_dict()
    spec = replace(pkg.spec, postprocess=tuning.params.to_dict(), training=training,
                   version=version or pkg.spec.version)
    card = (pkg.card or f"# {spec.name} v{spec.version}\n").replace(f"# {spec.name} v{pkg.spec.version}",
                                                                    f"# {spec.name} v{spec.version}", 1) + "\n" + card_section(tuning)
    save_package(out, spec, pkg.state_dict, weights_dtype=pkg.spec.weights_dtype or "float32",
                 onnx_bytes=pkg.onnx_bytes, card=card)


def card_section(tuning: Tuning) -> str:
    """The model card's lines about the tuned post-processing."""
    p = tuning.params
    rows = "\n".join(f"| {n} | {b['f1@0.5']:.3f} / {b['aji']:.3f} | {tuning.after['sources'][n]['f1@0.5']:.3f} / "
                     f"{tuning.after['sources'][n]['aji']:.3f} |" for n, b in tuning.before["sources"].items())
    return (f"## Post-processing (tuned on validation images)\n"
            f"seed threshold {p.seed_threshold}, foreground threshold {p.foreground_threshold}, min size "
            f"{p.min_size} px, growth {p.grow_px} px, seed splitting "
            f"{'off' if not p.split_h else f'h {p.split_h:g} px'}; chosen from {len(tuning.tried)} combinations by the mean "
            f"over sources of (F1@0.5 + AJI) / 2 (`segloop_train.tune_postprocess`).\n\n"
            f"| source (validation) | before: F1@0.5 / AJI | after |\n|---|---|---|\n{rows}\n")


def build_parser():
    """The parser of ``segloop-train tune-postprocess`` (without the sub-command)."""
    from segloop_train.cli_args import OneLineParser

    ap = OneLineParser(prog="segloop-train tune-postprocess",
                       description="Choose an instance model's seed / foreground thresholds, seed splitting, minimum size and growth "
                                   "on the validation images of training folders; writes a copy of the package.")
    ap.add_argument("model", help="instance model: a name (segloop list-models) or a package path")
    ap.add_argument("--folder", action="append", required=True, type=Path,
                    help="training folder (repeat for several sources; each counts equally)")
    ap.add_argument("--split", action="append", choices=("train", "val"),
                    help="split(s) to tune on (default: val); never test")
    ap.add_argument("--out", required=True, type=Path, help="new package folder (must not exist)")
    ap.add_argument("--version", help="the tuned copy's version (default: the model's)")
    return ap


def main(argv: list[str] | None = None) -> int:
    """``segloop-train tune-postprocess MODEL --folder F ... --out NEW`` (``argv`` without the
    sub-command)."""
    import sys

    from segloop.errors import SegloopError

    ap = build_parser()
    args = ap.parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        if args.out.exists():
            raise FileExistsError(f"--out {args.out} exists; choose a new folder")
        for f in args.folder:
            if not f.is_dir():
                raise FileNotFoundError(f"--folder {f} is not a folder")
        tuning = tune_package(args.model, args.folder, splits=tuple(args.split or ("val",)),
                             progress=lambda i, n: print(f"\r{i}/{n} combinations", end="", file=sys.stderr, flush=True))
        print(file=sys.stderr)
        write_tuned(args.model, args.out, tuning, version=args.version)
    except (SegloopError, ValueError, OSError) as e:
        print(f"segloop-train: error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
        return 2
    print(card_section(tuning))
    print(f"written: {args.out}")
    return 0
