"""Held-out quality of CT / MR models on the volumes of training folders (``evaluate.py --volumes``).

``python benchmarks/evaluate.py --volumes --folder F [--folder G] --model NAME_OR_PATH [--model ...]
[--split test|val|all] [--overlays DIR] [--out DIR]``

For every model and every held-out patient (``test`` split by default: the patients the recipes
never train on), at the patient's **own voxel spacing** (the model resamples to its own and back,
``Model.predict(spacing=...)``): per class Dice, HD95 (mm) and volume error (mL), plus the groups
a model's recipe defines (BraTS whole tumour / tumour core), and seconds per volume.  Writes
``<out>/volumes.md`` (one table) and ``<out>/volumes.json``; with ``--overlays DIR`` an axial and a
coronal picture of the best and the worst patient of each model (reference contour green,
prediction red), for ``docs/models.md``.

Labels of the imported datasets are hand-drawn except where the folder's ``extra.import``
says otherwise (the lung masks of LIDC / pyradiomics cases are automatic): the table marks those
rows, since agreement with a threshold is not accuracy.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np


def _cases(folder: Path, split: str):
    from segloop.core.formats.trainfolder import TrainingFolder

    tf = TrainingFolder.open(folder)
    recs = tf.samples() if split == "all" else tf.samples(split)
    for rec in recs:
        if len(rec.meta.get("spacing") or ()) != 3:
            continue
        yield tf, rec


def _figure(path: Path, image: np.ndarray, truth: np.ndarray, pred: np.ndarray, spacing, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from skimage.segmentation import find_boundaries

    img = image[..., 0] if image.ndim == 4 else image
    fg = truth > 0
    z = int(np.argmax(fg.sum((1, 2)))) if fg.any() else img.shape[0] // 2
    y = int(np.argmax(fg.sum((0, 2)))) if fg.any() else img.shape[1] // 2
    lo, hi = np.percentile(img, (1, 99.5))
    fig, axes = plt.subplots(1, 2, figsize=(10, 5))
    for ax, sl, aspect, name in ((axes[0], np.s_[z], spacing[1] / spacing[2], f"axial z={z}"),
                                 (axes[1], np.s_[:, y], spacing[0] / spacing[2], f"coronal y={y}")):
        ax.imshow(np.clip((img[sl] - lo) / max(hi - lo, 1e-6), 0, 1), cmap="gray", aspect=aspect,
                  origin="lower" if name.startswith("coronal") else "upper")
        for lab, colour in ((truth, (0, 1, 0)), (pred, (1, 0, 0))):
            b = find_boundaries(lab[sl], mode="inner")
            over = np.zeros((*b.shape, 4))
            over[b] = (*colour, 1.0)
            ax.imshow(over, aspect=aspect, origin="lower" if name.startswith("coronal") else "upper")
        ax.set_title(name)
        ax.axis("off")
    fig.suptitle(title + "\ngreen: reference, red: model", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def run(a) -> int:
    """``evaluate.py --volumes`` (see the module docstring); returns the exit status."""
    import sys

    from segloop.core.editing.volume_metrics import volume_scores
    from segloop.core.inference.model import load_model

    if not a.model:
        print("error: --volumes needs --model NAME_OR_PATH (repeatable)", file=sys.stderr)
        return 2
    split = "test" if a.split == "auto" else a.split
    rows, per = [], {}
    for model_name in a.model:
        model = load_model(model_name, device=a.device if a.device != "auto" else "cpu", precision="fp32")
        groups = ((model.spec.training or {}).get("recipe") or {}).get("groups") or {}
        scored = []
        for folder in a.folder:
            for tf, rec in _cases(Path(folder), split):
                s = tf.read_sample(rec)
                sp = tuple(float(v) for v in rec.meta["spacing"])
                t0 = time.perf_counter()
                pred = model.predict(s.image, channel_axis=-1 if rec.meta["axes"].endswith("C") else None,
                                     spacing=sp).labels
                secs = time.perf_counter() - t0
                scores = volume_scores(s.labels, pred, sp, tf.info.classes, groups=groups, mask=s.reviewed)
                imp = ((rec.meta.get("extra") or {}).get("import") or {})
                auto = "AUTOMATIC" in str(imp.get("labels_origin", ""))
                per[f"{model.spec.name}/{rec.sample_id}"] = {"scores": scores, "seconds": secs, "spacing": sp}
                for cls, sc in scores.items():
                    rows.append((model.spec.name, rec.sample_id, cls, sc, secs,
                                 auto and cls == "lung"))
                key = float(np.mean([v["dice"] for v in scores.values()]))
                scored.append((key, rec.sample_id, s, pred, sp))
        if a.overlays and scored:
            scored.sort(key=lambda t: t[0])
            for tag, (key, sid, s, pred, sp) in (("worst", scored[0]), ("best", scored[-1])):
                _figure(Path(a.overlays) / f"{model.spec.name}-{tag}.png", s.image, s.labels, pred, sp,
                        f"{model.spec.name}: {sid} ({tag}, mean Dice {key:.2f})")
    if not rows:
        print(f"error: no volume with a recorded spacing in the {split} split of {', '.join(a.folder)}",
              file=sys.stderr)
        return 2
    lines = ["| model | patient | class | Dice | HD95 (mm) | volume (mL) | reference (mL) | error (mL) | s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for m, sid, cls, sc, secs, auto in rows:
        lines.append(f"| {m} | {sid} | {cls}{' (automatic reference)' if auto else ''} | {sc['dice']:.3f} | "
                     f"{sc['hd95_mm']:.1f} | {sc['volume_ml']:.1f} | {sc['reference_ml']:.1f} | "
                     f"{sc['volume_error_ml']:+.1f} | {secs:.0f} |")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "volumes.md").write_text("\n".join(lines) + "\n")
    (out / "volumes.json").write_text(json.dumps(per, indent=2, default=float))
    print("\n".join(lines))
    print(f"wrote {out / 'volumes.md'} and volumes.json")
    return 0
