"""Recipes of the radiology seed models, trained from public hand-drawn volumes.

::

    python -m segloop_train.recipes mri-brain-tumour-segunet25d --out DIR --sources SRC [--work W] [--resume]
    python -m segloop_train.recipes ct-lung-tumour-segunet25d --out DIR --sources SRC [--work W] [--resume]

``SRC`` holds one local copy per importer, named as the importer (``SRC/brats2013`` = a clone of
``deepmedic/deepmedic``; ``SRC/lung-lidc``, ``SRC/lung-pyradiomics``, ``SRC/lung-nsclc``; see
:mod:`segloop.core.formats.importers.radiology_sets` and ``docs/data.md``).  Each recipe

1. imports its datasets into one training folder (``W/<recipe>/data``; the datasets' own or
   fixed splits, by patient; the ``test`` patients are never read by training);
2. resamples every volume to the recipe's voxel spacing (:func:`resample_folder`: image linear,
   labels nearest) when it has one, so 1 mm and 5 mm scans teach the network one scale;
3. calls :func:`segloop_train.finetune` from scratch with a fixed seed (checkpointed: ``--resume``
   continues a killed run);
4. writes the package with float16 weights, ``spec.spacing`` (``Model.predict(spacing=...)``
   resamples a scan to it and back), the licence of its data, and a card whose held-out figures
   are computed on the **test patients at their own spacing**, through ``Model.predict`` - per
   class Dice, HD95 (mm), volume error (mL), and groups such as the BraTS whole tumour
   (:func:`segloop.core.editing.volume_metrics.volume_scores`).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from segloop.core.formats.package import load_package, save_package

__all__ = ["RAD_RECIPES", "RadRecipe", "build_radiology_model", "evaluate_test", "resample_folder"]


@dataclass(frozen=True)
class RadRecipe:
    """One radiology seed model: its data, network and training settings."""

    name: str
    version: str
    description: str
    datasets: tuple[str, ...]
    arch: str
    arch_kwargs: dict
    context_slices: int
    patch: int
    tile: dict
    normalization: dict
    steps: int
    batch: int
    lr: float
    eval_every: int
    licence: str
    spacing: tuple[float, float, float] | None = None
    test_datasets: tuple[str, ...] = ()        # imported after training: patients of a source never trained on
    groups: dict = field(default_factory=dict)
    headline: tuple[str, ...] = ()             # the classes / groups `segloop list-models` shows
    postprocess: dict = field(default_factory=dict)   # spec.postprocess, e.g. keep_largest (chosen on val)
    class_balance: bool = False                # foreground patches: a class first (rare tumours next to lungs)
    test_note: str = ""                        # how independent the test patients are (same source / cross-dataset)
    postprocess_why: str = ""
    body_part: str = ""
    seed: int = 0
    schema_version: int = 1

    def to_dict(self) -> dict:
        return asdict(self)


_NOT_A_DEVICE = " Not a medical device; research use only."

RAD_RECIPES: dict[str, RadRecipe] = {
    "mri-brain-tumour-segunet25d": RadRecipe(
        name="mri-brain-tumour-segunet25d", version="1.0.0",
        description="2.5D multi-class glioma segmentation of skull-stripped brain MRI (FLAIR + T1c, 3 neighbouring "
                    "axial slices, 1 mm): necrosis, edema, non-enhancing and enhancing tumour (BraTS classes); "
                    "trained on 3 BraTS 2013 cases",
        datasets=("brats2013",), arch="segunet", arch_kwargs={"depth": 4, "base_width": 16, "norm": "batch"},
        context_slices=3, patch=128, tile={"size": 256, "overlap": 0.25},
        normalization={"kind": "percentile", "low": 1.0, "high": 99.8, "per_channel": True},
        steps=2400, batch=8, lr=2e-3, eval_every=400, spacing=(1.0, 1.0, 1.0),
        groups={"whole tumour": [1, 2, 3, 4], "tumour core": [1, 3, 4]}, headline=("whole tumour", "enhancing"),
        postprocess={"keep_largest": [[1, 2, 3, 4]]},
        test_note="Same source as training (BraTS 2013, the copy's own test cases): held-out patients, **not** "
                  "cross-dataset; no other hand-labelled brain MRI could be had here.",
        postprocess_why="the largest connected tumour component is kept (decided on the val patient pat0004, "
                        "never on the test patients: whole-tumour Dice there 0.817 -> 0.878, HD95 64 -> 30 mm; "
                        "the network alone leaves small false-positive islands far from the tumour)",
        body_part="brain",
        licence="CC BY-NC-SA 3.0 (non-commercial, share-alike). Trained on BraTS 2013 cases shipped under CC BY-NC-SA "
                "3.0 CH; these weights carry the same terms." + _NOT_A_DEVICE),
    "ct-lung-tumour-segunet25d": RadRecipe(
        name="ct-lung-tumour-segunet25d", version="1.0.0",
        description="2.5D lung and lung-tumour segmentation of chest CT (5 neighbouring axial slices resampled to "
                    "2.5 x 0.8 x 0.8 mm, lung window); trained on 3 scans (LIDC-IDRI, pyradiomics), tested on an "
                    "NSCLC-Radiomics patient",
        datasets=("lung-lidc", "lung-pyradiomics"), test_datasets=("lung-nsclc",), arch="segunet",
        arch_kwargs={"depth": 4, "base_width": 16, "norm": "batch"}, context_slices=5, patch=160,
        tile={"size": 640, "overlap": 0.25}, normalization={"kind": "ct_window", "level": -300.0, "width": 1400.0},
        steps=1600, batch=8, lr=2e-3, eval_every=1600, spacing=(2.5, 0.8, 0.8), headline=("tumour", "lung"),
        class_balance=True,
        test_note="**Cross-dataset**: NSCLC-Radiomics, a source the model never saw in training, its GTV and lungs "
                  "drawn by hand (RTSTRUCT).",
        body_part="chest",
        licence="CC BY 3.0 (attribution: LIDC-IDRI). Trained on LIDC-IDRI (CC BY 3.0, Armato et al. 2011) and the "
                "pyradiomics test data (BSD-3-Clause)." + _NOT_A_DEVICE),
}


# --------------------------------------------------------------------------- data


def resample_folder(src: str | os.PathLike, dst: str | os.PathLike, spacing, *, splits=("train", "val")) -> Path:
    """A copy of a training folder's volumes at ``spacing`` (dz, dy, dx mm): image linear, labels and
    the reviewed mask nearest.  Samples of unknown spacing are refused.  Only ``splits`` are copied
    (the test patients stay at their own spacing, where they are scored)."""
    from segloop.core.formats.trainfolder import TrainingFolder
    from segloop.core.inference.spacing import resample_to_spacing
    from segloop.errors import TrainingFolderError

    tf = TrainingFolder.open(src)
    out = TrainingFolder.create(dst, classes=tuple(tf.info.classes), task=tf.info.task, modality=tf.info.modality,
                                exist_ok=True)
    have = {r.sample_id for r in out.samples()}
    for rec in tf.samples():
        if rec.split not in splits or rec.sample_id in have:
            continue
        s = tf.read_sample(rec)
        sp = rec.meta.get("spacing")
        if not sp or len(sp) != 3:
            raise TrainingFolderError(f"sample {rec.sample_id}: no voxel spacing recorded; cannot resample it")
        img = resample_to_spacing(s.image, sp, spacing, order=1, channels_last=rec.meta["axes"].endswith("C"))
        lab = resample_to_spacing(s.labels, sp, spacing, order=0)
        rev = None if s.reviewed is None else resample_to_spacing(s.reviewed, sp, spacing, order=0)
        extra = dict(rec.meta.get("extra") or {})
        extra["resampled_from"] = {"spacing": list(sp), "shape": list(s.labels.shape)}
        out.add_sample(img, lab, rev, axes=rec.meta["axes"], source=rec.meta.get("source") or rec.sample_id,
                       source_sha256=rec.meta.get("source_sha256"), spacing=tuple(spacing), split=rec.split,
                       sample_id=rec.sample_id, extra=extra)
    return Path(dst)


def import_datasets(names, sources: Path, data: Path) -> None:
    """Import the datasets ``names`` from ``sources/<importer>`` into the training folder ``data``."""
    from segloop.core.formats.importers.radiology_sets import (
        RADIOLOGY_DATASETS,
        import_radiology_dataset,
    )
    from segloop.errors import ImportSourceError

    for name in names:
        src = sources / name
        if not src.is_dir():
            raise ImportSourceError(f"{src}: missing; put a copy of {name} there ({RADIOLOGY_DATASETS[name].how_to_get})")
        print(import_radiology_dataset(name, src, data).summary(), flush=True)


def build_data(recipe: RadRecipe, sources: Path, work: Path) -> tuple[Path, Path]:
    """Import the recipe's training datasets (``sources/<importer>``) into ``work/data``; resampled
    copy in ``work/train`` (the folder training reads).  Returns ``(data, train)``."""
    data = work / "data"
    import_datasets(recipe.datasets, sources, data)
    if recipe.spacing is None:
        return data, data
    train = work / "train"
    resample_folder(data, train, recipe.spacing)
    return data, train


# --------------------------------------------------------------------------- evaluation


def evaluate_test(package: str | os.PathLike, folder: str | os.PathLike, *, split: str = "test",
                  groups: dict | None = None, device: str = "cpu") -> dict:
    """Per-patient and mean scores of a package on a folder's ``split`` volumes, at their own spacing.

    Returns ``{"cases": {sample_id: {class: scores}}, "mean": {class: {dice, hd95_mm, volume_error_ml}},
    "seconds_per_case": float}`` (see :func:`segloop.core.editing.volume_metrics.volume_scores`).
    """
    from segloop.core.editing.volume_metrics import volume_scores
    from segloop.core.formats.trainfolder import TrainingFolder
    from segloop.core.inference.model import Model

    tf = TrainingFolder.open(folder)
    model = Model(load_package(package), device=device, precision="fp32")
    cases, t0 = {}, time.perf_counter()
    recs = tf.samples(split)
    for rec in recs:
        s = tf.read_sample(rec)
        sp = tuple(rec.meta.get("spacing") or ())
        pred = model.predict(s.image, channel_axis=-1 if rec.meta["axes"].endswith("C") else None,
                             spacing=sp or None).labels
        cases[rec.sample_id] = volume_scores(s.labels, pred, sp or (1.0, 1.0, 1.0), tf.info.classes, groups=groups,
                                             mask=s.reviewed)
    mean: dict[str, dict] = {}
    for name in next(iter(cases.values()), {}):
        rows = [c[name] for c in cases.values()]
        mean[name] = {k: float(np.mean([r[k] for r in rows])) for k in ("dice", "hd95_mm", "volume_error_ml")}
        mean[name]["abs_volume_error_ml"] = float(np.mean([abs(r["volume_error_ml"]) for r in rows]))
    return {"cases": cases, "mean": mean, "seconds_per_case": (time.perf_counter() - t0) / max(1, len(recs))}


def _table(result: dict) -> str:
    lines = ["| case | class | Dice | HD95 (mm) | volume (mL) | reference (mL) |", "|---|---|---|---|---|---|"]
    for case, scores in result["cases"].items():
        for name, s in scores.items():
            lines.append(f"| {case} | {name} | {s['dice']:.3f} | {s['hd95_mm']:.1f} | {s['volume_ml']:.1f} | "
                         f"{s['reference_ml']:.1f} |")
    for name, s in result["mean"].items():
        lines.append(f"| **mean** | {name} | **{s['dice']:.3f}** | {s['hd95_mm']:.1f} | | |")
    return "\n".join(lines)


def _sources_text(folder: Path) -> str:
    from segloop.core.formats.trainfolder import TrainingFolder

    rows = {}
    for rec in TrainingFolder.open(folder).samples():
        imp = ((rec.meta or {}).get("extra") or {}).get("import") or {}
        r = rows.setdefault(imp.get("importer", "?"), {"imp": imp, "splits": {}})
        r["splits"].setdefault(rec.split, []).append(imp.get("case", rec.sample_id))
    out = []
    for name, r in rows.items():
        imp = r["imp"]
        parts = "; ".join(f"{k}: {', '.join(v)}" for k, v in sorted(r["splits"].items()))
        out.append(f"- **{name}** ({imp.get('dataset')}): {parts}.  Labels: {imp.get('labels_origin')}.  "
                   f"Licence: {imp.get('licence')}.  Citation: {imp.get('citation')}.")
    return "\n".join(out)


CARD = """# {name} v{version}

