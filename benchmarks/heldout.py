"""``evaluate.py --folder``: instance metrics per source on the held-out samples of training folders.

What it measures
----------------
Every sample of the training folders (v1) is grouped by its **source**: the importer that wrote
it (``meta.json`` ``extra.import.importer``, e.g. ``nuinsseg``; else ``extra.import.dataset``;
else the folder's name).  For each source, on its held-out split (``--split``), every model
(``--model``) and the **classical baseline** (:mod:`classical`: hematoxylin channel for RGB,
the image itself for greyscale, then Otsu + distance-transform watershed, with the seed
distance and smallest object scaled to the sample's pixel size) segment each image, and
:func:`segloop.core.editing.metrics.instance_scores` scores it against the reference labels:

* **F1@0.5**: one-to-one (Hungarian) matching at IoU >= 0.5, ``2 TP / (2 TP + FP + FN)``;
* **AJI**: Kumar et al. 2017 (each reference nucleus paired with the prediction of highest
  IoU; unpaired predictions added to the union);
* **PQ = SQ x DQ**: Kirillov et al. 2019, matches at IoU > 0.5;
* **Dice**: foreground pixels.

The table shows the mean over the images of a source (as HoVer-Net and most nuclei papers
report); ``heldout.json`` also has every image's figures and the pooled figures (counts of all
images added first: object-level F1, aggregate AJI = sum C / sum U, PQ, Dice).  Only reviewed
pixels count: on a partly reviewed sample, objects (reference and predicted) with at least half
their pixels reviewed are scored, and Dice is taken over reviewed pixels.

Images are read at their **native resolution**; a model runs through the public API
(``segloop.load_model``, then ``Model.predict``), given
the sample's ``spacing`` as ``pixel_size=`` when that method accepts it, so the model's own
pixel-size handling rescales.  ``--stain`` (``auto``: hematoxylin for RGB on a 1-channel model)
goes to the method's ``stain=`` when it has one, else becomes its ``normalization=``.

Which rows are cross-dataset
----------------------------
The cross-dataset protocol (train without source X, test on X) is run by the training recipes;
this script reports, per model, the sources it was trained on, and marks each row ``yes`` (the
model saw this source in training: its train or val split), ``no`` (**cross-dataset**) or
``unknown``.  The package's ``spec.training`` tells: a list ``datasets`` (or ``sources``) of
importer / dataset names if the recipe recorded one; else the recorded training ``folders``
(read again when they still exist with the recorded fingerprint: the sources of their train
and val samples); else ``train_sources`` / ``val_sources`` file names, matched against the
evaluated samples' ``source`` (this can say ``yes``, never ``no``).  An evaluated image that
the model saw in training is flagged in the JSON and counted under the table.  ``--cross``
keeps only the cross-dataset rows (and the baseline).

Written to ``--out``: ``heldout.md`` (the tables) and ``heldout.json`` (models, sources,
per-source and per-image figures); with ``--overlays DIR``, for each source and method the best
and the worst image by F1@0.5 (``<source>__<method>__best.png``; reference outlines green,
prediction magenta), for ``docs/models.md``.
"""

from __future__ import annotations

import inspect
import json
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from classical import classical_instances
from overlays import overlay, write_png

__all__ = ["SPLIT_CHOICES", "METRICS", "FolderSample", "collect_samples", "run"]

#: ``auto``: per source, ``test`` if it has test samples, else ``val``; ``all``: every sample,
#: train included (for folders kept for evaluation only).
SPLIT_CHOICES = ("auto", "val", "test", "all")
#: The metrics of the table, in order (keys of ``instance_scores``), and their headings.
METRICS = ("f1@0.5", "aji", "pq", "sq", "dq", "dice")
HEADINGS = ("F1@0.5", "AJI", "PQ", "SQ", "DQ", "Dice")
BASELINE = "classical baseline"
_VARIANT_TEXT = {"hematoxylin": "hematoxylin + Otsu + watershed", "grey": "Otsu + watershed",
                 "channel mean": "channel mean + Otsu + watershed"}


