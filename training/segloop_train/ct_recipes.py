"""Recipes of the two bundled CT liver models (2.5D SegUNet and 3D U-Net), trained from scratch.

::

    python -m segloop_train.recipes ct-liver-segunet25d --out DIR [--threads 2]
    python -m segloop_train.recipes ct-liver-unet3d --out DIR [--threads 2]

Data: LiTS case 117 as shipped (resampled to 128^3) by the installed wheel
``liver-ct-segmentation-package==1.6.0``, read with :func:`segloop.core.formats.io.samples.load_liver_ct`
(files only, the package is never imported; ``(Z, Y, X)`` with Z axial, inferior -> superior).
It is written as a training folder v1 (classes background / liver / tumour, semantic, modality
CT, every voxel reviewed: the LiTS reference labels) by :func:`liver_ct_folder`.  One volume is
one source image, so the folder holds out its last 25 % of slices along its longest axis - here
Z, a contiguous **axial slab**, slices 96-127 - as the ``val`` sample, and clears slices 88-127
from the training sample (an 8-slice gap); :func:`segloop_train.folders.load_folders` then cuts
the training volume at slice 88, so no voxel of the slab, not even as 2.5D / 3D context, is
seen in training.  The voxel spacing is unknown (the MRC header says 0) and is not recorded.

Each recipe calls :func:`segloop_train.finetune` from scratch with a fixed seed, then re-saves
the best weights as float16 with the licence, description, card and a 2.5D inference tile,
and evaluates the **shipped** (float16) weights on the held-out slab for the card.

The weights inherit the LiTS data terms: non-commercial research use only (see the card and
``docs/data.md``).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from segloop.core.formats.importers import LIVER_CT_HOLDOUT, LIVER_CT_TRAIN, import_source
from segloop.core.formats.package import load_package, save_package
from segloop.core.formats.trainfolder import TrainingFolder
from segloop.core.inference.engines import cpu_id

__all__ = ["CT_RECIPES", "CTRecipe", "HOLDOUT_SLICES", "build_ct_model", "finish_ct_model", "liver_ct_folder"]

#: The held-out axial slab (``val``) and the first slice the training sample no longer sees
#: (defined once, by the ``liver-ct`` importer that writes the folder).
HOLDOUT_SLICES = LIVER_CT_HOLDOUT
TRAIN_SLICES = LIVER_CT_TRAIN

LICENSE = ("Non-commercial research use only. The weights were trained on LiTS data, whose terms are reported as "
           "CC BY-NC-SA 4.0 (other sources say CC BY-NC-ND 4.0; segloop could not read the original terms, see "
           "docs/data.md); either way they are non-commercial, and so are these weights. Not a medical device.")


@dataclass(frozen=True)
class CTRecipe:
    """One bundled CT model: what :func:`segloop_train.finetune` is called with.

    Attributes
    ----------
    name, version, description : str
    arch : str
        Registry key of the architecture.
    arch_kwargs : dict
    dims, context_slices : int
    patch : int or tuple of int
        2.5D: side; 3D: ``(pz, py, px)``.
    tile : dict
        Inference tile of the shipped package (``spec.tile``).
    normalization : dict
    steps, batch, eval_every : int
    lr : float
    seed : int
    """

    name: str
    version: str
    description: str
    arch: str
    arch_kwargs: dict
    dims: int
    context_slices: int
    patch: Any
    tile: dict
    normalization: dict
    steps: int
    batch: int
    lr: float
    eval_every: int
    seed: int = 0
    schema_version: int = 1
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["patch"] = list(self.patch) if isinstance(self.patch, tuple) else self.patch
        return d


#: Soft-tissue window (level 40, width 400 HU = CT_PRESETS["soft tissue"]): liver, tumour and
#: vessels stay apart; fat, air and bone saturate.
_WINDOW = {"kind": "ct_window", "level": 40.0, "width": 400.0}

CT_RECIPES: dict[str, CTRecipe] = {
    "ct-liver-segunet25d": CTRecipe(
        name="ct-liver-segunet25d", version="1.0.0",
        description="2.5D liver and liver-tumour segmentation of axial abdominal CT (5 neighbouring slices as "
                    "channels, soft-tissue window); trained on ONE LiTS volume - a starting point for fine-tuning",
        arch="segunet", arch_kwargs={"depth": 4, "base_width": 12, "norm": "batch"}, dims=2, context_slices=5,
        patch=96, tile={"size": 512, "overlap": 0.25}, normalization=_WINDOW, steps=1500, batch=8, lr=2e-3,
        eval_every=100),
    "ct-liver-unet3d": CTRecipe(
        name="ct-liver-unet3d", version="1.0.0",
        description="3D liver and liver-tumour segmentation of abdominal CT (3D patches, soft-tissue window); "
                    "trained on ONE LiTS volume - a starting point for fine-tuning",
        arch="unet", arch_kwargs={"depth": 3, "base_width": 8, "norm": "instance"}, dims=3, context_slices=1,
        patch=(32, 64, 64), tile={"size": [32, 64, 64], "overlap": 0.25}, normalization=_WINDOW, steps=900,
        batch=2, lr=2e-3, eval_every=100),
}


def liver_ct_folder(dest: str | Path) -> TrainingFolder:
    """Write LiTS case 117 as a training folder v1 with a held-out axial slab.

    The folder is written by the ``liver-ct`` importer (:func:`segloop.core.formats.importers.import_source`,
    also ``segloop import liver-ct --folder DEST``), so a recipe run and an import give the same
    folder (the same :meth:`~segloop.core.formats.trainfolder.TrainingFolder.fingerprint`).

    Parameters
    ----------
    dest : path-like
        A folder that does not exist yet.

    Returns
    -------
    TrainingFolder
        Two samples: the volume for ``train`` (reviewed slices ``0 .. 87``) and slices
        ``96 .. 127`` for ``val``.

    Raises
    ------
    segloop.errors.ImportSourceError
        The wheel is not installed (the message gives the pip command), or the folder did not
        hold out the expected axial slab.
    segloop.errors.TrainingFolderError
        ``dest`` is already a training folder, or a non-empty folder.
    """
    from segloop.errors import TrainingFolderError

    dest = Path(dest)
    if dest.exists() and (not dest.is_dir() or any(not n.startswith(".") for n in os.listdir(dest))):
        raise TrainingFolderError(f"{dest} exists and is not empty; liver_ct_folder writes a new training folder")
    import_source("liver-ct", dest)          # checks the package is there before it creates the folder
    return TrainingFolder.open(dest)


def _evaluate(package_path: Path, folder: Path) -> tuple[dict, float]:
    """Held-out metrics of a saved package on the folder's val slab, and the seconds it took."""
    from segloop_train.finetune import evaluate_samples
    from segloop_train.folders import load_folders

    pkg = load_package(package_path)
    loaded = load_folders(folder, spec=pkg.spec)
    t0 = time.perf_counter()
    m = evaluate_samples(pkg, loaded.val, device="cpu")
    return m, time.perf_counter() - t0


