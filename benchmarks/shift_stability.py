"""Shift stability: does a model give the same nuclei when the image is shifted by a few pixels?

Whole-slide results are stitched from blocks, and a region's result depends on where the region
starts; a model that is not stable under small shifts makes results depend on block placement
more than the stitching does.  For each (model, image) pair the image is segmented whole and as
crops starting ``--shifts`` pixels in (y and x), and the two results are compared on the crop
(objects touching the crop's edges left out): instance F1@0.5 and the relative count difference.
The model's normalizer is fitted once on the whole image and used for every crop (as a slide run
fits one per slide), so only the shift differs; the classical baseline thresholds each input
anew, as it would in use.

* ``he-nuclei-unet`` (hematoxylin) on scikit-image's IHC tile, and ``nuclei-unet`` and
  ``fluo-nuclei-unet`` on the bundled BBBC007 fluorescence tile;
* named baseline in the same run: the classical pipeline of ``classical.py`` (Otsu + watershed),
  the same shifts, the same images.

Run::

    python benchmarks/shift_stability.py

Last lines are ``key=value`` figures (the worst F1 over shifts per pair).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def _inner(labels: np.ndarray) -> np.ndarray:
    """``labels`` without the objects that touch its edges."""
    from skimage.segmentation import clear_border

    return clear_border(labels)


def compare(full: np.ndarray, shifted: np.ndarray, dy: int, dx: int) -> tuple[float, float]:
    """F1@0.5 and relative count difference between ``full[dy:, dx:]`` and ``shifted`` (edges left out)."""
    from segloop.core.editing.metrics import instance_scores

    h, w = shifted.shape
    a, b = _inner(full[dy:dy + h, dx:dx + w]), _inner(shifted)
    na, nb = len(np.unique(a)) - 1, len(np.unique(b)) - 1
    return float(instance_scores(a, b)["f1@0.5"]), abs(na - nb) / max(na, 1)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shifts", default="1,7,37,64,101", help="pixel shifts (applied to y and x)")
    a = ap.parse_args(argv)
    import warnings

    import tifffile
    from skimage import data

    import segloop
    from segloop.core.inference.stain import stain_normalization

    sys.path.insert(0, str(HERE))
    from classical import classical_instances

    shifts = [int(s) for s in a.shifts.split(",")]
    warnings.filterwarnings("ignore", message=".*pixel size is unknown")   # the IHC tile records none
    ihc = data.immunohistochemistry()
    fluo = tifffile.imread(ROOT / "src/segloop/data/bbbc007_A9_p10d.tif")
    pairs = [("he-nuclei-unet", "ihc", ihc, "hematoxylin"), ("nuclei-unet", "bbbc007", fluo, None),
             ("fluo-nuclei-unet", "bbbc007", fluo, None)]
    rows = []
    for name, img_name, img, stain in pairs:
        if name not in segloop.list_models():
            print(f"{name}: not installed, skipped", file=sys.stderr)
            continue
        model = segloop.load_model(name, device="cpu")
        rgb = img.ndim == 3
        norm = stain_normalization(model, rgb=rgb, stain=stain or "none", stain_norm="model") if rgb else None

        # one normalizer for the image and its crops (as a slide run fits one per slide), so only the
        # shift differs
        normalizer = model.normalizer_for(img, normalization=norm)

        def segment(x, model=model, normalizer=normalizer, rgb=rgb):
            return np.asarray(model.predict(x, normalizer=normalizer, channel_axis=-1 if rgb else "auto").labels)

        def classical(x):
            return classical_instances(x)[0]

        methods = [(name, segment)] + ([] if any(r[0] == "classical" and r[1] == img_name for r in rows)
                                       else [("classical", classical)])
        for method, run in methods:
            full = run(img)
            for s in shifts:
                f1, dn = compare(full, run(np.ascontiguousarray(img[s:, s:])), s, s)
                rows.append((method, img_name, s, f1, dn))
    print(f"{'method':>16} {'image':>8} {'shift px':>9} {'F1@0.5':>7} {'count diff':>11}")
    for m, im, s, f1, dn in rows:
        print(f"{m:>16} {im:>8} {s:>9} {f1:>7.3f} {100 * dn:>10.1f}%")
    for m, im in dict.fromkeys((r[0], r[1]) for r in rows):
        worst = min(r[3] for r in rows if r[0] == m and r[1] == im)
        print(f"shift_f1_min_{m.replace('-', '_')}_{im}={worst:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