@dataclass(frozen=True)
class FolderSample:
    """One evaluated sample: its folder, its record (meta.json) and its source's name."""

    folder: Any                      # TrainingFolder
    record: Any                      # SampleRecord
    source: str

    @property
    def meta(self) -> dict:
        return self.record.meta

    @property
    def key(self) -> str:
        return f"{self.folder.path.name}/{self.record.sample_id}"


def source_of(meta: dict, folder_name: str) -> tuple[str, str | None]:
    """(short source name, dataset description) of a sample, from ``extra.import``."""
    imp = (meta.get("extra") or {}).get("import") or {}
    name = imp.get("importer") or imp.get("dataset") or f"{folder_name} (no import record)"
    return str(name), (str(imp["dataset"]) if imp.get("dataset") else None)


def collect_samples(folders: list[Path], split: str) -> tuple[list[FolderSample], dict[str, dict]]:
    """The samples to evaluate, grouped by source, and a description of each source.

    Raises
    ------
    TrainingFolderError
        A folder is missing or not a training folder, holds semantic labels or volumes, or
        has no sample in the split asked for.
    """
    from segloop.core.formats.trainfolder import TrainingFolder
    from segloop.errors import TrainingFolderError

    by_source: dict[str, list[FolderSample]] = {}
    datasets: dict[str, set] = {}
    for path in folders:
        tf = TrainingFolder.open(path)
        if tf.info.task != "instance":
            raise TrainingFolderError(f"{path} holds {tf.info.task} labels; evaluate.py --folder scores instance "
                                      "segmentations (nuclei): give a folder of instance labels")
        records = tf.samples()
        if split in ("val", "test"):
            records = [r for r in records if r.split == split]
        elif split == "auto":
            records = [r for r in records if r.split in ("val", "test")]
        if not records:
            counts = ", ".join(f"{k} {v}" for k, v in tf.split_counts().items())
            want = "val or test" if split == "auto" else split
            raise TrainingFolderError(f"{path} has no {want} samples ({counts}); choose another --split "
                                      f"({', '.join(SPLIT_CHOICES)})")
        for rec in records:
            axes = str(rec.meta.get("axes", ""))
            if axes.rstrip("C") != "YX":
                raise TrainingFolderError(f"{path}: sample {rec.sample_id!r} has axes {axes!r}; evaluate.py --folder "
                                          "scores 2D images (YX or YXC) only")
            name, dataset = source_of(rec.meta, tf.path.name)
            by_source.setdefault(name, []).append(FolderSample(tf, rec, name))
            if dataset:
                datasets.setdefault(name, set()).add(dataset)
    samples, sources = [], {}
    for name in sorted(by_source):
        group = by_source[name]
        if split == "auto":
            chosen = "test" if any(s.record.split == "test" for s in group) else "val"
            group = [s for s in group if s.record.split == chosen]
        else:
            chosen = split
        group.sort(key=lambda s: s.key)
        samples += group
        sources[name] = {"split": chosen, "datasets": sorted(datasets.get(name, ())),
                         "folders": sorted({str(s.folder.path) for s in group}), "images": len(group),
                         "objects": int(sum(int(s.meta.get("n_objects") or 0) for s in group))}
    return samples, sources


# ----------------------------------------------------------------------------- models


def _member(source: str) -> str:
    """A recorded source without its distribution / wheel prefix (``dist==v:member`` -> ``member``)."""
    return str(source).split(":", 1)[-1]