def _fmt(m: dict, key: str) -> str:
    return f"{m[key]:.3f}" if key in m else "n/a"


CARD = """# {name} v{version}

{kind} **liver and liver-tumour** segmentation of abdominal CT (classes: background, liver,
tumour). {arch_line}

**Not a clinical tool.** A small demonstration model trained on a single scan: a starting
point to fine-tune on your own corrected scans with segloop (Segment -> proofread -> export ->
`segloop-train --from {name}`), not something to measure or diagnose with.

## Data
- **One** CT volume: LiTS (Liver Tumor Segmentation Benchmark; Bilic et al., Medical Image
  Analysis 84:102680, 2023) training case 117, as shipped **resampled to a 128 x 128 x 128
  crop** by `liver-ct-segmentation-package==1.6.0` (files `data/img_117.mrc`, `lab_117.mrc`,
  read without importing the package). HU {hu_min:.0f} .. {hu_max:.0f}; labels 0 background,
  1 liver, 2 tumour (the LiTS reference, every voxel counted as reviewed).
- Orientation from anatomy (`segloop.core.formats.io.samples.load_liver_ct`): Z axial, inferior ->
  superior. **Voxel spacing unknown** (MRC voxel size 0, and the crop was resampled): none is
  recorded in the package, and the network has never seen a known slice thickness.
- Split along Z (one patient, so no independent test set exists): axial slices 0-87 train,
  88-95 a gap never shown to the network, **96-127 held out** (the `val` sample of the
  training folder; the upper liver and dome). Training patches never include held-out slices,
  not even as context.

## Held-out metrics (axial slices 96-127, {n_val_vox} voxels; weights as shipped, float16)
| class | Dice | Jaccard |
|---|---|---|
| liver | {dice_liver} | {jac_liver} |
| tumour | {dice_tumour} | {jac_tumour} |

Mean over the two classes: Dice {dice}, Jaccard {jaccard}; voxel accuracy {acc}.
Evaluated with `{evaluated_with}`. Best checkpoint at step {best_step} of {steps}
(chosen on this same slab: the figures are therefore slightly optimistic).

## Intended use and limits
- Intended: a starting point to fine-tune on your own corrected CT scans; demos of the
  segloop CT workflow. Research use only.
- **One patient, one scanner, one contrast phase**: it will not generalise to other patients,
  scanners, phases or fields of view without fine-tuning. It fails where it saw no examples:
  in the held-out slab most errors are in its top slices (liver dome next to the heart),
  which the training slices do not contain.
- **Tumour Dice on one volume means little**: the held-out slab holds a handful of lesions of
  one patient; it says nothing about lesion detection in general.
- Trained on a resampled 128^3 crop with unknown spacing: scans at their native resolution
  (e.g. 512 x 512 slices) likely show the liver at another scale. Resample or fine-tune first.
- Input: HU in a soft-tissue window (level 40, width 400), as stored in the package.

## Licence
{license}

## Training
- Trained from scratch, seed {seed}, on {device} with {threads} CPU thread(s); {seconds:.0f} s of
  training ({steps_done} steps, batch {batch}, patch {patch}, lr {lr}), {total:.0f} s in all
  including building the training folder and this evaluation (wall-clock, on a {ncpu}-core
  {cpu} shared with other jobs).
- Recipe (the exact `segloop_train.finetune` call and configuration are in `training` in
  segloop-model.json):

  `{command}`

- Evaluate both CT models: `python benchmarks/ct_models.py`.
"""