{description}.

**Not a clinical tool.** A seed model trained on very few public cases: a starting point to
fine-tune on your own corrected scans (Segment -> proofread -> export -> `segloop-train --from
{name}`), not something to measure or diagnose with.

- Network: `{arch}` {arch_kwargs}, 2.5D ({context} neighbouring axial slices x {channels} channel(s)
  as input), classes: {classes}.
- Works at voxel spacing **{spacing} mm** (dz, dy, dx): `segloop predict`, the Segment widget and
  `Model.predict(spacing=...)` resample a scan to it and the labels back, so every scan meets the network
  at the scale it learnt (a thick-slice scan is interpolated between its slices: expect less there).
- Input normalization: {normalization}.
- Post-processing: {postprocess}.
- Modality {modality}{body_part}.

## Data
{sources}

{automatic_note}

## Held-out test patients (never seen in training; scored at their own spacing, float16 weights as shipped)
{test_note}

{table}

Evaluated with `python -m segloop_train.recipes {name} --out ...` (the same `evaluate_test` as
`benchmarks/evaluate.py --volumes`), {seconds:.0f} s per case on CPU.

## Intended use and limits
{limits}

## Licence
{licence}

## Training
From scratch, seed {seed}, {steps} steps (batch {batch}, patch {patch}, lr {lr}) on CPU with {threads}
thread(s), {train_seconds:.0f} s of training.  Command: `{command}`.
"""

LIMITS = {
    "mri-brain-tumour-segunet25d": (
        "- Needs FLAIR and T1c, skull-stripped and co-registered, in that channel order (napari: the image is the "
        "FLAIR layer, 'channel 2' the T1c layer; CLI: `segloop predict flair.nii.gz --channels t1c.nii.gz`). Other "
        "sequences or a brain with its skull will fail. The training volumes were z-scored inside the brain by "
        "DeepMedic's author; other scans go through the package's percentile normalization, which is close but "
        "not the same.\n"
        "- Three training patients (BraTS 2013, high- and low-grade gliomas): small or unusual tumours, "
        "post-operative cavities, metastases and other pathologies are not covered.\n"
        "- The non-enhancing class is the least reliable (the rarest and least consistent BraTS label); necrosis "
        "and enhancing tumour are thin structures whose Dice swings between patients."),
    "ct-lung-tumour-segunet25d": (
        "- Three training scans, one tumour each: it has learnt what a lung looks like (automatic lung labels) far "
        "better than what a tumour looks like. Expect missed nodules, and false positives at vessels and the "
        "hilum.\n"
        "- Tumours touching the mediastinum or chest wall are the hardest; the GTV of a radiotherapy plan includes "
        "judgement (spiculae, atelectasis) the model cannot see.\n"
        "- The lung class was learnt from a threshold (automatic labels) on two of the three scans."),
}


def finish(recipe: RadRecipe, raw: Path, out: Path, data: Path, *, command: str, train_seconds: float,
           threads: int) -> dict:
    """Write the shipped package (float16, spacing, licence, card with the test patients' scores)."""
    from segloop.core.formats.trainfolder import TrainingFolder

    pkg = load_package(raw)
    training = dict(pkg.spec.training or {})
    training.update(recipe=recipe.to_dict(), command=command, threads=threads, datasets=list(recipe.datasets),
                    test_datasets=list(recipe.test_datasets))
    spec = replace(pkg.spec, tile=dict(recipe.tile), description=recipe.description, license=recipe.licence,
                   spacing=recipe.spacing, training=training, postprocess=dict(recipe.postprocess))
    tmp = out.with_name(out.name + ".eval")
    shutil.rmtree(tmp, ignore_errors=True)
    save_package(tmp, spec, pkg.state_dict, weights_dtype="float16")
    result = evaluate_test(tmp, data, groups=recipe.groups)
    shutil.rmtree(tmp, ignore_errors=True)
    tf = TrainingFolder.open(data)
    automatic = [r for r in tf.samples() if not (((r.meta.get("extra") or {}).get("import") or {}).get("hand_drawn",
                                                                                                        True))]
    note = ("**Part of the labels are automatic** (a method's output, not a person's): "
            + "; ".join(sorted({(r.meta["extra"]["import"]["labels_origin"]) for r in automatic}))
            + ". The Segment widget says so when this model is chosen.") if automatic else \
        "All labels were drawn by people."
    training["test_metrics"] = {"weights": "float16", "mean": result["mean"],
                                "cases": {k: {c: {m: round(v, 4) for m, v in s.items()} for c, s in d.items()}
                                          for k, d in result["cases"].items()}}
    training["labels"] = "partly automatic" if automatic else "hand-drawn"
    n = len(result["cases"])
    training["headline"] = ("Dice " + ", ".join(f"{k} {result['mean'][k]['dice']:.3f}" for k in recipe.headline
                                                if k in result["mean"])
                            + f" ({n} test patient{'s' if n != 1 else ''})")
    spec = replace(spec, training=training)
    card = CARD.format(
        name=spec.name, version=spec.version, description=recipe.description, arch=recipe.arch,
        arch_kwargs=json.dumps(recipe.arch_kwargs), context=recipe.context_slices,
        channels=spec.in_channels // recipe.context_slices, classes=", ".join(spec.classes),
        spacing=" x ".join(f"{s:g}" for s in recipe.spacing) if recipe.spacing else "as trained (unknown)",
        normalization=json.dumps(recipe.normalization), modality=spec.modality or tf.info.modality,
        postprocess=recipe.postprocess_why or "none (the labels are the network's argmax)",
        body_part=f", {recipe.body_part}" if recipe.body_part else "", sources=_sources_text(data),
        automatic_note=note, test_note=recipe.test_note, table=_table(result), seconds=result["seconds_per_case"],
        limits=LIMITS.get(recipe.name, ""), licence=recipe.licence, seed=recipe.seed, steps=recipe.steps,
        batch=recipe.batch, patch=recipe.patch, lr=recipe.lr, threads=threads, train_seconds=train_seconds,
        command=command)
    save_package(out, spec, pkg.state_dict, weights_dtype="float16", card=card)
    return result


def build_radiology_model(name: str, out: str | os.PathLike, *, sources: str | os.PathLike,
                          work: str | os.PathLike | None = None, threads: int | None = 2, steps: int | None = None,
                          resume: bool = False, progress=None) -> dict:
    """Train one radiology seed model (:data:`RAD_RECIPES`) and write its package at ``out``.

    Returns
    -------
    dict
        ``package``, ``test`` (:func:`evaluate_test` of the shipped weights), ``train_seconds``.
    """
    import torch

    from segloop_train.augment import AugmentConfig
    from segloop_train.finetune import checkpoint_dir, finetune

    recipe = RAD_RECIPES[name]
    if steps is not None:
        recipe = replace(recipe, steps=int(steps), eval_every=min(recipe.eval_every, int(steps)))
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out} exists; packages are never overwritten")
    if threads:
        torch.set_num_threads(int(threads))
    work = Path(work) if work is not None else Path(".data/work") / name
    work.mkdir(parents=True, exist_ok=True)
    data, train = build_data(recipe, Path(sources), work)
    raw = work / f"{name}-fp32"
    if not resume:
        for stale in (raw, checkpoint_dir(raw)):
            shutil.rmtree(stale, ignore_errors=True)
    command = (f"python -m segloop_train.recipes {name} --out {out.name} --sources SRC"
               + (f" --threads {threads}" if threads else "") + (f" --steps {steps}" if steps else ""))
    if not raw.exists():
        res = finetune(train, parent=None, arch=recipe.arch, arch_kwargs=dict(recipe.arch_kwargs), dims=2,
                       context_slices=recipe.context_slices, normalization=dict(recipe.normalization), out=raw,
                       name=recipe.name, version=recipe.version, steps=recipe.steps, batch=recipe.batch,
                       patch=recipe.patch, lr=recipe.lr, seed=recipe.seed, eval_every=recipe.eval_every,
                       device="cpu", precision="fp32", onnx=False, command=command, progress=progress,
                       resume=bool(resume), augment=AugmentConfig(class_balance=recipe.class_balance))
        seconds = float(res.seconds)
    else:
        seconds = float((load_package(raw).spec.training or {}).get("seconds", 0.0))
    import_datasets(recipe.test_datasets, Path(sources), data)
    result = finish(recipe, raw, out, data, command=command, train_seconds=seconds,
                    threads=torch.get_num_threads())
    return {"package": str(out), "test": result, "train_seconds": seconds}


def main_args(a) -> int:
    """``python -m segloop_train.recipes <radiology recipe>`` (called by :func:`segloop_train.recipes.main`)."""
    last = {"t": 0.0}

    def show(ev: dict[str, Any]) -> None:
        kind = ev["event"]
        if kind == "eval":
            m = ev["metrics"]
            print(f"step {ev['step']}: " + " ".join(f"{k}={v:.3f}" for k, v in m.items() if k.startswith("dice")),
                  flush=True)
        elif kind == "step" and ev["step"] % 50 == 0:
            now = time.perf_counter()
            print(f"step {ev['step']}/{ev['steps']} loss {ev['loss']:.4f}"
                  + (f" ({(now - last['t']) / 50:.2f} s/step)" if last["t"] else ""), flush=True)
            last["t"] = now
        elif kind in ("warning", "note"):
            print(f"{kind}: {ev.get('message')}", flush=True)

    res = build_radiology_model(a.recipe, a.out, sources=a.sources, work=a.work, threads=a.threads, steps=a.steps,
                                resume=a.resume, progress=show)
    print(_table(res["test"]))
    print(f"wrote {res['package']} (training {res['train_seconds']:.0f} s)")
    return 0