def training_sources(spec, samples: list[FolderSample]) -> dict:
    """What a package records about the sources it was trained on.

    Returns
    -------
    dict
        ``sources``: names known to be in training (train or val split); ``complete``: True
        when that list is the whole truth (so a source not in it is cross-dataset); ``how``:
        where it came from, in words; ``seen``: ``{sample key: "train" | "val"}`` for evaluated
        samples that were in training.
    """
    from segloop.core.formats.trainfolder import TrainingFolder
    from segloop.errors import SegloopError

    t = spec.training or {}
    for key in ("datasets", "sources"):
        v = t.get(key)
        if isinstance(v, list | tuple) and v and all(isinstance(x, str) for x in v):
            return {"sources": sorted(v), "complete": True, "how": f"spec.training.{key}", "seen": {}}
    names: set[str] = set()
    identities: dict[str, str] = {}
    problems = []
    for f in t.get("folders") or []:
        path = f.get("path") if isinstance(f, dict) else None
        try:
            tf = TrainingFolder.open(path)
        except (SegloopError, TypeError, OSError):
            problems.append(f"training folder {path} not found")
            continue
        if f.get("fingerprint") and tf.fingerprint() != f["fingerprint"]:
            problems.append(f"training folder {path} changed since training")
            continue
        for rec in tf.samples():
            if rec.split in ("train", "val"):
                name, dataset = source_of(rec.meta, tf.path.name)
                names |= {name} | ({dataset} if dataset else set())
                ident = rec.meta.get("source_identity")
                if ident and identities.get(ident) != "train":
                    identities[ident] = rec.split
    files = {_member(s): "val" for s in t.get("val_sources") or []}
    files.update({_member(s): "train" for s in t.get("train_sources") or []})
    seen = {}
    for s in samples:
        hit = identities.get(s.meta.get("source_identity")) or (
            files.get(_member(s.meta["source"])) if s.meta.get("source") else None)
        if hit:
            seen[s.key] = hit
            names.add(s.source)
    if t.get("folders") and not problems:
        return {"sources": sorted(names), "complete": True, "how": "the recorded training folders", "seen": seen}
    how = "; ".join(problems) if problems else (
        "train_sources / val_sources file names" if files else "nothing recorded")
    return {"sources": sorted(names), "complete": False, "how": how, "seen": seen}


def in_training(info: dict | None, source: str, datasets: list[str]) -> str:
    """``"yes"``, ``"no"`` or ``"unknown"``: whether a model saw ``source`` in training (None: a baseline)."""
    if info is None:
        return "-"
    known = set(info["sources"])
    if source in known or known & set(datasets):
        return "yes"
    return "no" if info["complete"] else "unknown"


@dataclass
class Method:
    """A model or the baseline, and how it is called."""

    label: str
    model: Any = None                # segloop Model, None for the baseline
    arg: str | None = None
    call: Any = None
    accepts: frozenset = frozenset()
    training: dict | None = None
    facts: dict = field(default_factory=dict)

    def segment(self, image: np.ndarray, *, rgb: bool, pixel_size, stain: str) -> tuple[np.ndarray, dict]:
        """Labels of ``image`` and what was passed (``pixel_size``, ``stain`` / ``normalization``)."""
        if self.model is None:
            ps = None if pixel_size is None else float(np.mean(pixel_size))
            labels, variant = classical_instances(image, pixel_size=ps)
            return labels, {"variant": variant}
        from segloop.core.inference.stain import stain_normalization

        kw: dict[str, Any] = {}
        used: dict[str, Any] = {}
        if "channel_axis" in self.accepts:
            kw["channel_axis"] = -1 if image.ndim == 3 else None
        if "stain" in self.accepts:
            kw["stain"] = used["stain"] = stain
        else:
            norm = stain_normalization(self.model, rgb=rgb, stain=stain)
            if norm is not None:
                kw["normalization"] = used["normalization"] = norm
        if pixel_size is not None and "pixel_size" in self.accepts:
            kw["pixel_size"] = used["pixel_size"] = pixel_size
        out = self.call(image, **kw)
        return np.asarray(getattr(out, "labels", out)), used