def finish_ct_model(recipe: CTRecipe, raw: str | Path, out: str | Path, folder: str | Path, *, command: str,
                    train_seconds: float, started: float) -> tuple:
    """The shipped package from a trained one: float16 weights, licence, tile, card with its held-out metrics.

    Parameters
    ----------
    recipe : CTRecipe
        The recipe ``raw`` was trained with.
    raw : path-like
        The package :func:`segloop_train.finetune` wrote (float32).
    out : path-like
        The package to write (must not exist).
    folder : path-like
        The training folder (its ``val`` sample is the held-out slab).
    command : str
        The recipe command line recorded in the card.
    train_seconds : float
        The training time :func:`segloop_train.finetune` reported.
    started : float
        ``time.perf_counter()`` when the recipe started (for the total time).

    Returns
    -------
    (ModelSpec, dict, float)
        The written spec, the shipped weights' held-out metrics, the total seconds.
    """
    import torch

    from segloop.core.formats.io.samples import load_liver_ct

    out, folder = Path(out), Path(folder)
    pkg = load_package(raw)
    hu = load_liver_ct()[0]
    training = dict(pkg.spec.training or {})
    training["recipe"] = recipe.to_dict()
    training["threads"] = torch.get_num_threads()
    training["command"] = command                   # the recipe call that ran finetune (same settings)
    spec = replace(pkg.spec, tile=dict(recipe.tile), description=recipe.description, license=LICENSE,
                   modality="CT", spacing=None, training=training)
    save_package(out, spec, pkg.state_dict, weights_dtype="float16")
    metrics, eval_s = _evaluate(out, folder)
    total = time.perf_counter() - started
    training["shipped_metrics"] = {"weights": "float16", **metrics}
    n_val = int(np.prod([HOLDOUT_SLICES[1] - HOLDOUT_SLICES[0], hu.shape[1], hu.shape[2]]))
    kind = "3D" if recipe.dims == 3 else f"2.5D ({recipe.context_slices} neighbouring axial slices as channels)"
    arch_line = (f"Network: `{recipe.arch}` {json.dumps(recipe.arch_kwargs)}, {spec.in_channels} input "
                 f"channel(s), {sum(v.numel() for v in pkg.state_dict.values() if v.is_floating_point()):,} "
                 f"weights; inference tile {recipe.tile['size']}.")
    card = CARD.format(
        name=spec.name, version=spec.version, kind=kind, arch_line=arch_line, hu_min=float(hu.min()),
        hu_max=float(hu.max()), n_val_vox=f"{n_val:,}", dice_liver=_fmt(metrics, "dice:liver"),
        jac_liver=_fmt(metrics, "jaccard:liver"), dice_tumour=_fmt(metrics, "dice:tumour"),
        jac_tumour=_fmt(metrics, "jaccard:tumour"), dice=_fmt(metrics, "dice"), jaccard=_fmt(metrics, "jaccard"),
        acc=_fmt(metrics, "pixel_accuracy"),
        evaluated_with="Model.predict",
        best_step=(training.get("best") or {}).get("step", "?"), steps=recipe.steps, license=LICENSE,
        seed=recipe.seed, device="CPU", threads=training["threads"], seconds=train_seconds,
        steps_done=training.get("steps_done"), batch=recipe.batch,
        patch=list(recipe.patch) if isinstance(recipe.patch, tuple) else recipe.patch, lr=recipe.lr,
        total=total, command=command, cpu=cpu_id(), ncpu=os.cpu_count())
    training["total_seconds"] = round(total, 1)
    training["eval_seconds"] = round(eval_s, 1)
    spec = replace(spec, training=training)
    written = save_package(out, spec, pkg.state_dict, weights_dtype="float16", card=card, overwrite=True)
    return written, metrics, total


