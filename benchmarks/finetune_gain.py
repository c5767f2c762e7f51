"""Does fine-tuning help?  The bundled fluorescence nuclei model, adapted to an IHC tile on CPU.

What it does
------------
* **Image**: ``skimage.data.immunohistochemistry()`` (512 x 512 RGB, IHC-stained human colon,
  DAB brown + hematoxylin blue), a different modality and source than the BBBC007
  fluorescence images ``nuclei-unet`` was trained on.  The 1-channel model runs on it through
  the hematoxylin normalization (colour deconvolution, ``segloop predict --stain hematoxylin``).
* **Labels (reference)**: NOT drawn by a person.  A classical nuclei segmentation of the same
  hematoxylin channel: Gaussian smoothing (sigma 1), minus a local background (Gaussian sigma
  12), Otsu threshold, opening (disk 2), holes filled, objects < 40 px removed, split by a
  distance-transform watershed (peaks >= 5 px apart), objects < 40 px removed.  The figures
  therefore measure agreement with that rule, as the bundled model's own figures measure
  agreement with the Voronoi-Otsu labels it was trained on.
* **Splits** (rows of the tile, 8-px gaps, written as a training folder v1 with explicit
  splits): train = rows 0-255, val = rows 264-383 (used by fine-tuning to pick the best
  checkpoint), test = rows 392-511 (never read by fine-tuning; the headline figures).
* **Run**: ``segloop_train.finetune`` from ``nuclei-unet`` with ``normalization = hematoxylin``,
  ``modality = histology`` (stain jitter on), on CPU.
* **Printed**: parent and child instance F1 at IoU 0.5 and Dice on val and test (the child
  loaded back from its package with ``segloop.load_model``), and the time; the last line is
  ``gain_f1=<child - parent on test>``.

Run: ``.venv/bin/python benchmarks/finetune_gain.py`` (about 4-5 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

SPLITS = {"train": (0, 256), "val": (264, 384), "test": (392, 512)}


def reference_labels(image: np.ndarray) -> np.ndarray:
    """The classical hematoxylin-channel nuclei segmentation described in the module docstring."""
    from scipy import ndimage as ndi
    from skimage import feature, filters, measure, morphology, segmentation

    from segloop.core.formats.normalization import Hematoxylin
    from segloop.core.inference.normalize import Normalizer

    h = Normalizer.fit(Hematoxylin(), image, channel_axis=-1)(image)[0].astype(np.float64)
    d = filters.gaussian(h, 1.0) - filters.gaussian(h, 12)
    fg = d > filters.threshold_otsu(d)
    fg = morphology.opening(fg, morphology.disk(2))
    fg = ndi.binary_fill_holes(fg)
    fg = morphology.remove_small_objects(fg, max_size=40)
    dist = ndi.distance_transform_edt(fg)
    peaks = feature.peak_local_max(filters.gaussian(dist, 1.5), min_distance=5, labels=measure.label(fg),
                                   exclude_border=False)
    markers = np.zeros(fg.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    lab = segmentation.watershed(-dist, markers, mask=fg)
    lab = morphology.remove_small_objects(lab, max_size=40)
    return segmentation.relabel_sequential(lab)[0].astype(np.uint16)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--patch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--eval-every", type=int, default=25)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    ap.add_argument("--out", type=Path, help="keep the training folder and package here (default: a temp dir)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 20 steps")
    a = ap.parse_args(argv)
    if a.quick:
        a.steps, a.eval_every = 20, 10

    import torch
    from _machine import cpu_model
    from skimage import data

    import segloop
    from segloop.core.formats.trainfolder import TrainingFolder
    from segloop_train.finetune import evaluate_samples, finetune
    from segloop_train.folders import load_folders

    if a.threads:
        torch.set_num_threads(a.threads)
    image = data.immunohistochemistry()
    t0 = time.perf_counter()
    labels = reference_labels(image)
    t_labels = time.perf_counter() - t0
    work = a.out or Path(tempfile.mkdtemp(prefix="segloop-finetune-gain-"))
    work.mkdir(parents=True, exist_ok=True)
    folder = work / "ihc-folder"
    tf = TrainingFolder.create(folder, classes=("background", "nucleus"), task="instance", modality="histology")
    sha = hashlib.sha256(image.tobytes()).hexdigest()
    for split, (y0, y1) in SPLITS.items():
        tf.add_sample(image[y0:y1], labels[y0:y1], axes="YXC", source="skimage.data.immunohistochemistry",
                      source_sha256=sha, crop=[[y0, y1], [0, image.shape[1]]], split=split,
                      sample_id=f"ihc-{split}", extra={"labels": "classical hematoxylin segmentation "
                                                                 "(benchmarks/finetune_gain.py)"})
    n_obj = {s: len(np.unique(labels[y0:y1])) - 1 for s, (y0, y1) in SPLITS.items()}

    print("# fine-tune gain: nuclei-unet (fluorescence) -> IHC tile, CPU")
    print(f"machine: {cpu_model()}; torch {torch.__version__}; {torch.get_num_threads()} threads")
    print("image: skimage.data.immunohistochemistry() 512x512 RGB; model input: hematoxylin channel")
    print(f"labels: classical hematoxylin-channel segmentation (Otsu on background-subtracted H, watershed), "
          f"NOT manual; {labels.max()} objects ({t_labels:.1f} s)")
    print("splits (rows): " + ", ".join(f"{s} {y0}-{y1 - 1} ({n_obj[s]} objects)" for s, (y0, y1) in SPLITS.items()))
    print(f"training: {a.steps} steps, batch {a.batch}, patch {a.patch}, lr {a.lr}, eval every {a.eval_every}, "
          f"seed {a.seed}", flush=True)

    out = work / "nuclei-unet-ihc"

    def show(ev):
        if ev["event"] == "eval":
            print(f"  step {ev['step']:4d}  val f1@0.5={ev['metrics']['f1@0.5']:.3f}  dice={ev['metrics']['dice']:.3f}"
                  + ("  *" if ev["best"] else ""), flush=True)
        elif ev["event"] == "warning":
            print(f"  warning: {ev['message']}", flush=True)

    t0 = time.perf_counter()
    res = finetune(folder, parent="nuclei-unet", out=out, steps=a.steps, batch=a.batch, patch=a.patch, lr=a.lr,
                   eval_every=a.eval_every, seed=a.seed, device="cpu", normalization={"kind": "hematoxylin"},
                   onnx=False, progress=show)
    t_train = time.perf_counter() - t0

    # held-out test split: never read by finetune; child loaded back from its package
    test = [s for s in _test_samples(folder)]
    parent = segloop.load_model("nuclei-unet", device="cpu", precision="fp32")
    child = segloop.load_model(out, device="cpu", precision="fp32")
    hema = {"kind": "hematoxylin"}
    p_test = evaluate_samples(parent, test, normalization=hema)
    c_test = evaluate_samples(child, test)
    val = load_folders(folder).val
    c_val = evaluate_samples(child, val)
    print()
    print("| split | model | f1@0.5 | dice | ap@0.5:0.95 |")
    print("|---|---|---|---|---|")
    for split, p, c in (("val", res.parent_metrics, c_val), ("test", p_test, c_test)):
        print(f"| {split} | parent nuclei-unet 1.0.0 | {p['f1@0.5']:.3f} | {p['dice']:.3f} | {p['ap@0.5:0.95']:.3f} |")
        print(f"| {split} | child {child.spec.version} (step {res.spec.training['best']['step']}) | "
              f"{c['f1@0.5']:.3f} | {c['dice']:.3f} | {c['ap@0.5:0.95']:.3f} |")
    print()
    print(f"fine-tuning time: {t_train:.0f} s ({res.spec.training['steps_done']} steps, incl. evaluations); "
          f"package: {out}")
    print(f"parent_f1_test={p_test['f1@0.5']:.4f}")
    print(f"child_f1_test={c_test['f1@0.5']:.4f}")
    print(f"parent_dice_test={p_test['dice']:.4f}")
    print(f"child_dice_test={c_test['dice']:.4f}")
    print(f"seconds={t_train:.1f}")
    print(f"gain_f1={c_test['f1@0.5'] - p_test['f1@0.5']:.4f}")
    return 0


def _test_samples(folder: Path):
    """The folder's test split as 2D samples (finetune never reads it)."""
    from segloop.core.formats.trainfolder import TrainingFolder
    from segloop_train.data import Sample

    tf = TrainingFolder.open(folder)
    for rec in tf.samples("test"):
        s = tf.read_sample(rec)
        yield Sample(s.image, s.labels, s.reviewed, source=rec.sample_id)


if __name__ == "__main__":
    raise SystemExit(main())