def load_methods(models: list[str], samples: list[FolderSample], *, device: str) -> list[Method]:
    """Load every model (before any work, so a bad name fails first), then the baseline.

    Raises
    ------
    ModelNotFoundError, ModelPackageError
        An unknown name or path, a broken package.
    InvalidImageError
        A model that is not an instance (nuclei) model.
    """
    import segloop
    from segloop.core.formats.registry import model_path
    from segloop.errors import InvalidImageError

    loaded = []
    for arg in models:
        model = segloop.load_model(arg, device=device)
        if model.spec.task != "instance":
            raise InvalidImageError(f"model {arg!r} is a {model.spec.task} model; evaluate.py --folder scores "
                                    "instance (nuclei) models")
        call = model.predict            # (Model.segment is the click models' call, refused here)
        facts = {"argument": arg, "path": str(model_path(arg)), "name": model.spec.name,
                 "version": model.spec.version, "sha256": model.spec.sha256,
                 "architecture": model.spec.architecture, "modality": model.spec.modality,
                 "pixel_size": list(model.spec.pixel_size) if getattr(model.spec, "pixel_size", None) else None,
                 "method": f"Model.{call.__name__}"}
        loaded.append((arg, model, call, facts))
    names = [m[1].spec.name for m in loaded]
    methods = []
    for arg, model, call, facts in loaded:
        label = model.spec.name if names.count(model.spec.name) == 1 else arg
        accepts = frozenset(inspect.signature(call).parameters)
        facts["pixel_size_passed"] = "pixel_size" in accepts
        methods.append(Method(label, model, arg, call, accepts, training_sources(model.spec, samples), facts))
    methods.append(Method(BASELINE))
    return methods


# ----------------------------------------------------------------------------- scoring


def _pixel_size(meta: dict):
    sp = meta.get("spacing")
    if not sp or len(sp) < 2:
        return None
    y, x = (float(v) for v in sp[-2:])
    return (y, x) if math.isfinite(y) and math.isfinite(x) and y > 0 and x > 0 else None


def score(truth: np.ndarray, pred: np.ndarray, reviewed: np.ndarray) -> dict[str, float]:
    """:func:`instance_scores` of one image, on its reviewed part (see the module docstring)."""
    from segloop.core.editing import metrics as M

    pred = np.asarray(pred)
    if pred.shape != truth.shape:
        raise ValueError(f"prediction has shape {pred.shape}, the labels {truth.shape}")
    mask = np.asarray(reviewed) > 0
    if mask.all():
        return M.instance_scores(truth, pred)
    from segloop_train.evaluate import restrict_objects

    s = M.instance_scores(restrict_objects(truth, mask), restrict_objects(pred, mask))
    t, p = (truth != 0)[mask], (pred != 0)[mask]
    s["fg_inter"], s["fg_sum"] = int((t & p).sum()), int(t.sum() + p.sum())
    s["dice"] = 1.0 if s["fg_sum"] == 0 else 2 * s["fg_inter"] / s["fg_sum"]
    return s