def build_ct_model(name: str, out: str | Path, *, work: str | Path | None = None, threads: int | None = 2,
                   steps: int | None = None, progress=None) -> dict:
    """Train one bundled CT model from scratch and write its package at ``out``.

    Parameters
    ----------
    name : {"ct-liver-segunet25d", "ct-liver-unet3d"}
    out : path-like
        The package folder to write (must not exist).
    work : path-like, optional
        Where to put the training folder and the unconverted package (default: a temporary
        folder, removed afterwards).
    threads : int, optional
        ``torch.set_num_threads``; None leaves torch's default.
    steps : int, optional
        Override the recipe's steps (for quick checks).
    progress : callable, optional
        Passed to :func:`segloop_train.finetune`.

    Returns
    -------
    dict
        ``metrics`` (shipped weights on the held-out slab), ``seconds``, ``package``.
    """
    import torch

    from segloop_train.finetune import checkpoint_dir, finetune

    t0 = time.perf_counter()
    recipe = CT_RECIPES[name]
    if steps is not None:
        recipe = replace(recipe, steps=int(steps), eval_every=min(recipe.eval_every, int(steps)))
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out} exists; packages are never overwritten")
    if threads:
        torch.set_num_threads(int(threads))
    tmp = Path(tempfile.mkdtemp(prefix="segloop-ct-")) if work is None else Path(work)
    try:
        folder = tmp / "liver-ct-117"
        if not folder.exists():
            liver_ct_folder(folder)
        raw = tmp / f"{name}-fp32"
        for stale in (raw, checkpoint_dir(raw)):         # a run is never resumed from an old work folder
            shutil.rmtree(stale, ignore_errors=True)
        command = (f"python -m segloop_train.recipes {name} --out {out.name}"
                   + (f" --threads {threads}" if threads else "") + (f" --steps {steps}" if steps else ""))
        res = finetune(folder, parent=None, arch=recipe.arch, arch_kwargs=dict(recipe.arch_kwargs), dims=recipe.dims,
                       context_slices=recipe.context_slices, normalization=dict(recipe.normalization),
                       out=raw, name=recipe.name, version=recipe.version, steps=recipe.steps, batch=recipe.batch,
                       patch=recipe.patch, lr=recipe.lr, seed=recipe.seed, eval_every=recipe.eval_every,
                       device="cpu", precision="fp32", onnx=False, command=command, progress=progress)
        out_spec, metrics, total = finish_ct_model(recipe, raw, out, folder, command=command,
                                                   train_seconds=float(res.seconds), started=t0)
        return {"package": str(out), "metrics": metrics, "seconds": total, "train_seconds": res.seconds,
                "spec": out_spec}
    finally:
        if work is None:
            shutil.rmtree(tmp, ignore_errors=True)