def evaluate(samples: list[FolderSample], sources: dict, methods: list[Method], *, stain: str,
             log=print) -> list[dict]:
    """Every method on every sample; one result per (source, method), with per-image rows."""
    from segloop.core.editing.metrics import pool_instance_scores
    from segloop.errors import SegloopError

    per: dict[tuple[str, str], dict] = {}
    t0 = time.perf_counter()
    for i, s in enumerate(samples):
        loaded = s.folder.read_sample(s.record)
        image, truth = loaded.image, np.asarray(loaded.labels)
        rgb = image.ndim == 3 and image.shape[-1] in (3, 4)
        ps = _pixel_size(s.meta)
        for m in methods:
            t1 = time.perf_counter()
            try:
                pred, used = m.segment(image, rgb=rgb, pixel_size=ps, stain=stain)
            except SegloopError as e:
                raise type(e)(f"{m.label} on sample {s.key}: {e}") from None
            seconds = time.perf_counter() - t1
            row = {"sample": s.key, "split": s.record.split, "shape": list(image.shape),
                   "pixel_size": list(ps) if ps else None, "seconds": round(seconds, 4), **used,
                   **score(truth, pred, loaded.reviewed)}
            if m.training is not None:
                row["seen_in_training"] = m.training["seen"].get(s.key)
            r = per.setdefault((s.source, m.label), {"source": s.source, "method": m.label, "rows": []})
            r["rows"].append(row)
        if (i + 1) % 25 == 0 or i + 1 == len(samples):
            log(f"  {i + 1}/{len(samples)} images ({time.perf_counter() - t0:.0f} s)", flush=True)
    results = []
    for (src, label), r in per.items():
        m = next(m for m in methods if m.label == label)
        rows = r["rows"]
        variants = sorted({x.get("variant") for x in rows if x.get("variant")})
        results.append({
            "source": src, "method": label, "kind": "baseline" if m.model is None else "model",
            "baseline_variant": [_VARIANT_TEXT[v] for v in variants] or None,
            "in_training": in_training(m.training, src, sources[src]["datasets"]),
            "split": sources[src]["split"], "images": len(rows), "objects": int(sum(x["n_true"] for x in rows)),
            "predicted_objects": int(sum(x["n_pred"] for x in rows)),
            "seen_images": sum(1 for x in rows if x.get("seen_in_training")),
            "seconds": round(sum(x["seconds"] for x in rows), 3),
            "mean": {k: float(np.mean([x[k] for x in rows])) for k in METRICS},
            "pooled": pool_instance_scores(rows), "per_image": rows})
    order = {m.label: i for i, m in enumerate(methods)}
    results.sort(key=lambda r: (r["source"], order[r["method"]]))
    return results


# ----------------------------------------------------------------------------- report


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "x"


def tables(results: list[dict], methods: list[Method], sources: dict, *, cross: bool) -> str:
    """The Markdown of ``heldout.md``: the models and what they were trained on, then one row per source and method."""
    out = ["Models (trained on: the sources of their train and val splits, as recorded):", "",
           "| model | version | trained on | recorded in | pixel size (µm) | called as |", "|---|---|---|---|---|---|"]
    for m in methods:
        if m.model is None:
            continue
        t = m.training
        on = ", ".join(t["sources"]) if t["sources"] else ""
        on = on if t["complete"] else (f"{on} + unknown" if on else "unknown")
        ps = m.facts["pixel_size"]
        call = m.facts["method"] + ("(pixel_size=sample spacing)" if m.facts["pixel_size_passed"] else
                                    " (no pixel_size: native resolution)")
        out.append(f"| {m.label} | {m.facts['version']} | {on or 'nothing'} | {t['how']} | "
                   f"{', '.join(f'{v:g}' for v in ps) if ps else 'not recorded'} | {call} |")
    if len(out) == 4:
        out = ["No model given: the classical baseline only.", ""]
    else:
        out.append("")
    shown = results
    if cross:
        keep = {r["source"] for r in results if r["in_training"] == "no"}
        shown = [r for r in results if r["in_training"] == "no" or (r["kind"] == "baseline" and r["source"] in keep)]
        out += ["`--cross`: only the rows of sources a model was **not** trained on (and the baseline on them); "
                "rows of sources a model saw, or whose training data is unknown, are left out.", ""]
    out += ["Held-out instance metrics per source (mean over images; `in training`: **no** = cross-dataset):", "",
            "| source | split | images | objects | method | in training | " + " | ".join(HEADINGS) + " |",
            "|---|---|---|---|---|---|" + "---|" * len(HEADINGS)]
    for r in shown:
        method = r["method"] + (f" ({'; '.join(r['baseline_variant'])})" if r["baseline_variant"] else "")
        out.append(f"| {r['source']} | {r['split']} | {r['images']} | {r['objects']} | {method} | "
                   f"{r['in_training']} | " + " | ".join(f"{r['mean'][k]:.3f}" for k in METRICS) + " |")
    if not shown:
        out.append("| (no cross-dataset rows) | | | | | | " + " | " * len(HEADINGS))
    leaks = [r for r in results if r["seen_images"]]
    if leaks:
        out.append("")
        for r in leaks:
            out.append(f"Warning: {r['method']} saw {r['seen_images']} of the {r['images']} evaluated "
                       f"{r['source']} images in training (flagged per image in heldout.json).")
    out += ["", "Sources: " + "; ".join(f"{n}: {', '.join(s['datasets']) or 'no dataset recorded'} "
                                         f"({', '.join(s['folders'])})" for n, s in sources.items())]
    return "\n".join(out) + "\n"


def write_overlays(directory: Path, samples: list[FolderSample], results: list[dict], methods: list[Method],
                   *, stain: str) -> list[dict]:
    """Best and worst image (by F1@0.5, then AJI) of each source and method, as overlay PNGs."""
    directory.mkdir(parents=True, exist_ok=True)
    by_key = {s.key: s for s in samples}
    written = []
    for r in results:
        m = next(m for m in methods if m.label == r["method"])
        ranked = sorted(r["per_image"], key=lambda x: (x["f1@0.5"], x["aji"], x["sample"]))
        picks = [("best", ranked[-1])] + ([("worst", ranked[0])] if len(ranked) > 1 else [])
        for which, row in picks:
            s = by_key[row["sample"]]
            loaded = s.folder.read_sample(s.record)
            image = loaded.image
            pred, _ = m.segment(image, rgb=image.ndim == 3 and image.shape[-1] in (3, 4),
                                pixel_size=_pixel_size(s.meta), stain=stain)
            path = directory / f"{_slug(r['source'])}__{_slug(r['method'])}__{which}.png"
            write_png(path, overlay(image, loaded.labels, pred))
            written.append({"file": str(path), "source": r["source"], "method": r["method"], "which": which,
                            "sample": row["sample"], "f1@0.5": row["f1@0.5"], "aji": row["aji"]})
    return written


def run(a, log=print) -> int:
    """The ``--folder`` mode of ``evaluate.py`` (``a``: its parsed arguments); returns the exit status.

    Raises
    ------
    SegloopError
        Bad input (missing folder, no samples in the split, unknown model ...); ``evaluate.main``
        prints it as one line and exits 2.
    """
    from segloop.core._runtime import atomic_write_text

    samples, sources = collect_samples([Path(f) for f in a.folder], a.split)
    methods = load_methods(a.model or [], samples, device=a.device)
    log(f"{len(samples)} images from {len(sources)} source(s): " + ", ".join(
        f"{n} ({s['split']}, {s['images']})" for n, s in sources.items()), flush=True)
    results = evaluate(samples, sources, methods, stain=a.stain, log=log)
    table = tables(results, methods, sources, cross=a.cross)
    overlays = write_overlays(a.overlays, samples, results, methods, stain=a.stain) if a.overlays else []
    doc = {"split": a.split, "stain": a.stain, "cross": a.cross, "folders": [str(f) for f in a.folder],
           "metrics": {"f1@0.5": "Hungarian matching, IoU >= 0.5", "aji": "Kumar et al. 2017",
                       "pq": "Kirillov et al. 2019, IoU > 0.5", "dice": "foreground pixels",
                       "mean": "mean over the images of a source", "pooled": "counts of all images added first"},
           "models": {m.label: {**m.facts, "trained_on": m.training} for m in methods if m.model is not None},
           "baseline": {"name": BASELINE, "module": "benchmarks/classical.py"},
           "sources": sources, "results": results, "overlays": overlays}
    a.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(a.out / "heldout.json", json.dumps(doc, indent=1), durable=False)
    atomic_write_text(a.out / "heldout.md", table, durable=False)
    log("")
    log(table)
    if overlays:
        log(f"{len(overlays)} overlay pictures in {a.overlays}")
    log(f"wrote {a.out / 'heldout.json'} and {a.out / 'heldout.md'}")
    for r in results:
        key = f"{_slug(r['source'])}.{_slug(r['method'])}"
        log(" ".join(f"{key}.{k}={r['mean'][k]:.4f}" for k in METRICS))
    return 0
